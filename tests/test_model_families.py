"""Issue 17: ViT-family models beyond ViT (CLIP, SigLIP, timm through TimmWrapper) and streaming train sets.

Every family is a tiny random model (16×16 RGB input, patch 4, hidden 32, 2 layers) trained briefly on
digits, as in test_trainer.py: untrained, it predicts nearly uniformly and there is no ε boundary.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    BeitConfig,
    BeitForImageClassification,
    CLIPConfig,
    CLIPForImageClassification,
    Data2VecVisionConfig,
    Data2VecVisionForImageClassification,
    DeiTConfig,
    DeiTForImageClassification,
    Dinov2Config,
    Dinov2ForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    SiglipConfig,
    SiglipForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
    ViTMSNConfig,
    ViTMSNForImageClassification,
)
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils import is_timm_available

import nullspace_hf.trainer as trainer_module
from nullspace_hf import NoiseInjector, NullspaceConfig, NullspaceTrainer, patch_embedding_nullspace, synthesize_noise
from nullspace_hf.data import ImageClassificationTransform, TensorRows, collate_image_classification, digits_dataset
from nullspace_hf.modeling import patch_embedding

from .helpers import digits_tensors, train_briefly

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 0.03
SIZE, PATCH, HIDDEN, LABELS = 16, 4, 32, 10
NUM_PATCHES = (SIZE // PATCH) ** 2
VISION = dict(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=SIZE,
              patch_size=PATCH, num_channels=3)
TEXT = dict(vocab_size=50, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
TIMM_REASON = ("transformers.utils.is_timm_available() is False: TimmWrapper needs timm, and both timm (timm/layers/"
               "create_norm.py imports torchvision.ops) and transformers' check need torchvision, which has no build "
               "for the CPU torch wheel this project is tested with")


class _TimmPatchEmbed(nn.Module):
    """timm's ``PatchEmbed``: ``proj`` (a patch Conv2d), flattened to tokens, then ``norm`` (Identity in its ViTs)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, HIDDEN, PATCH, stride=PATCH)
        self.norm = nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(images).flatten(2).transpose(1, 2))


class _TimmVisionTransformer(nn.Module):
    """The layout of timm's ``VisionTransformer``: ``patch_embed``, ``cls_token``, ``pos_embed``, blocks, head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = _TimmPatchEmbed()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, HIDDEN))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, 1 + NUM_PATCHES, HIDDEN))
        self.blocks = nn.Sequential(*[
            nn.TransformerEncoderLayer(HIDDEN, 2, 64, dropout=0.0, batch_first=True, norm_first=True) for _ in range(2)
        ])
        self.norm = nn.LayerNorm(HIDDEN)
        self.head = nn.Linear(HIDDEN, LABELS)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(images)
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


class TimmWrapperStandIn(nn.Module):
    """Shaped like ``TimmWrapperForImageClassification``: the timm model in ``timm_model``, and
    ``get_input_embeddings()`` returning None, as TimmWrapper's does."""

    def __init__(self) -> None:
        super().__init__()
        self.timm_model = _TimmVisionTransformer()

    def get_input_embeddings(self) -> None:
        return None

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ImageClassifierOutput:
        logits = self.timm_model(pixel_values)
        return ImageClassifierOutput(loss=None if labels is None else F.cross_entropy(logits, labels), logits=logits)


def _timm_wrapper() -> nn.Module:
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    model_args = {"img_size": SIZE, "patch_size": PATCH, "embed_dim": HIDDEN, "depth": 2, "num_heads": 2}
    return TimmWrapperForImageClassification(
        TimmWrapperConfig(architecture="vit_tiny_patch16_224", num_labels=LABELS, model_args=model_args))


