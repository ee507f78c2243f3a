"""The noisy term of Eq. 6 and its variants (issue 26): which noise the noisy branch sees, and which loss it pays.

Eq. 6 fine-tunes on ``CE(f(u), y) + w·CE(f(u + ṽ), y)`` with one noise ṽ ∈ Ñ(ε) shared by every sample of a
round. Because ṽ is inside ε by construction, f(u + ṽ) ≈ f(u), and the noisy term's gradient nearly repeats
the clean one. The variants here change that term, each a setting of
:class:`~nullspace_hf.NullspaceConfig`, all off by default (the paper's Eq. 6):

- ``noise_train_scale`` α: the noisy branch sees α·ṽ, beyond the boundary the search found ṽ on
  (:func:`training_noise`);
- ``noisy_loss``: ``"kl"`` replaces w·CE(f(u + αṽ), y) by β·KL(softmax f(u) ‖ softmax f(u + αṽ)) (TRADES'
  shape, :func:`consistency_kl`), ``"ce+kl"`` adds it beside the CE term;
- ``noise_bank_size`` K: the last K rounds' noises are kept (:class:`NoiseBank`) and every sample draws one of
  them at every step;
- ``noise_random_scale``: every sample's noise is scaled by its own factor drawn from U(0, 1) at every step,
  so the noisy branch sees the whole segment from 0 to α·ṽ.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

NOISY_LOSSES = ("ce", "kl", "ce+kl")


def consistency_kl(clean_logits: torch.Tensor, noisy_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax f(u) ‖ softmax f(u + αṽ)), averaged over the batch: the invariance term replacing Eq. 6's noisy CE.

    TRADES' robust term with the nullspace noise in place of the adversarial example; the gradient flows through
    both distributions, as in TRADES. It is exactly 0 when the two logits are equal (a zero noise).
    """
    return F.kl_div(F.log_softmax(noisy_logits.float(), dim=-1), F.log_softmax(clean_logits.float(), dim=-1),
                    log_target=True, reduction="batchmean")


class NoiseBank:
    """The noises of earlier rounds that ``noise_bank_size`` K > 1 keeps beside the current one: the K − 1 latest.

    Every sample then draws one of the K noises (the current and the kept ones) at every step
    (:func:`training_noise`); with K = 1 nothing is kept: Eq. 6's one noise for every sample.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._noises: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self._noises is None else self._noises.shape[0]

    @property
    def noises(self) -> torch.Tensor | None:
        """The kept noises, oldest first, stacked as ``(kept, num_patches, hidden)``; None while none is kept."""
        return self._noises

    def add(self, noise: torch.Tensor) -> None:
        """Keep a finished round's noise, dropping the oldest beyond ``size``."""
        if self.size < 1:
            return
        noise = noise.detach().unsqueeze(0)
        stacked = noise if self._noises is None else torch.cat([self._noises.to(noise.device), noise])
        self._noises = stacked[-self.size:]

    def restore(self, noises: torch.Tensor | None) -> None:
        """Set the kept noises from a checkpoint (``(kept, num_patches, hidden)``, oldest first)."""
        self._noises = None if noises is None or self.size < 1 else noises[-self.size:]


def training_noise(noise: torch.Tensor, bank: NoiseBank | None = None, batch: int = 1, scale: float = 1.0,
                   random_scale: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """The noise the noisy branch of Eq. 6 adds to a batch: α·ṽ, with the variants of this module.

    ``noise`` is the current round's ṽ, ``bank`` the earlier rounds' noises kept beside it. Returns the
    ``(num_patches, hidden)`` noise α·ṽ when every sample sees the same one (nothing kept, no random scale: Eq. 6
    with ṽ scaled by α), else ``(batch, num_patches, hidden)``: each sample's draw from the current and the kept
    noises, times α, times its own U(0, 1) factor with ``random_scale``.
    """
    kept = None if bank is None else bank.noises
    if kept is None and not random_scale:
        return noise * scale
    choices = noise.unsqueeze(0) if kept is None else torch.cat([kept.to(noise.device), noise.unsqueeze(0)])
    index = torch.randint(choices.shape[0], (batch,), generator=generator)
    drawn = choices[index.to(noise.device)]
    if random_scale:
        factors = torch.rand(batch, generator=generator).to(device=drawn.device, dtype=drawn.dtype)
        drawn = drawn * factors.reshape(-1, 1, 1)
    return drawn * scale


def noisy_term_weights(args: Any) -> tuple[float, float]:
    """The weights ``(w, β)`` of the noisy CE and the KL term that ``noisy_loss`` turns on (0 for a term it leaves
    out)."""
    loss = getattr(args, "noisy_loss", "ce")
    return (getattr(args, "noisy_loss_weight", 1.0) if loss in ("ce", "ce+kl") else 0.0,
            getattr(args, "noisy_kl_weight", 6.0) if loss in ("kl", "ce+kl") else 0.0)


def is_variant(args: Any) -> bool:
    """Whether ``args`` sets any variant of this module (anything but Eq. 6's noisy CE on ṽ itself)."""
    return (getattr(args, "noise_train_scale", 1.0) != 1 or getattr(args, "noisy_loss", "ce") != "ce"
            or getattr(args, "noise_bank_size", 1) > 1 or bool(getattr(args, "noise_random_scale", False)))


def objective_text(args: Any) -> str:
    """Eq. 6 as this run trains it, in words and symbols, for the model card and the logs."""
    alpha = getattr(args, "noise_train_scale", 1.0)
    bank = getattr(args, "noise_bank_size", 1)
    noise = "ṽ" if alpha == 1 else f"{alpha:g}·ṽ"
    if getattr(args, "noise_random_scale", False):
        noise = f"r·{noise} (r ~ U(0, 1) per sample)"
    if bank > 1:
        noise += f", ṽ drawn per sample from the last {bank} rounds' noises"
    ce_weight, kl_weight = noisy_term_weights(args)
    terms = ["CE(f(u), y)"]
    if ce_weight:
        terms.append(("" if ce_weight == 1 else f"{ce_weight:g}·") + "CE(f(u + v), y)")
    if kl_weight:
        terms.append(f"{kl_weight:g}·KL(softmax f(u) ‖ softmax f(u + v))")
    return " + ".join(terms) + f" with v = {noise}"
