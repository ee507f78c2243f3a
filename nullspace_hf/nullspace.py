"""Exact nullspace of a ViT patch embedding (paper §3.1, Table 1, Eq. 2).

The patch embedding is a ``Conv2d`` whose stride equals its kernel: every non-overlapping r×r patch
of the image (c·r² numbers) goes through the same linear map W ∈ R^{d × c·r²}. Any patch-shaped
vector in the nullspace of W therefore leaves the patch embedding, and with it the whole model,
unchanged.

:class:`PatchNullspace` holds that nullspace with its orthogonal complement (the row space of W), in
the model's input coordinates, or in [0, 1] pixel coordinates (:meth:`PatchNullspace.in_pixel_space`),
where image edits are measured (paper App. E).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .errors import NullspaceError
from .modeling import PatchGrid, patch_projection
from .pixels import PixelTransform


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))


@dataclass(frozen=True)
class PatchNullspace:
    """The nullspace of a patch embedding's linear map, and its orthogonal complement.

    Attributes:
        basis: ``(nullity, c·r_h·r_w)`` float64 tensor with orthonormal rows spanning the nullspace,
            in the flattening order of the conv weight (channel, row, column).
        nullity: dimension of the nullspace, ``c·r_h·r_w − rank``.
        rank: numerical rank of the weight (see :func:`patch_embedding_nullspace` for the tolerance).
        singular_values: all singular values of the reshaped weight, descending (float64).
        num_channels: image channels c.
        patch_size: ``(r_h, r_w)``.
        hidden_size: embedding width d.
        complement: ``(rank, c·r_h·r_w)`` float64 tensor with orthonormal rows spanning the orthogonal
            complement of the nullspace (the row space of the weight, in the same coordinates as ``basis``).
    """

    basis: torch.Tensor
    nullity: int
    rank: int
    singular_values: torch.Tensor
    num_channels: int
    patch_size: tuple[int, int]
    hidden_size: int
    complement: torch.Tensor

    @property
    def patch_dim(self) -> int:
        """Number of values in one patch, c·r_h·r_w."""
        return self.num_channels * self.patch_size[0] * self.patch_size[1]

    def _grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        grid = PatchGrid.for_image(self.patch_size, *image_size)
        if not grid.tiles(*image_size):
            patch_h, patch_w = self.patch_size
            raise NullspaceError(
                f"Image size {image_size[0]}×{image_size[1]} is not a multiple of the patch size {patch_h}×{patch_w}; "
                f"resize or crop the images to a multiple of the patch size."
            )
        return grid.rows, grid.cols

    def to_patches(self, images: torch.Tensor) -> torch.Tensor:
        """Split ``(B, c, H, W)`` images into ``(B, H/r_h, W/r_w, c·r_h·r_w)`` flattened patches."""
        if images.ndim != 4 or images.shape[1] != self.num_channels:
            raise NullspaceError(
                f"Expected images of shape (batch, {self.num_channels}, height, width), got {tuple(images.shape)}."
            )
        batch, channels, height, width = images.shape
        rows, cols = self._grid((height, width))
        patch_h, patch_w = self.patch_size
        patches = images.reshape(batch, channels, rows, patch_h, cols, patch_w)
        return patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, rows, cols, self.patch_dim)

    def from_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_patches`: ``(B, rows, cols, c·r_h·r_w)`` back to ``(B, c, H, W)``."""
        batch, rows, cols, _ = patches.shape
        patch_h, patch_w = self.patch_size
        images = patches.reshape(batch, rows, cols, self.num_channels, patch_h, patch_w)
        return images.permute(0, 3, 1, 4, 2, 5).reshape(
            batch, self.num_channels, rows * patch_h, cols * patch_w
        )

    def _require_nullspace(self) -> None:
        if self.nullity == 0:
            raise NullspaceError(
                f"The patch embedding has an empty nullspace (rank {self.rank} = c·r² = {self.patch_dim}): "
                "there is no exact nullspace noise for this model."
            )

    def sample(
        self,
        batch_size: int,
        image_size: int | tuple[int, int],
        scale: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw image-shaped noise whose every patch lies in the nullspace (Eq. 2).

        Each patch is ``v = Σ λ_i b_i`` with independent ``λ_i ~ N(0, scale²)``, so its expected
        squared norm is ``nullity · scale²``.

        Args:
            batch_size: number of noise images.
            image_size: ``H`` or ``(H, W)``, multiples of the patch size.
            scale: standard deviation of the coefficients λ.
            generator: optional ``torch.Generator`` for reproducible draws.

        Returns:
            A float32 tensor ``(batch_size, c, H, W)``.
        """
        self._require_nullspace()
        rows, cols = self._grid(_pair(image_size))
        coefficients = torch.randn(
            batch_size, rows, cols, self.nullity, generator=generator, dtype=torch.float64
        )
        patches = (coefficients * scale) @ self.basis
        return self.from_patches(patches).to(torch.float32)

    def project_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Orthogonal projection of ``(…, c·r_h·r_w)`` patch vectors onto the nullspace (App. E, Eq. 12, p = 2).

        Per patch, the nullspace vector ``Σ_i e_i λ_i`` closest to ``Δx_j``: with the orthonormal basis
        ``E`` the least-squares coefficients are ``λ = E Δx_j`` and the fit is ``Eᵀ E Δx_j``, computed as
        ``Δx_j − Cᵀ C Δx_j`` with the complement basis ``C`` when that one is smaller. Computed in the
        patches' dtype and device.
        """
        if self.nullity <= self.rank:
            basis = self.basis.to(device=patches.device, dtype=patches.dtype)
            return (patches @ basis.T) @ basis
        complement = self.complement.to(device=patches.device, dtype=patches.dtype)
        return patches - (patches @ complement.T) @ complement

    def project(self, images: torch.Tensor) -> torch.Tensor:
        """Return the per-patch component of ``(B, c, H, W)`` ``images`` that lies in the nullspace.

        ``images − project(images)`` carries everything the patch embedding (and so the model)
        sees; ``project`` is idempotent. Computed in the images' dtype and device.
        """
        return self.from_patches(self.project_patches(self.to_patches(images)))

    def in_pixel_space(self, transform: PixelTransform) -> PatchNullspace:
        """The same nullspace in [0, 1] pixel coordinates, for a model fed through ``transform`` (paper App. E).

        A model input ``y = S·p + o`` (``S`` the per-channel scale of the processor's map) changes by
        ``S·Δp``, so the pixel changes the patch embedding cannot see are ``S⁻¹·N``, with ``N`` this
        nullspace. The basis is scaled by ``S⁻¹`` element-wise and re-orthonormalised with a complete QR
        factorisation, whose trailing columns give the complement. The rank stays the one decided on the
        stored weight; ``singular_values`` stay the weight's.

        Raises:
            ValueError: ``transform`` is for another number of channels.
        """
        if len(transform.mean) != self.num_channels:
            raise NullspaceError(f"The pixel transform has {len(transform.mean)} channels, the patch embedding "
                                 f"{self.num_channels}.")
        patch_h, patch_w = self.patch_size
        scale = transform.affine()[0].repeat_interleave(patch_h * patch_w)
        q, _ = torch.linalg.qr((self.basis / scale).T, mode="complete")
        return dataclasses.replace(self, basis=q[:, : self.nullity].T.contiguous(),
                                   complement=q[:, self.nullity :].T.contiguous())


def patch_embedding_nullspace(model: nn.Module, rtol: float | None = None) -> PatchNullspace:
    """Compute the exact nullspace of a model's patch embedding (paper §3.1, Table 1).

    The patch ``Conv2d`` weight ``(d, c, r_h, r_w)`` is reshaped to ``W ∈ R^{d × c·r_h·r_w}`` and
    decomposed by SVD in float64. Singular values at or below ``rtol · σ_max`` count as zero.

    Args:
        model: any model with a patch ``Conv2d`` whose stride equals its kernel, found by
            :func:`~nullspace_hf.modeling.patch_embedding` (ViT, DeiT, BEiT, Dinov2, ViT-MSN,
            Data2VecVision, CLIP, SigLIP, timm ViTs through ``TimmWrapper``, and their classification heads).
        rtol: relative rank tolerance. The default follows ``numpy.linalg.matrix_rank`` applied to
            the stored weight: ``max(d, c·r²) · eps``, with ``eps`` the machine epsilon of the
            weight's dtype (1.19e-7 for float32). Trained float32 weights can lose rank numerically
            this way (the paper's ViT-B/16 row with nullity 2); pass ``rtol=0`` for the algebraic
            rank of the float64 matrix.

    Raises:
        ValueError: the model has no patch embedding, naming the model class.
    """
    projection = patch_projection(model)
    weight = projection.weight.detach()
    hidden_size, num_channels, patch_h, patch_w = weight.shape
    matrix = weight.to(device="cpu", dtype=torch.float64).reshape(hidden_size, -1)
    patch_dim = matrix.shape[1]
    _, singular_values, vh = torch.linalg.svd(matrix, full_matrices=True)
    if rtol is None:
        rtol = max(hidden_size, patch_dim) * float(torch.finfo(weight.dtype).eps)
    threshold = rtol * float(singular_values.max()) if singular_values.numel() else 0.0
    rank = int((singular_values > threshold).sum())
    return PatchNullspace(
        basis=vh[rank:].contiguous(),
        nullity=patch_dim - rank,
        rank=rank,
        singular_values=singular_values,
        num_channels=num_channels,
        patch_size=(patch_h, patch_w),
        hidden_size=hidden_size,
        complement=vh[:rank].contiguous(),
    )
