"""Patch-Fool (Fu et al., "Patch-Fool: Are Vision Transformers Always Robust Against Adversarial
Perturbations?", ICLR 2022): replace the patch that draws the most attention by an optimised one.

Implemented here (no maintained library has it) after the authors' release (GATECH-EIC/Patch-Fool),
with their defaults: one patch, chosen by attention in layer 4; the patch's pixels are free
(no norm bound, only [0, 1]); 250 Adam steps of learning rate 0.22 in the model's normalised units,
decayed by 0.95 every 10 steps, maximising the cross-entropy of the true label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ...errors import NullspaceError
from ...modeling import PatchGrid, eager_attention, frozen_eval, patch_grid
from ...pixels import PixelSpaceClassifier
from .base import Attack, check_positive


def _tiled_grid(classifier: PixelSpaceClassifier, pixels: torch.Tensor) -> PatchGrid:
    """The model's patch grid for these images, which PatchFool needs to tile them exactly."""
    grid = patch_grid(classifier.model, pixels)
    if not grid.tiles(*pixels.shape[-2:]):
        raise NullspaceError(
            f"PatchFool needs a ViT-family model whose patches tile the image; {type(classifier.model).__name__} "
            f"has {grid.patch_size[0]}×{grid.patch_size[1]} patches for {pixels.shape[-2]}×{pixels.shape[-1]} images."
        )
    return grid


def select_patches_by_attention(classifier: PixelSpaceClassifier, pixels: torch.Tensor, num_patches: int,
                                layer: int) -> torch.Tensor:
    """Patch-Fool's attention-aware patch selection (Fu et al., ICLR 2022): the ``num_patches`` patches
    that receive the most attention in ``layer``, attention averaged over heads and over queries.

    The patch tokens are the last ``(H/p)·(W/p)`` tokens of the sequence, after the CLS (and any
    distillation or register) tokens. ``layer`` is clipped to the model's last layer.

    Returns:
        ``(batch, num_patches)`` indices of patches in row-major order.
    """
    grid = _tiled_grid(classifier, pixels)
    with torch.no_grad(), eager_attention(classifier.model):
        attentions = classifier.model(pixel_values=classifier.normalize(pixels), output_attentions=True).attentions
    if not attentions:
        raise NullspaceError(f"PatchFool needs attention maps, which {type(classifier.model).__name__} does not "
                             "return.")
    received = attentions[min(layer, len(attentions) - 1)].mean(dim=1).mean(dim=1)[:, -grid.num_patches:]
    return received.argsort(dim=-1, descending=True)[:, :num_patches]


def patch_mask(indices: torch.Tensor, grid: PatchGrid) -> torch.Tensor:
    """A ``(batch, 1, rows·r_h, cols·r_w)`` mask that is 1 on the patches ``indices`` (row-major) and 0 elsewhere."""
    mask = torch.zeros(indices.shape[0], grid.num_patches, device=indices.device)
    mask.scatter_(1, indices, 1.0)
    mask = mask.view(-1, 1, grid.rows, grid.cols)
    return mask.repeat_interleave(grid.patch_size[0], dim=2).repeat_interleave(grid.patch_size[1], dim=3)


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
            raise NullspaceError(f"PatchFool: attention_layer must be >= 0, got {self.attention_layer}.")

    def threat_model(self) -> dict[str, Any]:
        """``num_patches`` whole patches, their pixels free in [0, 1] (no norm bound)."""
        return {"threat_model": "patch", "epsilon": None, "num_patches": self.num_patches}

    def perturb(self, classifier: PixelSpaceClassifier, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Replace the selected patches of each image by adversarially optimised pixels."""
        grid = _tiled_grid(classifier, pixels)
        if self.num_patches > grid.num_patches:
            raise NullspaceError(f"PatchFool: num_patches={self.num_patches} but the images have {grid.num_patches} "
                                 "patches.")
        with frozen_eval(classifier):
            indices = select_patches_by_attention(classifier, pixels, self.num_patches, self.attention_layer)
            mask = patch_mask(indices, grid)
            unit = classifier.transform.pixel_unit().to(pixels.device)
            kept = pixels * (1 - mask)
            # The optimised variable is the patch in normalised units, so that Adam's learning rate means what
            # it means in the authors' code.
            patch = (torch.rand_like(pixels) / unit).requires_grad_(True)
            optimizer = torch.optim.Adam([patch], lr=self.learning_rate)
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=self.lr_step_size, gamma=self.lr_gamma)
            for _ in range(self.steps):
                loss = F.cross_entropy(classifier(kept + patch * unit * mask), labels)
                optimizer.zero_grad()
                (-loss).backward()
                optimizer.step()
                scheduler.step()
                with torch.no_grad():
                    patch.copy_((patch * unit).clamp(0.0, 1.0) / unit)
        return (kept + (patch * unit).clamp(0.0, 1.0) * mask).detach()
