"""Encoder-level noise: injection into the patch-embedding output, and its synthesis (paper §3.2–3.3).

The noise ṽ is one tensor of shape ``(num_patches, hidden)``, shared by every sample, added to the
output of ``model.get_input_embeddings()`` — before the CLS token is prepended and the position
embeddings are added, as in the authors' code.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .modeling import frozen_eval, input_embedding_module, patch_projection

Batch = Mapping[str, Any] | torch.Tensor


class NoiseInjector:
    """Adds a noise tensor to the patch-embedding output of a ViT-family model (a forward hook).

    Transformers' NEFTune is the precedent: a forward hook on ``model.get_input_embeddings()``. With
    no noise set the hook returns the output untouched; :meth:`remove` (or leaving the ``with``
    block) takes the hook away and restores the exact original model.

    Example:
        >>> with NoiseInjector(model) as injector, injector.applied(noise):
        ...     noisy_logits = model(pixel_values=images).logits
    """

    def __init__(self, model: nn.Module) -> None:
        patch_projection(model)
        self.module = input_embedding_module(model)
        self.noise: torch.Tensor | None = None
        self.sample_mask: torch.Tensor | None = None
        self.output_shape: torch.Size | None = None
        self._handle = self.module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        embeddings = output[0] if isinstance(output, tuple) else output
        self.output_shape = embeddings.shape[1:]
        if self.noise is None:
            return output
        if self.noise.shape != embeddings.shape[1:]:
            raise ValueError(
                f"The noise has shape {tuple(self.noise.shape)} but the patch embeddings have shape "
                f"{tuple(embeddings.shape[1:])} (num_patches, hidden): images of another size than the noise was "
                "made for?"
            )
        noise = self.noise.to(embeddings.dtype)
        if self.sample_mask is not None:
            noise = noise * self.sample_mask.to(embeddings.dtype)[:, None, None]
        noisy = embeddings + noise
        return (noisy, *output[1:]) if isinstance(output, tuple) else noisy

    @contextmanager
    def applied(self, noise: torch.Tensor, sample_mask: torch.Tensor | None = None) -> Iterator[NoiseInjector]:
        """Add ``noise`` to every forward inside the block (only to samples where ``sample_mask`` is 1)."""
        previous = (self.noise, self.sample_mask)
        self.noise, self.sample_mask = noise, sample_mask
        try:
            yield self
        finally:
            self.noise, self.sample_mask = previous

    def remove(self) -> None:
        """Remove the hook: the model is exactly as before."""
        self._handle.remove()

    def __enter__(self) -> NoiseInjector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


@dataclass
class NoiseResult:
    """Outcome of a noise search.

    Attributes:
        noise: ``(num_patches, hidden)`` float32 tensor.
        steps: gradient (or shrink) steps taken.
        mse_prob: mean over the last batch of Σ(Δsoftmax)², Eq. 5's distance.
        norm: L2 norm of the noise.
        reached: whether ``mse_prob < eps`` was reached.
    """

    noise: torch.Tensor
    steps: int
    mse_prob: float
    norm: float
    reached: bool

    def as_dict(self) -> dict[str, float | int | bool]:
        """The scalar statistics, for logging."""
        return {"norm": self.norm, "steps": self.steps, "mse_prob": self.mse_prob, "reached": self.reached}


def probability_distance(clean_logits: torch.Tensor, noisy_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample Σ(softmax(z') − softmax(z))², the quantity bounded by ε in Eq. 5."""
    return (noisy_logits.float().softmax(-1) - clean_logits.float().softmax(-1)).pow(2).sum(-1)


def invariance_loss(clean_logits: torch.Tensor, noisy_logits: torch.Tensor, loss: str = "squared_l2") -> torch.Tensor:
    """Batch mean of ‖f(u+ṽ) − f(u)‖² (Eq. 7/8, ``"squared_l2"``) or ‖f(u+ṽ) − f(u)‖ (Eq. 4's J, ``"l2"``)."""
    difference = noisy_logits.float() - clean_logits.float()
    squared = difference.pow(2).sum(-1)
    return squared.mean() if loss == "squared_l2" else squared.clamp_min(1e-12).sqrt().mean()


def exploration_loss(
    clean_logits: torch.Tensor, noisy_logits: torch.Tensor, noise: torch.Tensor, log_norm_weight: float, loss: str
) -> torch.Tensor:
    """Eq. 4: L(ṽ) = E‖f(u+ṽ) − f(u)‖ − λ·log‖ṽ‖ (λ = 0 gives Eq. 7/8)."""
    value = invariance_loss(clean_logits, noisy_logits, loss)
    if log_norm_weight:
        value = value - log_norm_weight * noise.norm().log()
    return value


