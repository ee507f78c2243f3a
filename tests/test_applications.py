"""Applications of the nullspace (App. E watermark, App. F targeted noise and saliency, §6 fingerprint)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from scipy.optimize import minimize
from transformers import ViTImageProcessor

from nullspace_hf.applications import (
    NullspaceFingerprint,
    attention_rollout,
    compare_fingerprints,
    embed_watermark,
    grad_cam,
    map_correlation,
    nullspace_fingerprint,
    saliency_maps,
    targeted_image,
)
from nullspace_hf.applications.nullspace_fit import bounded_nullspace_fit, pixel_nullspace
from nullspace_hf.modeling import patch_projection
from nullspace_hf.pixels import PixelTransform
from nullspace_hf.plots import plot_saliency_triplet, plot_watermark

from .helpers import make_tiny_model

SIZE = 32
IMAGENET = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
PROCESSORS = {
    "none": None,
    "vit": ViTImageProcessor(size={"height": SIZE, "width": SIZE}),
    "imagenet": ViTImageProcessor(size={"height": SIZE, "width": SIZE}, **IMAGENET),
}


def smooth_image(seed: int, size: int = SIZE) -> Image.Image:
    """A random smooth colour picture (blurred noise, full 0–255 range) as a PIL image."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((size // 4, size // 4, 3))
    array = np.kron(coarse, np.ones((4, 4, 1)))
    array = (array - array.min()) / (array.max() - array.min())
    return Image.fromarray((array * 255).round().astype(np.uint8))


def logo(size: int = SIZE) -> Image.Image:
    """A strong logo: a red disc with a black bar on white."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((size // 8, size // 8, size - size // 8, size - size // 8), fill="red")
    draw.rectangle((size // 4, size // 2 - 2, size - size // 4, size // 2 + 2), fill="black")
    return image


def patch_embedding_of(model, pixels: torch.Tensor, processor) -> torch.Tensor:
    """The patch-embedding conv output (without bias) of [0, 1] pixels, in float64."""
    inputs = PixelTransform.from_processor(processor, 3).to_model_input(pixels.to(torch.float64))
    weight = patch_projection(model).weight.detach().to(torch.float64)
    return torch.nn.functional.conv2d(inputs, weight, stride=weight.shape[-1])


@pytest.fixture(scope="module")
def model():
    """Tiny ViT, patch 8 on 32×32, hidden 32: nullity 160 of c·r² = 192 (more than half, like ViT-T/16)."""
    return make_tiny_model("vit")


@pytest.fixture(scope="module")
def full_rank_model():
    """Hidden 192 = c·r²: nullity 0."""
    return make_tiny_model("vit", hidden_size=192)


# ----------------------------------------------------------------------------------------------
# Watermark (App. E)


@pytest.mark.parametrize("processor_name", list(PROCESSORS))
def test_watermark_is_visible_but_invisible_to_the_model(model, processor_name):
    processor = PROCESSORS[processor_name]
    result = embed_watermark(model, smooth_image(0), logo(), processor=processor)
    assert result.psnr < 25
    assert result.prediction_after == result.prediction_before
    assert result.max_logit_change <= 1e-3
    assert result.image.min() >= 0 and result.image.max() <= 1
    assert result.image.shape == (3, SIZE, SIZE)
    before = patch_embedding_of(model, result.original[None], processor)
    after = patch_embedding_of(model, result.image[None], processor)
    assert (after - before).abs().max() <= 1e-5 * before.abs().max()


def test_watermark_works_for_single_channel_models():
    grey = make_tiny_model("vit", num_channels=1, hidden_size=16, num_attention_heads=2)
    processor = ViTImageProcessor(size={"height": SIZE, "width": SIZE}, image_mean=[0.3], image_std=[0.2])
    result = embed_watermark(grey, smooth_image(0), logo(), processor=processor)
    assert result.image.shape == (1, SIZE, SIZE)
    assert result.psnr < 25 and result.max_logit_change <= 1e-3
    assert result.to_pil().mode == "L"


def test_watermark_must_account_for_the_processor_normalisation(model):
    """Fitting in pixel space while ignoring the per-channel std leaves the model's nullspace."""
    processor = PROCESSORS["imagenet"]
    original = torch.from_numpy(np.asarray(smooth_image(0), dtype=np.float64) / 255).permute(2, 0, 1)[None]
    goal = torch.from_numpy(np.asarray(logo(), dtype=np.float64) / 255).permute(2, 0, 1)[None]
    naive = bounded_nullspace_fit(original, goal, pixel_nullspace(model, PixelTransform.identity(3)))
    correct = bounded_nullspace_fit(original, goal, pixel_nullspace(model, PixelTransform.from_processor(processor, 3)))
    reference = patch_embedding_of(model, original, processor)
    naive_change = (patch_embedding_of(model, naive, processor) - reference).abs().max()
    correct_change = (patch_embedding_of(model, correct, processor) - reference).abs().max()
    assert correct_change < 1e-9 < 1e-2 < naive_change


