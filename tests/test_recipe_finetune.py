"""`recipes/finetune.py`: configuration, data errors, the Hub round trip and the embedded default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from nullspace_hf import NullspaceConfig
from nullspace_hf.model_card import method_setting_names
from nullspace_hf.parsing import parse_with_config

from .helpers import RECIPE, load_recipe, recipe_args, run_recipe, save_tiny_model
from .hub_server import LoopbackHub

recipe_module = load_recipe()

ROOT = Path(__file__).resolve().parents[1]


def test_config_file_sets_values_and_flags_win(recipe, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"noise_eps": 0.1, "max_steps": 7, "image_column": "img", "output_dir": "a"}))
    script, training = parse_with_config(recipe.make_parser(), ["--config", str(config), "--noise_eps", "0.05"])
    assert training.noise_eps == 0.05
    assert training.max_steps == 7 and script.image_column == "img" and training.output_dir == "a"


def test_config_data_files_mapping_loads_both_splits(recipe, small_data, tmp_path):
    """recipes/configs/cifar10.yaml's layout: `data_files:` as a YAML mapping of split to file."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data_files": {"train": str(small_data / "train.parquet"),
                                                     "test": str(small_data / "test.parquet")}}))
    script, training = parse_with_config(recipe.make_parser(), ["--config", str(config), "--output_dir", str(tmp_path)])
    data = recipe.load_data(script, training)
    assert (len(data.train), len(data.evaluation), len(data.names), data.validation) == (200, 40, 10, None)
    assert (data.image_column, data.label_column) == ("image", "label")  # found in the files


def test_config_with_unknown_keys_is_refused(recipe, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"noise_epsilon": 0.1}))
    with pytest.raises(ValueError, match="unknown arguments: noise_epsilon"):
        parse_with_config(recipe.make_parser(), ["--config", str(config)])


def test_the_card_lists_every_setting_nullspace_config_adds():
    names = method_setting_names(NullspaceConfig)
    for name in ("noise_mode", "noise_warm_lr", "ema_decay", "train_ratio", "mixup_prob", "rand_augment_ops"):
        assert name in names
    assert "output_dir" not in names and "hub_token" not in names and len(set(names)) == len(names)


SHIPPED_CONFIGS = sorted((ROOT / "recipes" / "configs").glob("*.yaml")) + [recipe_module.DEFAULT_CONFIG]


