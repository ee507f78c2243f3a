"""Released corruption sets as evaluation input (ImageNet-C folders, CIFAR-10-C .npy files, datasets copies), and
on-the-fly corruption in DataLoader workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image
from transformers import ViTImageProcessor

from nullspace_hf.data import digits_dataset
from nullspace_hf.evaluation import (
    ALEXNET_ERRORS,
    CIFAR10_CLASSES,
    IMAGENET_C_CORRUPTIONS,
    corrupt_dataset,
    evaluate_robustness,
    open_corruption_set,
)
from nullspace_hf.evaluation.imagenet_classes import WNID_TO_INDEX

from .helpers import make_tiny_model

PROCESSOR = ViTImageProcessor(size={"height": 32, "width": 32})
GOLDFISH, TENCH = "n01443537", "n01440764"  # ImageNet-1k classes 1 and 0

pytestmark = pytest.mark.usefixtures("one_thread")


def _constant_model(num_labels: int, predicted: int, id2label: dict[int, str] | None = None):
    """A tiny ViT that predicts ``predicted`` for every image."""
    options = {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}} if id2label else {}
    model = make_tiny_model("vit", num_labels=num_labels, **options)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        model.classifier.bias[predicted] = 10.0
    return model


def _clean(label: int, size: int = 4) -> Dataset:
    return digits_dataset()["test"].select(range(size)).map(lambda row: {"label": label})


def _evaluate(model, dataset, **kwargs):
    return evaluate_robustness(model, dataset, image_processor=PROCESSOR, attacks=None, progress=False, **kwargs)


def _imagenet_c(root, corruptions, severities=(1, 2, 3, 4, 5), counts=None):
    """ImageNet-C's layout with tiny JPEGs: per corruption and severity, 2 goldfish and 1 tench."""
    counts = counts or {GOLDFISH: 2, TENCH: 1}
    rng = np.random.default_rng(0)
    for corruption in corruptions:
        for severity in severities:
            for wnid, count in counts.items():
                folder = root / corruption / str(severity) / wnid
                folder.mkdir(parents=True)
                for i in range(count):
                    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                    Image.fromarray(image).save(folder / f"ILSVRC2012_val_{i:08d}.JPEG")
    return root


# ImageNet-C -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imagenet_c(tmp_path_factory):
    return _imagenet_c(tmp_path_factory.mktemp("ImageNet-C"), IMAGENET_C_CORRUPTIONS)


def test_imagenet_c_folder_gives_the_alexnet_normalised_mce(imagenet_c):
    model = _constant_model(1000, WNID_TO_INDEX[GOLDFISH])
    assert WNID_TO_INDEX[GOLDFISH] == 1 and WNID_TO_INDEX[TENCH] == 0
    report = _evaluate(model, _clean(1), corruptions="imagenet-c", corruption_source=str(imagenet_c))
    assert report.corruption_source["kind"] == "imagenet-c" and report.corruption_source["images_per_set"] == [3]
    assert str(imagenet_c) in report.corruption_source["description"]
    for name in IMAGENET_C_CORRUPTIONS:
        assert report.corruptions[name] == pytest.approx(dict.fromkeys(range(1, 6), 200 / 3))
    # Every set: 2 of 3 right, error 1/3; CE_c = (1/3) / AlexNet_c; mCE = 100 · mean CE_c.
    expected = 100 * np.mean([(1 / 3) / ALEXNET_ERRORS[name] for name in IMAGENET_C_CORRUPTIONS])
    assert report.mce == pytest.approx(expected, rel=1e-9)
    assert report.mce_baseline == "alexnet" and report.mce_official
    assert report.corruption_errors["fog"] == pytest.approx((1 / 3) / ALEXNET_ERRORS["fog"])
    assert report.clean_accuracy == 100.0 and report.num_samples == 4


def test_a_part_of_imagenet_c_has_no_alexnet_mce_but_a_reference_ce(imagenet_c):
    model = _constant_model(1000, WNID_TO_INDEX[GOLDFISH])
    alone = _evaluate(model, _clean(1), corruptions=["fog", "snow"], severities=(1, 2), corruption_source=imagenet_c)
    assert alone.mce is None and alone.mce_baseline is None and alone.relative_mce is None
    assert alone.corruptions == {"fog": {1: pytest.approx(200 / 3), 2: pytest.approx(200 / 3)},
                                 "snow": {1: pytest.approx(200 / 3), 2: pytest.approx(200 / 3)}}
    # The reference always predicts tench: right on 1 of 3, error 2/3; CE = (1/3) / (2/3) = 0.5.
    versus = _evaluate(model, _clean(1), corruptions=["fog", "snow"], severities=(1, 2), corruption_source=imagenet_c,
                       reference_model=_constant_model(1000, WNID_TO_INDEX[TENCH]))
    assert versus.mce_baseline == "reference" and versus.mce == pytest.approx(50.0)
    assert versus.relative_mce == pytest.approx(50.0)
    assert versus.reference["corruptions"]["fog"][1] == pytest.approx(100 / 3)


