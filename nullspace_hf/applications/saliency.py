"""Saliency maps for ViT-family classifiers in transformers (paper App. F, Figs. 7b and 8).

Both maps are computed from the model's own outputs (``output_attentions`` /
``output_hidden_states``), so they work for ViT, DeiT, BEiT, Dinov2 and other models that return
them, and give one value per image patch: ``(batch, H / r, W / r)``.
"""

from __future__ import annotations

import torch
from transformers import BaseImageProcessor, PreTrainedModel

from ..errors import NullspaceError
from ..modeling import eager_attention, frozen_eval, patch_grid
from ..pixels import PixelSpaceClassifier, PixelTransform


def attention_rollout(model: PreTrainedModel, pixel_values: torch.Tensor, residual: float = 0.5) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): how much each patch flows into the CLS token.

    Per layer, the head-averaged attention ``A`` is mixed with the identity for the residual path,
    ``Â = (1 − residual)·A + residual·I``, rows renormalised, and the layers multiplied,
    ``R = Â_L ⋯ Â_1``. The map is the CLS row of ``R`` over the patch tokens.

    Args:
        model: a ViT-family model that can return attentions.
        pixel_values: ``(B, c, H, W)`` model input (after the processor).
        residual: weight of the identity in each layer (0.5 in Abnar & Zuidema).

    Returns:
        ``(B, H / r, W / r)`` float32 maps on the CPU.
    """
    grid = patch_grid(model, pixel_values)
    with torch.no_grad(), frozen_eval(model), eager_attention(model):
        attentions = model(pixel_values=pixel_values, output_attentions=True).attentions
    if not attentions:
        raise NullspaceError(f"{type(model).__name__} returned no attention weights, so attention rollout is not "
                             "available.")
    rollout = None
    for attention in attentions:
        mixed = attention.to(torch.float32).mean(dim=1)
        mixed = (1 - residual) * mixed + residual * torch.eye(mixed.shape[-1], device=mixed.device)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rollout = mixed if rollout is None else mixed @ rollout
    cls_row = rollout[:, 0, -grid.num_patches :]
    return cls_row.reshape(-1, grid.rows, grid.cols).cpu()


def grad_cam(model: PreTrainedModel, pixel_values: torch.Tensor, target_class: int | None = None) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., 2017) on the tokens entering the last transformer layer.

    With ``A`` the patch tokens at the input of the last layer (the output of the last layer does not
    reach a CLS-token classifier except through the CLS token itself) and ``y`` the class logit, the
    map is ``ReLU(Σ_k α_k A_k)`` with channel weights ``α_k = mean over patches of ∂y/∂A_k``.

    Args:
        model: a ViT-family classifier that returns hidden states.
        pixel_values: ``(B, c, H, W)`` model input.
        target_class: class to explain; ``None``: each image's predicted class.

    Returns:
        ``(B, H / r, W / r)`` float32 maps on the CPU.
    """
    grid = patch_grid(model, pixel_values)
    inputs = pixel_values.detach().clone().requires_grad_(True)
    with torch.enable_grad(), frozen_eval(model):
        outputs = model(pixel_values=inputs, output_hidden_states=True)
        tokens = outputs.hidden_states[-2]
        num_labels = outputs.logits.shape[-1]
        if target_class is None:
            classes = outputs.logits.argmax(dim=-1)
        elif not 0 <= target_class < num_labels:
            raise NullspaceError(f"target_class must be a class id in [0, {num_labels}), got {target_class}.")
        else:
            classes = torch.full((outputs.logits.shape[0],), target_class, device=outputs.logits.device)
        score = outputs.logits.gather(1, classes[:, None]).sum()
        gradients = torch.autograd.grad(score, tokens)[0]
    patches = tokens.detach()[:, -grid.num_patches :].to(torch.float32)
    weights = gradients[:, -grid.num_patches :].to(torch.float32).mean(dim=1, keepdim=True)
    cam = torch.relu((weights * patches).sum(dim=-1))
    return cam.reshape(-1, grid.rows, grid.cols).cpu()


def map_correlation(first: torch.Tensor, second: torch.Tensor) -> float:
    """Pearson correlation of two saliency maps of the same shape (NaN when one is constant)."""
    if first.shape != second.shape:
        raise NullspaceError(f"Saliency maps must have the same shape, got {tuple(first.shape)} and "
                             f"{tuple(second.shape)}.")
    pair = torch.stack([first.flatten(), second.flatten()]).to(torch.float64)
    return float(torch.corrcoef(pair)[0, 1])


SALIENCY_METHODS = {"rollout": attention_rollout, "grad_cam": grad_cam}


def saliency_maps(
    model: PreTrainedModel, pixels: torch.Tensor, processor: BaseImageProcessor | None = None
) -> dict[str, torch.Tensor]:
    """Attention rollout and Grad-CAM (each image's predicted class) of ``(B, c, H, W)`` [0, 1] pixels.

    Returns:
        ``{"rollout": maps, "grad_cam": maps}``, each ``(B, H / r, W / r)``.
    """
    classifier = PixelSpaceClassifier(model, PixelTransform.from_processor(processor, model.config.num_channels))
    pixel_values = classifier.normalize(pixels.to(torch.float64))
    return {name: method(model, pixel_values) for name, method in SALIENCY_METHODS.items()}
