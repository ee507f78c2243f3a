"""The ``nullspace-hf evaluate`` door, also under ``accelerate launch -m nullspace_hf.cli evaluate``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from nullspace_hf.cli import main
from nullspace_hf.data import digits_dataset

from .helpers import free_port, save_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved tiny 10-class ViT with its processor, and 37 digits saved with ``save_to_disk``."""
    root = tmp_path_factory.mktemp("evaluate")
    save_tiny_model(root / "model", num_labels=10)
    digits_dataset()["test"].select(range(37)).save_to_disk(str(root / "digits37"))
    return root


def test_cli_prints_markdown_and_writes_json(saved, tmp_path, capsys):
    output = tmp_path / "results.json"
    status = main(["evaluate", str(saved / "model"), "--dataset", str(saved / "digits37"), "--attacks", "fgsm,pgd",
                   "--epsilon", "2/255", "--pgd_steps", "2", "--corruptions", "fog", "--severities", "1,3",
                   "--batch_size", "16", "--output", str(output), "--markdown", "--no_progress"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "| Model | Clean | PatchFool | CW | FGSM |" in printed and "### Corruptions" in printed
    report = json.loads(output.read_text())
    assert report["num_samples"] == 37
    assert report["attacks"]["pgd"]["config"] == {"epsilon": float(Fraction(2, 255)), "step_size": 0.5 / 255,
                                                   "steps": 2, "random_start": True}
    assert set(report["corruptions"]["fog"]) == {"1", "3"}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--attacks", "fgsm,jsma"], "Unknown attack 'jsma'"),
        (["--corruptions", "haze"], "Unknown corruption 'haze'"),
        (["--severities", "6"], "Severities must be integers from 1 to 5"),
        (["--ood", "imagenet-r"], "NAME=SOURCE"),
        (["--max_samples", "0"], "--max_samples"),
        (["--split", "validation", "--dataset", "digits"], "no split 'validation'"),
        (["--dataset", "./no-such-folder"], "does not exist"),
    ],
    ids=["attack", "corruption", "severity", "ood", "max-samples", "split", "dataset"],
)
def test_cli_user_errors_are_one_line(saved, capsys, arguments, message):
    status = main(["evaluate", str(saved / "model"), "--dataset", str(saved / "digits37"), *arguments])
    assert status == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("nullspace-hf evaluate: error:") and message in error and "\n" not in error


@pytest.mark.slow
def test_two_processes_count_each_sample_once(saved, tmp_path, capsys):
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
    common = ["--dataset", str(saved / "digits37"), "--attacks", "fgsm", "--corruptions", "gaussian_noise",
              "--severities", "2", "--batch_size", "8", "--no_progress"]
    launched = subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", str(free_port()), "-m", "nullspace_hf.scripts.evaluate",
         str(saved / "model"),
         *common, "--output", str(tmp_path / "two.json")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["settings"]["num_processes"] == 2
    assert two["num_samples"] == 37
    assert main(["evaluate", str(saved / "model"), *common, "--output", str(tmp_path / "one.json")]) == 0
    one = json.loads((tmp_path / "one.json").read_text())
    assert one["settings"]["num_processes"] == 1
    for key in ("clean_accuracy", "attacks", "corruptions"):
        assert two[key] == one[key]


def test_cli_reads_a_released_set_and_runs_autoattack(saved, tmp_path, capsys):
    import numpy as np

    root = tmp_path / "CIFAR-10-C"
    root.mkdir()
    np.save(root / "fog.npy", np.random.default_rng(0).integers(0, 256, (15, 32, 32, 3), dtype=np.uint8))
    np.save(root / "labels.npy", np.asarray([1, 2, 3] * 5))
    output = tmp_path / "results.json"
    status = main(["evaluate", str(saved / "model"), "--dataset", str(saved / "digits37"), "--max_samples", "2",
                   "--attacks", "autoattack", "--epsilon", "8/255", "--corruptions", "fog", "--corruption_source",
                   str(root), "--corruption_workers", "1", "--output", str(output), "--no_progress"])
    assert status == 0
    report = json.loads(output.read_text())
    assert report["corruption_source"]["kind"] == "cifar-10-c" and report["corruption_source"]["images_per_set"] == [2]
    assert set(report["corruptions"]["fog"]) == {"1", "2", "3", "4", "5"}
    assert report["attacks"]["autoattack"]["epsilon"] == float(Fraction(8, 255))
    assert report["summary_details"]["autoattack"]["threat_model"] == "Linf"
    assert report["settings"]["corruption_workers"] == 1
