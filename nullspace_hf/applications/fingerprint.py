"""The patch-embedding nullspace as a fingerprint of a set of weights (paper §6, "model patenting").

The nullspace of the patch embedding ``W`` is a property of the weights alone, needs nothing at
training time, and does not change when the hidden units are permuted or mixed (``W → M·W`` with
``M`` invertible, compensated in the next layer). Fine-tuning moves ``W`` only a little, so a
descendant's nullspace stays close to its parent's, while independently trained models of the same
architecture have unrelated nullspaces. Closeness is measured by the principal angles between the
two subspaces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from scipy.linalg import subspace_angles
from torch import nn

from ..errors import NullspaceError
from ..nullspace import patch_embedding_nullspace


@dataclass(frozen=True)
class NullspaceFingerprint:
    """A model's patch-embedding nullspace, to be kept and compared with later checkpoints.

    Attributes:
        basis: ``(nullity, c·r²)`` float64 tensor with orthonormal rows.
        num_channels: image channels c.
        patch_size: ``(r_h, r_w)``.
    """

    basis: torch.Tensor
    num_channels: int
    patch_size: tuple[int, int]

    @property
    def nullity(self) -> int:
        """Dimension of the nullspace."""
        return self.basis.shape[0]

    @property
    def patch_dim(self) -> int:
        """Dimension of the patch space, c·r_h·r_w."""
        return self.basis.shape[1]

    def save(self, path: str | Path) -> None:
        """Write the fingerprint to a ``.safetensors`` file."""
        metadata = {"num_channels": str(self.num_channels), "patch_size": f"{self.patch_size[0]},{self.patch_size[1]}"}
        save_file({"basis": self.basis.contiguous()}, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> NullspaceFingerprint:
        """Read a fingerprint written by :meth:`save`."""
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            basis = load_file(str(path))["basis"]
            patch_h, patch_w = (int(value) for value in metadata["patch_size"].split(","))
            return cls(basis=basis, num_channels=int(metadata["num_channels"]), patch_size=(patch_h, patch_w))
        except (OSError, KeyError, ValueError, SafetensorError) as error:
            raise NullspaceError(f"{str(path)!r} is not a nullspace fingerprint file: {error}") from error


def nullspace_fingerprint(model: nn.Module, rtol: float | None = None) -> NullspaceFingerprint:
    """Record the exact patch-embedding nullspace of ``model`` (§3.1, §6).

    Args:
        model: a ViT-family model.
        rtol: rank tolerance, as in :func:`~nullspace_hf.patch_embedding_nullspace`.

    Raises:
        ValueError: the nullspace is empty (nothing to fingerprint) or is the whole patch space
            (the patch embedding is zero).
    """
    nullspace = patch_embedding_nullspace(model, rtol=rtol)
    if nullspace.nullity == 0:
        raise NullspaceError(
            f"{type(model).__name__} has an empty patch-embedding nullspace (rank {nullspace.rank} = c·r² = "
            f"{nullspace.patch_dim}): there is no nullspace to fingerprint it by."
        )
    if nullspace.rank == 0:
        raise NullspaceError(f"{type(model).__name__} has an all-zero patch embedding: its nullspace identifies "
                             "nothing.")
    return NullspaceFingerprint(
        basis=nullspace.basis, num_channels=nullspace.num_channels, patch_size=nullspace.patch_size
    )


@dataclass(frozen=True)
class FingerprintMatch:
    """How close two patch-embedding nullspaces are.

    Attributes:
        similarity: chance-corrected overlap, ``(overlap − chance) / (1 − chance)``: 1 for the same
            nullspace, about 0 for unrelated ones (the score to threshold).
        overlap: mean squared cosine of the principal angles, ``‖B₁B₂ᵀ‖²_F / min(k₁, k₂)``.
        chance: the expected ``overlap`` of two uniformly random subspaces of these dimensions,
            ``max(k₁, k₂) / n``.
        principal_angles: radians, largest first (``scipy.linalg.subspace_angles``).
    """

    similarity: float
    overlap: float
    chance: float
    principal_angles: np.ndarray

    @property
    def largest_angle_degrees(self) -> float:
        """The largest principal angle, in degrees."""
        return math.degrees(float(self.principal_angles[0]))


def compare_fingerprints(reference: NullspaceFingerprint, candidate: NullspaceFingerprint) -> FingerprintMatch:
    """Score how likely ``candidate``'s weights derive from ``reference``'s (§6).

    For subspaces of dimensions ``k₁, k₂`` in ``R^n`` the overlap ``tr(P₁P₂) = ‖B₁B₂ᵀ‖²_F = Σ cos²θᵢ``
    lies between 0 and ``min(k₁, k₂)`` and averages ``k₁k₂/n`` for unrelated (uniformly random)
    subspaces. The chance-corrected similarity rescales it so that 1 means equal and 0 means chance. Because
    ``tr(P_N₁P_N₂) − k₁k₂/n = tr(P_R₁P_R₂) − r₁r₂/n`` for the complements (row spaces), the score is
    the same whether nullspaces or row spaces are compared; this matters when the nullity exceeds
    n/2 and two nullspaces must share ``2k − n`` dimensions whatever the weights.

    Raises:
        ValueError: the fingerprints come from different patch geometries (different architectures).
    """
    if (reference.num_channels, reference.patch_size) != (candidate.num_channels, candidate.patch_size):
        raise NullspaceError(
            f"Fingerprints of different patch geometries cannot be compared: {reference.num_channels} channels, "
            f"patch {reference.patch_size} vs {candidate.num_channels} channels, patch {candidate.patch_size}."
        )
    first, second = reference.basis.to(torch.float64), candidate.basis.to(torch.float64)
    smaller = min(first.shape[0], second.shape[0])
    overlap = float((first @ second.T).square().sum()) / smaller
    chance = max(first.shape[0], second.shape[0]) / first.shape[1]
    return FingerprintMatch(
        similarity=(overlap - chance) / (1.0 - chance),
        overlap=overlap,
        chance=chance,
        principal_angles=subspace_angles(first.T.numpy(), second.T.numpy()),
    )