def _model_inputs(batch: Batch, device: torch.device) -> dict[str, Any]:
    """Model keyword inputs of a batch, without labels, on ``device``."""
    items = {"pixel_values": batch} if isinstance(batch, torch.Tensor) else batch
    return {
        key: value.to(device) if torch.is_tensor(value) else value
        for key, value in items.items()
        if key not in ("labels", "label")
    }


def _logits(model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    output = model(**inputs)
    return output.logits if hasattr(output, "logits") else output[0]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _global_mean(per_sample: torch.Tensor) -> float:
    """Mean over all samples of all ranks (each rank's batch may have another size)."""
    total = torch.stack([per_sample.detach().float().sum(), torch.tensor(float(per_sample.numel()))
                         .to(per_sample.device)])
    if _distributed():
        dist.all_reduce(total)
    return float(total[0] / total[1].clamp_min(1.0))


def _cycle(batches: Iterable[Batch]) -> Iterator[Batch]:
    """Iterate over ``batches`` again and again (a new minibatch each step, Algorithm 1)."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("The batches for noise synthesis are empty: give at least one batch of images.")


def _with_clean_logits(
    model: nn.Module, batches: Iterable[Batch], device: torch.device, reuse_batches: int
) -> Iterator[tuple[dict[str, Any], torch.Tensor]]:
    """Endless ``(inputs, clean logits)`` pairs: Algorithm 1, lines 5–7 without the noisy forward.

    With ``reuse_batches = 0`` every pair is a new minibatch and its clean logits are computed when it
    is drawn. With ``reuse_batches = n`` the first ``n`` minibatches are kept with their clean logits
    and cycled over, so the clean forward (a third of a search step) runs only ``n`` times.
    """
    stream = _cycle(batches)
    kept: list[tuple[dict[str, Any], torch.Tensor]] = []
    while True:
        if reuse_batches and len(kept) == reuse_batches:
            yield from kept
            continue
        inputs = _model_inputs(next(stream), device)
        with torch.no_grad():
            pair = (inputs, _logits(model, inputs))
        if reuse_batches:
            kept.append(pair)
        yield pair


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def synthesize_noise(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    eps: float = 0.03,
    lr: float = 0.1,
    init_limit: float = 3.0,
    max_steps: int = 3000,
    loss: str = "squared_l2",
    log_norm_weight: float = 0.0,
    init: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    reuse_batches: int = 0,
) -> NoiseResult:
    """Search encoder-level noise in the ε-approximate nullspace (Eq. 7/8; Eq. 4 with ``log_norm_weight``).

    Starting from U(−A, A) (or ``init``), AdamW with a cosine schedule minimises
    E‖f(u+ṽ) − f(u)‖² on a new minibatch each step, and stops as soon as the batch mean of
    Σ(Δsoftmax)² is below ``eps`` (Eq. 5), so the noise ends near the boundary of Ñ(ε).

    The model is put in eval mode with its weights frozen during the search, then restored. Under
    ``torch.distributed`` the noise gradient and the stopping statistic are all-reduced, so every
    rank takes the same steps and ends with the same noise, even when the ranks' batches differ.

    Args:
        model: a ViT-family model; forward must accept ``pixel_values``.
        batches: re-iterable source of batches (dicts with ``pixel_values`` or tensors).
        eps: ε, the bound on the probability distance.
        lr: AdamW learning rate η_v.
        init_limit: A of the uniform initialisation.
        max_steps: T, the largest number of gradient steps.
        loss: ``"squared_l2"`` (paper, Eq. 7/8) or ``"l2"`` (the authors' first code, Eq. 4's J).
        log_norm_weight: λ of Eq. 4's −λ·log‖ṽ‖ exploration term (0 disables it).
        init: starting noise (a warm start), else uniform.
        generator: CPU generator for the uniform initialisation (same seed ⇒ same noise on all ranks).
        reuse_batches: 0 draws a new minibatch every step (Algorithm 1); ``n > 0`` cycles over the first
            ``n`` minibatches and computes their clean logits once, which makes a step about a third
            cheaper but fits the noise to ``n`` minibatches only.
    """
    if reuse_batches < 0:
        raise ValueError(f"reuse_batches must be >= 0, got {reuse_batches}.")
    if loss not in ("squared_l2", "l2"):
        raise ValueError(f"Unknown noise loss {loss!r}: use 'squared_l2' or 'l2'.")
    device = _model_device(model)
    with NoiseInjector(model) as injector, frozen_eval(model):
        pairs = _with_clean_logits(model, batches, device, reuse_batches)
        inputs, clean = next(pairs)
        if init is None:
            start = (torch.rand(injector.output_shape, generator=generator) * 2 - 1) * init_limit
        else:
            start = init.detach().to(torch.float32).cpu().clone()
        noise = start.to(device).requires_grad_(True)
        optimizer = torch.optim.AdamW([noise], lr=lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(max_steps, 1))
        steps, reached, mse_prob = 0, False, math.inf
        while True:
            with injector.applied(noise):
                noisy = _logits(model, inputs)
            mse_prob = _global_mean(probability_distance(clean, noisy))
            if mse_prob < eps:
                reached = True
                break
            if steps >= max_steps:
                break
            value = exploration_loss(clean, noisy, noise, log_norm_weight, loss)
            (gradient,) = torch.autograd.grad(value, [noise])
            if _distributed():
                dist.all_reduce(gradient)
                gradient /= dist.get_world_size()
            noise.grad = gradient
            optimizer.step()
            scheduler.step()
            steps += 1
            inputs, clean = next(pairs)
    final = noise.detach().float()
    return NoiseResult(noise=final, steps=steps, mse_prob=mse_prob, norm=float(final.norm()), reached=reached)


def warm_start_lr(lr: float, init_limit: float, start: torch.Tensor) -> float:
    """Learning rate for a search that starts from ``start`` instead of U(−A, A) (Eq. 8's ṽ₀).

    AdamW moves every element by about ``lr`` per step whatever the size of the gradient, so a rate
    set for U(−A, A), whose RMS is A/√3, throws a smaller start far off the boundary it begins near.
    The step is kept relative to the noise: ``lr · RMS(start) / (A/√3)``.
    """
    start_rms = float(start.detach().float().pow(2).mean().sqrt())
    return lr * start_rms / (init_limit / math.sqrt(3.0))


def random_noise(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    eps: float = 0.03,
    std: float = 1.0,
    shrink: float = 0.8,
    max_steps: int = 200,
    generator: torch.Generator | None = None,
) -> NoiseResult:
    """Random ε-noise, the Table 4 baseline: Gaussian (std 1) scaled by 0.8 until inside ε (Eq. 5).

    One minibatch per check, as in the authors' ``ns_mode='random'``; all-reduced like
    :func:`synthesize_noise` so that every rank keeps the same noise.
    """
    device = _model_device(model)
    with NoiseInjector(model) as injector, frozen_eval(model), torch.no_grad():
        pairs = _with_clean_logits(model, batches, device, 0)
        inputs, clean = next(pairs)
        noise = (torch.randn(injector.output_shape, generator=generator) * std).to(device)
        steps, reached, mse_prob = 0, False, math.inf
        while True:
            with injector.applied(noise):
                mse_prob = _global_mean(probability_distance(clean, _logits(model, inputs)))
            if mse_prob < eps:
                reached = True
                break
            if steps >= max_steps:
                break
            noise = noise * shrink
            steps += 1
            inputs, clean = next(pairs)
    return NoiseResult(noise=noise.float(), steps=steps, mse_prob=mse_prob, norm=float(noise.norm()), reached=reached)


@torch.no_grad()
def noise_influence(model: nn.Module, batches: Iterable[Batch], noise: torch.Tensor) -> dict[str, float]:
    """Influence of a noise on a model over all ``batches`` (Fig. 3's metrics).

    Returns:
        ``{"mse_prob": mean Σ(Δsoftmax)², "match_rate": share of samples whose prediction is unchanged}``.
    """
    device = _model_device(model)
    distances, matches = [], []
    with NoiseInjector(model) as injector, frozen_eval(model):
        for batch in batches:
            inputs = _model_inputs(batch, device)
            clean = _logits(model, inputs)
            with injector.applied(noise.to(device)):
                noisy = _logits(model, inputs)
            distances.append(probability_distance(clean, noisy))
            matches.append((clean.argmax(-1) == noisy.argmax(-1)).float())
    if not distances:
        raise ValueError("noise_influence got no batches: give at least one batch of images.")
    return {"mse_prob": _global_mean(torch.cat(distances)), "match_rate": _global_mean(torch.cat(matches))}
