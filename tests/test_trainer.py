"""NullspaceTrainer: Algorithm 1, Eq. 6, checkpoints and resume, EMA, configuration errors."""

from __future__ import annotations

import copy
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    ViTForImageClassification,
)

import nullspace_hf.trainer as trainer_module
from nullspace_hf import NullspaceConfig, NullspaceTrainer, synthesize_noise
from nullspace_hf.data import TensorRows
from nullspace_hf.noise import redrawn_start

from .helpers import digits_tensors, free_port, make_tiny_model, train_briefly

MODEL = dict(num_labels=10, image_size=16, patch_size=4, initializer_range=0.2)
SHIPPED = Path(__file__).resolve().parents[1] / "nullspace_hf" / "scripts" / "embedded" / "vit-tiny-digits"


@pytest.fixture(scope="module")
def dataset():
    pixels, labels = digits_tensors("train")
    return TensorRows(pixels[:256], labels[:256])


def _config(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path / "out"), max_steps=8, per_device_train_batch_size=16, learning_rate=2e-3,
                  noise_refresh_steps=3, noise_max_steps=40, logging_steps=1, save_strategy="no", report_to="none",
                  seed=0, use_cpu=True, disable_tqdm=True)
    values.update(overrides)
    return NullspaceConfig(**values)


def _trainer(tmp_path, dataset, **overrides):
    return NullspaceTrainer(model=make_tiny_model(**MODEL), args=_config(tmp_path, **overrides), train_dataset=dataset)


