"""Perceptible watermarks the model cannot see (paper App. E, Fig. 6)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from transformers import BaseImageProcessor, PreTrainedModel

from ..pixels import psnr, to_pil
from .editing import nullspace_edit


@dataclass(frozen=True)
class WatermarkResult:
    """A watermarked image and what the model makes of it.

    Attributes:
        image: ``(c, H, W)`` float32 watermarked pixels in [0, 1].
        original: ``(c, H, W)`` float32 original pixels.
        watermark: ``(c, H, W)`` float32 watermark pixels, at the model's input size.
        logits_before, logits_after: ``(num_labels,)`` float32 logits of the original and marked image.
        prediction_before, prediction_after: predicted class ids.
        max_logit_change: largest absolute logit change.
        psnr: PSNR of the marked image against the original, in dB (lower: more visible mark).
    """

    image: torch.Tensor
    original: torch.Tensor
    watermark: torch.Tensor
    logits_before: torch.Tensor
    logits_after: torch.Tensor
    prediction_before: int
    prediction_after: int
    max_logit_change: float
    psnr: float

    @property
    def noise(self) -> torch.Tensor:
        """The added nullspace noise ``image − original``."""
        return self.image - self.original

    def to_pil(self) -> Image.Image:
        """The watermarked image as an 8-bit PIL image (rounding leaves the exact nullspace slightly)."""
        return to_pil(self.image)


def embed_watermark(
    model: PreTrainedModel,
    image: Image.Image | torch.Tensor,
    watermark: Image.Image | torch.Tensor,
    strength: float = 1.0,
    *,
    processor: BaseImageProcessor | None = None,
) -> WatermarkResult:
    """Overlay ``watermark`` on ``image`` with patch-embedding nullspace noise (App. E, Eq. 12, Fig. 6).

    Per patch, the nullspace combination closest (least squares) to ``strength·(watermark − image)``
    is added, under the constraint that every pixel stays in [0, 1] without leaving the nullspace
    (:func:`~nullspace_hf.applications.nullspace_fit.bounded_nullspace_fit`). The patch embedding,
    and so every logit, is unchanged up to floating-point rounding.

    Args:
        model: a ViT-family image classifier with a non-empty patch-embedding nullspace.
        image: the picture to mark: a PIL image, or ``(c, H, W)`` [0, 1] pixels at the input size.
        watermark: the logo, same kinds; PIL images are resized to the model's input size.
        strength: how far towards the watermark to go; 1 aims at reproducing it fully.
        processor: the model's image processor (resizing and normalisation); ``None`` when the
            model takes [0, 1] pixels as they are.

    Raises:
        ValueError: the nullspace is empty (nothing to embed in), ``strength`` is not positive, or
            the images do not fit the model.
    """
    edit = nullspace_edit(model, image, watermark, processor=processor, strength=strength,
                          names=("image", "watermark"))
    return WatermarkResult(
        image=edit.edited,
        original=edit.original,
        watermark=edit.goal,
        logits_before=edit.logits_original,
        logits_after=edit.logits_edited,
        prediction_before=int(edit.logits_original.argmax()),
        prediction_after=int(edit.logits_edited.argmax()),
        max_logit_change=edit.max_logit_change,
        psnr=psnr(edit.original, edit.edited),
    )