@pytest.mark.parametrize("config", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_parses_and_builds_its_trainer(recipe, tmp_path, config):
    """Each config's settings make a NullspaceTrainer; its model and data are replaced by a tiny ViT and random
    images (the Hub and the CIFAR files are out of reach here)."""
    from transformers import ViTImageProcessor

    from nullspace_hf import NullspaceTrainer
    from nullspace_hf.data import TensorRows

    from .helpers import make_tiny_model

    script, training = parse_with_config(recipe.make_parser(), ["--config", str(config), "--use_cpu", "true",
                                                                "--output_dir", str(tmp_path / "out")])
    assert training.noise_refresh_steps == 40 and training.noise_eps == 0.03
    dataset = TensorRows(torch.randn(500, 3, 32, 32), torch.randint(0, 3, (500,)))
    trainer = NullspaceTrainer(model=make_tiny_model(), args=training, train_dataset=dataset,
                               processing_class=ViTImageProcessor(size={"height": 32, "width": 32}))
    assert trainer.args.noise_mode == "nullspace" and trainer.args.max_steps > 0


def _captured_run(recipe, monkeypatch, argv: list[str]):
    """The arguments ``cli(argv)`` hands to ``main``."""
    seen = []
    monkeypatch.setattr(recipe, "main", lambda script, training: seen.append((script, training)))
    assert recipe.cli(argv) == 0
    return seen[0]


def test_flags_without_config_start_from_the_embedded_default(recipe, monkeypatch, tmp_path, capsys):
    script, training = _captured_run(recipe, monkeypatch, ["--output_dir", str(tmp_path), "--learning_rate", "1e-3"])
    embedded = yaml.safe_load(recipe.DEFAULT_CONFIG.read_text())
    assert training.output_dir == str(tmp_path) and training.learning_rate == pytest.approx(1e-3)  # the flags
    assert training.max_steps == embedded["max_steps"] == 200  # the rest: the embedded default, not TrainingArguments
    assert training.per_device_train_batch_size == embedded["per_device_train_batch_size"]
    assert script.eval_severities == embedded["eval_severities"]
    assert "starting from the embedded default" in capsys.readouterr().out


def test_a_json_args_file_is_a_config(recipe, monkeypatch, tmp_path):
    arguments = tmp_path / "args.json"
    arguments.write_text(json.dumps({"output_dir": str(tmp_path / "out"), "max_steps": 3, "noise_eps": 0.05}))
    for argv in ([str(arguments)], ["--config", str(arguments)]):
        script, training = _captured_run(recipe, monkeypatch, argv)
        assert (training.max_steps, training.noise_eps, training.per_device_train_batch_size) == (3, 0.05, 8)


def test_help_lists_config(recipe, capsys):
    with pytest.raises(SystemExit):
        recipe.cli(["--help"])
    assert "--config FILE" in capsys.readouterr().out


@pytest.mark.parametrize("validation", ["train_val_split", "validation_split"])
def test_evaluation_during_training_on_a_validation_split(recipe, small_data, tmp_path, validation):
    """`--eval_strategy steps`: the Trainer evaluates a validation set every eval_steps, as in
    transformers' run_image_classification.py; the robustness evaluation stays on the test split."""
    output = tmp_path / "out"
    argv = recipe_args(small_data, output, "--eval_strategy", "steps", "--eval_steps", "2", "--logging_steps", "1",
                       "--eval_corruptions", "none")
    if validation == "validation_split":
        files = {"train": str(small_data / "train.parquet"), "validation": str(small_data / "test.parquet"),
                 "test": str(small_data / "test.parquet")}
        argv[argv.index("--data_files") + 1] = json.dumps(files)
    assert recipe.cli(argv) == 0
    state = json.loads((output / "trainer_state.json").read_text())
    evaluations = [entry for entry in state["log_history"] if "eval_accuracy" in entry]
    assert [entry["step"] for entry in evaluations] == [2, 4]
    assert all(0 <= entry["eval_accuracy"] <= 1 for entry in evaluations)
    everything = json.loads((output / "all_results.json").read_text())
    assert {"train_loss", "eval_accuracy", "before_clean", "after_clean", "after_fgsm"} <= set(everything)
    results = json.loads((output / "results.json").read_text())
    assert results["after"]["num_samples"] == 40 and results["after"]["model"] == str(output)


def test_lora_fine_tuning_writes_a_plain_checkpoint(recipe, small_data, tmp_path):
    from transformers import ViTForImageClassification

    output = tmp_path / "out"
    assert recipe.cli(recipe_args(small_data, output, "--use_peft", "true", "--lora_r", "4",
                                  "--eval_corruptions", "none")) == 0
    assert not (output / "adapter_model.safetensors").exists()
    merged = ViTForImageClassification.from_pretrained(output)
    base = ViTForImageClassification.from_pretrained(small_data / "model")
    changed = [name for name, value in merged.state_dict().items()
               if not torch.equal(value, base.state_dict()[name])]
    assert any("attention.q_proj" in name for name in changed)  # the merged LoRA update
    assert not any("patch_embeddings" in name for name in changed)  # no adapter there: its weights stay as they were


@pytest.mark.parametrize("config", sorted((ROOT / "recipes" / "configs").glob("paper_*.yaml")), ids=lambda p: p.name)
def test_paper_configs_parse_and_build_a_trainer(recipe, tmp_path, config):
    from transformers import ViTImageProcessor

    from nullspace_hf import NullspaceTrainer
    from nullspace_hf.data import TensorRows

    from .helpers import make_tiny_model

    script, training = parse_with_config(recipe.make_parser(), ["--config", str(config), "--use_cpu", "true",
                                                                "--output_dir", str(tmp_path / "out")])
    assert script.dataset_name == "imagenet-1k" and training.learning_rate == pytest.approx(1e-5)
    assert training.train_ratio == pytest.approx(0.004) and training.num_train_epochs == 20
    assert (training.noise_init_limit, training.noise_warm_start, training.noise_max_steps) == (3.0, False, 3000)
    assert (training.noise_token_lr, training.noise_batch_size, training.noise_stop_batches) == (0.0, 0, 1)
    # the Hub checkpoint and ImageNet replaced by a tiny ViT and 500 random images (train_ratio 0.004: 2 samples)
    dataset = TensorRows(torch.randn(500, 3, 32, 32), torch.randint(0, 3, (500,)))
    trainer = NullspaceTrainer(model=make_tiny_model(), args=training, train_dataset=dataset,
                               processing_class=ViTImageProcessor(size={"height": 32, "width": 32}))
    assert trainer.augmentation is not None
    assert training.max_steps == 20 * training.noise_refresh_steps
    if config.name == "paper_vit_b16.yaml":
        assert (training.mixup_prob, training.label_smoothing_factor, training.random_erasing_prob) == (1.0, 0.1, 0.25)
        assert trainer.augmentation.rand_augment is not None and training.dataloader_drop_last


@pytest.mark.parametrize("family, accepted", [("vit", False), ("dinov2", True)])
def test_drop_path_rate_is_set_where_the_family_has_one(recipe, tmp_path, family, accepted):
    save_tiny_model(tmp_path / "model", family=family, num_labels=10)
    script, _ = parse_with_config(recipe.make_parser(), ["--model_name_or_path", str(tmp_path / "model"),
                                                         "--drop_path_rate", "0.25", "--output_dir", str(tmp_path)])
    if not accepted:
        with pytest.raises(ValueError, match="has no drop path"):
            recipe.load_model(script, [str(i) for i in range(10)])
        return
    model, _ = recipe.load_model(script, [str(i) for i in range(10)])
    assert model.config.drop_path_rate == 0.25


@pytest.mark.parametrize(
    "change,message",
    [
        (["--data_files", "/nonexistent/train.parquet"], "Could not load the dataset"),
        (["--dataset_name", "/nonexistent/dataset-dir"], "Could not load the dataset"),
        (["--label_column", "labels"], "no label column 'labels'"),
        (["--image_column", "label"], "Column 'label' holds"),
        (["--eval_split", "validation"], "no split 'validation'"),
    ],
    ids=["missing-file", "bad-dataset-name", "missing-label-column", "non-image-column", "missing-split"],
)
def test_bad_data_is_one_clear_error_before_training(recipe, small_data, tmp_path, capsys, change, message):
    output = tmp_path / "out"
    args = recipe_args(small_data, output)
    if change[0] in ("--data_files", "--dataset_name"):
        index = args.index("--data_files")
        del args[index : index + 2]
    assert recipe.cli(args + change) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert not (output / "model.safetensors").exists()


@pytest.mark.slow
def test_push_to_loopback_hub_and_pull_back(small_data, tmp_path):
    output = tmp_path / "out"
    with LoopbackHub() as hub:
        result = run_recipe(recipe_args(small_data, output, "--push_to_hub", "true", "--hub_model_id", "user/tiny-ns"),
                             hub.endpoint, tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        pushed = hub.state.repos["user/tiny-ns"]["files"]
        assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "results.json",
                "nullspace_noise.safetensors", "noise_history.json"} <= set(pushed)
        assert not any(name.startswith(("checkpoint-", "corruption_cache")) for name in pushed)

        card = ModelCard(pushed["README.md"].decode())
        assert {"nullspace", "robustness", "vision-transformer", "image-classification"} <= set(card.data.tags)
        metrics = {result.metric_name: result.metric_value for result in card.data.eval_results}
        after = json.loads((output / "results.json").read_text())["after"]
        assert metrics["Clean accuracy"] == pytest.approx(after["clean_accuracy"], abs=1e-3)
        assert "FGSM accuracy" in metrics and "Mean corruption accuracy" in metrics
        assert "ViTForImageClassification.from_pretrained(\"user/tiny-ns\")" in card.text
        history = json.loads((output / "noise_history.json").read_text())["rounds"]
        assert "| round | step | start mse_prob | final mse_prob | gradient steps | forward-only passes |" in card.text
        for setting in method_setting_names(NullspaceConfig):  # every NullspaceConfig setting
            assert f"| `{setting}` |" in card.text, setting
        assert "| `max_steps` |" in card.text  # and the TrainingArguments ones that differ from their defaults
        for record in history:  # every round's row, with the numbers of noise_history.json
            row = (f"| {record['round']} | {record['step']} | {record['start_mse_prob']:.3g} | "
                   f"{record['mse_prob']:.4f} | {record['steps']} | {record['forward_steps']} | {record['norm']:.3f} |")
            assert row in card.text

        pixels = torch.randn(3, 3, 32, 32)
        torch.save(pixels, tmp_path / "pixels.pt")
        code = (
            "import sys, torch\n"
            "from transformers import AutoImageProcessor, ViTForImageClassification, pipeline\n"
            "model = ViTForImageClassification.from_pretrained('user/tiny-ns').eval()\n"
            "AutoImageProcessor.from_pretrained('user/tiny-ns')\n"
            "pipeline('image-classification', model='user/tiny-ns')\n"
            f"torch.save(model(pixel_values=torch.load({str(tmp_path / 'pixels.pt')!r})).logits, 'hub_logits.pt')\n"
            "assert 'nullspace_hf' not in sys.modules\n"
        )
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_XET": "1",
               "HF_HOME": str(tmp_path / "hf_home_pull"), "HF_HUB_OFFLINE": "0"}
        pulled = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
        assert pulled.returncode == 0, pulled.stderr[-3000:]
    from transformers import ViTForImageClassification

    local = ViTForImageClassification.from_pretrained(output).eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "hub_logits.pt"), local(pixel_values=pixels).logits,
                                   atol=0, rtol=0)