class _KillAt(TrainerCallback):
    """Stops training right after the given step (after its checkpoint is written): a simulated kill."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_weights(first, second, atol=1e-6):
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], atol=atol, rtol=0, msg=key)


@pytest.mark.parametrize("mode", ["nullspace", "random"])
def test_rounds_are_logged_weights_change_and_files_are_written(tmp_path, dataset, mode):
    trainer = _trainer(tmp_path, dataset, noise_mode=mode)
    before = _weights(trainer.model)
    trainer.train()
    rounds = [entry for entry in trainer.state.log_history if "noise/norm" in entry]
    assert [entry["step"] for entry in rounds] == [0, 3, 6]
    assert len(trainer.noise_history) == 3
    for entry, record in zip(rounds, trainer.noise_history, strict=True):
        assert entry["noise/norm"] == pytest.approx(record["norm"]) and entry["noise/steps"] == record["steps"]
        assert {"noise/mse_prob", "noise/reached", "noise/start_mse_prob", "noise/forward_steps",
                "noise/budget_hit"} <= entry.keys()
    assert any(not torch.equal(before[k], v) for k, v in _weights(trainer.model).items())
    trainer.save_model()
    out = Path(trainer.args.output_dir)
    noise = load_file(out / "nullspace_noise.safetensors")["noise"]
    torch.testing.assert_close(noise, trainer.noise.cpu())
    assert noise.shape == (16, 32)
    history = json.loads((out / "noise_history.json").read_text())
    assert history["rounds"] == trainer.noise_history and history["noise_mode"] == mode


SCHEDULES = {
    "defaults": {},
    "paper": {"noise_token_lr": 0.0, "noise_warm_start": False, "noise_max_steps": 3000},
    "warm-x1.0": {"noise_warm_start": True, "noise_warm_start_scale": 1.0},
    "warm-x1.1": {"noise_warm_start": True, "noise_warm_start_scale": 1.1},
    "warm-x2": {"noise_warm_start": True, "noise_warm_start_scale": 2.0, "noise_reuse_batches": 2},
    "start-inside-eps": {"noise_init_limit": 1e-3, "noise_warm_start": False},
}


@functools.cache
def _trained_tiny(family):
    """A tiny random ViT/DeiT/Dinov2 (16×16 input, patch 4) trained briefly on digits.

    Untrained, such a model predicts nearly uniformly and no noise of any size moves its softmax by
    ε = 0.03 (the distance saturates below it), so there would be no ε boundary to test.
    """
    pixels, labels = digits_tensors("train", image_size=16)
    return train_briefly(make_tiny_model(family, **MODEL), pixels, labels, steps=100)


def _digits_model(family):
    """The shipped digits ViT (32×32 input), or a briefly trained tiny ViT/DeiT/Dinov2 (16×16 input)."""
    if family == "shipped":
        return ViTForImageClassification.from_pretrained(SHIPPED), 32
    return copy.deepcopy(_trained_tiny(family)), 16


# Every schedule on the shipped digits ViT (the README's model); the default (warm) and the paper's (fresh) schedule
# on each briefly trained tiny family too. A schedule's code path is the same for every family, so the other 12
# pairs repeated paths already taken; each family's own path (its tokens, its layers) runs under both kinds of round.
ROUND_CASES = [("shipped", schedule) for schedule in SCHEDULES] + [
    (family, schedule) for family in ("vit", "deit", "dinov2") for schedule in ("defaults", "paper")]


@pytest.mark.parametrize("family,schedule", ROUND_CASES)
def test_every_round_ends_just_inside_eps(tmp_path, family, schedule):
    """Every round's noise ends with its synthesis-batch mse_prob in [eps/2, eps); a fresh start is entered from
    outside eps, a warm start the model still tolerates is kept (no gradient step)."""
    model, size = _digits_model(family)
    pixels, labels = digits_tensors("train", image_size=size)
    data = TensorRows(pixels[:256], labels[:256])
    args = _config(tmp_path, max_steps=9, **{"noise_max_steps": 200, **SCHEDULES[schedule]})
    trainer = NullspaceTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    assert len(trainer.noise_history) == 3
    for previous, record in zip([None, *trainer.noise_history], trainer.noise_history, strict=False):
        assert 0.015 <= record["mse_prob"] < 0.03 and record["reached"], record
        if previous is not None and args.noise_warm_start and record["start_mse_prob"] < 0.03:
            assert record["steps"] == 0 and record["forward_steps"] >= 1, record
            continue
        assert record["steps"] + record["forward_steps"] > 1, record
        if record["start_mse_prob"] < 0.03:  # a fresh start inside eps is grown out of it (forward passes), searched
            assert record["forward_steps"] >= 2, record
    if schedule == "start-inside-eps":
        assert all(record["start_mse_prob"] < 0.03 / 10 for record in trainer.noise_history)
        start_norm = 1e-3 * (trainer.noise.numel() / 3) ** 0.5  # the norm of U(-1e-3, 1e-3)
        assert all(record["norm"] > 10 * start_norm for record in trainer.noise_history)


@pytest.mark.parametrize("warm_start,scale", [(True, 1.1), (True, 2.0), (False, 1.1)])
def test_each_round_starts_from_its_schedule(tmp_path, dataset, monkeypatch, warm_start, scale):
    """Round 0 starts from U(-A, A) on the fresh budget; later rounds from a fresh draw with scale x the previous
    noise's size per token (seeded by the round, kept when it is inside eps), on the warm budget, with the previous
    noise as the fallback."""
    calls = []

    def recording(model, batches, **kwargs):
        result = synthesize_noise(model, batches, **kwargs)
        calls.append((kwargs, result.noise))
        return result

    monkeypatch.setattr(trainer_module, "synthesize_noise", recording)
    trainer = _trainer(tmp_path, dataset, max_steps=6, noise_warm_start=warm_start, noise_warm_start_scale=scale,
                       noise_init_limit=1.0, noise_lr=0.1, noise_warm_lr=0.02, noise_reuse_batches=3,
                       noise_max_steps=40, noise_warm_max_steps=7)
    trainer.train()
    assert len(calls) == 2
    first, second = calls[0][0], calls[1][0]
    assert first["init"] is None and first["lr"] == 0.1 and first["reuse_batches"] == 3
    assert first["max_steps"] == 40 and not first["keep_inside_start"] and first["band"] == 0.5
    assert (first["token_lr"], first["stop_batches"]) == (0.4, 8)
    assert next(trainer._synthesis_batches(0))["pixel_values"].shape[0] == 8  # noise_batch_size, not the train batch
    if not warm_start:
        assert second["init"] is None and second["max_steps"] == 40 and not second["keep_inside_start"]
        assert second["lr"] == 0.1
        return
    expected = redrawn_start(calls[0][1], 1.0, scale, torch.Generator().manual_seed(2))  # seed + 2 * round 1
    torch.testing.assert_close(second["init"], expected)
    torch.testing.assert_close(second["fallback"], calls[0][1])
    assert second["max_steps"] == 7 and second["keep_inside_start"] and second["lr"] == 0.02


def test_a_used_up_budget_is_logged_as_a_warning(tmp_path, dataset, caplog):
    args = _config(tmp_path, max_steps=3, noise_max_steps=1, noise_init_limit=3.0, noise_lr=1e-6)
    trainer = NullspaceTrainer(model=_digits_model("vit")[0], args=args, train_dataset=dataset)
    with caplog.at_level("WARNING", logger="nullspace_hf.trainer"):
        trainer.train()
    record = trainer.noise_history[0]
    assert record["budget_hit"] and record["steps"] == 1 and record["reached"]
    assert any("Noise round 0" in m and "budget of 1 gradient steps (noise_max_steps)" in m for m in caplog.messages)
    logged = [entry for entry in trainer.state.log_history if "noise/budget_hit" in entry]
    assert logged[0]["noise/budget_hit"] == 1.0 and logged[0]["noise/start_mse_prob"] > 0.03


def test_a_round_far_below_the_previous_norm_is_logged_as_a_warning(tmp_path, dataset, monkeypatch, caplog):
    """A round whose noise ends below NORM_DROP_WARNING x the previous round's norm says so, with its norm and RMS."""
    calls = []

    def shrinking(model, batches, **kwargs):
        result = synthesize_noise(model, batches, **kwargs)
        calls.append(result)
        if len(calls) > 1:  # every round after the first: a tenth of what the search found
            result.noise, result.norm = result.noise / 10, result.norm / 10
        return result

    monkeypatch.setattr(trainer_module, "synthesize_noise", shrinking)
    trainer = NullspaceTrainer(model=_digits_model("vit")[0], args=_config(tmp_path, max_steps=4),
                               train_dataset=dataset)
    with caplog.at_level("WARNING", logger="nullspace_hf.trainer"):
        trainer.train()
    first, second = trainer.noise_history
    drops = [m for m in caplog.messages if "noise norm fell" in m]
    assert second["norm"] < trainer_module.NORM_DROP_WARNING * first["norm"] and len(drops) == 1, caplog.messages
    assert f"{second['norm']:.3g} (RMS {second['rms']:.3g})" in drops[0] and "Noise round 1" in drops[0]


