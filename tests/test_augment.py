"""The authors' training augmentation: per-image ops, mixup/cutmix soft targets, one batch for both CE terms."""

from __future__ import annotations

import pytest
import torch
from transformers import ViTImageProcessor

from nullspace_hf import NullspaceConfig, NullspaceTrainer
from nullspace_hf.augment import BatchAugmentation, soft_targets
from nullspace_hf.data import TensorRows
from nullspace_hf.pixels import PixelTransform
from nullspace_hf.trainer import LOSS_TERM

from .helpers import digits_tensors, make_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = dict(num_labels=10, image_size=16, patch_size=4, initializer_range=0.2)
PROCESSOR = ViTImageProcessor(size={"height": 16, "width": 16})  # mean = std = 0.5
PAPER = dict(  # the authors' stack (recipes/configs/paper_vit_b16.yaml)
    crop_min_scale=0.08, horizontal_flip_prob=0.5, rand_augment_ops=2, rand_augment_magnitude=9.0,
             random_erasing_prob=0.25, mixup_prob=1.0, mixup_switch_prob=0.5, label_smoothing_factor=0.1)
AUGMENTATION_FIELDS = ("crop_min_scale", "horizontal_flip_prob", "rand_augment_ops", "random_erasing_prob",
                       "mixup_prob")


@pytest.fixture(scope="module")
def dataset():
    pixels, labels = digits_tensors("train")
    return TensorRows(pixels[:64], labels[:64])


def _config(tmp_path, **overrides) -> NullspaceConfig:
    values = dict(output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=16, learning_rate=1e-3,
                  noise_refresh_steps=2, noise_max_steps=20, logging_steps=1, save_strategy="no", report_to="none",
                  seed=0, use_cpu=True, disable_tqdm=True)
    return NullspaceConfig(**{**values, **overrides})


class _Recording(NullspaceTrainer):
    """Records what every compute_loss call sees: (part of Eq. 6, pixel_values, labels)."""

    calls: list

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.calls.append((inputs.get(LOSS_TERM, "both"), inputs["pixel_values"].detach().clone(),
                               inputs["labels"].clone()))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def _record(tmp_path, dataset, **overrides) -> _Recording:
    trainer = _Recording(model=make_tiny_model(**MODEL), args=_config(tmp_path, **overrides), train_dataset=dataset,
                         processing_class=PROCESSOR)
    trainer.calls = []
    trainer.train()
    return trainer


@pytest.mark.parametrize("noise_mode", ["nullspace", "random"])
def test_clean_and_noisy_terms_get_the_same_augmented_batch_and_soft_targets(tmp_path, dataset, noise_mode):
    trainer = _record(tmp_path, dataset, noise_mode=noise_mode, **PAPER)
    parts = [part for part, _, _ in trainer.calls]
    assert parts == ["clean", "noisy"] * 4  # 4 steps, each a clean then a noisy term
    raw = torch.stack([dataset[i]["pixel_values"] for i in range(len(dataset))])
    for (_, clean_x, clean_y), (_, noisy_x, noisy_y) in zip(trainer.calls[::2], trainer.calls[1::2], strict=True):
        assert torch.equal(clean_x, noisy_x) and torch.equal(clean_y, noisy_y)
        assert clean_y.shape == (16, 10) and clean_y.is_floating_point()  # mixup_prob=1: every batch is mixed
        assert torch.allclose(clean_y.sum(-1), torch.ones(16), atol=1e-5)  # probability rows
        assert clean_y.min() >= 0.1 / 10 - 1e-6  # label smoothing 0.1 folded in: no class below s/C
        # augmented: no row of the batch is an unchanged training image
        distances = torch.cdist(clean_x.flatten(1), raw.flatten(1)).min(dim=1).values
        assert (distances > 1e-3).all()


def test_the_soft_target_loss_is_cross_entropy_against_the_mixed_targets(tmp_path, dataset):
    trainer = NullspaceTrainer(model=make_tiny_model(**MODEL), args=_config(tmp_path, noise_mode="none", **PAPER),
                               train_dataset=dataset, processing_class=PROCESSOR)
    logits = torch.randn(4, 10)
    targets = torch.softmax(torch.randn(4, 10), -1)
    expected = -(targets * torch.log_softmax(logits, -1)).sum(-1).mean()
    assert torch.allclose(trainer._cross_entropy(logits, targets), expected, atol=1e-6)  # float32 rounding


def test_augmentation_off_passes_the_batch_through_unchanged(tmp_path, dataset):
    trainer = _record(tmp_path, dataset, noise_mode="nullspace")
    assert trainer.augmentation is None
    for _, pixels, labels in trainer.calls:
        assert labels.dtype == torch.long and labels.shape == (16,)
        rows = [min(range(len(dataset)), key=lambda i: (dataset[i]["pixel_values"] - x).abs().sum().item())
                for x in pixels]
        assert torch.equal(pixels, torch.stack([dataset[i]["pixel_values"] for i in rows]))
        assert torch.equal(labels, torch.stack([dataset[i]["labels"] for i in rows]))