def test_max_samples_spreads_over_the_imagenet_c_classes(imagenet_c):
    subset = open_corruption_set(imagenet_c, max_samples=2)
    assert sorted(subset.labels("fog", 3).tolist()) == [0, 1]  # one tench, one goldfish: both classes kept
    assert len(subset.images("fog", 3, [0, 1])) == 2


# CIFAR-10-C -----------------------------------------------------------------------------------------------------


def _cifar10_c(root, corruptions=("fog", "contrast"), per_severity=4, labels=(9, 9, 0, 3), repeat=True):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for corruption in corruptions:
        np.save(root / f"{corruption}.npy", rng.integers(0, 256, (5 * per_severity, 32, 32, 3), dtype=np.uint8))
    np.save(root / "labels.npy", np.asarray(list(labels) * (5 if repeat else 1), dtype=np.int64))
    return root


@pytest.mark.parametrize("repeat", [True, False], ids=["labels-for-all-rows", "labels-for-one-severity"])
def test_cifar10_c_labels_follow_cifar10_class_order(tmp_path, repeat):
    root = _cifar10_c(tmp_path / "CIFAR-10-C", repeat=repeat)
    reversed_names = dict(enumerate(reversed(CIFAR10_CLASSES)))  # the model's class 0 is "truck" (CIFAR-10 label 9)
    model = _constant_model(10, 0, reversed_names)
    report = _evaluate(model, _clean(0), corruptions=["fog", "contrast"], corruption_source=root)
    assert report.corruption_source["kind"] == "cifar-10-c" and report.corruption_source["images_per_set"] == [4]
    assert report.corruptions == {name: dict.fromkeys(range(1, 6), 50.0) for name in ("fog", "contrast")}
    plain = _evaluate(_constant_model(10, 0), _clean(0), corruptions=["fog"], severities=(2,), corruption_source=root)
    assert plain.corruptions == {"fog": {2: 25.0}}  # generic class names: labels are the model's indices


def test_cifar10_c_severities_are_consecutive_blocks(tmp_path):
    root = _cifar10_c(tmp_path / "c", corruptions=("fog",), per_severity=3, labels=(0, 1, 2))
    images = np.load(root / "fog.npy")
    released = open_corruption_set(root, max_samples=2)
    assert np.array_equal(np.stack(released.images("fog", 4, [0, 1])), images[9:11])
    assert released.labels("fog", 4).tolist() == [0, 1]


# A datasets copy -------------------------------------------------------------------------------------------------


def _copy() -> Dataset:
    images = [np.full((32, 32, 3), 10 * i, dtype=np.uint8) for i in range(6)]
    return Dataset.from_dict({"image": [Image.fromarray(a) for a in images], "label": [2, 2, 1, 2, 0, 0],
                              "corruption": ["fog", "fog", "fog", "snow", "snow", "snow"],
                              "severity": [1, 1, 3, 1, 1, 1]})


def test_a_datasets_copy_in_memory_or_on_disk(tmp_path):
    _copy().save_to_disk(str(tmp_path / "copy"))
    for source in (_copy(), str(tmp_path / "copy")):
        report = _evaluate(_constant_model(3, 2), _clean(2), corruptions=["fog", "snow"], severities=(1,),
                           corruption_source=source)
        assert report.corruption_source["kind"] == "datasets"
        assert report.corruptions == {"fog": {1: 100.0}, "snow": {1: pytest.approx(100 / 3)}}
        assert report.corruption_source["images_per_set"] == [2, 3]


def test_workers_read_a_released_set_alike(tmp_path):
    root = _cifar10_c(tmp_path / "c")
    one = _evaluate(_constant_model(10, 9), _clean(9), corruptions=["fog"], corruption_source=root)
    two = _evaluate(_constant_model(10, 9), _clean(9), corruptions=["fog"], corruption_source=root,
                    corruption_workers=2)
    assert one.corruptions == two.corruptions == {"fog": dict.fromkeys(range(1, 6), 50.0)}


