"""Issue 26's variants of Eq. 6: α·ṽ beyond the boundary, the KL invariance term, a bank of noises, random scales."""

from __future__ import annotations

import math

import pytest
import torch

from nullspace_hf import NullspaceConfig, NullspaceTrainer
from nullspace_hf.checkpoint import NoiseState, load_noise_state, save_noise_state
from nullspace_hf.data import TensorRows
from nullspace_hf.errors import NullspaceError
from nullspace_hf.modeling import patch_embedding
from nullspace_hf.objectives import NoiseBank, consistency_kl, training_noise
from nullspace_hf.trainer import LOSS_TERM

from .helpers import digits_tensors, make_tiny_model

MODEL = dict(num_labels=10, image_size=16, patch_size=4, initializer_range=0.2)
VARIANTS = {
    "alpha-4": dict(noise_train_scale=4.0),
    "kl": dict(noisy_loss="kl"),
    "ce+kl-alpha-2": dict(noisy_loss="ce+kl", noise_train_scale=2.0, noisy_kl_weight=1.0),
    "bank-3": dict(noise_bank_size=3),
    "random-scale-alpha-8": dict(noise_random_scale=True, noise_train_scale=8.0),
}


@pytest.fixture(scope="module")
def dataset():
    pixels, labels = digits_tensors("train")
    return TensorRows(pixels[:128], labels[:128])


def _trainer(tmp_path, dataset, **overrides):
    values = dict(output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=16, learning_rate=2e-3,
                  noise_refresh_steps=2, noise_max_steps=40, save_strategy="no", report_to="none", seed=0,
                  use_cpu=True, disable_tqdm=True, logging_steps=1)
    return NullspaceTrainer(model=make_tiny_model(**MODEL), args=NullspaceConfig(**{**values, **overrides}),
                            train_dataset=dataset)


