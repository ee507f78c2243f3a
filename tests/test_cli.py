"""The ``nullspace-hf inspect`` door, run as the installed console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BertConfig, BertModel

from nullspace_hf.cli import main
from nullspace_hf.modeling import patch_projection

from .helpers import save_tiny_model


def _console_script() -> list[str]:
    script = Path(sys.executable).with_name("nullspace-hf")
    found = str(script) if script.exists() else shutil.which("nullspace-hf")
    assert found, "the nullspace-hf console script is not installed: run `pip install .`"
    return [found]


def test_console_script_reports_rank_nullity(tiny_vit_dir):
    result = subprocess.run([*_console_script(), "inspect", str(tiny_vit_dir), "--json"],
                            capture_output=True, text=True, check=True)
    (row,) = json.loads(result.stdout)
    assert row["patch_dim"] == 3 * 8 * 8
    assert row["rank"] == 32
    assert row["nullity"] == 3 * 8 * 8 - 32
    assert row["patch_size"] == [8, 8] and row["hidden_size"] == 32
    assert len(row["smallest_singular_values"]) == 3


def test_forced_rank_loss_is_reported(tmp_path, capsys):
    model = save_tiny_model(tmp_path / "m")
    conv = patch_projection(model)
    u, s, vh = torch.linalg.svd(conv.weight.detach().double().reshape(32, -1), full_matrices=False)
    s[-2:] = 0
    with torch.no_grad():
        conv.weight.copy_((u @ torch.diag(s) @ vh).reshape(conv.weight.shape).float())
    model.save_pretrained(tmp_path / "m")
    assert main(["inspect", str(tmp_path / "m"), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["rank"] == 30 and row["nullity"] == 3 * 8 * 8 - 32 + 2


def test_table_output_has_one_row_per_model(tmp_path, capsys):
    save_tiny_model(tmp_path / "a")
    save_tiny_model(tmp_path / "b", family="deit", patch_size=4, image_size=16)
    assert main(["inspect", f"{tmp_path / 'a'},{tmp_path / 'b'}"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:3] == ["model", "patch", "hidden"]
    assert lines[1].split()[1:6] == ["8×8", "32", "192", "32", "160"]
    assert lines[2].split()[1:6] == ["4×4", "32", "48", "32", "16"]


def test_figure_draws_fig2_with_identical_predictions(tiny_vit_dir, tmp_path, capsys):
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "fig2.png"
    assert main(["inspect", str(tiny_vit_dir), "--figure", str(out), "--image", str(image)]) == 0
    assert Image.open(out).size[0] > 100
    message = capsys.readouterr().err
    clean = message.split("prediction clean: ")[1].split(",")[0]
    noisy = message.split("with nullspace noise: ")[1].rstrip(")\n")
    assert clean == noisy


@pytest.mark.parametrize(
    "setup,expected",
    [
        ("empty_dir", "is a directory without a config.json"),
        ("text_model", "BertModel has no patch embedding"),
        ("missing_path", "does not exist: give a model directory or a Hub id"),
    ],
)
def test_bad_models_give_one_clear_error(tmp_path, capsys, setup, expected):
    target = tmp_path / "model"
    if setup == "empty_dir":
        target.mkdir()
    elif setup == "text_model":
        BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32)).save_pretrained(target)
    capsys.readouterr()
    assert main(["inspect", str(target)]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_figure_without_image_is_a_clear_error(tiny_vit_dir, tmp_path, capsys):
    assert main(["inspect", str(tiny_vit_dir), "--figure", str(tmp_path / "f.png")]) == 2
    assert "--figure needs --image" in capsys.readouterr().err
