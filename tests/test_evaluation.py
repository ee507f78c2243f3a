"""Robustness evaluation: attacks, corruptions, mCE, OOD class masks, report, and input errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image
from transformers import ViTConfig, ViTImageProcessor, ViTModel

from nullspace_hf.data import digits_dataset
from nullspace_hf.evaluation import (
    ALEXNET_ERRORS,
    CORRUPTIONS,
    FGSM,
    IMAGENET_C_CORRUPTIONS,
    PGD,
    CarliniWagnerL2,
    PatchFool,
    RobustnessReport,
    corrupt_pixels,
    corruption_error,
    evaluate_robustness,
    load_ood_dataset,
    mean_corruption_error,
)
from nullspace_hf.evaluation.corruptions import CorruptedSets
from nullspace_hf.evaluation.imagenet_classes import (
    IMAGENET_A_INDICES,
    IMAGENET_R_INDICES,
    IMAGENET_WNIDS,
    WNID_TO_INDEX,
)
from nullspace_hf.pixels import PixelSpaceClassifier, PixelTransform, images_to_pixels

from .helpers import make_tiny_model

PROCESSOR = ViTImageProcessor(size={"height": 32, "width": 32})


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return digits_dataset()


@pytest.fixture(scope="module")
def trained(digits):
    """A tiny ViT trained for ~3 s on the digits (about 90% test accuracy)."""
    pixels = images_to_pixels(PROCESSOR, digits["train"]["image"])
    labels = torch.tensor(digits["train"]["label"])
    model = make_tiny_model("vit", num_labels=10, initializer_range=0.02)
    classifier = PixelSpaceClassifier(model, PixelTransform.from_processor(PROCESSOR, 3))
    epochs, batch = 20, 64
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3,
                                                   total_steps=epochs * -(-len(labels) // batch))
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), batch):
            index = order[start:start + batch]
            loss = torch.nn.functional.cross_entropy(classifier(pixels[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


@pytest.fixture(scope="module")
def test_set(digits):
    return digits["test"].select(range(160))


def _evaluate(model, dataset, **kwargs):
    kwargs.setdefault("corruptions", "none")
    kwargs.setdefault("attacks", None)
    return evaluate_robustness(model, dataset, image_processor=PROCESSOR, progress=False, **kwargs)


# Attacks ---------------------------------------------------------------------------------------------------------


def test_trained_model_is_accurate(trained, test_set):
    assert _evaluate(trained, test_set).clean_accuracy > 75


def test_fgsm_with_zero_epsilon_gives_exactly_the_clean_accuracy(trained, test_set):
    report = _evaluate(trained, test_set, attacks=[FGSM(epsilon=0.0)])
    assert report.attacks["fgsm"]["accuracy"] == report.clean_accuracy
    pixels = images_to_pixels(PROCESSOR, test_set[:16]["image"])
    classifier = PixelSpaceClassifier(trained, PixelTransform.from_processor(PROCESSOR, 3))
    assert torch.equal(FGSM(epsilon=0.0).perturb(classifier, pixels, torch.tensor(test_set[:16]["label"])), pixels)


@pytest.mark.parametrize("epsilon", [2 / 255, 8 / 255])
def test_pgd_is_at_least_as_strong_as_fgsm(trained, test_set, epsilon):
    report = _evaluate(trained, test_set, attacks=[FGSM(epsilon=epsilon), PGD(epsilon=epsilon)])
    fgsm, pgd = report.attacks["fgsm"]["accuracy"], report.attacks["pgd"]["accuracy"]
    assert fgsm < report.clean_accuracy
    assert pgd <= fgsm


@pytest.fixture(scope="module")
def batch(trained, test_set):
    pixels = images_to_pixels(PROCESSOR, test_set[:24]["image"])
    return (PixelSpaceClassifier(trained, PixelTransform.from_processor(PROCESSOR, 3)), pixels,
            torch.tensor(test_set[:24]["label"]))


@pytest.mark.parametrize("attack", [FGSM(epsilon=4 / 255), PGD(epsilon=4 / 255, steps=5),
                                    PGD(epsilon=1 / 255, step_size=2 / 255, steps=3)], ids=str)
def test_linf_attacks_stay_within_epsilon_and_in_pixel_range(batch, attack):
    classifier, pixels, labels = batch
    adversarial = attack.perturb(classifier, pixels, labels)
    assert adversarial.shape == pixels.shape
    assert (adversarial - pixels).abs().max() <= attack.epsilon + 1e-6
    assert (adversarial - pixels).abs().max() > attack.epsilon / 2
    assert adversarial.min() >= 0 and adversarial.max() <= 1


def test_cw_stays_in_pixel_range_and_fools_the_model(batch):
    classifier, pixels, labels = batch
    adversarial = CarliniWagnerL2(steps=10).perturb(classifier, pixels, labels)
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert (classifier.predict(adversarial) == labels).sum() < (classifier.predict(pixels) == labels).sum()


def test_patchfool_changes_one_patch_only_and_fools_the_model(batch):
    classifier, pixels, labels = batch
    adversarial = PatchFool(steps=20).perturb(classifier, pixels, labels)
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    changed = (adversarial != pixels).any(dim=1)  # (batch, 32, 32)
    patches = changed.view(-1, 4, 8, 4, 8).any(dim=(2, 4)).flatten(1)  # 4×4 grid of 8×8 patches
    assert (patches.sum(dim=1) == 1).all()
    assert (classifier.predict(adversarial) == labels).float().mean() < 0.5


@pytest.mark.parametrize("family", ["deit", "dinov2", "beit"])
def test_patchfool_finds_the_patch_tokens_of_other_families(family):
    model = make_tiny_model(family, num_labels=3)
    classifier = PixelSpaceClassifier(model, PixelTransform.from_processor(PROCESSOR, 3))
    pixels = torch.rand(2, 3, 32, 32)
    adversarial = PatchFool(steps=2, num_patches=2).perturb(classifier, pixels, torch.tensor([0, 1]))
    patches = (adversarial != pixels).any(dim=1).view(-1, 4, 8, 4, 8).any(dim=(2, 4)).flatten(1)
    assert (patches.sum(dim=1) == 2).all()
    assert model.config._attn_implementation == "sdpa"


def test_patchfool_attacks_the_most_attended_patch():
    """The patch replaced is the one receiving most attention (mean over heads and queries) in layer 4,
    clipped to the last layer of this 2-layer model."""
    model = make_tiny_model("vit", num_labels=3)
    classifier = PixelSpaceClassifier(model, PixelTransform.from_processor(PROCESSOR, 3))
    pixels = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    adversarial = PatchFool(steps=1).perturb(classifier, pixels, torch.zeros(6, dtype=torch.long))
    changed = (adversarial != pixels).any(dim=1).view(-1, 4, 8, 4, 8).any(dim=(2, 4)).flatten(1)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        attention = model(pixel_values=classifier.normalize(pixels), output_attentions=True).attentions[-1]
    model.set_attn_implementation("sdpa")
    received = attention.mean(dim=(1, 2))[:, 1:]  # drop the CLS token
    assert torch.equal(changed.float().argmax(dim=1), received.argmax(dim=1))
    assert len(set(received.argmax(dim=1).tolist())) > 1  # the choice depends on the image


def test_pixel_space_classifier_matches_the_image_processor(digits):
    model = make_tiny_model("vit", num_labels=10)
    images = digits["test"][:4]["image"]
    for processor in (PROCESSOR, ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.485, 0.456, 0.406],
                                                   image_std=[0.229, 0.224, 0.225]),
                      ViTImageProcessor(size={"height": 32, "width": 32}, do_normalize=False)):
        classifier = PixelSpaceClassifier(model, PixelTransform.from_processor(processor, 3))
        expected = model(**processor(images, return_tensors="pt")).logits
        torch.testing.assert_close(classifier(images_to_pixels(processor, images)), expected)


# Corruptions ------------------------------------------------------------------------------------------------------


def test_corruption_accuracy_falls_with_severity(trained, test_set):
    names = ["gaussian_noise", "defocus_blur", "contrast", "pixelate", "fog"]
    report = _evaluate(trained, test_set, corruptions=names, severities=(1, 3, 5))
    mean = {s: np.mean([report.corruptions[name][s] for name in names]) for s in (1, 3, 5)}
    assert mean[1] > mean[3] > mean[5]
    assert mean[1] <= report.clean_accuracy + 2


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_corruption_runs_reproducibly(name):
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    corrupted = corrupt_pixels(pixels, name, 5, [0, 1], seed=3)
    assert corrupted.shape == pixels.shape and corrupted.min() >= 0 and corrupted.max() <= 1
    assert not torch.equal(corrupted, pixels)
    assert torch.equal(corrupted, corrupt_pixels(pixels, name, 5, [0, 1], seed=3))


def test_corruption_does_not_depend_on_batching_and_handles_grey_images():
    pixels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    whole = corrupt_pixels(pixels, "shot_noise", 3, [10, 11, 12, 13])
    halves = torch.cat([corrupt_pixels(pixels[:2], "shot_noise", 3, [10, 11]),
                        corrupt_pixels(pixels[2:], "shot_noise", 3, [12, 13])])
    assert torch.equal(whole, halves)
    grey = corrupt_pixels(pixels[:, :1], "fog", 2, [0, 1, 2, 3])
    assert grey.shape == (4, 1, 32, 32)


def test_corrupted_sets_are_built_once_and_reused(tmp_path, monkeypatch):
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    first = CorruptedSets(tmp_path, seed=0).get(pixels, "motion_blur", 2, [0, 1, 2])
    assert len(list(tmp_path.rglob("*.npy"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("corrupted again instead of reusing the cache")

    monkeypatch.setattr("nullspace_hf.evaluation.corruptions.corrupt_pixels", fail)
    assert torch.equal(CorruptedSets(tmp_path, seed=0).get(pixels, "motion_blur", 2, [0, 1, 2]), first)
    with pytest.raises(AssertionError, match="corrupted again"):
        CorruptedSets(tmp_path, seed=1).get(pixels, "motion_blur", 2, [0, 1, 2])


# mCE ----------------------------------------------------------------------------------------------------------------


def test_mce_matches_a_hand_computed_example():
    errors = {"gaussian_noise": {1: 0.2, 2: 0.4}, "fog": {1: 0.3, 2: 0.5}, "speckle_noise": {1: 0.9, 2: 0.9}}
    reference = {"gaussian_noise": {1: 0.25, 2: 0.5}, "fog": {1: 0.2, 2: 0.2}, "speckle_noise": {1: 0.3, 2: 0.3}}
    ces, mce = mean_corruption_error(errors, reference)
    # CE = Σ_s E / Σ_s E_ref: 0.6 / 0.75 = 0.8 and 0.8 / 0.4 = 2; speckle noise is not an ImageNet-C corruption.
    assert ces == pytest.approx({"gaussian_noise": 0.8, "fog": 2.0, "speckle_noise": 3.0})
    assert mce == pytest.approx(140.0)


def test_mce_with_alexnet_normalisation():
    errors = {name: dict.fromkeys(range(1, 6), ALEXNET_ERRORS[name] / 2) for name in IMAGENET_C_CORRUPTIONS}
    errors["contrast"] = dict.fromkeys(range(1, 6), ALEXNET_ERRORS["contrast"] * 2)
    ces, mce = mean_corruption_error(errors, ALEXNET_ERRORS)
    assert ces["contrast"] == pytest.approx(2.0) and ces["fog"] == pytest.approx(0.5)
    assert mce == pytest.approx(100 * (14 * 0.5 + 2.0) / 15)
    assert ALEXNET_ERRORS["gaussian_noise"] == 0.886428 and ALEXNET_ERRORS["jpeg_compression"] == 0.6065
    assert corruption_error({1: 0.1}, {1: 0.0}) is None


def test_model_as_its_own_reference_has_mce_100(trained, test_set):
    report = _evaluate(trained, test_set.select(range(64)), corruptions=["contrast", "fog"], severities=(4, 5),
                       reference_model=trained)
    assert report.mce_baseline == "reference" and not report.mce_official
    assert report.mce == pytest.approx(100.0)
    assert report.reference["clean_accuracy"] == report.clean_accuracy


# Out-of-distribution sets and the 200-class masks ------------------------------------------------------------------


def test_imagenet_class_lists():
    assert len(IMAGENET_WNIDS) == len(set(IMAGENET_WNIDS)) == 1000 and list(IMAGENET_WNIDS) == sorted(IMAGENET_WNIDS)
    for indices in (IMAGENET_A_INDICES, IMAGENET_R_INDICES):
        assert len(indices) == len(set(indices)) == 200 and list(indices) == sorted(indices)
        assert 0 <= min(indices) and max(indices) < 1000
    assert WNID_TO_INDEX["n01443537"] == 1  # goldfish: in ImageNet-R, not in ImageNet-A
    assert 1 in IMAGENET_R_INDICES and 1 not in IMAGENET_A_INDICES
    assert IMAGENET_A_INDICES[:4] == (6, 11, 13, 15) and IMAGENET_R_INDICES[:4] == (1, 2, 4, 6)
    assert IMAGENET_A_INDICES[-1] == IMAGENET_R_INDICES[-1] == 988


@pytest.fixture
def imagenet_model():
    """A 1,000-class model that always prefers class 0 (not in ImageNet-R), then class 1 (goldfish, in it)."""
    model = make_tiny_model("vit", num_labels=1000)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        model.classifier.bias[0], model.classifier.bias[1] = 10.0, 5.0
    return model


def test_200_class_mask_restricts_predictions(imagenet_model):
    classifier = PixelSpaceClassifier(imagenet_model, PixelTransform.from_processor(PROCESSOR, 3))
    pixels = torch.rand(3, 3, 32, 32)
    assert classifier.predict(pixels).tolist() == [0, 0, 0]
    assert classifier.predict(pixels, IMAGENET_R_INDICES).tolist() == [1, 1, 1]
    assert classifier.predict(pixels, IMAGENET_A_INDICES).tolist() == [IMAGENET_A_INDICES[0]] * 3


def _image_folder(root, counts):
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_imagenet_r_folder_is_evaluated_on_its_200_classes(tmp_path, imagenet_model, digits):
    folder = _image_folder(tmp_path / "imagenet-r", {"n01443537": 3, "n12267677": 1})
    dataset = load_ood_dataset("imagenet-r", str(folder))
    assert sorted(dataset["label"]) == [1, 1, 1, 988]
    report = _evaluate(imagenet_model, digits["test"].select(range(4)).map(lambda row: {"label": 1}),
                       ood_datasets={"imagenet-r": str(folder), "imagenet-v2": dataset})
    assert report.ood["imagenet-r"] == {"column": "R", "accuracy": 75.0, "num_samples": 4}
    assert report.ood["imagenet-v2"]["accuracy"] == 0.0  # all 1,000 classes: class 0 wins
    assert report.table2_row()["R"] == 75.0


def test_ood_labels_are_mapped_or_rejected(tmp_path):
    v2 = load_ood_dataset("imagenet-v2", str(_image_folder(tmp_path / "v2", {"0": 1, "999": 1, "42": 1})))
    assert sorted(v2["label"]) == [0, 42, 999]
    with pytest.raises(ValueError, match="not among its 200"):
        load_ood_dataset("imagenet-a", str(_image_folder(tmp_path / "a", {"n01440764": 1, "n01443537": 1})))
    with pytest.raises(ValueError, match="label_mapping"):
        load_ood_dataset("imagenet-sketch", str(_image_folder(tmp_path / "s", {"cat": 1, "dog": 1})))
    mapped = load_ood_dataset("imagenet-sketch", Dataset.from_dict({"image": [None, None], "label": [0, 1]}),
                              label_mapping={0: 281, 1: 207})
    assert mapped["label"] == [281, 207]


# Report -------------------------------------------------------------------------------------------------------------


def _paper_vit_s() -> RobustnessReport:
    """Table 2's ViT-S row (paper §5.2)."""
    columns = {"PatchFool": 0.68, "CW": 4.63, "FGSM": 13.79, "DamageNet": 29.82, "A": 16.35, "V2": 62.51,
               "R": 34.67, "Sketch": 14.26, "Stylized": 12.15}
    attacks = {name: {"column": column, "accuracy": columns[column], "config": {}}
               for name, column in [("patchfool", "PatchFool"), ("cw", "CW"), ("fgsm", "FGSM")]}
    ood = {name: {"column": column, "accuracy": columns[column], "num_samples": 1}
           for name, column in [("damagenet", "DamageNet"), ("imagenet-a", "A"), ("imagenet-v2", "V2"),
                                ("imagenet-r", "R"), ("imagenet-sketch", "Sketch"), ("stylized-imagenet", "Stylized")]}
    return RobustnessReport(model="ViT-S", dataset="ImageNet", num_samples=50000, clean_accuracy=74.19,
                            attacks=attacks, ood=ood, mce=71.13, mce_baseline="alexnet", mce_official=True)


