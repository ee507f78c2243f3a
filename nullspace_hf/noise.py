"""Encoder-level noise: injection into the patch-embedding output, and its synthesis (paper §3.2–3.3).

The noise ṽ is one tensor of shape ``(num_patches, hidden)``, shared by every sample, added to the
output of the patch embedding (:func:`~nullspace_hf.modeling.patch_embedding`) — before the CLS token
is prepended and the position embeddings are added, as in the authors' code.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .errors import NullspaceError
from .modeling import float_logits, frozen_eval, patch_embedding

Batch = Mapping[str, Any] | torch.Tensor


class NoiseInjector:
    """Adds a noise tensor to the patch-embedding output of a ViT-family model (a forward hook).

    Transformers' NEFTune is the precedent: a forward hook on the input embeddings. The hook sits on
    the module :func:`~nullspace_hf.modeling.patch_embedding` names: the patch-embedding module, whose
    output is the ``(batch, num_patches, hidden)`` patch tokens (ViT, DeiT, BEiT, Dinov2, ...), or the
    patch ``Conv2d`` itself where the embedding module also adds the CLS token and position embeddings
    (CLIP, SigLIP, timm); there the ``(num_patches, hidden)`` noise is added in the conv's
    ``(batch, hidden, rows, cols)`` layout, to the same tokens. With no noise set the hook returns the
    output untouched; :meth:`remove` (or leaving the ``with`` block) takes the hook away and restores
    the exact original model.

    Example:
        >>> with NoiseInjector(model) as injector, injector.applied(noise):
        ...     noisy_logits = model(pixel_values=images).logits
    """

    def __init__(self, model: nn.Module) -> None:
        site = patch_embedding(model)
        self.module = site.module
        self.channels_first = site.layout == "channels_first"
        self.noise: torch.Tensor | None = None
        self.sample_mask: torch.Tensor | None = None
        self.output_shape: torch.Size | None = None
        self._handle = self.module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        embeddings = output[0] if isinstance(output, tuple) else output
        if self.channels_first:
            hidden, rows, cols = embeddings.shape[1:]
            self.output_shape = torch.Size((rows * cols, hidden))
        else:
            self.output_shape = embeddings.shape[1:]
        if self.noise is None:
            return output
        lead = 1 if self.noise.ndim == 3 else 0  # a leading batch dimension: one noise per sample
        if tuple(self.noise.shape[lead:]) != tuple(self.output_shape) or (
                lead and self.noise.shape[0] != embeddings.shape[0]):
            raise NullspaceError(
                f"The noise has shape {tuple(self.noise.shape)} but the patch embeddings have shape "
                f"{tuple(self.output_shape)} (num_patches, hidden), for a batch of {embeddings.shape[0]}: images of "
                "another size than the noise was made for?"
            )
        noise = self.noise.to(embeddings.dtype)
        if self.channels_first:
            noise = noise.transpose(-1, -2).reshape(*noise.shape[:lead], *embeddings.shape[1:])
        if self.sample_mask is not None:
            noise = noise * self.sample_mask.to(embeddings.dtype).reshape(-1, *[1] * (embeddings.ndim - 1))
        noisy = embeddings + noise
        return (noisy, *output[1:]) if isinstance(output, tuple) else noisy

    @contextmanager
    def applied(self, noise: torch.Tensor, sample_mask: torch.Tensor | None = None) -> Iterator[NoiseInjector]:
        """Add ``noise`` to every forward inside the block.

        ``noise`` is one ``(num_patches, hidden)`` tensor for every sample, or ``(batch, num_patches, hidden)``, one
        per sample; ``sample_mask`` (``(batch,)``) multiplies each sample's noise (0/1: which samples get it).
        """
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
        steps: gradient steps of the descent (for :func:`random_noise`: shrink steps).
        mse_prob: mean over the final batch of Σ(Δsoftmax)², Eq. 5's distance, for the returned noise.
        norm: L2 norm of the noise.
        reached: whether the returned noise is inside ε (``mse_prob < eps``).
        start_mse_prob: the same distance for the starting noise, before any search.
        forward_steps: forward-only passes of the scale searches (:func:`boundary_scale`).
        budget_hit: the descent used all its gradient steps without entering ε.
        rms: root mean square of the noise's elements (its norm over √(num_patches·hidden)), to set beside the
            size of the patch embeddings it is added to.
    """

    noise: torch.Tensor
    steps: int
    mse_prob: float
    norm: float
    reached: bool
    start_mse_prob: float = math.nan
    forward_steps: int = 0
    budget_hit: bool = False

    @property
    def rms(self) -> float:
        return self.norm / math.sqrt(max(self.noise.numel(), 1))

    def as_dict(self) -> dict[str, float | int | bool]:
        """The scalar statistics, for logging."""
        return {"norm": self.norm, "rms": self.rms, "steps": self.steps, "forward_steps": self.forward_steps,
                "start_mse_prob": self.start_mse_prob, "mse_prob": self.mse_prob, "reached": self.reached,
                "budget_hit": self.budget_hit}