BUILDERS = {
    "vit": lambda: ViTForImageClassification(ViTConfig(**VISION, num_labels=LABELS)),
    "deit": lambda: DeiTForImageClassification(DeiTConfig(**VISION, num_labels=LABELS)),
    "beit": lambda: BeitForImageClassification(BeitConfig(**VISION, num_labels=LABELS)),
    "data2vec-vision": lambda: Data2VecVisionForImageClassification(Data2VecVisionConfig(**VISION, num_labels=LABELS)),
    "vit-msn": lambda: ViTMSNForImageClassification(ViTMSNConfig(**VISION, num_labels=LABELS)),
    "dinov2": lambda: Dinov2ForImageClassification(Dinov2Config(
        **{k: v for k, v in VISION.items() if k != "intermediate_size"}, mlp_ratio=2, num_labels=LABELS)),
    "clip": lambda: CLIPForImageClassification(CLIPConfig(vision_config=VISION, text_config=TEXT, num_labels=LABELS)),
    "siglip": lambda: SiglipForImageClassification(SiglipConfig(vision_config=VISION, text_config=TEXT,
                                                                num_labels=LABELS)),
    "timm-stand-in": TimmWrapperStandIn,
    "timm": _timm_wrapper,
}
NEEDS_TIMM = pytest.mark.skipif(not is_timm_available(), reason=TIMM_REASON)
# (family, the module that gets the noise, its layout)
SITES = [
    ("vit", "vit.embeddings.patch_embeddings", "tokens"),
    ("deit", "deit.embeddings.patch_embeddings", "tokens"),
    ("beit", "beit.embeddings.patch_embeddings", "tokens"),
    ("data2vec-vision", "data2vec_vision.embeddings.patch_embeddings", "tokens"),
    ("vit-msn", "vit.embeddings.patch_embeddings", "tokens"),
    ("dinov2", "dinov2.embeddings.patch_embeddings", "tokens"),
    ("clip", "vision_model.embeddings.patch_embedding", "channels_first"),
    ("siglip", "vision_model.embeddings.patch_embedding", "channels_first"),
    ("timm-stand-in", "timm_model.patch_embed.proj", "channels_first"),
    pytest.param("timm", "timm_model.patch_embed.proj", "channels_first", marks=NEEDS_TIMM),
]
TRAINED = ["clip", "siglip", "timm-stand-in", pytest.param("timm", marks=NEEDS_TIMM)]


def _build(family: str) -> nn.Module:
    torch.manual_seed(0)
    return BUILDERS[family]().eval()


@functools.cache
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    return digits_tensors("train", image_size=SIZE)


@functools.cache
def _trained(family: str) -> nn.Module:
    pixels, labels = _digits()
    return train_briefly(_build(family), pixels, labels, steps=100)


def _config(tmp_path, **overrides) -> NullspaceConfig:
    values = dict(output_dir=str(tmp_path / "out"), max_steps=4, noise_refresh_steps=2, per_device_train_batch_size=16,
                  learning_rate=2e-3, noise_max_steps=100, logging_steps=1, save_strategy="no", report_to="none",
                  seed=0, use_cpu=True, disable_tqdm=True)
    values.update(overrides)
    return NullspaceConfig(**values)


