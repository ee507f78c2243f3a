"""Exact patch-embedding nullspace (paper §3.1, Eq. 2, Table 1)."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel

from nullspace_hf import patch_embedding_nullspace
from nullspace_hf.modeling import patch_projection

from .helpers import make_tiny_model

# (family, patch size, channels, image size (H, W))
CASES = [
    ("vit", 8, 3, (32, 32)),
    ("vit", 4, 3, (16, 16)),
    ("vit", 8, 1, (32, 32)),
    ("vit", 8, 3, (24, 32)),
    ("vit", 16, 1, (32, 48)),
    ("deit", 8, 3, (32, 32)),
    ("dinov2", 8, 3, (32, 32)),
    ("beit", 8, 3, (32, 32)),
]


def _model(family, patch, channels, size):
    return make_tiny_model(family, patch_size=patch, num_channels=channels,
                           image_size=size if family == "vit" else size[0])


def _logits(model, pixels):
    with torch.no_grad():
        return model(pixel_values=pixels).logits


@pytest.mark.parametrize("family,patch,channels,size", CASES)
def test_nullity_is_rank_nullity_for_random_weights(family, patch, channels, size):
    nullspace = patch_embedding_nullspace(_model(family, patch, channels, size))
    assert nullspace.rank == 32
    assert nullspace.nullity == channels * patch * patch - 32
    assert nullspace.basis.shape == (nullspace.nullity, channels * patch * patch)
    gram = nullspace.basis @ nullspace.basis.T
    torch.testing.assert_close(gram, torch.eye(nullspace.nullity, dtype=torch.float64), atol=1e-10, rtol=0)
    assert nullspace.patch_size == (patch, patch) and nullspace.num_channels == channels
    assert torch.all(nullspace.singular_values[:-1] >= nullspace.singular_values[1:])


@pytest.mark.parametrize("family,patch,channels,size", CASES)
def test_nullspace_noise_leaves_logits_unchanged(family, patch, channels, size):
    model = _model(family, patch, channels, size)
    nullspace = patch_embedding_nullspace(model)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(4, channels, *size, generator=generator)
    noise = nullspace.sample(4, size, scale=1.0, generator=generator)
    assert noise.shape == images.shape
    clean = _logits(model, images)
    exact_change = (_logits(model, images + noise) - clean).abs().max()
    random = torch.randn(noise.shape, generator=generator)
    random = random * noise.norm() / random.norm()
    random_change = (_logits(model, images + random) - clean).abs().max()
    assert exact_change <= 1e-4
    assert random_change > 100 * max(float(exact_change), 1e-6)


@pytest.mark.parametrize("family,patch,channels,size", CASES)
def test_project_is_idempotent_and_invisible_to_the_patch_embedding(family, patch, channels, size):
    model = _model(family, patch, channels, size)
    nullspace = patch_embedding_nullspace(model)
    images = torch.randn(3, channels, *size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    projected = nullspace.project(images)
    torch.testing.assert_close(nullspace.project(projected), projected, atol=1e-10, rtol=0)
    assert projected.norm() > 0.5 * images.norm() * (nullspace.nullity / nullspace.patch_dim) ** 0.5
    conv = patch_projection(model).double()
    torch.testing.assert_close(conv(images - projected), conv(images), atol=1e-8, rtol=0)


def test_sample_is_reproducible_and_scales():
    nullspace = patch_embedding_nullspace(make_tiny_model())
    first = nullspace.sample(2, 32, scale=2.0, generator=torch.Generator().manual_seed(3))
    second = nullspace.sample(2, 32, scale=2.0, generator=torch.Generator().manual_seed(3))
    unit = nullspace.sample(2, 32, scale=1.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(first, 2 * unit)


def test_forced_rank_deficiency_is_detected():
    model = make_tiny_model()
    conv = patch_projection(model)
    matrix = conv.weight.detach().double().reshape(32, -1)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    s[-2:] = 0
    with torch.no_grad():
        conv.weight.copy_((u @ torch.diag(s) @ vh).reshape(conv.weight.shape).float())
    nullspace = patch_embedding_nullspace(model)
    assert nullspace.rank == 30
    assert nullspace.nullity == 3 * 8 * 8 - 32 + 2
    assert patch_embedding_nullspace(model, rtol=0.0).rank >= 30


def test_image_size_not_multiple_of_patch_is_a_clear_error():
    nullspace = patch_embedding_nullspace(make_tiny_model())
    with pytest.raises(ValueError, match="not a multiple of the patch size 8×8"):
        nullspace.sample(1, (30, 32))
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        nullspace.project(torch.zeros(1, 3, 32, 33))


def test_wrong_channel_count_is_a_clear_error():
    nullspace = patch_embedding_nullspace(make_tiny_model())
    with pytest.raises(ValueError, match=r"Expected images of shape \(batch, 3, height, width\)"):
        nullspace.project(torch.zeros(1, 1, 32, 32))


def test_text_model_is_a_clear_error_naming_the_class():
    model = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32))
    with pytest.raises(ValueError, match="BertModel has no patch embedding"):
        patch_embedding_nullspace(model)


def test_empty_nullspace_has_no_samples():
    model = make_tiny_model(patch_size=2, image_size=8)  # 3·2·2 = 12 < 32: full column rank
    nullspace = patch_embedding_nullspace(model)
    assert nullspace.nullity == 0 and nullspace.rank == 12
    with pytest.raises(ValueError, match="empty nullspace"):
        nullspace.sample(1, 8)
