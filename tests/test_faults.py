"""Bad input and faults: one clear error before any work, nothing lost, nothing leaked, no NaN model saved.

One test per case of issue 15, through the recipe (``recipes/finetune.py``) and the Python API where both apply.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from nullspace_hf import NullspaceConfig, NullspaceTrainer
from nullspace_hf.checkpoint import HISTORY_FILE, NOISE_FILE
from nullspace_hf.data import ImageClassificationTransform, TensorRows, collate_image_classification, digits_dataset
from nullspace_hf.processes import launched_without_accelerator

from .helpers import RECIPE, digits_tensors, hub_env, make_tiny_model, recipe_args, run_recipe
from .hub_server import LoopbackHub

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
MODEL = dict(num_labels=10, image_size=16, patch_size=4, initializer_range=0.2)


@pytest.fixture(scope="module")
def rows():
    pixels, labels = digits_tensors("train")
    return TensorRows(pixels[:64], labels[:64])


def _config(output_dir: Path, **overrides) -> NullspaceConfig:
    values = dict(output_dir=str(output_dir), max_steps=4, per_device_train_batch_size=16, learning_rate=2e-3,
                  noise_refresh_steps=2, noise_max_steps=20, save_strategy="no", report_to="none", seed=0,
                  use_cpu=True, disable_tqdm=True)
    return NullspaceConfig(**{**values, **overrides})


def _trainer(output_dir: Path, dataset, model=None, **overrides) -> NullspaceTrainer:
    return NullspaceTrainer(model=model or make_tiny_model(**MODEL), args=_config(output_dir, **overrides),
                            train_dataset=dataset)


def _one_line_error(recipe, argv: list[str], capsys) -> str:
    """Run the recipe in-process; it must exit 2 with exactly one error line and no traceback."""
    assert recipe.cli(argv) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in captured.err, captured.err[-2000:]
    return errors[0] + "\n" + captured.out


def _no_work_done(output: Path) -> bool:
    """Nothing of the run was produced: no evaluation (its corruption cache), no model."""
    return not (output / "corruption_cache").exists() and not (output / "model.safetensors").exists()


# ---- the documented two-process CPU commands are real two-rank runs ----

def test_processes_launched_together_without_an_accelerator_run_on_the_cpu(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launched_without_accelerator() is (not torch.accelerator.is_available())
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert launched_without_accelerator() is False


@pytest.mark.slow
@pytest.mark.parametrize("launch", [["--config_file", str(ROOT / "recipes" / "accelerate_configs" / "cpu_2proc.yaml")]],
                         ids=["cpu_2proc-config"])
def test_documented_two_process_cpu_command_gives_world_size_2(small_data, tmp_path, launch):
    """The documented `--multi_gpu --num_processes 2` flags are launched (and their two ranks checked) by
    test_run_safety.py::test_a_sigterm_to_accelerate_launch_reaches_the_workers[two-processes]."""
    from .helpers import free_port

    output = tmp_path / "out"
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch, "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               str(RECIPE), *recipe_args(small_data, output, "--eval_attacks", "none", "--eval_corruptions", "none")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600,
                            env={**hub_env("http://127.0.0.1:9", tmp_path), "HF_HUB_OFFLINE": "1",
                                 "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Process 0 of 2" in result.stdout and "Process 1 of 2" in result.stdout, result.stdout[-2000:]
    assert result.stdout.count("Process 0 of 1") == 0
    assert (output / "model.safetensors").is_file()


# ---- non-finite noise, loss or weights stop training; no NaN model is saved ----

@pytest.mark.parametrize("setting", [{"noise_init_limit": 1e30}, {"noise_lr": 1e30, "noise_eps": 1e-6}],
                         ids=["init_limit", "noise_lr"])  # a tiny eps: the search takes gradient steps
def test_a_non_finite_noise_stops_training_and_saves_nothing(tmp_path, rows, setting):
    trainer = _trainer(tmp_path / "out", rows, **setting)
    with pytest.raises(ValueError, match=r"Noise round 0 .*not finite.*lower noise_init_limit"):
        trainer.train()
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_a_non_finite_noise_is_one_line_in_the_recipe(recipe, small_data, tmp_path, capsys):
    output = tmp_path / "out"
    text = _one_line_error(recipe, recipe_args(small_data, output, "--noise_init_limit", "1e30"), capsys)
    assert "not finite" in text and not (output / "model.safetensors").exists()


def test_a_diverging_loss_stops_training_and_no_checkpoint_holds_a_nan(tmp_path, rows):
    trainer = _trainer(tmp_path / "out", rows, learning_rate=1e30, save_strategy="steps", save_steps=1, max_steps=6)
    with pytest.raises(ValueError, match=r"(Step \d+ .*loss is (nan|inf)|weight tensors of the model .* hold nan)"):
        trainer.train()
    assert trainer.state.global_step < 6 and not (tmp_path / "out" / "model.safetensors").exists()
    for checkpoint in (tmp_path / "out").glob("checkpoint-*"):
        assert all(torch.isfinite(t).all() for t in load_file(checkpoint / "model.safetensors").values())


def test_resuming_a_checkpoint_with_a_blown_up_noise_fails_before_any_step(recipe, small_data, tmp_path, rows,
                                                                           capsys):
    first = _trainer(tmp_path / "a", rows, save_strategy="steps", save_steps=3, max_steps=3)
    first.train()
    checkpoint = tmp_path / "a" / "checkpoint-3"
    noise = load_file(checkpoint / NOISE_FILE)["noise"]
    save_file({"noise": noise * 1e6}, checkpoint / NOISE_FILE)
    resumed = _trainer(tmp_path / "b", rows, max_steps=6)
    with pytest.raises(ValueError, match="does not hold the noise of round 1 that noise_history.json recorded"):
        resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 0
    output = tmp_path / "recipe"
    text = _one_line_error(recipe, recipe_args(small_data, output, "--resume_from_checkpoint", str(checkpoint)),
                           capsys)
    assert "does not hold the noise" in text and _no_work_done(output)


def test_a_model_with_non_finite_weights_is_never_saved(tmp_path, rows):
    trainer = _trainer(tmp_path / "out", rows)
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match=r"weight tensors of the model to save .* hold nan or inf"):
        trainer.save_model()
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_evaluating_a_model_with_non_finite_weights_is_one_clear_error(tmp_path):
    from nullspace_hf.cli import main as nullspace_hf

    model = make_tiny_model(num_labels=10, image_size=16, patch_size=4)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    model.save_pretrained(tmp_path / "nan-model")
    from transformers import ViTImageProcessor

    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(tmp_path / "nan-model")
    assert nullspace_hf(["evaluate", str(tmp_path / "nan-model"), "--dataset", "digits", "--max_samples", "8",
                         "--attacks", "none", "--corruptions", "none", "--no_progress"]) == 2


# ---- the Hub token is never written to disk, so never uploaded ----

def test_training_args_bin_holds_no_token(tmp_path, rows):
    trainer = _trainer(tmp_path / "out", rows, hub_token="hf_SECRET_token_123", max_steps=2)
    trainer.train()
    trainer.save_model()
    saved = (tmp_path / "out" / "training_args.bin").read_bytes()
    assert b"hf_SECRET_token_123" not in saved
    assert torch.load(tmp_path / "out" / "training_args.bin", weights_only=False).hub_token is None
    assert trainer.args.hub_token == "hf_SECRET_token_123"  # the live arguments keep it for push_to_hub


# A recipe push with --hub_token (training_args.bin pushed, no file holding the token): one launch checks it,
# test_run_safety.py::test_no_file_of_the_recipe_holds_the_token_locally_or_pushed.


# ---- an earlier run in output_dir is never overwritten silently ----

def _earlier_run(output: Path) -> dict[str, bytes]:
    output.mkdir(parents=True)
    (output / "checkpoint-200").mkdir()
    (output / "results.json").write_text('{"after": {}}')
    (output / "model.safetensors").write_bytes(b"earlier weights")
    return {p.name: p.read_bytes() for p in output.iterdir() if p.is_file()}


def test_the_recipe_refuses_an_output_dir_holding_an_earlier_run(recipe, small_data, tmp_path, capsys):
    output = tmp_path / "out"
    before = _earlier_run(output)
    text = _one_line_error(recipe, recipe_args(small_data, output), capsys)
    assert "already holds a run" in text and "--overwrite_output_dir" in text
    assert {p.name: p.read_bytes() for p in output.iterdir() if p.is_file()} == before
    assert (output / "checkpoint-200").is_dir() and not (output / "corruption_cache").exists()
    assert recipe.cli(recipe_args(small_data, output, "--overwrite_output_dir", "true")) == 0
    assert (output / "model.safetensors").read_bytes() != b"earlier weights"


def test_the_api_refuses_an_output_dir_holding_an_earlier_run(tmp_path, rows):
    _earlier_run(tmp_path / "out")
    with pytest.raises(ValueError, match="already holds a run .*checkpoint-200"):
        _trainer(tmp_path / "out", rows).train()
    assert (tmp_path / "out" / "checkpoint-200").is_dir()
    _trainer(tmp_path / "out", rows, overwrite_output_dir=True, max_steps=2).train()


def test_running_the_embedded_default_twice_keeps_the_first_run(recipe, tmp_path, capsys, monkeypatch):
    """The second run of the README's main command refuses instead of deleting the first one's results."""
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "outputs" / "vit-tiny-digits-nullspace"
    before = _earlier_run(output)
    text = _one_line_error(recipe, [], capsys)
    assert "already holds a run" in text and "embedded default" in text
    assert {p.name: p.read_bytes() for p in output.iterdir() if p.is_file()} == before


# ---- the printed retry command pushes the output directory ----

@pytest.mark.slow
def test_the_printed_retry_command_pushes_against_the_loopback_hub(small_data, tmp_path):
    """A refused push leaves output_dir complete, with one clear error line; its printed command retries."""
    output = tmp_path / "out"
    with LoopbackHub() as hub:
        hub.state.fail = True
        result = run_recipe(recipe_args(small_data, output, "--push_to_hub", "true", "--hub_model_id", "user/retry",
                                        "--save_strategy", "steps", "--save_steps", "2"), hub.endpoint, tmp_path)
        assert result.returncode == 2
        errors = [line for line in result.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert "Could not push" in errors[0] and "hf upload user/retry" in errors[0]
        for name in ("model.safetensors", "config.json", "README.md", "results.json", NOISE_FILE, HISTORY_FILE,
                     "noise_dynamics.png"):
            assert (output / name).is_file(), name
        command = result.stderr.split("retry with: ", 1)[1].strip()
        hub.state.fail = False
        words = shlex.split(command)
        assert words[0] == "hf"
        hf = Path(sys.executable).with_name("hf")
        retried = subprocess.run([str(hf), *words[1:]], capture_output=True, text=True, cwd=tmp_path,
                                 env=hub_env(hub.endpoint, tmp_path / "hf_home"), timeout=300)
        assert retried.returncode == 0, retried.stderr[-3000:]
        pushed = set(hub.state.repos["user/retry"]["files"])
    assert {"model.safetensors", "README.md", "results.json", NOISE_FILE} <= pushed
    assert not any(name.startswith(("checkpoint-", "corruption_cache")) for name in pushed)


# ---- bad images and labels are named before any work ----

def _image_folder(root: Path, broken: str) -> Path:
    """An image folder of digits (two classes) with one broken file: random bytes or a truncated PNG."""
    data = digits_dataset()["train"]
    for index in range(24):
        folder = root / f"class{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        data[index]["image"].resize((32, 32)).save(folder / f"{index}.png")
    bad = root / "class1" / "broken.png"
    if broken == "garbage":
        bad.write_bytes(b"this is not an image" * 20)
    else:
        good = (root / "class1" / "1.png").read_bytes()
        bad.write_bytes(good[: len(good) // 2])
    return bad


def test_a_corrupt_image_is_named_before_any_work(recipe, small_data, tmp_path, capsys):
    bad = _image_folder(tmp_path / "images", "garbage")
    output = tmp_path / "out"
    argv = recipe_args(small_data, output, "--eval_split", "train")
    index = argv.index("--data_files")
    argv[index : index + 2] = ["--train_dir", str(tmp_path / "images")]
    text = _one_line_error(recipe, argv, capsys)
    assert str(bad) in text and "cannot be read" in text
    assert _no_work_done(output)


def test_a_truncated_image_is_named_when_it_is_decoded(tmp_path):
    bad = _image_folder(tmp_path / "images", "truncated")
    from transformers import ViTImageProcessor

    transform = ImageClassificationTransform(ViTImageProcessor(size={"height": 16, "width": 16}))
    with pytest.raises(ValueError, match=f"Image {bad} cannot be decoded"):
        transform({"image": [{"path": str(bad), "bytes": None}], "label": [1]})


def _labelled(labels: list[int]) -> Dataset:
    images = [PILImage.new("RGB", (16, 16), color=(i * 20 % 255, 0, 0)) for i in range(len(labels))]
    return Dataset.from_dict({"image": images, "label": labels},
                             features=Features({"image": Image(), "label": Value("int64")}))


@pytest.mark.parametrize("bad_label", [-1, 10])
def test_a_label_out_of_range_is_one_error_before_any_work_in_the_recipe(recipe, small_data, tmp_path, capsys,
                                                                         bad_label):
    train = Dataset.from_parquet(str(small_data / "train.parquet"))
    classes = train.features["label"]  # ten class names: a 10 is outside them, a -1 marks no label
    train = train.cast_column("label", Value("int64"))
    train = train.map(lambda row, i: {"label": bad_label if i == 5 else row["label"]}, with_indices=True)
    train.cast_column("label", classes).to_parquet(str(tmp_path / "train.parquet"))
    output = tmp_path / "out"
    argv = recipe_args(small_data, output)
    argv[argv.index("--data_files") + 1] = json.dumps({"train": str(tmp_path / "train.parquet"),
                                                        "test": str(small_data / "test.parquet")})
    text = _one_line_error(recipe, argv, capsys)
    assert "labels outside" in text and f"row 5: {bad_label}" in text
    assert _no_work_done(output)


@pytest.mark.parametrize("bad_label", [-1, 10])
def test_a_label_out_of_range_is_one_error_before_any_step_in_the_api(tmp_path, bad_label):
    from transformers import ViTImageProcessor

    labels = [i % 10 for i in range(32)]
    labels[7] = bad_label
    dataset = _labelled(labels).with_transform(
        ImageClassificationTransform(ViTImageProcessor(size={"height": 16, "width": 16})))
    trainer = NullspaceTrainer(model=make_tiny_model(**MODEL),
                               args=_config(tmp_path / "out", remove_unused_columns=False),
                               train_dataset=dataset, data_collator=collate_image_classification)
    with pytest.raises(ValueError, match=rf"labels outside 0..9 \(row 7: {bad_label}"):
        trainer.train()
    assert trainer.state.global_step == 0 and not trainer.noise_history


def test_a_label_out_of_range_in_a_torch_dataset_is_a_clear_error(tmp_path, rows):
    pixels, labels = rows.pixel_values.clone(), rows.labels.clone()
    labels[3] = 10
    with pytest.raises(ValueError, match="A training label is outside 0..9"):
        _trainer(tmp_path / "out", TensorRows(pixels, labels), noise_mode="none").train()


# ---- resume validates the checkpoint before any work ----

@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory, rows) -> Path:
    """A complete checkpoint-3 of a 3-step run, trained once for the module."""
    output = tmp_path_factory.mktemp("run") / "run"
    _trainer(output, rows, save_strategy="steps", save_steps=3, max_steps=3).train()
    return output / "checkpoint-3"


@pytest.fixture
def checkpoint(tmp_path, trained_checkpoint) -> Path:
    """A fresh copy of the trained checkpoint-3 (in ``tmp_path/run``) for a test to break."""
    copy = tmp_path / "run" / "checkpoint-3"
    shutil.copytree(trained_checkpoint, copy)
    return copy


@pytest.mark.parametrize("resume, message", [("/nonexistent/checkpoint-3", "is not a directory"),
                                             ("true", "holds no checkpoint-\\* folder")], ids=["wrong-path", "none"])
def test_resume_from_a_missing_checkpoint_fails_before_any_work(recipe, small_data, tmp_path, rows, capsys, resume,
                                                                 message):
    output = tmp_path / "out"
    text = _one_line_error(recipe, recipe_args(small_data, output, "--resume_from_checkpoint", resume), capsys)
    assert "resume_from_checkpoint" in text and _no_work_done(output)
    with pytest.raises(ValueError, match=message):
        _trainer(tmp_path / "api", rows).train(resume_from_checkpoint=True if resume == "true" else resume)


def _break(checkpoint: Path, how: str) -> Path:
    if how == "no-noise-file":
        (checkpoint / NOISE_FILE).unlink()
        return checkpoint
    if how == "garbage-noise":
        (checkpoint / NOISE_FILE).write_bytes(b"\x00garbage" * 10)
        return checkpoint / NOISE_FILE
    if how == "wrong-key":
        save_file({"something": torch.zeros(3)}, checkpoint / NOISE_FILE)
        return checkpoint / NOISE_FILE
    if how == "nan-noise":
        save_file({"noise": torch.full((16, 32), float("nan"))}, checkpoint / NOISE_FILE)
        return checkpoint / NOISE_FILE
    (checkpoint / HISTORY_FILE).write_text('{"round": 1, "rounds": [')
    return checkpoint / HISTORY_FILE


BROKEN = {"no-noise-file": "has no nullspace_noise.safetensors", "garbage-noise": "is not a readable safetensors",
          "wrong-key": "holds no tensor 'noise'", "nan-noise": "holds non-finite values",
          "broken-history": "is not a readable noise history"}


@pytest.mark.parametrize("how", list(BROKEN))
def test_a_broken_checkpoint_is_named_before_any_work(tmp_path, rows, checkpoint, how):
    named = _break(checkpoint, how)
    trainer = _trainer(tmp_path / "b", rows, max_steps=6)
    with pytest.raises(ValueError, match=BROKEN[how]) as error:
        trainer.train(resume_from_checkpoint=str(checkpoint))
    assert str(named) in str(error.value)
    assert trainer.state.global_step == 0 and not list((tmp_path / "b").iterdir())


def test_a_broken_checkpoint_is_one_line_in_the_recipe(recipe, small_data, tmp_path, checkpoint, capsys):
    _break(checkpoint, "no-noise-file")
    output = tmp_path / "out"
    text = _one_line_error(recipe, recipe_args(small_data, output, "--resume_from_checkpoint", str(checkpoint)),
                           capsys)
    assert "has no nullspace_noise.safetensors" in text and _no_work_done(output)


# ---- settings ----

@pytest.mark.parametrize("setting", [{"noise_eps": float("inf")}, {"noise_init_limit": float("inf")},
                                     {"noise_warm_start_scale": float("inf")}, {"noisy_loss_weight": float("nan")},
                                     {"learning_rate": float("inf")}, {"max_steps": 0}],
                         ids=["eps", "init_limit", "warm_scale", "loss_weight", "lr", "max_steps"])
def test_non_finite_or_empty_settings_are_refused(tmp_path, setting):
    name = next(iter(setting))
    with pytest.raises(ValueError, match=f"Invalid NullspaceConfig: {name}"):
        _config(tmp_path, **setting)


@pytest.mark.parametrize("flag, value", [("--noise_eps", "inf"), ("--noisy_loss_weight", "nan"), ("--max_steps", "0")])
def test_non_finite_or_empty_settings_are_one_line_in_the_recipe(recipe, small_data, tmp_path, capsys, flag, value):
    output = tmp_path / "out"
    argv = recipe_args(small_data, output)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    text = _one_line_error(recipe, argv, capsys)
    assert flag[2:] in text and _no_work_done(output)


def test_a_nonexistent_local_model_path_is_named(recipe, small_data, tmp_path, capsys):
    output = tmp_path / "out"
    argv = recipe_args(small_data, output)
    argv[argv.index("--model_name_or_path") + 1] = str(tmp_path / "no" / "such" / "model")
    text = _one_line_error(recipe, argv, capsys)
    assert "does not exist" in text and "Repo id" not in text and _no_work_done(output)


# ---- API errors before any step ----

class _Recorder(TrainerCallback):
    """Records the steps that begin: none may, when the input is refused before any work."""

    def __init__(self, started: list) -> None:
        self.started = started

    def on_step_begin(self, args, state, control, **kwargs):
        self.started.append(state.global_step)


def _digits_with_transform(**overrides) -> Dataset:
    from transformers import ViTImageProcessor

    data = digits_dataset()["train"].select(range(32))
    return data.with_transform(ImageClassificationTransform(ViTImageProcessor(size={"height": 16, "width": 16}),
                                                            **overrides))


@pytest.mark.parametrize("case, message", [
    ("empty", "train_dataset is empty"),
    ("missing-image-column", "no image column 'picture'"),
    ("columns-removed", "set remove_unused_columns=False"),
    ("one-channel-model", "takes 1-channel images but the training batches have 3 channels"),
    ("unwritable-output-dir", "output_dir .* is not writable"),
])
def test_api_errors_are_one_clear_error_before_any_step(tmp_path, rows, case, message):
    config = dict(remove_unused_columns=False)
    model = make_tiny_model(**MODEL)
    dataset = _digits_with_transform()
    output = tmp_path / "out"
    if case == "empty":
        dataset = TensorRows(rows.pixel_values[:0], rows.labels[:0])
    elif case == "missing-image-column":
        dataset = _digits_with_transform(image_column="picture")
    elif case == "columns-removed":
        config = {}
    elif case == "one-channel-model":
        model = make_tiny_model(**MODEL, num_channels=1)
    else:
        (tmp_path / "a-file").write_text("")
        output = tmp_path / "a-file" / "out"
    started = []
    with pytest.raises(ValueError, match=message):  # an unwritable output_dir already stops the constructor
        trainer = NullspaceTrainer(model=model, args=_config(output, **config), train_dataset=dataset,
                                   data_collator=collate_image_classification,
                                   callbacks=[_Recorder(started)])
        trainer.train()
    assert not started


def test_evaluate_output_to_an_unwritable_path_fails_before_evaluating(tmp_path, capsys):
    from nullspace_hf.cli import main as nullspace_hf

    (tmp_path / "a-file").write_text("")
    model = ROOT / "nullspace_hf" / "scripts" / "embedded" / "vit-tiny-digits"
    status = nullspace_hf(["evaluate", str(model), "--dataset", "digits", "--attacks", "none", "--corruptions",
                           "none", "--no_progress", "--output", str(tmp_path / "a-file" / "results.json")])
    captured = capsys.readouterr()
    assert status == 2 and "is not writable" in captured.err and "clean_accuracy" not in captured.out


# ---- the job's one-line errors come without a launcher's traceback ----

@pytest.mark.slow
def test_nullspace_hf_finetune_reports_a_bad_flag_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "nullspace_hf.cli", "finetune", "--noise_eps", "inf",
                             "--output_dir", str(tmp_path / "out")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300,
                            env={**hub_env("http://127.0.0.1:9", tmp_path), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        "nullspace-hf finetune: error: Invalid NullspaceConfig: noise_eps must be a finite number, got inf."]
