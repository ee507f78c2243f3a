"""Measurements behind the paper's analysis figures (§4.2, §5.4, §5.6).

- Fig. 3: :func:`regularization_sweep`: learned noise vs. the same noise with its elements permuted,
  at several strengths of Eq. 4's −λ·log‖ṽ‖ term.
- Fig. 4: :class:`~nullspace_hf.callbacks.RoundMetricsCallback` records the test metrics of each round.
- Fig. 5: :func:`scaling_curve` (α·v) and :func:`combination_grid` (α₁v₁ + α₂v₂).

The figures are drawn by :mod:`nullspace_hf.plots`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .noise import Batch, NoiseResult, noise_influence, synthesize_noise


def permute_noise(noise: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The same values in a random order (Fig. 3's dashed lines): equal norm, random direction."""
    order = torch.randperm(noise.numel(), generator=generator).to(noise.device)
    return noise.flatten()[order].view_as(noise)


def regularization_sweep(
    model: nn.Module,
    batches: Iterable[Batch],
    eval_batches: Sequence[Batch],
    strengths: Sequence[float],
    *,
    steps: int = 300,
    lr: float = 0.1,
    init_limit: float = 3.0,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Fig. 3: minimise Eq. 4 for ``steps`` steps at each λ; influence of the noise and of its permutation.

    The search does not stop at ε: each λ gives the noise that Eq. 4 balances at its own magnitude.

    Returns:
        One record per λ: ``strength``, ``norm``, ``learned_match_rate``, ``learned_mse_prob``,
        ``permuted_match_rate``, ``permuted_mse_prob`` (match rates in [0, 1]).
    """
    records = []
    for strength in strengths:
        generator = torch.Generator().manual_seed(seed)
        result = synthesize_noise(model, batches, eps=0.0, lr=lr, init_limit=init_limit, max_steps=steps,
                                  log_norm_weight=strength, generator=generator, band=None)
        learned = noise_influence(model, eval_batches, result.noise)
        permuted = noise_influence(model, eval_batches, permute_noise(result.noise, generator))
        records.append({"strength": float(strength), "norm": result.norm,
                        "learned_match_rate": learned["match_rate"], "learned_mse_prob": learned["mse_prob"],
                        "permuted_match_rate": permuted["match_rate"], "permuted_mse_prob": permuted["mse_prob"]})
    return records


def noise_set(model: nn.Module, batches: Iterable[Batch], count: int, *, eps: float = 0.033, seed: int = 0,
              **synthesis: Any) -> list[NoiseResult]:
    """Fig. 5's set V: ``count`` ε-approximate nullspace noises from different random initialisations."""
    return [synthesize_noise(model, batches, eps=eps, generator=torch.Generator().manual_seed(seed + index),
                             **synthesis) for index in range(count)]


def scaling_curve(model: nn.Module, eval_batches: Sequence[Batch], noises: Sequence[torch.Tensor],
                  alphas: Sequence[float]) -> list[float]:
    """Fig. 5(a): mean over ``noises`` of the MSE probability of α·v, for each α."""
    return [sum(noise_influence(model, eval_batches, alpha * noise)["mse_prob"] for noise in noises) / len(noises)
            for alpha in alphas]


def combination_grid(model: nn.Module, eval_batches: Sequence[Batch],
                     pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], alphas: Sequence[float]) -> torch.Tensor:
    """Fig. 5(b): mean over ``pairs`` of the MSE probability of α₁v₁ + α₂v₂ on an α grid.

    Returns:
        A ``(len(alphas), len(alphas))`` tensor; entry ``[i, j]`` is for α₁ = ``alphas[i]``, α₂ = ``alphas[j]``.
    """
    grid = torch.zeros(len(alphas), len(alphas))
    for i, first in enumerate(alphas):
        for j, second in enumerate(alphas):
            grid[i, j] = sum(noise_influence(model, eval_batches, first * a + second * b)["mse_prob"]
                             for a, b in pairs) / len(pairs)
    return grid