def test_watermark_strength_controls_visibility(model):
    weak, strong = (embed_watermark(model, smooth_image(1), logo(), strength) for strength in (0.2, 1.0))
    assert weak.psnr > strong.psnr
    assert max(weak.max_logit_change, strong.max_logit_change) <= 1e-3


def test_watermark_result_converts_to_pil(model):
    result = embed_watermark(model, smooth_image(2), logo())
    image = result.to_pil()
    assert image.size == (SIZE, SIZE) and image.mode == "RGB"
    assert np.abs(np.asarray(image) / 255 - result.image.permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6


def test_pil_images_are_resized_to_the_model_input(model):
    result = embed_watermark(model, smooth_image(3, size=48), logo(size=20))
    assert result.image.shape == (3, SIZE, SIZE)


# ----------------------------------------------------------------------------------------------
# Eq. 12 with bounds


def _tiny_space(seed: int = 0):
    """One-channel patch 4 (n = 16), hidden 6: nullity 10."""
    net = make_tiny_model("vit", seed=seed, num_channels=1, patch_size=4, image_size=4, hidden_size=6,
                          num_attention_heads=1)
    return pixel_nullspace(net, PixelTransform.identity(1))


def test_unconstrained_fit_is_the_least_squares_projection():
    space = _tiny_space()
    origin = torch.full((1, 1, 4, 4), 0.5, dtype=torch.float64)
    change = 0.1 * torch.randn(1, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    fit = space.project_patches(space.to_patches(change)).reshape(-1)
    coefficients = torch.linalg.lstsq(space.basis.T, change.reshape(-1, 1)).solution
    assert torch.allclose(fit, (space.basis.T @ coefficients).reshape(-1), atol=1e-12)
    assert torch.allclose(bounded_nullspace_fit(origin, origin + change, space).reshape(-1), origin.reshape(-1) + fit,
                          atol=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_bounded_fit_matches_a_generic_constrained_solver(seed):
    space = _tiny_space(seed)
    generator = torch.Generator().manual_seed(seed)
    origin = torch.rand(1, 1, 4, 4, dtype=torch.float64, generator=generator)
    origin[0, 0, 0, :2] = torch.tensor([0.0, 1.0], dtype=torch.float64)
    goal = 1.5 * torch.rand(1, 1, 4, 4, dtype=torch.float64, generator=generator) - 0.25
    ours = bounded_nullspace_fit(origin, goal, space).reshape(-1).numpy()
    x0, g = origin.reshape(-1).numpy(), goal.reshape(-1).numpy()
    complement = space.complement.numpy()
    reference = minimize(
        lambda z: ((z - g) ** 2).sum(), x0, jac=lambda z: 2 * (z - g), method="SLSQP", bounds=[(0, 1)] * 16,
        constraints=[{"type": "eq", "fun": lambda z: complement @ (z - x0), "jac": lambda z: complement}],
        options={"ftol": 1e-14, "maxiter": 500},
    )
    assert reference.success
    assert ours.min() >= 0 and ours.max() <= 1
    assert np.abs(complement @ (ours - x0)).max() <= 1e-9
    assert ((ours - g) ** 2).sum() <= ((reference.x - g) ** 2).sum() + 1e-7


def test_bounded_fit_falls_back_to_a_feasible_step_when_not_converged():
    space = _tiny_space()
    origin = torch.rand(1, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    goal = origin + 3.0
    result = bounded_nullspace_fit(origin, goal, space, max_iterations=1)
    assert result.min() >= 0 and result.max() <= 1
    assert (space.complement @ (result - origin).reshape(-1)).abs().max() <= 1e-12


# ----------------------------------------------------------------------------------------------
# Targeted nullspace noise (App. F) and saliency


@pytest.mark.parametrize("family", ["vit", "deit", "dinov2", "beit"])
def test_targeted_image_looks_like_the_target_and_is_seen_as_the_source(family):
    net = make_tiny_model(family)
    result = targeted_image(net, smooth_image(4), smooth_image(5), processor=PROCESSORS["imagenet"])
    assert result.mse_to_target < result.mse_to_source
    assert result.max_logit_change <= 1e-3
    assert result.transformed_prediction == result.source_prediction
    assert result.image.min() >= 0 and result.image.max() <= 1


@pytest.mark.parametrize("family", ["vit", "deit", "dinov2", "beit"])
def test_saliency_of_source_and_transformed_agree(family):
    net = make_tiny_model(family)
    processor = PROCESSORS["vit"]
    result = targeted_image(net, smooth_image(6), logo(), processor=processor)
    maps = saliency_maps(net, torch.stack([result.source, result.target, result.image]), processor)
    for method, values in maps.items():
        assert values.shape == (3, SIZE // 8, SIZE // 8), method
        assert map_correlation(values[0], values[2]) >= 0.99, method
        assert map_correlation(values[0], values[1]) < 0.99, method


def test_attention_rollout_restores_the_attention_implementation(model):
    before = model.config._attn_implementation
    attention_rollout(model, torch.randn(2, 3, SIZE, SIZE))
    assert model.config._attn_implementation == before


def test_attention_rollout_of_one_layer_is_the_cls_attention():
    net = make_tiny_model("vit", num_hidden_layers=1)
    pixel_values = torch.randn(2, 3, SIZE, SIZE)
    rollout = attention_rollout(net, pixel_values, residual=0.0)
    net.set_attn_implementation("eager")
    (attention,) = net(pixel_values=pixel_values, output_attentions=True).attentions
    expected = attention.mean(dim=1)[:, 0, 1:].reshape(2, 4, 4)
    assert torch.allclose(rollout, expected, atol=1e-6)
    assert torch.allclose(attention_rollout(net, pixel_values, residual=1.0), torch.zeros(2, 4, 4))


def test_grad_cam_is_non_negative_and_depends_on_the_class(model):
    pixel_values = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    maps = [grad_cam(model, pixel_values, target_class=index) for index in range(3)]
    assert all(m.shape == (1, 4, 4) and m.min() >= 0 for m in maps)
    assert not torch.allclose(maps[0], maps[1])
    with pytest.raises(ValueError, match="target_class"):
        grad_cam(model, pixel_values, target_class=3)


def test_figures_are_written(model, tmp_path):
    processor = PROCESSORS["vit"]
    plot_watermark(embed_watermark(model, smooth_image(7), logo(), processor=processor), tmp_path / "w.png")
    result = targeted_image(model, smooth_image(7), logo(), processor=processor)
    correlations = plot_saliency_triplet(model, result, tmp_path / "t.png", processor=processor)
    assert (tmp_path / "w.png").stat().st_size > 0 and (tmp_path / "t.png").stat().st_size > 0
    assert min(pair["transformed"] for pair in correlations.values()) >= 0.99


# ----------------------------------------------------------------------------------------------
# Fingerprint (§6)


def _with_patch_weight(net, weight: torch.Tensor):
    with torch.no_grad():
        patch_projection(net).weight.copy_(weight)
    return net


def test_fingerprint_identifies_the_same_weights_under_hidden_mixing(model):
    weight = patch_projection(model).weight.detach()
    mixing = torch.randn(32, 32, generator=torch.Generator().manual_seed(0)) + 4 * torch.eye(32)
    mixed = _with_patch_weight(make_tiny_model("vit"), (mixing @ weight.reshape(32, -1)).reshape(weight.shape))
    match = compare_fingerprints(nullspace_fingerprint(model), nullspace_fingerprint(mixed))
    assert match.similarity == pytest.approx(1.0, abs=1e-6)
    assert match.largest_angle_degrees < 1e-3


@pytest.mark.parametrize("relative_change", [0.05, 0.2])
def test_fingerprint_separates_perturbed_descendants_from_independent_models(model, relative_change):
    weight = patch_projection(model).weight.detach()
    delta = torch.randn(weight.shape, generator=torch.Generator().manual_seed(1))
    child = _with_patch_weight(make_tiny_model("vit"), weight + relative_change * delta * weight.norm() / delta.norm())
    parent_print = nullspace_fingerprint(model)
    descendant = compare_fingerprints(parent_print, nullspace_fingerprint(child))
    independent = [compare_fingerprints(parent_print, nullspace_fingerprint(make_tiny_model("vit", seed=seed)))
                   for seed in (1, 2, 3)]
    assert descendant.similarity > 0.5
    assert max(abs(match.similarity) for match in independent) < 0.2
    assert descendant.largest_angle_degrees < min(match.largest_angle_degrees for match in independent)


def test_fingerprint_score_is_the_same_for_nullspaces_and_row_spaces():
    first, second = (nullspace_fingerprint(make_tiny_model("vit", seed=seed, hidden_size=40)) for seed in (0, 4))

    def complement(fingerprint: NullspaceFingerprint) -> NullspaceFingerprint:
        q, _ = torch.linalg.qr(fingerprint.basis.T, mode="complete")
        return NullspaceFingerprint(q[:, fingerprint.nullity :].T, fingerprint.num_channels, fingerprint.patch_size)

    on_nullspaces = compare_fingerprints(first, second)
    on_row_spaces = compare_fingerprints(complement(first), complement(second))
    assert on_nullspaces.similarity == pytest.approx(on_row_spaces.similarity, abs=1e-9)
    assert on_nullspaces.chance == pytest.approx(152 / 192)


def test_fingerprint_round_trips_through_safetensors(model, tmp_path):
    fingerprint = nullspace_fingerprint(model)
    fingerprint.save(tmp_path / "print.safetensors")
    loaded = NullspaceFingerprint.load(tmp_path / "print.safetensors")
    assert torch.equal(loaded.basis, fingerprint.basis)
    assert (loaded.num_channels, loaded.patch_size) == (3, (8, 8))
    (tmp_path / "bad.safetensors").write_text("not a fingerprint")
    with pytest.raises(ValueError, match="not a nullspace fingerprint"):
        NullspaceFingerprint.load(tmp_path / "bad.safetensors")


def test_fingerprints_of_different_patch_geometry_are_not_compared(model):
    other = make_tiny_model("vit", patch_size=4)
    with pytest.raises(ValueError, match="different patch geometries"):
        compare_fingerprints(nullspace_fingerprint(model), nullspace_fingerprint(other))


# ----------------------------------------------------------------------------------------------
# Errors


def test_nullity_zero_is_a_clear_error_for_every_operation(full_rank_model):
    with pytest.raises(ValueError, match="empty patch-embedding nullspace.*nothing to embed"):
        embed_watermark(full_rank_model, smooth_image(0), logo())
    with pytest.raises(ValueError, match="empty patch-embedding nullspace.*nothing to embed"):
        targeted_image(full_rank_model, smooth_image(0), smooth_image(1))
    with pytest.raises(ValueError, match="empty patch-embedding nullspace.*no nullspace to fingerprint"):
        nullspace_fingerprint(full_rank_model)


@pytest.mark.parametrize(
    ("image", "watermark", "strength", "message"),
    [
        (torch.rand(1, SIZE, SIZE), torch.rand(3, SIZE, SIZE), 1.0, r"image must be a \(3, height, width\)"),
        (torch.rand(3, SIZE, SIZE), torch.rand(1, 3, SIZE, SIZE), 1.0, r"watermark must be a \(3, height, width\)"),
        (torch.rand(3, SIZE, SIZE) * 255, torch.rand(3, SIZE, SIZE), 1.0, r"image must hold pixel values in \[0, 1\]"),
        (torch.rand(3, SIZE, SIZE), torch.rand(3, 16, 16), 1.0, "must have the same size"),
        (torch.rand(3, 16, 16), torch.rand(3, 16, 16), 1.0, "Input image size"),
        (torch.rand(3, 20, 20), torch.rand(3, 20, 20), 1.0, "not a multiple of the patch size"),
        (torch.rand(3, SIZE, SIZE), torch.rand(3, SIZE, SIZE), 0.0, "strength must be a positive number"),
        ([[0.5]], torch.rand(3, SIZE, SIZE), 1.0, "image must be a PIL image or"),
    ],
)
def test_bad_inputs_are_clear_errors(model, image, watermark, strength, message):
    with pytest.raises(ValueError, match=message):
        embed_watermark(model, image, watermark, strength)


def test_psnr_is_infinite_for_an_unchanged_image(model):
    image = torch.rand(3, SIZE, SIZE)
    result = embed_watermark(model, image, image)
    # the image is identical (PSNR exactly inf); the two forward passes may differ by float rounding (~1e-7)
    assert math.isinf(result.psnr) and result.max_logit_change < 1e-5