def _image_noise(model: nn.Module, noise: torch.Tensor) -> torch.Tensor:
    """The image perturbation whose patch embedding is ``noise``: W·δ_p = ṽ_p for every patch p (the conv's
    weight W, d × c·r², has full row rank d = 32 < c·r² = 48). Its bias cancels: conv(x + δ) = conv(x) + W·δ."""
    nullspace = patch_embedding_nullspace(model)
    weight = patch_embedding(model).projection.weight.detach().double().reshape(HIDDEN, -1)
    patches = noise.double() @ torch.linalg.pinv(weight).T
    return nullspace.from_patches(patches.reshape(1, SIZE // PATCH, SIZE // PATCH, -1)).float()


@pytest.mark.parametrize("family,where,layout", SITES)
def test_patch_embedding_is_found_and_its_nullspace_is_exact(family, where, layout):
    model = _build(family)
    site = patch_embedding(model)
    names = {module: name for name, module in model.named_modules()}
    assert (names[site.module], site.layout) == (where, layout)
    assert site.projection.kernel_size == (PATCH, PATCH)
    nullspace = patch_embedding_nullspace(model)
    assert nullspace.nullity == 3 * PATCH * PATCH - HIDDEN
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    invisible = nullspace.sample(2, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        clean, moved = model(pixel_values=images).logits, model(pixel_values=images + invisible).logits
    torch.testing.assert_close(moved, clean, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["clip", "siglip", "timm-stand-in"])
def test_conv_layout_noise_respects_the_sample_mask_and_the_shape(family):
    model = _build(family)
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(NUM_PATCHES, HIDDEN, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), NoiseInjector(model) as injector:
        clean = model(pixel_values=images).logits
        assert injector.output_shape == (NUM_PATCHES, HIDDEN)
        with injector.applied(noise, sample_mask=torch.tensor([0.0, 1.0])):
            mixed = model(pixel_values=images).logits
        mismatch = r"noise has shape \(4, 32\) but the patch embeddings have shape \(16, 32\)"
        with injector.applied(noise[:4]), pytest.raises(ValueError, match=mismatch):
            model(pixel_values=images)
    torch.testing.assert_close(mixed[0], clean[0], atol=0, rtol=0)
    assert (mixed[1] - clean[1]).abs().max() > 1e-3


def test_a_cnn_has_no_patch_embedding():
    model = ResNetForImageClassification(ResNetConfig(hidden_sizes=[8, 16], depths=[1, 1], embedding_size=8,
                                                      num_labels=3))
    with pytest.raises(ValueError, match="ResNetForImageClassification has no patch embedding"):
        NoiseInjector(model)


@pytest.mark.parametrize("family", TRAINED)
def test_two_noise_rounds_train_each_family(tmp_path, family):
    """Both rounds synthesise a (num_patches, hidden) noise just inside ε; the hook adds it to the patch tokens."""
    model = copy.deepcopy(_trained(family))
    pixels, labels = _digits()
    data = TensorRows(pixels[:256], labels[:256])
    trainer = NullspaceTrainer(model=model, args=_config(tmp_path), train_dataset=data)
    trainer.train()
    assert [record["round"] for record in trainer.noise_history] == [0, 1]
    for record in trainer.noise_history:
        assert record["reached"] and EPS / 2 <= record["mse_prob"] < EPS, record
        assert record["steps"] + record["forward_steps"] > 1, record
    assert trainer.noise.shape == (NUM_PATCHES, HIDDEN)
    model.eval()
    images = pixels[:8]
    with torch.no_grad(), NoiseInjector(model) as injector:
        clean = model(pixel_values=images).logits
        with injector.applied(trainer.noise):
            noisy = model(pixel_values=images).logits
        through_pixels = model(pixel_values=images + _image_noise(model, trainer.noise)).logits
    assert (noisy - clean).abs().max() > 1e-2
    # the same change as the image perturbation with these patch embeddings: the noise is added to the patch
    # tokens in their order, before anything but the position embeddings and the CLS token touch them
    torch.testing.assert_close(noisy, through_pixels, atol=1e-4, rtol=1e-4)


class _TensorStream(torch.utils.data.IterableDataset):
    """A torch ``IterableDataset`` without a length: rows of two tensors, in order."""

    def __init__(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> None:
        self.pixel_values, self.labels = pixel_values, labels

    def __iter__(self):
        for pixels, label in zip(self.pixel_values, self.labels, strict=True):
            yield {"pixel_values": pixels, "labels": label}


def _datasets_stream():
    processor = ViTImageProcessor(size={"height": SIZE, "width": SIZE})
    return digits_dataset()["train"].to_iterable_dataset().map(
        ImageClassificationTransform(processor), batched=True, remove_columns=["image", "label"])


@pytest.mark.parametrize("kind", ["datasets", "torch"])
def test_a_streaming_train_set_trains_two_rounds_reading_on(tmp_path, monkeypatch, kind):
    """Each round's synthesis reads the stream on from where the previous round stopped."""
    pixels, labels = _digits()
    stream = _datasets_stream() if kind == "datasets" else _TensorStream(pixels[:256], labels[:256])
    first_batches = []

    def recording(model, batches, **kwargs):
        def tapped():
            for index, batch in enumerate(batches):
                if index == 0:
                    first_batches.append(batch["pixel_values"].clone())
                yield batch
        return synthesize_noise(model, tapped(), **kwargs)

    monkeypatch.setattr(trainer_module, "synthesize_noise", recording)
    args = _config(tmp_path, remove_unused_columns=False)
    trainer = NullspaceTrainer(model=copy.deepcopy(_trained("vit")), args=args, train_dataset=stream,
                               data_collator=collate_image_classification)
    trainer.train()
    assert [record["round"] for record in trainer.noise_history] == [0, 1]
    assert all(record["reached"] and record["mse_prob"] < EPS for record in trainer.noise_history)
    assert trainer.noise.shape == (NUM_PATCHES, HIDDEN)
    torch.testing.assert_close(first_batches[0], pixels[:8], atol=1e-6, rtol=0)  # noise_batch_size images
    assert not torch.equal(first_batches[1], first_batches[0])


def test_train_ratio_needs_a_train_set_with_a_length(tmp_path):
    with pytest.raises(ValueError, match="train_ratio needs a train_dataset with a length"):
        NullspaceTrainer(model=_build("vit"), args=_config(tmp_path, train_ratio=0.1),
                         train_dataset=_TensorStream(*_digits()))


def test_the_synthesis_stream_starts_again_when_it_ends_and_an_empty_one_is_an_error(tmp_path):
    pixels, labels = _digits()
    stream = _TensorStream(pixels[:40], labels[:40])
    trainer = NullspaceTrainer(model=_build("vit"), args=_config(tmp_path, noise_batch_size=16), train_dataset=stream)
    batches = trainer._synthesis_batches(0)
    sizes = [len(next(batches)["labels"]) for _ in range(4)]
    assert sizes == [16, 16, 8, 16]  # 40 rows: two full batches, the rest, then the stream again
    empty = _TensorStream(pixels[:0], labels[:0])
    trainer = NullspaceTrainer(model=_build("vit"), args=_config(tmp_path), train_dataset=empty)
    with pytest.raises(ValueError, match="The train_dataset yields no batch"):
        next(trainer._synthesis_batches(0))
