"""Least-squares fits of image changes by patch-embedding nullspace vectors (paper App. E, Eq. 12).

Everything here works in [0, 1] pixel space, patch by patch: :func:`pixel_nullspace` is the model's
patch-embedding nullspace in pixel coordinates (:meth:`~nullspace_hf.nullspace.PatchNullspace.in_pixel_space`),
and :func:`bounded_nullspace_fit` finds the nullspace change closest to a goal image within the valid
pixel range.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from ..errors import NullspaceError
from ..nullspace import PatchNullspace, patch_embedding_nullspace
from ..pixels import PixelTransform


def pixel_nullspace(model: PreTrainedModel, transform: PixelTransform) -> PatchNullspace:
    """The exact patch-embedding nullspace (§3.1, Eq. 2) of ``model`` in [0, 1] pixel space, for inputs
    made by ``transform``.

    The rank is decided once, on the stored weight, by :func:`~nullspace_hf.patch_embedding_nullspace`;
    :meth:`~nullspace_hf.nullspace.PatchNullspace.in_pixel_space` then changes the coordinates.

    Raises:
        ValueError: the nullspace is empty, so no image change is invisible to the model.
    """
    nullspace = patch_embedding_nullspace(model)
    if nullspace.nullity == 0:
        raise NullspaceError(
            f"{type(model).__name__} has an empty patch-embedding nullspace (rank {nullspace.rank} = c·r² = "
            f"{nullspace.patch_dim}): there is nothing to embed an image change in. Use a model whose hidden size "
            "is smaller than channels × patch², such as ViT-T/16 or ViT-B/32."
        )
    return nullspace.in_pixel_space(transform)


def _largest_feasible_step(origin: torch.Tensor, step: torch.Tensor, lower: float, upper: float) -> torch.Tensor:
    """Per patch, the largest ``t ∈ [0, 1]`` with ``lower ≤ origin + t·step ≤ upper`` (origin inside)."""
    room = torch.where(step > 0, upper - origin, lower - origin)
    ratio = torch.where(step != 0, room / torch.where(step != 0, step, 1.0), torch.inf)
    return ratio.clamp(min=0.0).amin(dim=-1, keepdim=True).clamp(max=1.0)


def bounded_nullspace_fit(
    origin: torch.Tensor,
    goal: torch.Tensor,
    space: PatchNullspace,
    *,
    lower: float = 0.0,
    upper: float = 1.0,
    max_iterations: int = 5000,
    tolerance: float = 1e-10,
) -> torch.Tensor:
    """App. E, Eq. 12 with valid pixels: ``argmin ‖z − goal‖₂`` over ``z − origin`` in the nullspace
    (patch by patch) and ``lower ≤ z ≤ upper``.

    This is the Euclidean projection of ``goal`` onto the intersection of the affine set
    ``origin + nullspace`` and the pixel box, computed by Dykstra's alternating projection algorithm
    (Boyle & Dykstra, 1986), which converges to that projection, not merely to some point of the
    intersection. Without active bounds the first iterate is already Eq. 12's least-squares fit.
    The answer is taken from the affine iterate, which never leaves the nullspace:

    * a patch whose iterate is within ``tolerance`` of the box is clipped into it, which moves it off
      the nullspace by at most ``tolerance`` per pixel (far below float32 resolution);
    * a patch still farther out after ``max_iterations`` keeps the largest fraction ``t ∈ [0, 1]`` of
      its change that stays inside the box (exactly feasible, possibly short of the optimum).

    Args:
        origin: ``(B, c, H, W)`` float64 pixels inside the box (the image the model must keep seeing).
        goal: ``(B, c, H, W)`` float64 pixels to approach (watermarked or target image).
        space: the nullspace in pixel space (:func:`pixel_nullspace`).
        lower, upper: the valid pixel range.
        max_iterations: cap on Dykstra iterations (typically a few hundred are needed).
        tolerance: stop once the affine iterate is this close to the box and the box iterate moves
            less than this.

    Returns:
        The ``(B, c, H, W)`` float64 image ``z``.
    """
    start = space.to_patches(origin)
    box = space.to_patches(goal)
    affine_correction = torch.zeros_like(box)
    box_correction = torch.zeros_like(box)
    for _ in range(max_iterations):
        shifted = box + affine_correction - start
        affine = start + space.project_patches(shifted)
        affine_correction = shifted + start - affine
        previous = box
        box = (affine + box_correction).clamp(lower, upper)
        box_correction = affine + box_correction - box
        if max(float((affine - affine.clamp(lower, upper)).abs().max()),
               float((box - previous).abs().max())) <= tolerance:
            break
    clipped = affine.clamp(lower, upper)
    converged = (affine - clipped).abs().amax(dim=-1, keepdim=True) <= tolerance
    step = affine - start
    fallback = start + _largest_feasible_step(start, step, lower, upper) * step
    return space.from_patches(torch.where(converged, clipped, fallback))
