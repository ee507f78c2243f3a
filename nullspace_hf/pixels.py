"""Images as [0, 1] pixels, and the image processor's map between pixels and the model's input.

An image processor resizes (and crops) an 8-bit image ``u``, then rescales and normalises it:
``model_input = (u · rescale_factor − image_mean) / image_std`` per channel. With pixels ``p = u / 255``
in [0, 1] that is the per-channel affine map ``(p · scale − mean) / std`` of :class:`PixelTransform`.
Attacks bound their perturbations, corruptions and augmentations act, and image edits are judged in
pixel space; the model and its patch-embedding nullspace live in model-input space. Everything that
crosses between the two goes through this module:

* :class:`PixelTransform`: the map and its inverse, read from an image processor;
* :class:`InputBox`: the [0, 1] pixel range and one pixel unit, on the model's input (PGD training);
* :class:`PixelSpaceClassifier`: a classifier that takes pixels, so that its input gradient is a pixel gradient;
* :func:`images_to_pixels`, :func:`pixels_for_model`, :func:`to_pil`: images to pixels and back;
* :func:`to_8bit`, :func:`from_8bit`: pixels to 8-bit values and back;
* :func:`mse`, :func:`psnr`: distances between pixel images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from .errors import NullspaceError
from .modeling import frozen_eval


def _per_channel(value: float | Sequence[float], num_channels: int) -> tuple[float, ...] | None:
    values = [float(value)] if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) == 1:
        return tuple(values * num_channels)
    return tuple(values) if len(values) == num_channels else None


@dataclass(frozen=True)
class PixelTransform:
    """The processor's last steps, as an affine map: ``model_input = (pixels · scale − mean) / std``.

    ``pixels`` are in [0, 1] (an 8-bit image divided by 255); ``scale`` is ``255 · rescale_factor``
    when the processor rescales (1 for the usual factor 1/255) and 255 when it does not; ``mean``
    and ``std`` are ``image_mean`` and ``image_std`` when it normalises, 0 and 1 otherwise.
    """

    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def identity(cls, num_channels: int) -> PixelTransform:
        """The map of a model that takes [0, 1] pixels as they are."""
        return cls(scale=1.0, mean=(0.0,) * num_channels, std=(1.0,) * num_channels)

    @classmethod
    def from_processor(cls, processor: Any, num_channels: int) -> PixelTransform:
        """Read ``do_rescale``, ``rescale_factor``, ``do_normalize``, ``image_mean`` and ``image_std``
        (``None``: a model that takes [0, 1] pixels as they are).

        Raises:
            ValueError: the processor's mean/std have another number of channels than the model.
        """
        if processor is None:
            return cls.identity(num_channels)
        scale = 255.0 * float(processor.rescale_factor) if getattr(processor, "do_rescale", True) else 255.0
        if getattr(processor, "do_normalize", False):
            mean = _per_channel(processor.image_mean, num_channels)
            std = _per_channel(processor.image_std, num_channels)
            if mean is None or std is None:
                raise NullspaceError(
                    f"The image processor normalises with image_mean={processor.image_mean} and "
                    f"image_std={processor.image_std}, but the model takes {num_channels}-channel images: "
                    "pass an image processor made for this model."
                )
        else:
            mean, std = (0.0,) * num_channels, (1.0,) * num_channels
        return cls(scale=scale, mean=mean, std=std)

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel ``(a, b)`` (float64, shape ``(c,)``) with ``model_input = pixels · a + b``."""
        mean = torch.tensor(self.mean, dtype=torch.float64)
        std = torch.tensor(self.std, dtype=torch.float64)
        return self.scale / std, -mean / std

    def _mean_std(self, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``mean`` and ``std`` shaped ``(c, 1, 1)``, in the dtype and on the device of ``reference``."""
        return tuple(torch.tensor(values, dtype=reference.dtype, device=reference.device).view(-1, 1, 1)
                     for values in (self.mean, self.std))

    def to_model_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """Map ``(…, c, H, W)`` pixels in [0, 1] to the model's input, as the image processor would
        (computed in the dtype and on the device of ``pixels``)."""
        mean, std = self._mean_std(pixels)
        return (pixels * self.scale - mean) / std

    def to_pixels(self, model_input: torch.Tensor) -> torch.Tensor:
        """The inverse map: ``(…, c, H, W)`` model input back to pixels (not clipped to [0, 1])."""
        mean, std = self._mean_std(model_input)
        return (model_input * std + mean) / self.scale

    def pixel_unit(self) -> torch.Tensor:
        """Size of one unit of the model's normalised input, in pixel units, per channel: ``std / scale``."""
        return torch.tensor(self.std).view(1, -1, 1, 1) / self.scale


@dataclass(frozen=True)
class InputBox:
    """An L∞ pixel budget expressed on the model's normalised input, per channel.

    Attributes:
        lower, upper: the normalised values of pixel 0 and pixel 1, shape ``(1, C, 1, 1)``.
        unit: the size of one pixel unit (the whole [0, 1] range) in normalised units, ``scale / std``.
    """

    lower: torch.Tensor
    upper: torch.Tensor
    unit: torch.Tensor

    @classmethod
    def from_transform(cls, transform: PixelTransform) -> InputBox:
        """The box of a processor's rescale and normalisation: input = pixels · a + b, pixels in [0, 1]."""
        scale, offset = (t.float().view(1, -1, 1, 1) for t in transform.affine())
        return cls(lower=offset, upper=scale + offset, unit=scale)

    def to(self, reference: torch.Tensor) -> InputBox:
        """The box on the device and dtype of ``reference``."""
        return InputBox(*(t.to(device=reference.device, dtype=reference.dtype)
                          for t in (self.lower, self.upper, self.unit)))


class PixelSpaceClassifier(nn.Module):
    """An image classifier that takes ``(batch, channels, height, width)`` pixels in [0, 1] and returns logits.

    The processor's rescale and normalisation run inside, so that a gradient with respect to the input
    is a gradient in pixel space.

    Args:
        model: a ``transformers`` image-classification model (its output has ``logits``).
        transform: the processor's rescale and normalisation (:meth:`PixelTransform.from_processor`).
    """

    def __init__(self, model: nn.Module, transform: PixelTransform):
        super().__init__()
        self.model = model
        self.transform = transform

    @property
    def device(self) -> torch.device:
        """The device of the model's weights."""
        return next(self.model.parameters()).device

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Map pixels in [0, 1] to the model's input, as the image processor would (computed in the dtype of
        ``pixels``), on the model's device and in its dtype."""
        parameter = next(self.model.parameters())
        return self.transform.to_model_input(pixels).to(device=parameter.device, dtype=parameter.dtype)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits of the wrapped model for pixels in [0, 1]."""
        return self.model(pixel_values=self.normalize(pixels)).logits

    @torch.no_grad()
    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits for pixels in [0, 1], computed in eval mode without gradients, as float32 on the CPU."""
        with frozen_eval(self.model):
            return self(pixels).to(device="cpu", dtype=torch.float32)

    @torch.no_grad()
    def predict(self, pixels: torch.Tensor, class_indices: Sequence[int] | None = None) -> torch.Tensor:
        """Predicted class per image (on the device of ``pixels``); with ``class_indices``, the arg-max over
        those classes' logits only.

        Restricting the arg-max is how a 1,000-class model is evaluated on a 200-class subset such as
        ImageNet-A or ImageNet-R: the prediction is always one of the subset's (1,000-class) indices.
        """
        logits = self(pixels.to(self.device))
        if class_indices is None:
            return logits.argmax(-1).to(pixels.device)
        subset = torch.as_tensor(class_indices, device=logits.device)
        return subset[logits.index_select(-1, subset).argmax(-1)].to(pixels.device)