# A refused push (the loopback Hub failing) leaves output_dir complete with one clear error line: one launch
# checks it with the retry command it prints:
# test_faults.py::test_the_printed_retry_command_pushes_against_the_loopback_hub


EMBEDDED_COMMANDS = {
    "accelerate-launch-recipe": [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1",
                                 "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                                 str(RECIPE)],
    "nullspace-hf-finetune": [sys.executable, "-m", "nullspace_hf.cli", "finetune"],
}


@pytest.mark.slow
def test_embedded_default_runs_and_its_model_loads_without_the_package(tmp_path):
    """The README's main job with no argument: `accelerate launch recipes/finetune.py`, or `nullspace-hf finetune`.

    Both commands run at once, side by side (one thread each), each in its own working directory, and each is
    checked in full: on two free cores the two ~minute-long jobs take about the wall time of one."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    runs = {}
    for name, command in EMBEDDED_COMMANDS.items():
        cwd = tmp_path / name
        cwd.mkdir()
        with open(cwd / "stdout.txt", "w") as stdout, open(cwd / "stderr.txt", "w") as stderr:
            runs[name] = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True, cwd=cwd, env=env)
    try:
        statuses = {name: run.wait(timeout=900) for name, run in runs.items()}
    finally:
        for run in runs.values():
            if run.poll() is None:
                run.kill()
    outputs = []
    for name, status in statuses.items():
        cwd = tmp_path / name
        stdout, stderr = (cwd / "stdout.txt").read_text(), (cwd / "stderr.txt").read_text()
        assert status == 0, (name, stderr[-3000:])
        table = stdout[stdout.index("model "):]
        assert table.splitlines()[0].split() == ["model", "clean", "fgsm", "corruption"], name
        assert table.splitlines()[1].startswith("before") and table.splitlines()[2].startswith("after"), name
        output = cwd / "outputs" / "vit-tiny-digits-nullspace"
        for file in ("model.safetensors", "README.md", "results.json", "nullspace_noise.safetensors",
                     "noise_history.json", "noise_dynamics.png", "preprocessor_config.json"):
            assert (output / file).is_file(), (name, file)
        history = json.loads((output / "noise_history.json").read_text())["rounds"]
        assert len(history) == 5, name
        assert history[0]["steps"] >= 1, name  # round 0 searched from U(-3, 3), far outside eps
        for record in history:  # every round ended just inside eps = 0.03; a warm start outside it was searched
            assert 0.015 <= record["mse_prob"] < 0.03 and record["reached"], (name, record)
            assert record["steps"] >= 1 or record["start_mse_prob"] < 0.03, (name, record)
        printed = stdout[stdout.index("Noise rounds (eps = 0.03):"):]
        assert all(f"| {record['mse_prob']:.4f} | {record['steps']} | {record['forward_steps']} |" in printed
                   for record in history), name
        outputs.append(str(output))
    code = ("import sys\nfrom transformers import ViTForImageClassification, pipeline\n"
            f"for output in {outputs!r}:\n"
            "    ViTForImageClassification.from_pretrained(output)\n"
            "    pipeline('image-classification', model=output)\n"
            "assert 'nullspace_hf' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