def test_bare_algorithm_1_keeps_a_start_inside_eps(tmp_path, dataset):
    """noise_boundary_band=0 is the bare stop rule: a start inside eps is used as it is (0 steps)."""
    trainer = _trainer(tmp_path, dataset, max_steps=3, noise_init_limit=1e-4, noise_boundary_band=0.0)
    trainer.train()
    record = trainer.noise_history[0]
    assert record["steps"] == 0 and record["mse_prob"] < 0.03 / 100 and record["forward_steps"] == 1


def test_saved_model_loads_without_the_package(tmp_path, dataset):
    trainer = _trainer(tmp_path, dataset, max_steps=2)
    trainer.train()
    trainer.save_model()
    pixels = dataset.pixel_values[:4]
    expected = trainer.model.eval()(pixel_values=pixels).logits
    torch.save(pixels, tmp_path / "pixels.pt")
    code = (
        "import sys, torch\n"
        "from transformers import ViTForImageClassification\n"
        f"model = ViTForImageClassification.from_pretrained({trainer.args.output_dir!r}).eval()\n"
        f"logits = model(pixel_values=torch.load({str(tmp_path / 'pixels.pt')!r})).logits\n"
        f"torch.save(logits, {str(tmp_path / 'logits.pt')!r})\n"
        "assert 'nullspace_hf' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected.detach(), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(noise_mode="nullspace"),
        dict(noise_mode="nullspace", noise_warm_start=True, noisy_forward="concat"),
        dict(noise_mode="random"),
        dict(noise_mode="nullspace", ema_decay=0.9, gradient_accumulation_steps=2, per_device_train_batch_size=8),
    ],
    ids=["nullspace", "warm-concat", "random", "ema-accumulation"],
)
def test_kill_and_resume_gives_the_same_weights_and_noise(tmp_path, dataset, overrides):
    straight = _trainer(tmp_path / "a", dataset, **overrides)
    straight.train()

    first = _trainer(tmp_path / "b", dataset, save_strategy="steps", save_steps=4, **overrides)
    first.add_callback(_KillAt(4))
    first.train()
    checkpoint = Path(first.args.output_dir) / "checkpoint-4"
    assert (checkpoint / "nullspace_noise.safetensors").is_file() and (checkpoint / "noise_history.json").is_file()

    resumed = _trainer(tmp_path / "b", dataset, save_strategy="steps", save_steps=4, **overrides)
    resumed.train(resume_from_checkpoint=str(checkpoint))

    _assert_same_weights(_weights(straight.model), _weights(resumed.model))
    torch.testing.assert_close(straight.noise, resumed.noise, atol=1e-6, rtol=0)
    assert [r["step"] for r in resumed.noise_history] == [r["step"] for r in straight.noise_history]
    if straight.ema is not None:
        _assert_same_weights(straight.ema.shadow, resumed.ema.shadow)