def to_8bit(pixels: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels rounded to 8-bit values: ``round(pixels · 255)`` as uint8 on the CPU (computed in the
    pixels' dtype; values outside [0, 1] are the caller's to clip)."""
    return (pixels.detach().cpu() * 255).round().to(torch.uint8)


def from_8bit(values: torch.Tensor | np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """8-bit values (0–255) as pixels in [0, 1]: ``values / 255`` in ``dtype``."""
    return torch.as_tensor(values).to(dtype) / 255


def images_to_pixels(processor: Any, images: Sequence[Any], *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Resize (and crop) ``images`` with ``processor`` and return them as a ``(batch, c, H, W)`` tensor in [0, 1].

    The processor is called with ``do_rescale=False, do_normalize=False``: every geometric step it is
    configured with happens, its rescale and normalisation do not (:class:`PixelTransform` is that part);
    the 8-bit values are divided by 255 in ``dtype`` (:func:`from_8bit`).
    """
    output = processor(list(images), do_rescale=False, do_normalize=False, return_tensors="pt")
    return from_8bit(output["pixel_values"], dtype).clamp(0.0, 1.0)


def pixels_for_model(image: Image.Image | torch.Tensor, model: nn.Module, processor: Any = None, *,
                     name: str = "image") -> torch.Tensor:
    """Return one image as a ``(c, H, W)`` float64 tensor of [0, 1] pixels at the model's input size.

    A PIL image is converted to the model's channel count (RGB or L), then resized and cropped by
    ``processor`` exactly as for inference (:func:`images_to_pixels`), or, without a processor, resized
    to ``model.config.image_size``. A tensor is taken as ``(c, H, W)`` pixels in [0, 1] already at the
    input size.

    Raises:
        ValueError: wrong type, channel count, rank or value range, naming ``name``.
    """
    num_channels = model.config.num_channels
    if isinstance(image, Image.Image):
        image = image.convert("RGB" if num_channels == 3 else "L")
        if processor is not None:
            return images_to_pixels(processor, [image], dtype=torch.float64)[0]
        size = model.config.image_size
        height, width = (size, size) if isinstance(size, int) else size
        array = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float64) / 255.0
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(array))
    if not isinstance(image, torch.Tensor):
        raise NullspaceError(f"{name} must be a PIL image or a (channels, height, width) tensor, got "
                             f"{type(image).__name__}.")
    if image.ndim != 3 or image.shape[0] != num_channels:
        raise NullspaceError(
            f"{name} must be a ({num_channels}, height, width) tensor for this {num_channels}-channel model, "
            f"got shape {tuple(image.shape)}."
        )
    pixels = image.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 1:
        raise NullspaceError(f"{name} must hold pixel values in [0, 1]; rescale it (e.g. divide 8-bit values by 255).")
    return pixels