# Bad layouts ---------------------------------------------------------------------------------------------------


def _bad_imagenet_c_wnid(root):
    _imagenet_c(root, ["fog"], counts={"goldfish": 1})


def _bad_cifar_dtype(root):
    _cifar10_c(root)
    np.save(root / "fog.npy", np.zeros((20, 32, 32, 3), dtype=np.float32))


def _bad_cifar_labels(root):
    _cifar10_c(root)
    np.save(root / "labels.npy", np.asarray([3, 12, 0, 1] * 5))


def _bad_cifar_length(root):
    _cifar10_c(root)
    np.save(root / "labels.npy", np.asarray([3, 1, 0]))


@pytest.mark.parametrize(
    ("make", "options", "message"),
    [
        (lambda root: _imagenet_c(root, ["fog"], severities=(1, 2)), dict(severities=(3,)),
         "has no fog at severity 3"),
        (lambda root: _imagenet_c(root, ["fog"]), dict(corruptions=["fog", "snow"]), "has no snow at severity 1"),
        (_bad_imagenet_c_wnid, {}, "not named by an ImageNet-1k WordNet id"),
        (lambda root: _imagenet_c(root, ["fog"]), dict(model=_constant_model(10, 0)), "1,000 ImageNet classes"),
        (lambda root: _cifar10_c(root), dict(corruptions=["snow"]), "no snow.npy"),
        (_bad_cifar_dtype, {}, "uint8"),
        (_bad_cifar_labels, {}, "outside 0..9"),
        (_bad_cifar_length, {}, "labels.npy has 3 labels"),
        (lambda root: _cifar10_c(root), dict(model=_constant_model(10, 0, dict(enumerate("abcdefghij")))),
         "not CIFAR-10's"),
        (lambda root: root.mkdir(), {}, "not a released corruption set"),
        (lambda root: _copy().remove_columns("severity").save_to_disk(str(root)), {}, "no severity column"),
        (lambda root: _copy().map(lambda row: {"corruption": "haze"}).save_to_disk(str(root)), {},
         "not corruption names"),
        (lambda root: _copy().save_to_disk(str(root)), dict(severities=(2,)), "no rows for fog at severity 2"),
    ],
    ids=["severity", "corruption", "wnid", "classes", "npy", "dtype", "labels", "length", "cifar-names", "layout",
         "columns", "names", "rows"],
)
def test_an_incomplete_or_mislabelled_set_is_one_clear_error(tmp_path, make, options, message):
    root = tmp_path / "set"
    make(root)
    arguments = {"model": _constant_model(10, 0), "corruptions": ["fog"], "severities": (1,), **options}
    with pytest.raises(ValueError, match=message) as error:
        _evaluate(arguments.pop("model"), _clean(0), corruption_source=str(root), **arguments)
    assert "\n" not in str(error.value)


# On-the-fly corruption in worker processes ------------------------------------------------------------------------


def test_the_corrupted_images_do_not_depend_on_the_number_of_workers():
    dataset = digits_dataset()["test"].select(range(5))
    corruptions, severities = ["shot_noise", "impulse_noise", "frost", "spatter"], (2, 5)
    arrays = {workers: corrupt_dataset(dataset, PROCESSOR, corruptions, severities, batch_size=2, workers=workers,
                                       seed=3) for workers in (1, 2)}
    assert set(arrays[1]) == {(c, s) for c in corruptions for s in severities}
    for key, images in arrays[1].items():
        assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8
        assert np.array_equal(images, arrays[2][key]), key
    clean = np.stack([np.asarray(image.convert("RGB").resize((32, 32), Image.BILINEAR)) for image in dataset["image"]])
    assert not np.array_equal(arrays[1][("shot_noise", 5)], clean)


def test_evaluation_with_workers_gives_the_same_report():
    model = make_tiny_model("vit", num_labels=10)
    dataset = digits_dataset()["test"].select(range(12))
    options = dict(corruptions=["gaussian_noise", "motion_blur"], severities=(1, 4), batch_size=5)
    here, workers = (_evaluate(model, dataset, corruption_workers=n, **options) for n in (0, 2))
    assert here.corruptions == workers.corruptions and here.clean_accuracy == workers.clean_accuracy
    assert workers.settings["corruption_workers"] == 2
    assert here.corruption_source["description"].startswith("on the fly at 32×32 px (imagecorruptions")
    with pytest.raises(ValueError, match="corruption_workers must be an integer >= 0"):
        _evaluate(model, dataset, corruption_workers=-1, **options)