def test_none_mode_is_vanilla_fine_tuning(tmp_path, dataset):
    ours = _trainer(tmp_path / "ours", dataset, noise_mode="none")
    ours.train()
    plain_args = TrainingArguments(output_dir=str(tmp_path / "plain"), max_steps=8, per_device_train_batch_size=16,
                                   learning_rate=2e-3, save_strategy="no", report_to="none", seed=0, use_cpu=True,
                                   disable_tqdm=True)
    plain = Trainer(model=make_tiny_model(**MODEL), args=plain_args, train_dataset=dataset)
    plain.train()
    _assert_same_weights(_weights(ours.model), _weights(plain.model), atol=1e-5)
    assert ours.noise is None and ours.noise_history == []


@pytest.fixture(scope="module")
def sgd_run(tmp_path_factory, dataset):
    """The default 8-step run with plain SGD (eager, noisy_forward="separate"), trained once: the reference that
    the concat forward and torch.compile must reproduce."""
    trainer = _trainer(tmp_path_factory.mktemp("sgd"), dataset, noisy_forward="separate", optim="sgd")
    trainer.train()
    return trainer


def test_concat_and_separate_forward_give_the_same_training(tmp_path, dataset, sgd_run):
    # plain SGD: Adam would blow up the float rounding in the (theoretically zero) key-bias gradients
    separate = sgd_run
    concat = _trainer(tmp_path / "c", dataset, noisy_forward="concat", optim="sgd")
    concat.train()
    _assert_same_weights(_weights(separate.model), _weights(concat.model), atol=1e-5)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_trains_like_eager_mode(tmp_path, dataset, sgd_run, backend):
    """``torch_compile`` (TrainingArguments) keeps the noise hook working: same noise, same weights."""
    eager = sgd_run
    compiled = _trainer(tmp_path / "c", dataset, optim="sgd", torch_compile=True, torch_compile_backend=backend)
    compiled.train()
    assert isinstance(compiled.model_wrapped, torch._dynamo.eval_frame.OptimizedModule)
    assert [r["steps"] for r in compiled.noise_history] == [r["steps"] for r in eager.noise_history]
    _assert_same_weights(_weights(eager.model), _weights(compiled.model), atol=1e-5)


def test_gradient_accumulation_matches_the_full_batch(tmp_path, dataset):
    # the bare rule with no gradient step keeps the seeded starts, so both runs use the same noise
    full = _trainer(tmp_path / "full", dataset, noise_max_steps=0, noise_warm_max_steps=0, noise_boundary_band=0.0,
                    per_device_train_batch_size=16, max_steps=4, optim="sgd")
    full.train()
    accumulated = _trainer(tmp_path / "acc", dataset, noise_max_steps=0, noise_warm_max_steps=0,
                           noise_boundary_band=0.0, per_device_train_batch_size=8, gradient_accumulation_steps=2,
                           max_steps=4, optim="sgd")
    accumulated.train()
    torch.testing.assert_close(full.noise, accumulated.noise)
    _assert_same_weights(_weights(full.model), _weights(accumulated.model), atol=1e-5)


