"""Patch-Fool (Fu et al., "Patch-Fool: Are Vision Transformers Always Robust Against Adversarial
Perturbations?", ICLR 2022): replace the patch that draws the most attention by an optimised one.

Implemented here (no maintained library has it) after the authors' release (GATECH-EIC/Patch-Fool),
with their defaults: one patch, chosen by attention in layer 4; the patch's pixels are free
(no norm bound, only [0, 1]); 250 Adam steps of learning rate 0.22 in the model's normalised units,
decayed by 0.95 every 10 steps, maximising the cross-entropy of the true label.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..pixels import PixelSpaceClassifier
from .base import Attack, check_positive


@contextmanager
def _eager_attention(model: nn.Module) -> Iterator[None]:
    """Switch ``model`` to eager attention (the only kind that returns attention maps), then back."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def _patch_grid(classifier: PixelSpaceClassifier, pixels: torch.Tensor) -> tuple[int, int, int]:
    """(patch size, patches per column, patches per row) of the model, for images of this size."""
    patch = getattr(classifier.model.config, "patch_size", None)
    patch_h, patch_w = (patch, patch) if isinstance(patch, int) else tuple(patch or (0, 0))
    height, width = pixels.shape[-2:]
    if not patch_h or patch_h != patch_w or height % patch_h or width % patch_w:
        raise ValueError(
            f"PatchFool needs a ViT-family model with square patches that tile the image; "
            f"{type(classifier.model).__name__} has patch_size={patch} for {height}×{width} images."
        )
    return patch_h, height // patch_h, width // patch_w


def select_patches_by_attention(classifier: PixelSpaceClassifier, pixels: torch.Tensor, num_patches: int,
                                layer: int) -> torch.Tensor:
    """Patch-Fool's attention-aware patch selection (Fu et al., ICLR 2022): the ``num_patches`` patches
    that receive the most attention in ``layer``, attention averaged over heads and over queries.

    The patch tokens are the last ``(H/p)·(W/p)`` tokens of the sequence, after the CLS (and any
    distillation or register) tokens. ``layer`` is clipped to the model's last layer.

    Returns:
        ``(batch, num_patches)`` indices of patches in row-major order.
    """
    _, rows, cols = _patch_grid(classifier, pixels)
    with torch.no_grad(), _eager_attention(classifier.model):
        attentions = classifier.model(pixel_values=classifier.normalize(pixels), output_attentions=True).attentions
    if not attentions:
        raise ValueError(f"PatchFool needs attention maps, which {type(classifier.model).__name__} does not return.")
    received = attentions[min(layer, len(attentions) - 1)].mean(dim=1).mean(dim=1)[:, -rows * cols:]
    return received.argsort(dim=-1, descending=True)[:, :num_patches]


def patch_mask(indices: torch.Tensor, patch_size: int, rows: int, cols: int) -> torch.Tensor:
    """A ``(batch, 1, rows·p, cols·p)`` mask that is 1 on the patches ``indices`` (row-major) and 0 elsewhere."""
    grid = torch.zeros(indices.shape[0], rows * cols, device=indices.device)
    grid.scatter_(1, indices, 1.0)
    grid = grid.view(-1, 1, rows, cols)
    return grid.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)


@dataclass(frozen=True)
class PatchFool(Attack):
    """Patch-Fool (Fu et al., ICLR 2022) with the authors' defaults, as the paper's Table 2 ran it.

    Each image's most-attended patch (:func:`select_patches_by_attention`) is replaced by pixels that
    start uniform in [0, 1] and are optimised with Adam to maximise the cross-entropy of the true label;
    the rest of the image is untouched. ``learning_rate`` is in the model's normalised input units, as
    in the authors' code (one unit is ``image_std`` in pixel units for the usual rescale of 1/255).
    """

    num_patches: int = 1
    steps: int = 250
    learning_rate: float = 0.22
    lr_step_size: int = 10
    lr_gamma: float = 0.95
    attention_layer: int = 4

    name: ClassVar[str] = "patchfool"
    column: ClassVar[str] = "PatchFool"

    def __post_init__(self) -> None:
        check_positive("PatchFool", num_patches=self.num_patches, steps=self.steps,
                       learning_rate=self.learning_rate, lr_step_size=self.lr_step_size, lr_gamma=self.lr_gamma)
        if self.attention_layer < 0:
            raise ValueError(f"PatchFool: attention_layer must be >= 0, got {self.attention_layer}.")

    def perturb(self, classifier: PixelSpaceClassifier, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Replace the selected patches of each image by adversarially optimised pixels."""
        patch_size, rows, cols = _patch_grid(classifier, pixels)
        if self.num_patches > rows * cols:
            raise ValueError(f"PatchFool: num_patches={self.num_patches} but the images have {rows * cols} patches.")
        mask = patch_mask(select_patches_by_attention(classifier, pixels, self.num_patches, self.attention_layer),
                          patch_size, rows, cols)
        unit = classifier.transform.pixel_unit().to(pixels.device)
        kept = pixels * (1 - mask)
        # The optimised variable is the patch in normalised units, so that Adam's learning rate means what
        # it means in the authors' code.
        patch = (torch.rand_like(pixels) / unit).requires_grad_(True)
        optimizer = torch.optim.Adam([patch], lr=self.learning_rate)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=self.lr_step_size, gamma=self.lr_gamma)
        requires_grad = [p.requires_grad for p in classifier.parameters()]
        classifier.requires_grad_(False)
        try:
            for _ in range(self.steps):
                loss = F.cross_entropy(classifier(kept + patch * unit * mask), labels)
                optimizer.zero_grad()
                (-loss).backward()
                optimizer.step()
                scheduler.step()
                with torch.no_grad():
                    patch.copy_((patch * unit).clamp(0.0, 1.0) / unit)
        finally:
            for parameter, flag in zip(classifier.parameters(), requires_grad, strict=True):
                parameter.requires_grad_(flag)
        return (kept + (patch * unit).clamp(0.0, 1.0) * mask).detach()
