"""The ground floor: the pixel ↔ model-input map, model plumbing, figures, and what imports what."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTImageProcessor

import nullspace_hf
from nullspace_hf import plots
from nullspace_hf.modeling import eager_attention, float_logits, frozen_eval, patch_grid
from nullspace_hf.nullspace import patch_embedding_nullspace
from nullspace_hf.pixels import PixelSpaceClassifier, PixelTransform, images_to_pixels, pixels_for_model

from .helpers import make_tiny_model

PACKAGE = Path(nullspace_hf.__file__).resolve().parent

IMAGENET = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.485, 0.456, 0.406],
                             image_std=[0.229, 0.224, 0.225])


def test_the_map_and_its_inverse_are_the_processors_normalisation():
    pixels = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    transform = PixelTransform.from_processor(IMAGENET, 3)
    mean, std = torch.tensor(IMAGENET.image_mean).view(-1, 1, 1), torch.tensor(IMAGENET.image_std).view(-1, 1, 1)
    torch.testing.assert_close(transform.to_model_input(pixels), (pixels - mean.double()) / std.double())
    torch.testing.assert_close(transform.to_pixels(transform.to_model_input(pixels)), pixels)
    scale, offset = transform.affine()
    torch.testing.assert_close(transform.to_model_input(pixels), pixels * scale.view(-1, 1, 1) + offset.view(-1, 1, 1))
    assert transform.to_model_input(pixels.float()).dtype == torch.float32
    identity = PixelTransform.identity(3)
    assert identity == PixelTransform.from_processor(None, 3)
    assert torch.equal(identity.to_model_input(pixels), pixels)


def test_one_image_and_a_batch_become_the_same_pixels():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    model = make_tiny_model("vit")
    batch = images_to_pixels(IMAGENET, [image])
    one = pixels_for_model(image, model, IMAGENET)
    assert one.dtype == torch.float64 and batch.dtype == torch.float32
    assert torch.equal(one.float(), batch[0])
    expected = IMAGENET([image], do_rescale=True, rescale_factor=1 / 255, do_normalize=False,
                        return_tensors="pt")["pixel_values"]
    assert torch.equal(batch, expected.float())


def test_pixel_space_classifier_logits_are_eval_mode_float32_on_the_cpu():
    model = make_tiny_model("vit", hidden_dropout_prob=0.5)
    model.train()
    classifier = PixelSpaceClassifier(model, PixelTransform.from_processor(IMAGENET, 3))
    pixels = torch.rand(2, 3, 32, 32)
    first, second = classifier.logits(pixels), classifier.logits(pixels)
    assert torch.equal(first, second) and first.dtype == torch.float32  # no dropout
    assert model.training


def test_frozen_eval_restores_every_model_and_flag():
    first, second = make_tiny_model("vit"), make_tiny_model("vit")
    first.train()
    second.eval()
    next(second.parameters()).requires_grad_(False)
    before = [[p.requires_grad for p in m.parameters()] for m in (first, second)]
    with frozen_eval(first, second):
        assert not first.training and not second.training
        assert not any(p.requires_grad for m in (first, second) for p in m.parameters())
    assert first.training and not second.training
    assert [[p.requires_grad for p in m.parameters()] for m in (first, second)] == before


def test_eager_attention_switches_and_restores():
    model = make_tiny_model("vit")
    assert model.config._attn_implementation == "sdpa"
    with eager_attention(model):
        assert model.config._attn_implementation == "eager"
    assert model.config._attn_implementation == "sdpa"


def test_patch_grid_is_the_conv_output_grid():
    model = make_tiny_model("vit")  # patch 8
    grid = patch_grid(model, torch.zeros(1, 3, 32, 24))
    assert (grid.patch_size, grid.rows, grid.cols, grid.num_patches) == ((8, 8), 4, 3, 12)
    assert grid.tiles(32, 24) and not patch_grid(model, torch.zeros(1, 3, 36, 24)).tiles(36, 24)
    with pytest.raises(ValueError, match="batch, channels, height, width"):
        patch_grid(model, torch.zeros(3, 32, 32))


def test_float_logits_takes_a_tensor_or_keyword_inputs():
    model = make_tiny_model("vit").eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(float_logits(model, pixels), float_logits(model, {"pixel_values": pixels}))


def test_pixel_space_nullspace_is_invisible_through_the_processor():
    model = make_tiny_model("vit")
    transform = PixelTransform.from_processor(IMAGENET, 3)
    space = patch_embedding_nullspace(model).in_pixel_space(transform)
    gram = torch.cat([space.basis, space.complement]) @ torch.cat([space.basis, space.complement]).T
    torch.testing.assert_close(gram, torch.eye(space.patch_dim, dtype=torch.float64))
    generator = torch.Generator().manual_seed(0)
    change = space.project(torch.randn(1, 3, 32, 32, dtype=torch.float64, generator=generator))
    conv = model.vit.embeddings.patch_embeddings.projection.double()
    pixels = torch.rand(1, 3, 32, 32, dtype=torch.float64, generator=generator)
    torch.testing.assert_close(conv(transform.to_model_input(pixels + change)), conv(transform.to_model_input(pixels)))
    assert change.norm() > 1


def _drawn(monkeypatch) -> list:
    figures = []
    monkeypatch.setattr(plots.Figure, "savefig", lambda figure, *args, **kwargs: figures.append(figure))
    return figures


@pytest.mark.parametrize("rounds", [1, 2, 20])
def test_noise_dynamics_ticks_rounds_and_steps_with_integers(monkeypatch, tmp_path, rounds):
    figures = _drawn(monkeypatch)
    history = [{"round": r, "step": 4 * r, "norm": 10.0 + r, "steps": 1 + r % 2, "forward_steps": r % 3,
                "mse_prob": 0.02, "start_mse_prob": 0.05, "budget_hit": False} for r in range(rounds)]
    metrics = [{"step": 4 * r, "clean": 90.0 - r, "fgsm": 40.0, "corruption": 70.0} for r in range(rounds)]
    plots.plot_noise_dynamics(history, tmp_path / "d.png", eps=0.03, band=0.5,
                              round_metrics={"nullspace": metrics, "vanilla": metrics})
    (figure,) = figures
    norm_axis, steps_axis, distance_axis, metrics_axis = figure.axes
    for axis in (norm_axis.xaxis, steps_axis.xaxis, steps_axis.yaxis, distance_axis.xaxis, metrics_axis.xaxis):
        low, high = axis.get_view_interval()
        ticks = [t for t in axis.get_majorticklocs() if low <= t <= high]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert len(metrics_axis.lines) == 6


def test_figures_never_touch_pyplot(tmp_path):
    code = ("import sys, nullspace_hf.plots as p; "
            "p.plot_noise_dynamics([{'round': 0, 'norm': 1.0, 'steps': 3, 'mse_prob': 0.02}], sys.argv[1]); "
            "p.plot_regularization_sweep([{'strength': 0.0, 'norm': 1.0, 'learned_match_rate': 1.0, "
            "'learned_mse_prob': 0.01, 'permuted_match_rate': 0.5, 'permuted_mse_prob': 0.1}], sys.argv[1]); "
            "p.plot_noise_combinations([0, 1], [0.01, 0.02], [0, 1], [[0, 1], [1, 2]], sys.argv[1], eps=0.03, "
            "num_noises=2); "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "f.png")], check=True)
    assert (tmp_path / "f.png").stat().st_size > 0


def test_import_nullspace_hf_leaves_the_applications_evaluation_and_matplotlib_unimported():
    code = ("import sys, nullspace_hf; "
            "loaded = [m for m in sys.modules if m.split('.')[0] == 'matplotlib' "
            "or m.startswith(('nullspace_hf.applications', 'nullspace_hf.evaluation'))]; "
            "assert not loaded, loaded; "
            "nullspace_hf.embed_watermark; nullspace_hf.evaluate_robustness; "
            "assert 'nullspace_hf.applications.watermark' in sys.modules; "
            "assert 'nullspace_hf.evaluation.robustness' in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_lazy_names_are_the_objects_of_their_modules():
    import nullspace_hf
    from nullspace_hf.applications import embed_watermark
    from nullspace_hf.evaluation import RobustnessReport

    assert nullspace_hf.embed_watermark is embed_watermark and nullspace_hf.RobustnessReport is RobustnessReport
    assert set(nullspace_hf.__all__) <= set(dir(nullspace_hf))
    with pytest.raises(AttributeError, match="has no attribute 'load_eval_dataset'"):
        nullspace_hf.load_eval_dataset  # noqa: B018


# the modules of the package that are not the training side: what the evaluation suite may import
NEUTRAL_MODULES = {"checks", "data", "errors", "modeling", "pixels", "processes"}


def _package_imports(path: Path) -> set[str]:
    """The ``nullspace_hf.<module>`` names that a file of the package imports (absolute or relative)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            targets = [module] if node.module else [f"{module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        names.update(".".join(t.split(".")[:2]) for t in targets if t.startswith("nullspace_hf."))
    return names


def test_the_evaluation_suite_imports_nothing_from_the_training_side():
    files = sorted((PACKAGE / "evaluation").rglob("*.py"))
    imported = set().union(*(_package_imports(path) for path in files))
    allowed = {f"nullspace_hf.{name}" for name in NEUTRAL_MODULES | {"evaluation"}}
    assert "nullspace_hf.evaluation" in imported and "nullspace_hf.pixels" in imported  # the walk sees imports
    assert imported <= allowed, sorted(imported - allowed)
    assert "nullspace_hf.config" in _package_imports(PACKAGE / "trainer.py")  # and would see a training import
