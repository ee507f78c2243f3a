"""Images in [0, 1] pixel space, and the affine map to the input space the model sees.

An image processor turns 8-bit pixels ``u`` into model input ``(u·rescale − mean) / std`` per
channel. With pixels ``p = u / 255`` in [0, 1] that is ``p · scale + offset``, a per-channel affine
map. The patch-embedding nullspace lives in the model's input space; a pixel-space change ``Δp``
reaches the model as ``scale · Δp``. Editing images in pixel space (where "valid" means [0, 1] and
distances mean what a viewer sees) therefore needs the nullspace mapped back through ``1 / scale``
(see :mod:`nullspace_hf.applications.nullspace_fit`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers import BaseImageProcessor, PreTrainedModel

from ..evaluation.pixels import PixelTransform


@dataclass(frozen=True)
class PixelSpace:
    """The per-channel affine map ``input = pixels · scale + offset`` from [0, 1] pixels to model input.

    Attributes:
        scale: ``(c,)`` float64 tensor, e.g. ``1 / std`` for the usual ``rescale = 1/255``.
        offset: ``(c,)`` float64 tensor, e.g. ``−mean / std``.
    """

    scale: torch.Tensor
    offset: torch.Tensor

    @classmethod
    def identity(cls, num_channels: int) -> PixelSpace:
        """A model that takes [0, 1] pixels as they are."""
        return cls.from_processor(None, num_channels)

    @classmethod
    def from_processor(cls, processor: BaseImageProcessor | None, num_channels: int) -> PixelSpace:
        """Read the rescale factor, mean and std of an image processor (``None``: identity), through
        :meth:`~nullspace_hf.evaluation.pixels.PixelTransform.from_processor`."""
        return cls(*PixelTransform.from_processor(processor, num_channels).affine())

    def to_model_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """Map ``(…, c, H, W)`` pixels to the model's input space (dtype of ``pixels``)."""
        scale = self.scale.to(pixels).reshape(-1, 1, 1)
        offset = self.offset.to(pixels).reshape(-1, 1, 1)
        return pixels * scale + offset


def to_pixels(
    image: Image.Image | torch.Tensor,
    model: PreTrainedModel,
    processor: BaseImageProcessor | None = None,
    *,
    name: str = "image",
) -> torch.Tensor:
    """Return one image as a ``(c, H, W)`` float64 tensor of [0, 1] pixels at the model's input size.

    A PIL image is converted to the model's channel count (RGB or L), then resized and cropped by
    ``processor`` exactly as for inference (without its rescaling and normalisation), or, without a
    processor, resized to ``model.config.image_size``. A tensor is taken as ``(c, H, W)`` pixels in
    [0, 1] already at the input size.

    Raises:
        ValueError: wrong type, channel count, rank or value range, naming ``name``.
    """
    num_channels = model.config.num_channels
    if isinstance(image, Image.Image):
        image = image.convert("RGB" if num_channels == 3 else "L")
        if processor is not None:
            raw = processor(images=image, do_rescale=False, do_normalize=False, return_tensors="pt")["pixel_values"][0]
            return raw.to(torch.float64) / 255.0
        size = model.config.image_size
        height, width = (size, size) if isinstance(size, int) else size
        array = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float64) / 255.0
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(array))
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"{name} must be a PIL image or a (channels, height, width) tensor, got {type(image).__name__}.")
    if image.ndim != 3 or image.shape[0] != num_channels:
        raise ValueError(
            f"{name} must be a ({num_channels}, height, width) tensor for this {num_channels}-channel model, "
            f"got shape {tuple(image.shape)}."
        )
    pixels = image.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 1:
        raise ValueError(f"{name} must hold pixel values in [0, 1]; rescale it (e.g. divide 8-bit values by 255).")
    return pixels


def to_pil(pixels: torch.Tensor) -> Image.Image:
    """Round ``(c, H, W)`` [0, 1] pixels to an 8-bit PIL image (RGB or L)."""
    array = (pixels.detach().to(torch.float64).clamp(0, 1) * 255.0).round().to(torch.uint8).cpu()
    array = array.permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def mse(first: torch.Tensor, second: torch.Tensor) -> float:
    """Mean squared difference of two pixel tensors."""
    return float(((first.to(torch.float64) - second.to(torch.float64)) ** 2).mean())


def psnr(reference: torch.Tensor, image: torch.Tensor) -> float:
    """Peak signal-to-noise ratio ``10·log10(1 / MSE)`` in dB of [0, 1] pixel images (∞ when equal)."""
    error = mse(reference, image)
    return math.inf if error == 0 else 10.0 * math.log10(1.0 / error)
