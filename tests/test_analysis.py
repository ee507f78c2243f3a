"""Fig. 3/4/5 measurements (nullspace_hf.analysis) on the shipped digits ViT and tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import ViTForImageClassification

from nullspace_hf import NullspaceConfig, NullspaceTrainer, noise_influence
from nullspace_hf.analysis import (
    combination_grid,
    noise_set,
    permute_noise,
    regularization_sweep,
    scaling_curve,
)
from nullspace_hf.callbacks import RoundMetricsCallback
from nullspace_hf.data import TensorRows

from .helpers import digits_tensors, make_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

CHECKPOINT = Path(__file__).resolve().parent.parent / "nullspace_hf" / "scripts" / "embedded" / "vit-tiny-digits"


@pytest.fixture(scope="module")
def digits_model():
    """The shipped 32×32 digits ViT (96.7% accuracy, nullity 128) with train batches and test batches."""
    model = ViTForImageClassification.from_pretrained(CHECKPOINT).eval()
    pixels, _ = digits_tensors("train", image_size=32)
    test_pixels, _ = digits_tensors("test", image_size=32)
    return model, list(pixels[:256].split(64)), list(test_pixels[:128].split(64))


def test_permutation_keeps_values_and_norm_but_not_order():
    noise = torch.randn(16, 32)
    permuted = permute_noise(noise, torch.Generator().manual_seed(0))
    assert permuted.shape == noise.shape
    torch.testing.assert_close(permuted.flatten().sort().values, noise.flatten().sort().values)
    assert not torch.equal(permuted, noise)


def test_regularization_sweep_reproduces_fig3_trend(digits_model):
    """A stronger −λ·log‖v‖ term gives a larger noise; its permutation hurts predictions far more."""
    model, batches, held_out = digits_model
    records = regularization_sweep(model, batches, held_out, [0.0, 10.0], steps=60)
    assert [r["strength"] for r in records] == [0.0, 10.0]
    assert records[1]["norm"] > records[0]["norm"] + 1.0
    for record in records:
        assert record["permuted_mse_prob"] > 3 * record["learned_mse_prob"], record
        assert record["learned_match_rate"] >= record["permuted_match_rate"]
        assert 0.0 <= record["learned_match_rate"] <= 1.0


def test_noise_set_gives_distinct_noises_inside_eps(digits_model):
    model, batches, held_out = digits_model
    results = noise_set(model, batches, 3, eps=0.05, max_steps=400)
    assert all(result.reached and result.mse_prob < 0.05 for result in results)
    assert not torch.allclose(results[0].noise, results[1].noise)


def test_scaling_and_combination_agree_with_direct_measurement(digits_model):
    model, _, held_out = digits_model
    generator = torch.Generator().manual_seed(0)
    first, second = torch.randn(16, 64, generator=generator), torch.randn(16, 64, generator=generator)
    alphas = [0.0, 0.5, 1.0]
    curve = scaling_curve(model, held_out, [first, second], alphas)
    assert curve[0] == 0.0
    expected = [(noise_influence(model, held_out, a * first)["mse_prob"]
                 + noise_influence(model, held_out, a * second)["mse_prob"]) / 2 for a in alphas]
    assert curve == pytest.approx(expected)
    grid = combination_grid(model, held_out, [(first, second)], alphas)
    assert grid.shape == (3, 3) and grid[0, 0] == 0.0
    assert grid[2, 0].item() == pytest.approx(noise_influence(model, held_out, first)["mse_prob"], rel=1e-5)
    swapped = combination_grid(model, held_out, [(second, first)], alphas)
    torch.testing.assert_close(swapped, grid.T)


def test_round_metrics_callback_records_every_round(tmp_path):
    pixels, labels = digits_tensors("train", image_size=32)
    calls = []

    def measure(model):
        calls.append(model.training)
        return {"clean": 50.0 + len(calls)}

    tracker = RoundMetricsCallback(measure, refresh_steps=2)
    args = NullspaceConfig(output_dir=str(tmp_path), max_steps=5, per_device_train_batch_size=16,
                           noise_refresh_steps=2, noise_max_steps=10, report_to="none", save_strategy="no",
                           disable_tqdm=True)
    trainer = NullspaceTrainer(model=make_tiny_model(num_labels=10), args=args,
                               train_dataset=TensorRows(pixels[:64], labels[:64]), callbacks=[tracker])
    trainer.train()
    assert [r["step"] for r in tracker.records] == [0, 2, 4, 5]
    assert [r["round"] for r in trainer.noise_history] == [0, 1, 2]
    assert tracker.records[-1]["clean"] == 54.0
    assert tracker.seconds > 0


def test_round_metrics_callback_rejects_bad_interval():
    with pytest.raises(ValueError, match="must be >= 1"):
        RoundMetricsCallback(lambda model: {}, refresh_steps=0)
