"""The ``nullspace-hf watermark`` door."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from nullspace_hf.cli import main

from .helpers import make_tiny_model, save_tiny_model
from .test_applications import logo, smooth_image


@pytest.fixture
def pictures(tmp_path):
    """An image (48×40, resized by the processor) and a logo, written as PNG files."""
    smooth_image(0, size=48).crop((0, 0, 48, 40)).save(tmp_path / "image.png")
    logo().save(tmp_path / "logo.png")
    return tmp_path / "image.png", tmp_path / "logo.png"


def test_watermark_writes_the_marked_image_and_figure(tiny_vit_dir, pictures, tmp_path, capsys):
    image, mark = pictures
    out, figure = tmp_path / "marked.png", tmp_path / "figure.png"
    code = main(["watermark", str(tiny_vit_dir), str(image), str(mark), "--out", str(out), "--figure", str(figure),
                 "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["prediction_after"] == summary["prediction_before"]
    assert summary["max_logit_change"] <= 1e-3
    assert summary["psnr_db"] < 25
    assert summary["max_logit_change_8bit"] >= summary["max_logit_change"]
    marked = Image.open(out)
    assert marked.size == (32, 32) and marked.mode == "RGB"
    assert figure.stat().st_size > 0


def test_watermark_prints_a_one_line_summary(tiny_vit_dir, pictures, tmp_path, capsys):
    image, mark = pictures
    assert main(["watermark", str(tiny_vit_dir), str(image), str(mark), "--out", str(tmp_path / "m.png"),
                 "--strength", "0.5"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith(f"wrote {tmp_path / 'm.png'}: prediction ") and "PSNR" in line


def _bad_cases(tmp_path, tiny_vit_dir, pictures):
    image, mark = pictures
    full_rank = tmp_path / "full-rank"
    save_tiny_model(full_rank, hidden_size=192)
    no_processor = tmp_path / "no-processor"
    make_tiny_model("vit").save_pretrained(no_processor)
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    out = str(tmp_path / "o.png")
    return {
        "nullity 0": ([str(full_rank), str(image), str(mark), "--out", out], "empty patch-embedding nullspace"),
        "missing image": ([str(tiny_vit_dir), str(tmp_path / "missing.png"), str(mark), "--out", out],
                          "Could not read IMAGE"),
        "unreadable logo": ([str(tiny_vit_dir), str(image), str(not_an_image), "--out", out], "Could not read LOGO"),
        "no processor": ([str(no_processor), str(image), str(mark), "--out", out], "has no image processor"),
        "bad strength": ([str(tiny_vit_dir), str(image), str(mark), "--out", out, "--strength", "-1"],
                         "strength must be a positive number"),
        "bad output": ([str(tiny_vit_dir), str(image), str(mark), "--out", str(tmp_path / "o.unknown")],
                       "Could not write --out"),
    }


@pytest.mark.parametrize("case", ["nullity 0", "missing image", "unreadable logo", "no processor", "bad strength",
                                  "bad output"])
def test_bad_input_is_one_line_and_exit_code_2(case, tmp_path, tiny_vit_dir, pictures, capsys):
    argv, message = _bad_cases(tmp_path, tiny_vit_dir, pictures)[case]
    assert main(["watermark", *argv]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert error.startswith("nullspace-hf watermark: error: ") and message in error


def test_marked_png_keeps_the_prediction(tiny_vit_dir, pictures, tmp_path, capsys):
    """The 8-bit file itself, read back through the processor, is classified like the original."""
    from transformers import AutoImageProcessor

    from nullspace_hf.modeling import load_model

    image, mark = pictures
    out = tmp_path / "marked.png"
    assert main(["watermark", str(tiny_vit_dir), str(image), str(mark), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    model = load_model(str(tiny_vit_dir), for_classification=True)
    processor = AutoImageProcessor.from_pretrained(tiny_vit_dir)
    inputs = processor(images=[Image.open(image).convert("RGB"), Image.open(out)], return_tensors="pt")
    logits = model(**inputs).logits.detach()
    labels = [model.config.id2label[int(i)] for i in logits.argmax(-1)]
    assert labels == [summary["prediction_before"], summary["prediction_after"]]
    assert np.isclose(float((logits[1] - logits[0]).abs().max()), summary["max_logit_change_8bit"], atol=1e-5)
