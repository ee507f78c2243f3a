"""AutoAttack's cost per image (the standard version: APGD-CE, APGD-T, FAB-T, Square) on two small ViTs.

    OMP_NUM_THREADS=1 python -m benchmarks.autoattack_cost --images 8 --epsilon 1/255 8/255

Models: the shipped ``vit-tiny-digits`` (patch 8, width 64, 32×32, trained on the digits) on the digits test
images, and a CIFAR-10-shaped random ViT (patch 8, width 128, 6 layers, 32×32, 10 classes: the reproduction's
shape) on random images. AutoAttack attacks only the images still classified correctly, one attack after the
other, so its cost grows with robustness: the line gives the seconds per image and how many images were
correct before and after, and an image still correct at the end has paid for all four attacks.
"""

from __future__ import annotations

import argparse
import time
import warnings
from fractions import Fraction
from pathlib import Path

import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification, ViTConfig, ViTForImageClassification

from nullspace_hf.data import digits_dataset
from nullspace_hf.evaluation import AutoAttack
from nullspace_hf.pixels import PixelSpaceClassifier, PixelTransform, images_to_pixels

DIGITS_MODEL = Path(__file__).resolve().parents[1] / "nullspace_hf" / "scripts" / "embedded" / "vit-tiny-digits"


def _models(images: int) -> dict[str, tuple[PixelSpaceClassifier, torch.Tensor]]:
    processor = AutoImageProcessor.from_pretrained(DIGITS_MODEL)
    digits = AutoModelForImageClassification.from_pretrained(DIGITS_MODEL).eval()
    test = digits_dataset()["test"].select(range(images))
    pixels = images_to_pixels(processor, test["image"])
    torch.manual_seed(0)
    cifar = ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=128, num_hidden_layers=6,
                                                num_attention_heads=4, intermediate_size=256, num_labels=10)).eval()
    random_pixels = torch.rand(images, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return {"vit-tiny-digits (width 64, 4 layers)": (
                PixelSpaceClassifier(digits, PixelTransform.from_processor(processor, 3)), pixels),
            "CIFAR-shaped ViT (width 128, 6 layers, random)": (
                PixelSpaceClassifier(cifar, PixelTransform.identity(3)), random_pixels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--epsilon", nargs="+", default=["1/255", "8/255"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    for name, (classifier, pixels) in _models(args.images).items():
        labels = classifier.predict(pixels) if "random" in name else torch.tensor(
            digits_dataset()["test"].select(range(args.images))["label"])
        for text in args.epsilon:
            epsilon = float(Fraction(text))
            torch.manual_seed(0)
            started = time.perf_counter()
            adversarial = AutoAttack(epsilon=epsilon).perturb(classifier, pixels, labels)
            seconds = time.perf_counter() - started
            before = int((classifier.predict(pixels) == labels).sum())
            after = int((classifier.predict(adversarial) == labels).sum())
            print(f"{name}, ε = {text}: {seconds / len(pixels):.2f} s per image ({seconds:.1f} s for {len(pixels)}); "
                  f"correct {before} → {after}", flush=True)


if __name__ == "__main__":
    main()
