"""Targeted nullspace noise: an image that looks like one picture and is seen as another (App. F, Fig. 7)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from transformers import BaseImageProcessor, PreTrainedModel

from ..pixels import PixelSpaceClassifier, PixelTransform, mse
from .editing import nullspace_edit


@dataclass(frozen=True)
class TargetedResult:
    """A transformed image that carries the source's patch embeddings and the target's look.

    Attributes:
        image: ``(c, H, W)`` float32 transformed pixels in [0, 1].
        source, target: ``(c, H, W)`` float32 pixels at the model's input size.
        mse_to_source, mse_to_target: mean squared pixel distance of ``image`` to each.
        source_prediction, target_prediction, transformed_prediction: predicted class ids.
        max_logit_change: largest absolute logit difference between ``image`` and ``source``.
    """

    image: torch.Tensor
    source: torch.Tensor
    target: torch.Tensor
    mse_to_source: float
    mse_to_target: float
    source_prediction: int
    target_prediction: int
    transformed_prediction: int
    max_logit_change: float


def targeted_image(
    model: PreTrainedModel,
    source: Image.Image | torch.Tensor,
    target: Image.Image | torch.Tensor,
    *,
    processor: BaseImageProcessor | None = None,
) -> TargetedResult:
    """Make ``source`` look like ``target`` while keeping its patch embeddings (App. F, Fig. 7).

    ``source + Σ e_i λ_i`` with the nullspace coefficients that best reproduce ``target − source``
    (Eq. 12), within the valid pixel range. Only the patch embedding's weight is used: no
    backpropagation through the network. The closer the nullity is to c·r², the closer the
    transformed image gets to ``target``; with nullity above c·r²/2 it is typically nearer to the
    target than to the source.

    Args:
        model: a ViT-family image classifier with a non-empty patch-embedding nullspace.
        source: what the model should see: a PIL image or ``(c, H, W)`` [0, 1] pixels.
        target: what a person should see, same kinds.
        processor: the model's image processor; ``None`` when the model takes [0, 1] pixels.

    Raises:
        ValueError: the nullspace is empty, or the images do not fit the model.
    """
    edit = nullspace_edit(model, source, target, processor=processor, names=("source", "target"))
    transform = PixelTransform.from_processor(processor, model.config.num_channels)
    target_logits = PixelSpaceClassifier(model, transform).logits(edit.goal[None].to(torch.float64))[0]
    return TargetedResult(
        image=edit.edited,
        source=edit.original,
        target=edit.goal,
        mse_to_source=mse(edit.edited, edit.original),
        mse_to_target=mse(edit.edited, edit.goal),
        source_prediction=int(edit.logits_original.argmax()),
        target_prediction=int(target_logits.argmax()),
        transformed_prediction=int(edit.logits_edited.argmax()),
        max_logit_change=edit.max_logit_change,
    )
