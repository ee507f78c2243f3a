"""The shipped ``evaluate`` metric modules (loaded offline from the package), and AutoAttack's sanity checks."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
from torch import nn
from transformers import EvalPrediction, ViTImageProcessor
from transformers.modeling_outputs import ImageClassifierOutput

from nullspace_hf.data import digits_dataset
from nullspace_hf.evaluation import ALEXNET_ERRORS, IMAGENET_C_CORRUPTIONS, PGD, AutoAttack, evaluate_robustness
from nullspace_hf.evaluation.hf_metrics import METRIC_NAMES, metric_path
from nullspace_hf.pixels import PixelSpaceClassifier, PixelTransform, images_to_pixels

from .helpers import make_tiny_model, train_briefly

PROCESSOR = ViTImageProcessor(size={"height": 32, "width": 32})

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def offline(monkeypatch):
    """No Hub and no network: the offline switches set, and any connection attempt fails the test."""
    import evaluate

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)

    def refuse(*args, **kwargs):
        raise AssertionError("the metric module tried the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return evaluate


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_each_module_loads_offline_from_the_package(offline, name):
    module = offline.load(str(metric_path(name)), keep_in_memory=True)
    assert isinstance(module, offline.Metric)
    assert metric_path(name).is_relative_to(metric_path("accuracy").parents[2])  # inside nullspace_hf/evaluation


def test_accuracy_and_robust_accuracy_by_hand(offline):
    accuracy = offline.load(str(metric_path("accuracy")), keep_in_memory=True)
    assert accuracy.compute(predictions=[1, 2, 3, 0], references=[1, 2, 0, 0]) == {"accuracy": 0.75}
    robust = offline.load(str(metric_path("robust_accuracy")), keep_in_memory=True)
    # Clean: 3 of 4 right; under attack: 1 right; the attack turned 2 of the 3 right ones wrong.
    result = robust.compute(predictions=[1, 0, 3, 1], references=[1, 2, 0, 0], clean_predictions=[1, 2, 3, 0])
    assert result["robust_accuracy"] == 0.25 and result["attack_success_rate"] == pytest.approx(2 / 3)


def test_corruption_error_by_hand(offline):
    module = offline.load(str(metric_path("corruption_error")), keep_in_memory=True)
    # fog: severity 1 all right, severity 2 one of two; snow (severity 1): none right.
    inputs = dict(predictions=[1, 1, 0, 2, 5, 5], references=[1, 1, 0, 1, 0, 0],
                  corruptions=["fog", "fog", "fog", "fog", "snow", "snow"], severities=[1, 1, 2, 2, 1, 1])
    reference = {"fog": {1: 0.5, 2: 0.5}, "snow": {1: 0.5}}
    result = module.compute(**inputs, baseline=reference)
    assert result["errors"] == {"fog": {1: 0.0, 2: 0.5}, "snow": {1: 1.0}}
    # CE_fog = (0 + 0.5) / (0.5 + 0.5) = 0.5; CE_snow = 1 / 0.5 = 2; both ImageNet-C corruptions.
    assert result["corruption_errors"] == pytest.approx({"fog": 0.5, "snow": 2.0})
    assert result["mce"] == pytest.approx(125.0) and result["relative_mce"] == pytest.approx(125.0)
    assert not result["official"]
    alexnet = module.compute(**inputs, baseline="alexnet")
    assert alexnet["corruption_errors"]["snow"] == pytest.approx(1.0 / ALEXNET_ERRORS["snow"])
    assert alexnet["relative_mce"] is None
    assert module.compute(**inputs)["mce"] is None


def test_the_official_protocol_is_all_15_corruptions_at_5_severities(offline):
    module = offline.load(str(metric_path("corruption_error")), keep_in_memory=True)
    keys = [(c, s) for c in IMAGENET_C_CORRUPTIONS for s in range(1, 6)]
    inputs = dict(predictions=[0] * len(keys), references=[0] * len(keys), corruptions=[c for c, _ in keys],
                  severities=[s for _, s in keys])
    assert module.compute(**inputs, baseline="alexnet")["official"]
    assert not module.compute(**{k: v[:-1] for k, v in inputs.items()}, baseline="alexnet")["official"]


def test_training_compute_metrics_uses_the_accuracy_module(offline, recipe, monkeypatch):
    import nullspace_hf.evaluation.hf_metrics as hf_metrics

    loaded = []
    monkeypatch.setattr(recipe, "load_metric", lambda name: loaded.append(name) or hf_metrics.load_metric(name))
    logits = np.asarray([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert recipe.accuracy(EvalPrediction(predictions=logits, label_ids=np.asarray([1, 1, 1]))) == {
        "accuracy": pytest.approx(2 / 3)}
    assert loaded == ["accuracy"]


# AutoAttack ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_model():
    """A tiny ViT trained briefly on the digits (well above chance), and 12 test images."""
    data = digits_dataset()
    pixels = images_to_pixels(PROCESSOR, data["train"]["image"])
    model = make_tiny_model("vit", num_labels=10, initializer_range=0.02)
    inputs = PixelTransform.from_processor(PROCESSOR, 3).to_model_input(pixels)
    return train_briefly(model, inputs, torch.tensor(data["train"]["label"]), steps=150), data["test"].select(range(12))


def test_autoattack_is_never_weaker_than_pgd_and_stays_in_the_ball(digits_model):
    model, test = digits_model
    epsilon = 4 / 255  # PGD leaves some images correct here, so that the comparison says something
    classifier = PixelSpaceClassifier(model, PixelTransform.from_processor(PROCESSOR, 3))
    pixels, labels = images_to_pixels(PROCESSOR, test["image"]), torch.tensor(test["label"])
    torch.manual_seed(0)
    adversarial = AutoAttack(epsilon=epsilon).perturb(classifier, pixels, labels)
    pgd = PGD(epsilon=epsilon).perturb(classifier, pixels, labels)
    correct = {name: int((classifier.predict(images) == labels).sum())
               for name, images in (("clean", pixels), ("pgd", pgd), ("autoattack", adversarial))}
    assert correct["clean"] > len(labels) / 2
    assert 0 < correct["pgd"] < correct["clean"]
    assert correct["autoattack"] <= correct["pgd"]
    assert (adversarial - pixels).abs().max() <= epsilon + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1


def test_autoattack_in_the_report_states_its_threat_model(digits_model):
    model, test = digits_model
    report = evaluate_robustness(model, test.select(range(4)), image_processor=PROCESSOR,
                                 attacks=[AutoAttack(epsilon=8 / 255)], corruptions="none", progress=False)
    result = report.attacks["autoattack"]
    assert result["threat_model"] == "Linf" and result["epsilon"] == 8 / 255 and result["column"] == "AutoAttack"
    assert result["config"] == {"epsilon": 8 / 255, "norm": "Linf", "version": "standard",
                                "attacks": "apgd-ce,apgd-t,fab-t,square"}
    assert result["accuracy"] <= report.clean_accuracy
    details = report.summary_details()["autoattack"]
    assert details["threat_model"] == "Linf" and details["attack"]["name"] == "autoattack"


class _BlindClassifier(nn.Module):
    """Logits that ignore the input (a learned constant), with a zero gradient for the attacks."""

    def __init__(self, logits: list[float]):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))

    def forward(self, pixel_values: torch.Tensor) -> ImageClassifierOutput:
        return ImageClassifierOutput(logits=self.logits.expand(len(pixel_values), -1) + 0 * pixel_values.sum())


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_model_that_ignores_its_input_keeps_its_clean_accuracy():
    classifier = PixelSpaceClassifier(_BlindClassifier([0.0, 2.0, 1.0, 0.5]), PixelTransform.identity(3))
    pixels = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 1, 1, 0, 2, 1])
    torch.manual_seed(0)
    adversarial = AutoAttack(epsilon=8 / 255).perturb(classifier, pixels, labels)
    assert torch.isfinite(adversarial).all() and (adversarial - pixels).abs().max() <= 8 / 255 + 1e-6
    assert (classifier.predict(adversarial) == labels).sum() == (classifier.predict(pixels) == labels).sum() == 4


@pytest.mark.parametrize(("options", "message"), [(dict(epsilon=0.0), "epsilon must be > 0"),
                                                  (dict(norm="L1"), "norm must be one of Linf, L2")])
def test_autoattack_settings_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        AutoAttack(**options)


def test_autoattack_needs_four_classes():
    classifier = PixelSpaceClassifier(_BlindClassifier([0.0, 1.0, 2.0]), PixelTransform.identity(3))
    with pytest.raises(ValueError, match="at least 4 classes.*has 3"):
        AutoAttack().perturb(classifier, torch.rand(2, 3, 32, 32), torch.tensor([0, 1]))
