"""Images in [0, 1] pixel space, with the image processor's normalisation moved inside the model.

Attacks bound their perturbations and corruptions act in pixel space, after the processor has resized
(and cropped) the image but before it rescales and normalises it. :class:`PixelSpaceClassifier` takes
such pixels and applies the processor's rescale and normalisation itself, so that a gradient with
respect to its input is a gradient in pixel space.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


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
    def from_processor(cls, processor: Any, num_channels: int) -> PixelTransform:
        """Read ``do_rescale``, ``rescale_factor``, ``do_normalize``, ``image_mean`` and ``image_std``
        (``None``: a model that takes [0, 1] pixels as they are).

        Raises:
            ValueError: the processor's mean/std have another number of channels than the model.
        """
        if processor is None:
            return cls(scale=1.0, mean=(0.0,) * num_channels, std=(1.0,) * num_channels)
        scale = 255.0 * float(processor.rescale_factor) if getattr(processor, "do_rescale", True) else 255.0
        if getattr(processor, "do_normalize", False):
            mean = _per_channel(processor.image_mean, num_channels)
            std = _per_channel(processor.image_std, num_channels)
            if mean is None or std is None:
                raise ValueError(
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

    def pixel_unit(self) -> torch.Tensor:
        """Size of one unit of the model's normalised input, in pixel units, per channel: ``std / scale``."""
        return torch.tensor(self.std).view(1, -1, 1, 1) / self.scale


def _per_channel(value: float | Sequence[float], num_channels: int) -> tuple[float, ...] | None:
    values = [float(value)] if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) == 1:
        return tuple(values * num_channels)
    return tuple(values) if len(values) == num_channels else None


class PixelSpaceClassifier(nn.Module):
    """An image classifier that takes ``(batch, channels, height, width)`` pixels in [0, 1] and returns logits.

    Args:
        model: a ``transformers`` image-classification model (its output has ``logits``).
        transform: the processor's rescale and normalisation (:meth:`PixelTransform.from_processor`).
    """

    def __init__(self, model: nn.Module, transform: PixelTransform):
        super().__init__()
        self.model = model
        self.transform = transform
        self.register_buffer("mean", torch.tensor(transform.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(transform.std).view(1, -1, 1, 1), persistent=False)
        self.to(next(model.parameters()).device)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Map pixels in [0, 1] to the model's input, as the image processor would."""
        return (pixels * self.transform.scale - self.mean) / self.std

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits of the wrapped model for pixels in [0, 1]."""
        return self.model(pixel_values=self.normalize(pixels)).logits

    @torch.no_grad()
    def predict(self, pixels: torch.Tensor, class_indices: Sequence[int] | None = None) -> torch.Tensor:
        """Predicted class per image (on the device of ``pixels``); with ``class_indices``, the arg-max over
        those classes' logits only.

        Restricting the arg-max is how a 1,000-class model is evaluated on a 200-class subset such as
        ImageNet-A or ImageNet-R: the prediction is always one of the subset's (1,000-class) indices.
        """
        logits = self(pixels.to(self.mean.device))
        if class_indices is None:
            return logits.argmax(-1).to(pixels.device)
        subset = torch.as_tensor(class_indices, device=logits.device)
        return subset[logits.index_select(-1, subset).argmax(-1)].to(pixels.device)


def images_to_pixels(processor: Any, images: Sequence[Any]) -> torch.Tensor:
    """Resize (and crop) ``images`` with ``processor`` and return them as a float tensor in [0, 1].

    The processor is called with ``do_rescale=True, rescale_factor=1/255, do_normalize=False``: every
    geometric step it is configured with happens, its normalisation does not (see
    :class:`PixelSpaceClassifier`).
    """
    output = processor(list(images), do_rescale=True, rescale_factor=1 / 255, do_normalize=False, return_tensors="pt")
    return output["pixel_values"].float().clamp(0.0, 1.0)


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
                output = model(pixel_values=PixelSpaceClassifier(model, transform).normalize(
                    pixels[:1].to(next(model.parameters()).device)))
        except (RuntimeError, ValueError) as error:
            problem = f"{height}×{width} images, which the model rejects ({error})"
            if expected_size and expected_size != (height, width):
                problem = f"{height}×{width} images, but the model takes {expected_size[0]}×{expected_size[1]}"
        else:
            if getattr(output, "logits", None) is None:
                raise ValueError(f"{type(model).__name__} gives no logits: load the model for image classification "
                                 "(AutoModelForImageClassification).")
    if problem:
        raise ValueError(
            f"Model/processor mismatch: the image processor gives {problem}. "
            "Pass the image processor saved with this model (or one configured to its num_channels and image_size)."
        )