def to_pil(pixels: torch.Tensor) -> Image.Image:
    """Round ``(c, H, W)`` [0, 1] pixels to an 8-bit PIL image (RGB or L)."""
    array = to_8bit(pixels.detach().to(torch.float64).clamp(0, 1)).permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def mse(first: torch.Tensor, second: torch.Tensor) -> float:
    """Mean squared difference of two pixel tensors."""
    return float(((first.to(torch.float64) - second.to(torch.float64)) ** 2).mean())


def psnr(reference: torch.Tensor, image: torch.Tensor) -> float:
    """Peak signal-to-noise ratio ``10·log10(1 / MSE)`` in dB of [0, 1] pixel images (∞ when equal)."""
    error = mse(reference, image)
    return math.inf if error == 0 else 10.0 * math.log10(1.0 / error)


def check_model_input(model: nn.Module, pixels: torch.Tensor, transform: PixelTransform) -> None:
    """Check that ``model`` accepts processor output of this shape; raise one clear error if not.

    Raises:
        ValueError: the number of channels or the image size differs between processor and model.
    """
    config = model.config
    channels, height, width = pixels.shape[1:]
    expected_channels = getattr(config, "num_channels", channels)
    size = getattr(config, "image_size", None)
    expected_size = tuple(size) if isinstance(size, (list, tuple)) else (size, size) if size else None
    problem = None
    if channels != expected_channels:
        problem = f"{channels} channels, but the model takes {expected_channels}"
    else:
        try:
            with torch.no_grad():
                output = model(pixel_values=PixelSpaceClassifier(model, transform).normalize(pixels[:1]))
        except (RuntimeError, ValueError) as error:
            problem = f"{height}×{width} images, which the model rejects ({error})"
            if expected_size and expected_size != (height, width):
                problem = f"{height}×{width} images, but the model takes {expected_size[0]}×{expected_size[1]}"
        else:
            if getattr(output, "logits", None) is None:
                raise NullspaceError(f"{type(model).__name__} gives no logits: load the model for image classification "
                                     "(AutoModelForImageClassification).")
    if problem:
        raise NullspaceError(
            f"Model/processor mismatch: the image processor gives {problem}. "
            "Pass the image processor saved with this model (or one configured to its num_channels and image_size)."
        )
