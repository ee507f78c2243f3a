"""Move an image towards another one inside the patch-embedding nullspace, and measure what the model sees.

The shared step of the watermark (App. E) and the targeted nullspace noise (App. F): both fit
``goal − image`` by nullspace vectors within the valid pixel range (Eq. 12) and compare the model's
logits before and after. No gradient of the model is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from transformers import BaseImageProcessor, PreTrainedModel

from ..errors import NullspaceError
from ..pixels import PixelSpaceClassifier, PixelTransform, pixels_for_model
from .nullspace_fit import bounded_nullspace_fit, pixel_nullspace


@dataclass(frozen=True)
class NullspaceEdit:
    """An image, its nullspace edit, and the model's logits on both.

    Attributes:
        original: ``(c, H, W)`` float32 pixels in [0, 1].
        edited: ``(c, H, W)`` float32 pixels in [0, 1]; ``edited − original`` lies in the nullspace.
        goal: ``(c, H, W)`` float32 pixels the edit approached.
        logits_original, logits_edited: ``(num_labels,)`` float32 logits.
    """

    original: torch.Tensor
    edited: torch.Tensor
    goal: torch.Tensor
    logits_original: torch.Tensor
    logits_edited: torch.Tensor

    @property
    def max_logit_change(self) -> float:
        """Largest absolute change of any logit between the original and the edited image."""
        return float((self.logits_edited - self.logits_original).abs().max())


def nullspace_edit(
    model: PreTrainedModel,
    image: Image.Image | torch.Tensor,
    goal: Image.Image | torch.Tensor,
    *,
    processor: BaseImageProcessor | None = None,
    strength: float = 1.0,
    names: tuple[str, str] = ("image", "goal"),
) -> NullspaceEdit:
    """Change ``image`` towards ``image + strength·(goal − image)`` using only nullspace patches (Eq. 12).

    Args:
        model: a ViT-family image classifier.
        image, goal: PIL images or ``(c, H, W)`` tensors of [0, 1] pixels (see
            :func:`~nullspace_hf.pixels.pixels_for_model`).
        processor: the model's image processor; it defines the resizing and the normalisation
            whose per-channel scale maps pixel changes to model-input changes. ``None``: the model
            takes [0, 1] pixels as they are.
        strength: how far towards ``goal`` to aim; 1 aims at ``goal`` itself.
        names: how ``image`` and ``goal`` are called in error messages.

    Raises:
        ValueError: the model's nullspace is empty, ``strength`` is not positive, or the images do
            not have the model's channels or matching sizes.
    """
    if not strength > 0:
        raise NullspaceError(f"strength must be a positive number (1 aims at the {names[1]} itself), got {strength}.")
    transform = PixelTransform.from_processor(processor, model.config.num_channels)
    space = pixel_nullspace(model, transform)
    original = pixels_for_model(image, model, processor, name=names[0])
    target = pixels_for_model(goal, model, processor, name=names[1])
    if original.shape != target.shape:
        raise NullspaceError(
            f"{names[0]} and {names[1]} must have the same size, got {tuple(original.shape)} and {tuple(target.shape)}."
        )
    aim = original + strength * (target - original)
    edited = bounded_nullspace_fit(original[None], aim[None], space)[0]
    logits = PixelSpaceClassifier(model, transform).logits(torch.stack([original, edited]))
    return NullspaceEdit(
        original=original.to(torch.float32),
        edited=edited.to(torch.float32),
        goal=target.to(torch.float32),
        logits_original=logits[0],
        logits_edited=logits[1],
    )
