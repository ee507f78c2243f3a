"""PGD adversarial fine-tuning baselines (Madry, TRADES): budget, attack, trainer."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments, ViTImageProcessor

from nullspace_hf.adversarial import AdversarialConfig, AdversarialTrainer, madry_loss, pgd_perturb, trades_loss
from nullspace_hf.data import TensorRows
from nullspace_hf.pixels import InputBox, PixelSpaceClassifier, PixelTransform

from .helpers import digits_tensors, make_tiny_model, train_briefly

pytestmark = pytest.mark.usefixtures("one_thread")

PROCESSORS = {
    "vit-default": ViTImageProcessor(),
    "imagenet-stats": ViTImageProcessor(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]),
    "no-normalize": ViTImageProcessor(do_normalize=False),
}


@functools.cache
def _pretrained():
    """A tiny ViT trained briefly on 32×32 digits (trained once; every user takes a deep copy)."""
    pixels, labels = digits_tensors("train", image_size=32)
    return train_briefly(make_tiny_model(num_labels=10, initializer_range=0.02), pixels, labels, steps=120)


@pytest.fixture(scope="module")
def trained():
    """A tiny ViT trained briefly on 32×32 digits, with the digits as normalised pixel values."""
    pixels, labels = digits_tensors("train", image_size=32)
    return copy.deepcopy(_pretrained()), pixels, labels


def _to_pixels(values: torch.Tensor, transform: PixelTransform) -> torch.Tensor:
    mean = torch.tensor(transform.mean).view(1, -1, 1, 1)
    std = torch.tensor(transform.std).view(1, -1, 1, 1)
    return (values * std + mean) / transform.scale


@pytest.mark.parametrize("name", list(PROCESSORS))
def test_input_box_maps_pixel_range_and_unit(name):
    transform = PixelTransform.from_processor(PROCESSORS[name], 3)
    box = InputBox.from_transform(transform)
    classifier = PixelSpaceClassifier(make_tiny_model(), transform)
    zeros, ones = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    torch.testing.assert_close(box.lower, classifier.normalize(zeros))
    torch.testing.assert_close(box.upper, classifier.normalize(ones))
    torch.testing.assert_close(box.unit, classifier.normalize(ones) - classifier.normalize(zeros))


@pytest.mark.parametrize("name", list(PROCESSORS))
@pytest.mark.parametrize("start", ["uniform", "gaussian"])
def test_pgd_stays_in_budget_raises_loss_and_leaves_weights_alone(trained, name, start):
    model, pixels, labels = trained
    transform = PixelTransform.from_processor(PROCESSORS[name], 3)
    box = InputBox.from_transform(transform)
    clean_pixels = pixels[:32] * 0.5 + 0.5  # the fixture's processor normalises with mean = std = 0.5
    clean = PixelSpaceClassifier(model, transform).normalize(clean_pixels)
    epsilon = 4 / 255
    model.zero_grad(set_to_none=True)
    model.train()
    adversarial = pgd_perturb(model, clean, lambda logits: F.cross_entropy(logits, labels[:32]), box,
                              epsilon=epsilon, step_size=epsilon / 4, steps=8, start=start)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    moved = _to_pixels(adversarial, transform) - clean_pixels
    assert moved.abs().max() <= epsilon + 1e-5
    assert moved.abs().max() > epsilon / 2
    after = _to_pixels(adversarial, transform)
    assert after.min() >= -1e-5 and after.max() <= 1 + 1e-5
    model.eval()
    with torch.no_grad():
        losses = [F.cross_entropy(model(pixel_values=x).logits, labels[:32]).item() for x in (clean, adversarial)]
    assert losses[1] > losses[0] + 0.05


def test_losses_reduce_to_cross_entropy_without_budget(trained):
    """With ε → 0 the adversarial point is the clean one: Madry = CE, TRADES = CE (KL = 0)."""
    model, pixels, labels = trained
    box = InputBox.from_transform(PixelTransform.from_processor(PROCESSORS["vit-default"], 3))
    clean_loss = F.cross_entropy(model(pixel_values=pixels[:16]).logits, labels[:16])
    budget = {"epsilon": 1e-9, "step_size": 1e-9, "steps": 2}
    madry, _ = madry_loss(model, pixels[:16], labels[:16], box, **budget)
    trades, _ = trades_loss(model, pixels[:16], labels[:16], box, beta=6.0, **budget)
    torch.testing.assert_close(madry, clean_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(trades, clean_loss, atol=1e-5, rtol=1e-5)


def _args(tmp_path, cls=AdversarialConfig, **overrides):
    base = {"output_dir": str(tmp_path), "max_steps": 6, "per_device_train_batch_size": 16, "learning_rate": 0.05,
            "optim": "sgd", "report_to": "none", "save_strategy": "no", "seed": 0, "disable_tqdm": True,
            "lr_scheduler_type": "constant"}
    return cls(**{**base, **overrides})


def test_trades_with_beta_zero_is_plain_training(tmp_path):
    """TRADES = CE(clean) + β·KL: with β = 0 it trains exactly like a plain Trainer."""
    pixels, labels = digits_tensors("train", image_size=32)
    data = TensorRows(pixels[:96], labels[:96])
    weights = []
    for trainer_class, args in ((Trainer, _args(tmp_path / "plain", TrainingArguments)),
                                (AdversarialTrainer, _args(tmp_path / "trades", adversarial_method="trades",
                                                           trades_beta=0.0, adversarial_steps=2))):
        model = make_tiny_model(num_labels=10)
        extra = {"processing_class": PROCESSORS["vit-default"]} if trainer_class is AdversarialTrainer else {}
        trainer_class(model=model, args=args, train_dataset=data, **extra).train()
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(weights[0], weights[1], atol=1e-5, rtol=1e-5)


EPSILON = 8 / 255


def _fine_tuned_pgd_accuracy(output_dir, method: str) -> float:
    """PGD accuracy on the digits test split after 60 steps of fine-tuning the pretrained ViT, on clean images
    (``vanilla``) or on PGD examples (``madry``, ``trades``)."""
    pixels, labels = digits_tensors("train", image_size=32)
    test_pixels, test_labels = digits_tensors("test", image_size=32)
    data = TensorRows(pixels, labels)
    box = InputBox.from_transform(PixelTransform.from_processor(PROCESSORS["vit-default"], 3))
    torch.manual_seed(0)
    model = copy.deepcopy(_pretrained())
    if method == "vanilla":
        Trainer(model=model, args=_args(output_dir, TrainingArguments, max_steps=60, optim="adamw_torch",
                                        learning_rate=1e-3), train_dataset=data).train()
    else:
        overrides = {"max_steps": 60, "optim": "adamw_torch", "learning_rate": 1e-3,
                     "adversarial_method": method, "adversarial_epsilon": EPSILON, "adversarial_steps": 3}
        AdversarialTrainer(model=model, args=_args(output_dir, **overrides), train_dataset=data,
                           processing_class=PROCESSORS["vit-default"]).train()
    model.eval()
    torch.manual_seed(1)
    attacked = pgd_perturb(model, test_pixels, lambda logits: F.cross_entropy(logits, test_labels), box,
                           epsilon=EPSILON, step_size=EPSILON / 4, steps=10)
    with torch.no_grad():
        return (model(pixel_values=attacked).logits.argmax(-1) == test_labels).float().mean().item()


@pytest.fixture(scope="module")
def vanilla_pgd_accuracy(tmp_path_factory) -> float:
    """The clean fine-tuning baseline both methods are compared with (the same run for both: trained once)."""
    return _fine_tuned_pgd_accuracy(tmp_path_factory.mktemp("vanilla"), "vanilla")


@pytest.mark.parametrize("method", ["madry", "trades"])
def test_adversarial_training_raises_pgd_accuracy(tmp_path, vanilla_pgd_accuracy, method):
    """Trained on PGD examples, the model resists PGD better than the same model trained on clean images."""
    accuracies = {"vanilla": vanilla_pgd_accuracy, method: _fine_tuned_pgd_accuracy(tmp_path / method, method)}
    assert accuracies[method] > accuracies["vanilla"] + 0.05, accuracies


@pytest.mark.parametrize(("overrides", "message"), [
    ({"adversarial_method": "fgsm"}, "adversarial_method"),
    ({"adversarial_epsilon": 0.0}, "adversarial_epsilon must be > 0"),
    ({"adversarial_steps": 0}, "adversarial_steps must be >= 1"),
    ({"adversarial_step_size": -1.0}, "adversarial_step_size must be > 0"),
    ({"trades_beta": -1.0}, "trades_beta must be >= 0"),
])
def test_bad_config_is_one_clear_error(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        _args(tmp_path, **overrides)


def test_default_step_size_follows_madry():
    args = AdversarialConfig(output_dir="unused", adversarial_epsilon=0.01, adversarial_steps=5, report_to="none")
    assert args.pgd_step_size == pytest.approx(2.5 * 0.01 / 5)


def test_trainer_needs_the_image_processor(tmp_path):
    with pytest.raises(ValueError, match="image processor"):
        AdversarialTrainer(model=make_tiny_model(), args=_args(tmp_path))
    with pytest.raises(ValueError, match="AdversarialConfig"):
        AdversarialTrainer(model=make_tiny_model(), args=_args(tmp_path, TrainingArguments),
                           processing_class=PROCESSORS["vit-default"])