def test_loss_is_clean_plus_weighted_noisy_cross_entropy(tmp_path, dataset):
    trainer = _trainer(tmp_path, dataset, noisy_loss_weight=0.5)
    model = trainer.model.train()
    trainer.noise = torch.randn(16, 32)
    inputs = {"pixel_values": dataset.pixel_values[:8], "labels": dataset.labels[:8]}
    loss = trainer.compute_loss(model, inputs)
    clean = torch.nn.functional.cross_entropy(model(pixel_values=inputs["pixel_values"]).logits, inputs["labels"])
    with trainer.injector.applied(trainer.noise):
        noisy = torch.nn.functional.cross_entropy(model(pixel_values=inputs["pixel_values"]).logits, inputs["labels"])
    torch.testing.assert_close(loss, clean + 0.5 * noisy)
    model.eval()
    torch.testing.assert_close(trainer.compute_loss(model, inputs), clean, msg="evaluation sees the clean loss only")


def test_bf16_autocast_on_cpu(tmp_path, dataset):
    trainer = _trainer(tmp_path, dataset, bf16=True, max_steps=4)
    trainer.train()
    assert trainer.noise.dtype == torch.float32
    assert len(trainer.noise_history) == 2
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


def test_ema_weights_are_evaluated_and_saved(tmp_path, dataset):
    trainer = _trainer(tmp_path, dataset, ema_decay=0.5, max_steps=4)
    trainer.train()
    raw = _weights(trainer.model)
    trainer.save_model()
    saved = ViTForImageClassification.from_pretrained(trainer.args.output_dir)
    for name, tensor in trainer.ema.shadow.items():
        torch.testing.assert_close(saved.state_dict()[name], tensor)
    assert any(not torch.equal(raw[k], v) for k, v in trainer.ema.shadow.items())
    _assert_same_weights(raw, _weights(trainer.model), atol=0)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(noise_eps=0.0), "noise_eps must be > 0"),
        (dict(noise_eps=-1.0), "noise_eps must be > 0"),
        (dict(noise_refresh_steps=0), "noise_refresh_steps must be > 0"),
        (dict(noise_mode="adversarial"), "noise_mode='adversarial' is not one of nullspace, random, none"),
        (dict(noise_loss="l1"), "noise_loss='l1' is not one of"),
        (dict(ema_decay=1.5), "ema_decay must be in"),
        (dict(noise_warm_start_scale=0.0), "noise_warm_start_scale must be > 0"),
        (dict(noisy_forward="both"), "noisy_forward='both' is not one of"),
        (dict(noise_reuse_batches=-2), "noise_reuse_batches must be >= 0"),
    ],
)
def test_invalid_config_values_fail_at_construction(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, **overrides)


def test_model_without_patch_embedding_fails_at_construction(tmp_path, dataset):
    text_model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                          num_attention_heads=2, intermediate_size=32))
    with pytest.raises(ValueError, match="BertForSequenceClassification has no patch embedding"):
        NullspaceTrainer(model=text_model, args=_config(tmp_path), train_dataset=dataset)


def test_plain_training_arguments_are_refused(tmp_path, dataset):
    with pytest.raises(ValueError, match="needs a NullspaceConfig"):
        NullspaceTrainer(model=make_tiny_model(**MODEL), args=TrainingArguments(output_dir=str(tmp_path)),
                         train_dataset=dataset)


@pytest.mark.slow
def test_two_processes_end_with_identical_noise(tmp_path):
    script = Path(__file__).parent / "scripts" / "two_rank_training.py"
    # accelerate 1.15 runs `--cpu --num_processes 2` as ONE process (its simple launcher); `--multi_gpu` on a
    # machine without GPUs starts two torchrun workers on the CPU with the gloo backend.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), str(script), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert len(ranks[0]["history"]) == 2
    assert ranks[0]["history"] == ranks[1]["history"]
    assert torch.equal(ranks[0]["noise"], ranks[1]["noise"])
    assert any(record["steps"] > 0 for record in ranks[0]["history"]), "the ranks should have synthesised together"
    _assert_same_weights(ranks[0]["weights"], ranks[1]["weights"], atol=0)