@pytest.mark.parametrize("mode", ["nullspace", "random"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_trains_two_rounds(tmp_path, dataset, variant, mode):
    """Each variant (and its random-noise control) runs Algorithm 1 for two rounds: two noises, finite losses that
    differ from the clean loss alone, and a bank that keeps up to K - 1 earlier rounds' noises."""
    settings = VARIANTS[variant]
    trainer = _trainer(tmp_path, dataset, noise_mode=mode, **settings)
    trainer.train()
    assert [record["round"] for record in trainer.noise_history] == [0, 1]
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses)
    assert len(trainer.noise_bank) == min(settings.get("noise_bank_size", 1) - 1, 1)
    if len(trainer.noise_bank):
        kept_norm = float(trainer.noise_bank.noises[0].norm())
        assert kept_norm == pytest.approx(trainer.noise_history[0]["norm"], rel=1e-5)  # round 0's noise
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    with torch.no_grad():
        clean = trainer.compute_loss(trainer.model, {**batch, LOSS_TERM: "clean"})
        both = trainer.compute_loss(trainer.model, batch)
    assert float(both) > float(clean)  # the noisy term (CE > 0, or KL > 0 for a non-zero noise) is there


def _patch_tokens(trainer, inputs, term):
    """The patch-embedding output as the model sees it (after the injector's hook) in one training loss call."""
    seen = []
    site = patch_embedding(trainer.model).module
    handle = site.register_forward_hook(lambda module, args, output: seen.append(output.detach().clone()))
    try:
        with torch.no_grad():
            trainer.compute_loss(trainer.model, {**inputs, LOSS_TERM: term} if term else inputs)
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("noisy_forward", ["separate", "concat"])
def test_alpha_times_the_noise_reaches_the_patch_embedding_output(tmp_path, dataset, noisy_forward):
    """With noise_train_scale α the noisy forward adds exactly α·ṽ to every sample's patch tokens (same float32
    values added once, so the difference matches to rounding: 1e-5 relative), the clean forward nothing."""
    trainer = _trainer(tmp_path, dataset, noise_train_scale=4.0, noisy_forward=noisy_forward)
    noise = torch.randn(16, trainer.model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    trainer.noise = noise
    trainer.model.train()
    pixels, labels = digits_tensors("train")
    inputs = {"pixel_values": pixels[:4], "labels": labels[:4]}
    clean = _patch_tokens(trainer, inputs, "clean")[0]
    if noisy_forward == "concat":
        doubled = _patch_tokens(trainer, inputs, None)[0]
        torch.testing.assert_close(doubled[:4], clean, rtol=1e-5, atol=1e-5)
        noisy = doubled[4:]
    else:
        noisy = _patch_tokens(trainer, inputs, "noisy")[0]
    torch.testing.assert_close(noisy - clean, (4.0 * noise).expand(4, -1, -1), rtol=1e-5, atol=1e-4)


def test_the_kl_term_is_zero_when_the_noise_is_zero_and_positive_otherwise(tmp_path, dataset):
    """KL(p ‖ p) is 0 (log-probabilities subtracted from themselves); with a zero noise the 'kl' loss is the clean
    CE (the noisy forward recomputes the same logits: equal up to kernel rounding, 1e-6), with a real noise it is
    larger."""
    logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(0))
    assert float(consistency_kl(logits, logits)) == 0.0
    assert float(consistency_kl(logits, logits.flip(0))) > 0
    trainer = _trainer(tmp_path, dataset, noisy_loss="kl")
    trainer.model.train()
    pixels, labels = digits_tensors("train")
    inputs = {"pixel_values": pixels[:8], "labels": labels[:8]}
    trainer.noise = torch.zeros(16, trainer.model.config.hidden_size)
    with torch.no_grad():
        clean = float(trainer.compute_loss(trainer.model, {**inputs, LOSS_TERM: "clean"}))
        with_zero = float(trainer.compute_loss(trainer.model, inputs))
        trainer.noise = 3 * torch.randn(trainer.noise.shape, generator=torch.Generator().manual_seed(0))
        with_noise = float(trainer.compute_loss(trainer.model, inputs))
    assert with_zero == pytest.approx(clean, abs=1e-6)
    assert with_noise > clean + 1e-3


def test_the_bank_draws_one_kept_noise_per_sample():
    """Every sample gets one whole noise of the K (the current one and the K - 1 kept), all of them occur in a batch
    of 64, the oldest beyond K - 1 kept is dropped, and the same generator seed gives the same draw."""
    bank = NoiseBank(2)
    for value in (0.0, 1.0, 2.0):
        bank.add(torch.full((4, 5), value))
    assert len(bank) == 2
    current = torch.full((4, 5), 3.0)
    drawn = training_noise(current, bank, 64, generator=torch.Generator().manual_seed(0))
    assert drawn.shape == (64, 4, 5)
    per_sample = drawn[:, 0, 0]
    assert set(per_sample.tolist()) == {1.0, 2.0, 3.0}
    assert (drawn == per_sample.reshape(-1, 1, 1)).all()  # each sample's noise is one whole noise
    again = training_noise(current, bank, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(drawn, again)


def test_random_scales_are_drawn_per_sample_in_zero_to_alpha():
    drawn = training_noise(torch.ones(4, 5), None, 256, scale=2.0, random_scale=True,
                           generator=torch.Generator().manual_seed(0))
    factors = drawn[:, 0, 0]
    assert (drawn == factors.reshape(-1, 1, 1)).all()
    assert 0 <= float(factors.min()) and float(factors.max()) < 2.0
    assert float(factors.std()) > 0.4  # U(0, 2) has sd 0.58; a constant factor has 0


def test_without_a_variant_the_noisy_branch_adds_the_rounds_noise_itself():
    noise = torch.randn(4, 5)
    assert torch.equal(training_noise(noise, NoiseBank(0), 16), noise)
    assert torch.equal(training_noise(noise, None, 16, scale=4.0), 4.0 * noise)


def test_the_bank_is_saved_and_restored_with_the_noise(tmp_path, dataset):
    """A checkpoint of a bank-K run holds the K - 1 kept noises; resuming restores them in order."""
    trainer = _trainer(tmp_path, dataset, noise_bank_size=3, max_steps=6)
    trainer.train()
    kept = trainer.noise_bank.noises.clone()
    assert kept.shape[0] == 2
    save_noise_state(str(tmp_path / "ckpt"), NoiseState(trainer._noise_round, trainer.noise,
                                                        trainer.noise_history, None, kept), "nullspace")
    state = load_noise_state(str(tmp_path / "ckpt"), "nullspace", with_ema=False)
    assert torch.equal(state.bank, kept)
    trainer._save_extra_state(str(tmp_path / "extra"), checkpoint=True)
    trainer.noise_bank = NoiseBank(2)
    trainer._load_noise_state(str(tmp_path / "extra"))
    assert torch.equal(trainer.noise_bank.noises, kept)
    assert [float(n.norm()) for n in kept] == pytest.approx([r["norm"] for r in trainer.noise_history[:2]],
                                                            rel=1e-5)  # rounds 0 and 1, beside round 2's noise


@pytest.mark.parametrize("setting, value, phrase", [
    ("noise_train_scale", 0.0, "noise_train_scale must be > 0"),
    ("noisy_loss", "mse", "noisy_loss='mse' is not one of ce, kl, ce+kl"),
    ("noisy_kl_weight", -1.0, "noisy_kl_weight must be >= 0"),
    ("noise_bank_size", 0, "noise_bank_size must be >= 1"),
])
def test_bad_variant_settings_are_refused_with_what_to_fix(tmp_path, setting, value, phrase):
    with pytest.raises(NullspaceError, match=phrase.replace("+", r"\+")):
        NullspaceConfig(output_dir=str(tmp_path), **{setting: value})


def test_the_model_card_names_the_variant(tmp_path, dataset):
    variant = _trainer(tmp_path, dataset, noise_train_scale=4.0, noisy_loss="kl").model_card().content
    assert "6·KL(softmax f(u) ‖ softmax f(u + v)) with v = 4·ṽ" in variant
    assert "a variant of the paper's Eq. 6" in variant
    assert "as much as the same variant with random noise" in variant  # what issue 26's study measured
    paper = _trainer(tmp_path / "paper", dataset).model_card().content
    assert "CE(f(u), y) + CE(f(u + v), y) with v = ṽ" in paper and "variant of the paper" not in paper
