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

from nullspace_hf.hub import hyperparameter_names
from nullspace_hf.parsing import parse_with_config

from .helpers import RECIPE, load_recipe, recipe_args, run_recipe, save_tiny_model
from .hub_server import LoopbackHub

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
    script, _ = parse_with_config(recipe.make_parser(), ["--config", str(config), "--output_dir", str(tmp_path)])
    train, evaluation, names = recipe.load_data(script, seed=0)
    assert (len(train), len(evaluation), len(names)) == (200, 40, 10)


def test_config_with_unknown_keys_is_refused(recipe, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"noise_epsilon": 0.1}))
    with pytest.raises(ValueError, match="unknown arguments: noise_epsilon"):
        parse_with_config(recipe.make_parser(), ["--config", str(config)])


def test_the_card_lists_every_setting_nullspace_config_adds():
    names = hyperparameter_names()
    for name in ("noise_mode", "noise_warm_lr", "ema_decay", "train_ratio", "mixup_prob", "rand_augment_ops",
                 "label_smoothing_factor", "learning_rate"):
        assert name in names
    assert "output_dir" not in names and "hub_token" not in names and len(set(names)) == len(names)


def test_shipped_configs_parse(recipe):
    for config in sorted((ROOT / "recipes" / "configs").glob("*.yaml")):
        script, training = parse_with_config(load_recipe().make_parser(), ["--config", str(config)])
        assert training.noise_refresh_steps == 40 and training.noise_eps == 0.03, config.name


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
        for setting in hyperparameter_names():  # every NullspaceConfig setting, and the TrainingArguments ones
            assert f"| `{setting}` |" in card.text, setting
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


@pytest.mark.slow
def test_refusing_hub_leaves_output_dir_intact_with_a_clear_error(small_data, tmp_path):
    output = tmp_path / "out"
    with LoopbackHub() as hub:
        hub.state.fail = True
        result = run_recipe(recipe_args(small_data, output, "--push_to_hub", "true", "--hub_model_id", "user/x"),
                             hub.endpoint, tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "Could not push" in errors[0] and "hf upload user/x" in errors[0]
    for name in ("model.safetensors", "config.json", "README.md", "results.json", "nullspace_noise.safetensors",
                 "noise_history.json", "noise_dynamics.png"):
        assert (output / name).is_file(), name


@pytest.mark.slow
@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
     "--mixed_precision", "no", "--dynamo_backend", "no", str(RECIPE)],
    [sys.executable, "-m", "nullspace_hf.cli", "finetune"],
], ids=["accelerate-launch-recipe", "nullspace-hf-finetune"])
def test_embedded_default_runs_and_its_model_loads_without_the_package(tmp_path, command):
    """The README's main job with no argument: `accelerate launch recipes/finetune.py`, or `nullspace-hf finetune`."""
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=900,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout[result.stdout.index("model "):]
    assert table.splitlines()[0].split() == ["model", "clean", "fgsm", "corruption"]
    assert table.splitlines()[1].startswith("before") and table.splitlines()[2].startswith("after")
    output = tmp_path / "outputs" / "vit-tiny-digits-nullspace"
    for name in ("model.safetensors", "README.md", "results.json", "nullspace_noise.safetensors",
                 "noise_history.json", "noise_dynamics.png", "preprocessor_config.json"):
        assert (output / name).is_file(), name
    history = json.loads((output / "noise_history.json").read_text())["rounds"]
    assert len(history) == 5
    for record in history:  # every round searched and ended just inside eps = 0.03, none left at its random start
        assert 0.015 <= record["mse_prob"] < 0.03 and record["reached"], record
        assert record["steps"] + record["forward_steps"] > 1, record
    printed = result.stdout[result.stdout.index("Noise rounds (eps = 0.03):"):]
    assert all(f"| {record['mse_prob']:.4f} | {record['steps']} | {record['forward_steps']} |" in printed
               for record in history)
    code = ("import sys\nfrom transformers import ViTForImageClassification, pipeline\n"
            f"ViTForImageClassification.from_pretrained({str(output)!r})\n"
            f"pipeline('image-classification', model={str(output)!r})\n"
            "assert 'nullspace_hf' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