@dataclass
class BoundaryScale:
    """Outcome of :func:`boundary_scale`: the scale, the distance there, the forwards spent, and success."""

    scale: float
    mse_prob: float
    forwards: int
    found: bool


def boundary_scale(
    distance: Callable[[float], float],
    eps: float,
    *,
    side: str,
    band: float = 0.5,
    at_one: float | None = None,
    max_forwards: int = 40,
    scale_range: tuple[float, float] = (1e-6, 1e6),
) -> BoundaryScale:
    """The scale s that puts a fixed noise direction just inside or just outside Ñ(ε) (Eq. 5's boundary).

    Algorithm 1 (Eq. 8) starts from a noise outside Ñ(ε) and stops at the first step inside it, so
    the noise it returns lies just inside the boundary. This function makes both ends of that rule
    hold whatever the start: it searches the scale of ``s·ṽ`` with forward passes only, so that
    ``distance(s)`` (Eq. 5's batch mean of Σ(Δsoftmax)²) lies in ``[band·ε, ε)`` for
    ``side="inside"`` or in ``[ε, ε/band)`` for ``side="outside"``.

    The scale is first multiplied (or divided) until the band is bracketed — by a secant step in
    log–log space, since Σ(Δsoftmax)² grows like s² for a small noise, at least ×2 and at most ×64 a
    step — then the bracket is narrowed by log–log interpolation kept within its inner 80 %.

    Args:
        distance: ``s ↦`` Eq. 5's distance of the noise scaled by ``s`` (on one fixed batch).
        eps: ε.
        side: ``"inside"`` or ``"outside"``.
        band: width of the target band as a ratio in (0, 1).
        at_one: ``distance(1.0)`` when it is already known (saves a forward).
        max_forwards: the most forward passes to spend.
        scale_range: the scales searched. A pre-LayerNorm ViT's output saturates as the noise grows, so
            along some directions (typically for a model with near-uniform predictions) it never
            leaves Ñ(ε): the search then stops at the largest scale instead of growing without end.

    Returns:
        The scale (1.0 when it is already in the band). ``found`` is False when the band was not
        reached within ``max_forwards`` and ``scale_range``; the scale is then 1.0 if no scale left
        Ñ(ε) (the model ignores this direction), else the largest one seen inside ε for ``"inside"``
        and the smallest one seen outside it for ``"outside"``.
    """
    if side not in ("inside", "outside"):
        raise NullspaceError(f"side must be 'inside' or 'outside', got {side!r}.")
    if not 0 < band < 1 or not eps > 0:
        raise NullspaceError(f"boundary_scale needs eps > 0 and 0 < band < 1, got eps={eps!r}, band={band!r}.")
    low, high = (band * eps, eps) if side == "inside" else (eps, eps / band)
    target = math.sqrt(low * high)
    forwards = 0
    value = at_one
    if value is None:
        value, forwards = distance(1.0), 1
    first = value
    small: tuple[float, float] | None = None  # the largest scale seen below the band, and its distance
    large: tuple[float, float] | None = None  # the smallest scale seen above the band
    scale = 1.0
    lowest, highest = scale_range
    while True:
        if low <= value < high:
            return BoundaryScale(scale, value, forwards, True)
        if value < low:
            small = (scale, value)
        else:
            large = (scale, value)
        if forwards >= max_forwards:
            break
        if (large is None and scale >= highest) or (small is None and scale <= lowest):
            break
        if small is not None and large is not None:
            (s0, d0), (s1, d1) = small, large
            a, b = math.log(s0), math.log(s1)
            if d0 > 0:
                fraction = (math.log(target) - math.log(d0)) / (math.log(d1) - math.log(d0))
            else:
                fraction = 0.5
            scale = math.exp(a + min(max(fraction, 0.1), 0.9) * (b - a))
        else:
            base, current = small if large is None else large
            factor = (target / current) ** 0.5 if current > 0 else 64.0
            factor = min(max(factor, 2.0), 64.0) if large is None else 1 / min(max(1 / factor, 2.0), 64.0)
            scale = min(max(base * factor, lowest), highest)
        value = distance(scale)
        forwards += 1
    if large is None:  # never left the ε-ball along this direction: keep the noise as it was
        return BoundaryScale(1.0, first, forwards, False)
    fallback = small if side == "inside" and small is not None else large
    return BoundaryScale(fallback[0], fallback[1], forwards, False)


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
            raise NullspaceError("The batches for noise synthesis are empty: give at least one batch of images.")


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
            pair = (inputs, float_logits(model, inputs))
        if reuse_batches:
            kept.append(pair)
        yield pair


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _scaled_distance(
    model: nn.Module, injector: NoiseInjector, pairs: list[tuple[dict[str, Any], torch.Tensor]], noise: torch.Tensor
) -> Callable[[float], float]:
    """``s ↦`` Eq. 5's distance of ``s·noise`` over ``(inputs, clean logits)`` pairs (forwards without gradients)."""
    direction = noise.detach()

    def distance(scale: float) -> float:
        with torch.no_grad(), injector.applied(direction * scale):
            per_sample = [probability_distance(clean, float_logits(model, inputs)) for inputs, clean in pairs]
        return _global_mean(torch.cat(per_sample))

    return distance