def _constant_batch(values: list[float]) -> torch.Tensor:
    """Images of one grey level each, in model-input units of PROCESSOR (mean = std = 0.5)."""
    return torch.stack([torch.full((3, 16, 16), (v - 0.5) / 0.5) for v in values])


@pytest.mark.parametrize("switch", [0.0, 1.0], ids=["mixup", "cutmix"])
def test_soft_targets_weigh_each_label_by_its_image_share(switch):
    torch.manual_seed(0)
    values = [0.1, 0.3, 0.5, 0.7, 0.9, 0.2]
    labels = torch.arange(6)
    augmentation = BatchAugmentation(PixelTransform.from_processor(PROCESSOR, 3), 6, mixup_prob=1.0,
                                     mixup_switch_prob=switch)
    mixed, targets = augmentation.mix(_constant_batch(values), labels)
    pixels = mixed * 0.5 + 0.5
    for i in range(6):
        weights = {j: float(w) for j, w in enumerate(targets[i]) if w > 1e-6}
        # the mean grey level of a mixed image is the target-weighted mean of its sources' levels
        assert float(pixels[i].mean()) == pytest.approx(sum(w * values[j] for j, w in weights.items()), abs=1e-4)
        assert sum(weights.values()) == pytest.approx(1.0, abs=1e-5)
        if switch == 1.0:  # cutmix: pixel shares are exact counts of 16 x 16
            share = {j: float(torch.isclose(pixels[i, 0], torch.tensor(values[j]), atol=1e-4).float().mean())
                     for j in weights}
            assert all(share[j] == pytest.approx(w, abs=1e-4) for j, w in weights.items())


def test_soft_targets_fold_in_label_smoothing():
    targets = soft_targets(torch.tensor([2, 0]), 4, 0.1)
    assert torch.allclose(targets, torch.tensor([[0.025, 0.025, 0.925, 0.025], [0.925, 0.025, 0.025, 0.025]]))


def test_per_image_augmentation_keeps_valid_pixels_and_changes_images():
    torch.manual_seed(0)
    pixels_in = torch.rand(32, 3, 16, 16)
    inputs = (pixels_in - 0.5) / 0.5
    augmentation = BatchAugmentation(PixelTransform.from_processor(PROCESSOR, 3), 10, crop_min_scale=0.08,
                                     horizontal_flip_prob=0.5, rand_augment_ops=2, random_erasing_prob=0.25)
    out = augmentation.images(inputs) * 0.5 + 0.5
    assert out.shape == inputs.shape
    assert out.min() >= -1e-5 and out.max() <= 1 + 1e-5  # still an image in [0, 1]
    assert (out - pixels_in).abs().flatten(1).max(dim=1).values.min() > 1e-3  # every image changed


def test_the_synthesis_sees_augmented_but_unmixed_batches(tmp_path, dataset):
    trainer = NullspaceTrainer(model=make_tiny_model(**MODEL), args=_config(tmp_path, **PAPER),
                               train_dataset=dataset, processing_class=PROCESSOR)
    batch = next(trainer._synthesis_batches(0))
    raw = torch.stack([dataset[i]["pixel_values"] for i in range(len(dataset))])
    assert batch["labels"].dtype == torch.long  # integer labels: not mixed
    assert (torch.cdist(batch["pixel_values"].flatten(1), raw.flatten(1)).min(dim=1).values > 1e-3).all()


@pytest.mark.parametrize("field", AUGMENTATION_FIELDS)
def test_augmentation_without_an_image_processor_is_one_clear_error(tmp_path, dataset, field):
    value = {"crop_min_scale": 0.5, "rand_augment_ops": 2}.get(field, 0.5)
    with pytest.raises(ValueError, match="processing_class"):
        NullspaceTrainer(model=make_tiny_model(**MODEL), args=_config(tmp_path, **{field: value}),
                         train_dataset=dataset)


@pytest.mark.parametrize("field, value", [("mixup_prob", 1.5), ("random_erasing_prob", -0.1),
                                          ("crop_min_scale", 0.0), ("rand_augment_ops", -1),
                                          ("rand_augment_magnitude", 12.0), ("train_ratio", 0.0)])
def test_bad_augmentation_settings_are_refused(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        _config(tmp_path, **{field: value})


@pytest.mark.parametrize("ratio, batch, expected_round", [(0.25, 16, 1), (0.5, 8, 4), (1.0, 16, 4)])
def test_train_ratio_sets_the_round_length_and_the_rounds(tmp_path, dataset, ratio, batch, expected_round):
    args = _config(tmp_path, train_ratio=ratio, per_device_train_batch_size=batch, max_steps=-1, num_train_epochs=3)
    trainer = NullspaceTrainer(model=make_tiny_model(**MODEL), args=args, train_dataset=dataset)
    assert args.noise_refresh_steps == expected_round  # ceil(ratio * 64 / batch)
    assert args.max_steps == 3 * expected_round  # num_train_epochs counts rounds
    trainer.train()
    assert [r["step"] for r in trainer.noise_history] == [expected_round * k for k in range(3)]