def test_table2_average_reproduces_the_paper():
    row = _paper_vit_s().table2_row()
    assert round(row["Average"], 2) == 26.54
    assert list(row) == ["Clean", "PatchFool", "CW", "FGSM", "DamageNet", "A", "C↓", "V2", "R", "Sketch", "Stylized",
                         "Average"]


def test_report_json_and_markdown(tmp_path, trained, test_set):
    report = _evaluate(trained, test_set.select(range(32)), attacks=["fgsm"], corruptions=["fog"], severities=(2,),
                       dataset_name="digits")
    report.to_json(tmp_path / "r.json")
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["num_samples"] == 32 and written["corruptions"]["fog"]["2"] == report.corruptions["fog"][2]
    markdown = report.to_markdown()
    header = "| Model | Clean | PatchFool | CW | FGSM | DamageNet | A | C↓ | V2 | R | Sketch | Stylized | Average |"
    assert header in markdown
    assert f"| {report.clean_accuracy:.2f} | – | – | {report.attacks['fgsm']['accuracy']:.2f} |" in markdown
    assert "| fog | " in markdown and "no baseline" in markdown


# Input errors -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(attacks=["fgsm", "deepfool"]), "Unknown attack 'deepfool'"),
        (dict(corruptions=["fog", "rain"]), "Unknown corruption 'rain'"),
        (dict(severities=(0, 1)), "Severities must be integers from 1 to 5"),
        (dict(ood_datasets={"imagenet-x": "somewhere"}), "Unknown out-of-distribution set"),
        (dict(dataset=Dataset.from_dict({"image": [], "label": []})), "empty"),
        (dict(model=make_tiny_model("vit", num_labels=10, num_channels=1)), "mismatch.*3 channels.*takes 1"),
        (dict(model=make_tiny_model("vit", num_labels=10, image_size=64)), "mismatch.*32×32.*takes 64×64"),
        (dict(model=make_tiny_model("vit", num_labels=3)), "outside the model's 3 classes"),
        (dict(model=ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=64))), "no logits"),
        (dict(model=make_tiny_model("vit", num_labels=10, image_size=16, patch_size=4),
              image_processor=ViTImageProcessor(size={"height": 16, "width": 16})), "at least 32×32"),
        (dict(batch_size=0), "batch_size"),
    ],
    ids=["attack", "corruption", "severity", "ood", "empty", "channels", "size", "labels", "no-head", "small",
         "batch"],
)
def test_bad_input_gives_one_clear_error(digits, change, message):
    arguments = dict(model=make_tiny_model("vit", num_labels=10), dataset=digits["test"].select(range(12)),
                     image_processor=PROCESSOR, attacks=["fgsm"], corruptions=["fog"], progress=False)
    arguments.update(change)
    with pytest.raises(ValueError, match=message) as error:
        evaluate_robustness(arguments.pop("model"), arguments.pop("dataset"), **arguments)
    assert "\n" not in str(error.value)


def test_an_empty_spatter_mask_leaves_the_image_unchanged(monkeypatch):
    """imagecorruptions' spatter divides by its mud mask's maximum, 0 for an empty mask on a small image."""
    import numpy as np

    import nullspace_hf.evaluation.corruptions as corruptions

    class Library:
        @staticmethod
        def corrupt(image, corruption_name, severity, **options):
            return image / np.zeros_like(image, dtype=np.float64)  # 0/0 and x/0, as the library's empty mask

    monkeypatch.setattr(corruptions, "_imagecorruptions", lambda: Library)
    pixels = torch.rand(2, 3, 32, 32)
    out = corruptions.corrupt_pixels(pixels, "spatter", 5, [0, 1])
    torch.testing.assert_close(out, corruptions.from_8bit(corruptions.to_8bit(pixels)).float(), atol=0, rtol=0)