def _pairs(window: Iterable[tuple[dict[str, Any], torch.Tensor, torch.Tensor]]) -> list[tuple[dict[str, Any],
                                                                                          torch.Tensor]]:
    """The ``(inputs, clean logits)`` pairs of a stop window's ``(inputs, clean logits, distances)`` entries."""
    return [(inputs, clean) for inputs, clean, _ in window]


TOKEN_SCALE_MAX = 2.0
"""The most a token-scaled descent (:func:`token_scaled`) can grow a token of its start in one search."""


def token_scaled(start: torch.Tensor, offset: torch.Tensor, scale_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 8's noise ṽ in the token-scaled parametrisation: ``s ⊙ (ṽ₀ + δ)``, ``s = 2·σ(w)`` per patch token.

    ``start`` is the ``(num_patches, hidden)`` start ṽ₀, ``offset`` the element-wise change δ (Eq. 8's own
    variable, shifted by the start) and ``scale_logits`` the ``(num_patches, 1)`` logits w of one scale per
    token. ``w = 0`` gives s = 1, so ``δ = 0, w = 0`` is the start itself.
    """
    return TOKEN_SCALE_MAX * torch.sigmoid(scale_logits) * (start + offset)


def redrawn_start(previous: torch.Tensor, init_limit: float, growth: float = 1.1,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """A warm start for the next round: a fresh U(−A, A) draw (Algorithm 1, line 3) with the previous noise's size per
    patch token, times ``growth`` and at most :data:`TOKEN_SCALE_MAX` times the draw's own size.

    The paper draws every round's start afresh; a noise kept from round to round instead (the previous ṽ as
    the start) is one direction the fine-tuned model learns to ignore, so it can be grown without bound and stays
    inside ε (measured: 43 → 5,726 over 20 rounds on a 16-patch ViT, against 53 for the paper's search on the
    last weights). What carries over here is only which tokens the model reads — the per-token sizes of the
    previous noise, which the token-scaled descent learned — so the search starts near the boundary, on new
    content every round.
    """
    draw = (torch.rand(previous.shape, generator=generator) * 2 - 1) * init_limit
    draw_size = init_limit * math.sqrt(previous.shape[-1] / 3.0)  # the expected norm of one U(−A, A) token
    sizes = previous.detach().float().cpu().norm(dim=-1, keepdim=True)
    scales = (growth * sizes / draw_size).clamp(max=TOKEN_SCALE_MAX)
    return draw * scales


def _unit_token_logits(tokens: int, device: torch.device) -> torch.Tensor:
    """Token-scale logits w with ``2·σ(w) = 1`` (every token at its start size)."""
    return torch.full((tokens, 1), math.log(1.0 / (TOKEN_SCALE_MAX - 1.0)), device=device)


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
    band: float | None = 0.5,
    keep_inside_start: bool = False,
    token_lr: float = 0.0,
    fallback: torch.Tensor | None = None,
    stop_batches: int = 1,
) -> NoiseResult:
    """Search encoder-level noise in the ε-approximate nullspace (Eq. 7/8; Eq. 4 with ``log_norm_weight``).

    Algorithm 1 with its stop rule made robust, in three parts:

    1. **Enter from outside.** The start (U(−A, A), or ``init``) must lie outside Ñ(ε) (Eq. 5): if it is
       inside, it is grown along its own direction until it is just outside (:func:`boundary_scale`,
       forward passes only). With ``keep_inside_start`` (warm starts) a start inside Ñ(ε) is kept instead:
       the model already tolerates it, so there is nothing to descend, and part 3 only places it in the
       band — growing it along its direction when it lies deep inside.
    2. **Descend** (Eq. 8): AdamW with a cosine schedule over ``max_steps`` minimises
       E‖f(u+ṽ) − f(u)‖² on a new minibatch each step and stops at the first step whose batch mean of
       Σ(Δsoftmax)² is below ε. With ``stop_batches = n > 1`` the statistic is the mean over the last ``n``
       minibatches instead: when the distances they gave on their own steps average below ε, the noise of
       now is measured on all ``n`` (forward passes only) and the descent stops if that is below ε. Small
       minibatches make steps cheap, but one of them is a noisy judge: the first lucky one stops a search
       whose noise lies outside ε on other images. The learning rate follows the noise's size
       (:func:`relative_lr`; for a U(−A, A) start it is ``lr`` up to the sampling error of the start's RMS).
    3. **Stop just inside.** The noise is scaled along its direction until that distance lies in
       ``[band·ε, ε)`` on the last batch (the last ``n`` minibatches) — grown when the last step went deep
       inside, shrunk into ε when the descent used its ``max_steps`` budget without entering it (``budget_hit``). With a
       ``fallback`` (the trainer's previous noise), such a search ends with the larger of its last noise
       and the fallback, each scaled into the band along itself: a noise whose tokens are saturated can
       need a scale of 0.02 along the direction the descent reached, but about 0.9 along the previous one.

    ``band=None`` is the bare Algorithm 1 (no scale search; a search that never reaches ε returns its
    last noise), which fixed-length searches such as Fig. 3's use.

    **Token-scaled descent** (``token_lr > 0``): the same descent of Eq. 8 on
    ``ṽ = s ⊙ (ṽ₀ + δ)`` (:func:`token_scaled`), with one scale ``s ∈ (0, 2)`` per patch token learned at
    ``token_lr`` beside the element-wise change δ at ``lr``. The paper's element-wise descent from a large
    U(−3, 3) start ends with most tokens at their full start size and a few shrunk to almost nothing (the
    model tolerates a token it cannot read, not a large change of a token it reads); Adam, moving every
    element by about ``lr`` a step, needs hundreds to thousands of steps to shrink whole tokens on a
    196-token ViT. A scale per token does that in tens of steps (docs/benchmarks.md, issue 22).
    ``token_lr=0`` is the paper's descent on ṽ itself.

    The model is put in eval mode with its weights frozen during the search, then restored. Under
    ``torch.distributed`` the noise gradient and every distance are all-reduced, so every rank takes
    the same steps and ends with the same noise, even when the ranks' batches differ.

    Args:
        model: a ViT-family model; forward must accept ``pixel_values``.
        batches: re-iterable source of batches (dicts with ``pixel_values`` or tensors).
        eps: ε, the bound on the probability distance.
        lr: AdamW learning rate η_v for a noise the size of U(−A, A); scaled to the size of the start.
        init_limit: A of the uniform initialisation.
        max_steps: T, the gradient-step budget of this search.
        loss: ``"squared_l2"`` (paper, Eq. 7/8) or ``"l2"`` (the authors' first code, Eq. 4's J).
        log_norm_weight: λ of Eq. 4's −λ·log‖ṽ‖ exploration term (0 disables it).
        init: starting noise (a warm start), else uniform.
        generator: CPU generator for the uniform initialisation (same seed ⇒ same noise on all ranks).
        reuse_batches: 0 draws a new minibatch every step (Algorithm 1); ``n > 0`` cycles over the first
            ``n`` minibatches and computes their clean logits once, which makes a step about a third
            cheaper but fits the noise to ``n`` minibatches only.
        band: the search ends with the distance in ``[band·ε, ε)``; None for the bare Algorithm 1.
        keep_inside_start: a start already inside ε is not grown out of it: the descent is skipped and the
            start is only placed in ``[band·ε, ε)`` (the trainer's warm starts).
        token_lr: AdamW learning rate of the per-token scale logits of the token-scaled descent (0: the
            paper's element-wise descent).
        fallback: a noise to end with, scaled into the band, when the budget runs out and it is larger than the
            last step scaled so (the previous round's noise).
        stop_batches: the number of last minibatches the stop and the final scale are judged on (1: the paper's
            current minibatch).
    """
    if stop_batches < 1:
        raise NullspaceError(f"stop_batches must be >= 1, got {stop_batches}.")
    if reuse_batches < 0:
        raise NullspaceError(f"reuse_batches must be >= 0, got {reuse_batches}.")
    if not token_lr >= 0:
        raise NullspaceError(f"token_lr must be >= 0, got {token_lr!r}.")
    if loss not in ("squared_l2", "l2"):
        raise NullspaceError(f"Unknown noise loss {loss!r}: use 'squared_l2' or 'l2'.")
    if band is not None and not (0 < band < 1 and eps > 0):
        raise NullspaceError(f"band must be in (0, 1) with eps > 0 (or band=None), got band={band!r}, eps={eps!r}.")
    device = _model_device(model)
    with NoiseInjector(model) as injector, frozen_eval(model):
        pairs = _with_clean_logits(model, batches, device, reuse_batches)
        inputs, clean = next(pairs)
        if init is None:
            start = (torch.rand(injector.output_shape, generator=generator) * 2 - 1) * init_limit
        else:
            start = init.detach().to(torch.float32).cpu().clone()
        start = start.to(device)
        start_distance = _scaled_distance(model, injector, [(inputs, clean)], start)
        start_mse_prob, forward_steps = start_distance(1.0), 1
        if band is not None and start_mse_prob < eps and not keep_inside_start:
            placed = boundary_scale(start_distance, eps, side="outside", band=band, at_one=start_mse_prob)
            start, forward_steps = start * placed.scale, forward_steps + placed.forwards
        element_lr = relative_lr(lr, init_limit, start)
        if token_lr > 0:
            offset = torch.zeros_like(start, requires_grad=True)
            scale_logits = _unit_token_logits(start.shape[0], device).requires_grad_(True)
            variables = [offset, scale_logits]
            optimizer = torch.optim.AdamW([{"params": [offset], "lr": element_lr},
                                           {"params": [scale_logits], "lr": token_lr}])

            def current() -> torch.Tensor:
                return token_scaled(start, offset, scale_logits)
        else:
            noise = start.requires_grad_(True)
            variables = [noise]
            optimizer = torch.optim.AdamW([noise], lr=element_lr)

            def current() -> torch.Tensor:
                return noise
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(max_steps, 1))
        kept = keep_inside_start and start_mse_prob < eps
        steps, mse_prob, noise = 0, start_mse_prob, start
        window: deque[tuple[dict[str, Any], torch.Tensor, torch.Tensor]] = deque(maxlen=stop_batches)
        current_on_window = True
        while not kept:
            noise = current()
            with injector.applied(noise):
                noisy = float_logits(model, inputs)
            distances = probability_distance(clean, noisy)
            window.append((inputs, clean, distances.detach()))
            mse_prob = _global_mean(torch.cat([d for _, _, d in window]))
            current_on_window = len(window) == 1
            if mse_prob < eps and len(window) == stop_batches and not current_on_window:
                # the window's distances were measured on earlier steps' noises: confirm on the noise of now
                mse_prob = _scaled_distance(model, injector, _pairs(window), noise)(1.0)
                forward_steps, current_on_window = forward_steps + len(window), True
            if (mse_prob < eps and current_on_window) or steps >= max_steps:
                break
            value = exploration_loss(clean, noisy, noise, log_norm_weight, loss)
            gradients = torch.autograd.grad(value, variables)
            for variable, gradient in zip(variables, gradients, strict=True):
                if _distributed():
                    dist.all_reduce(gradient)
                    gradient /= dist.get_world_size()
                variable.grad = gradient
            optimizer.step()
            scheduler.step()
            steps += 1
            inputs, clean = next(pairs)
        final = noise.detach().float()
        budget_hit = not mse_prob < eps
        if band is not None:
            placing = _pairs(window) or [(inputs, clean)]  # no window: a kept start, judged on its batch
            settled = boundary_scale(_scaled_distance(model, injector, placing, final), eps, side="inside",
                                     band=band, at_one=mse_prob if current_on_window else None)
            final, mse_prob = final * settled.scale, settled.mse_prob
            forward_steps += settled.forwards * len(placing)
            if budget_hit and fallback is not None:
                # the budget could not bring the start back inside: the fallback scaled into ε is often far larger
                # than the last step scaled so (a saturated direction shrinks unevenly)
                fallback = fallback.detach().to(device=device, dtype=torch.float32)
                shrunk = boundary_scale(_scaled_distance(model, injector, placing, fallback), eps,
                                        side="inside", band=band, scale_range=(1e-6, 1.0))  # never grown: no runaway
                forward_steps += shrunk.forwards * len(placing)
                if shrunk.mse_prob < eps and float(fallback.norm()) * shrunk.scale > float(final.norm()):
                    final, mse_prob = fallback * shrunk.scale, shrunk.mse_prob
    return NoiseResult(noise=final, steps=steps, mse_prob=mse_prob, norm=float(final.norm()), reached=mse_prob < eps,
                       start_mse_prob=start_mse_prob, forward_steps=forward_steps, budget_hit=budget_hit)


def relative_lr(lr: float, init_limit: float, start: torch.Tensor) -> float:
    """The noise learning rate for a start of any size (Eq. 8's ṽ₀): ``lr · RMS(start) / (A/√3)``.

    AdamW moves every element by about ``lr`` per step whatever the size of the gradient, so a rate
    set for U(−A, A), whose RMS is A/√3, throws a smaller start (a warm start) far off the boundary it
    begins near and crawls on a larger one (a start grown out of ε). Scaling keeps each step the same
    fraction of the noise; for a U(−A, A) start it is ``lr`` up to the sampling error of its RMS.
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

    Every check is a forward pass (``steps`` counts the shrinks, ``forward_steps`` the checks). One
    minibatch per check, as in the authors' ``ns_mode='random'``; all-reduced like
    :func:`synthesize_noise` so that every rank keeps the same noise.
    """
    device = _model_device(model)
    with NoiseInjector(model) as injector, frozen_eval(model), torch.no_grad():
        pairs = _with_clean_logits(model, batches, device, 0)
        inputs, clean = next(pairs)
        noise = (torch.randn(injector.output_shape, generator=generator) * std).to(device)
        steps, reached, mse_prob, start_mse_prob = 0, False, math.inf, math.nan
        while True:
            with injector.applied(noise):
                mse_prob = _global_mean(probability_distance(clean, float_logits(model, inputs)))
            if steps == 0:
                start_mse_prob = mse_prob
            if mse_prob < eps:
                reached = True
                break
            if steps >= max_steps:
                break
            noise = noise * shrink
            steps += 1
            inputs, clean = next(pairs)
    return NoiseResult(noise=noise.float(), steps=steps, mse_prob=mse_prob, norm=float(noise.norm()), reached=reached,
                       start_mse_prob=start_mse_prob, forward_steps=steps + 1, budget_hit=not reached)


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
            clean = float_logits(model, inputs)
            with injector.applied(noise.to(device)):
                noisy = float_logits(model, inputs)
            distances.append(probability_distance(clean, noisy))
            matches.append((clean.argmax(-1) == noisy.argmax(-1)).float())
    if not distances:
        raise NullspaceError("noise_influence got no batches: give at least one batch of images.")
    return {"mse_prob": _global_mean(torch.cat(distances)), "match_rate": _global_mean(torch.cat(matches))}
