"""Pictures and tables of ``docs/applications.md``: watermark (App. E), targeted noise with saliency maps
(App. F), and the nullspace fingerprint (§6), measured on tiny ViTs trained here on 2 CPU cores.

    python recipes/applications.py --cifar /work/shared/data/cifar10 --out docs/figures/applications

Part 1 uses ViT-T/16's patch geometry (patch 16, hidden 192: nullity 576 of c·r² = 768) with 4 layers
on CIFAR-10 images resized to 64×64 and normalised with ImageNet's per-channel mean and std. It
watermarks and transforms test images with the model at initialisation, part-way through training
and after training. Part 2 trains ViTs with patch 8 on the embedded digits resized to 32×32, hidden
64 (nullity 128 of 192), fine-tunes one of them in several ways with ``NullspaceTrainer`` and
compares fingerprints with independently trained models. Markdown tables go to stdout.
"""

from __future__ import annotations

import argparse
import io
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFont
from transformers import TrainerCallback, ViTConfig, ViTForImageClassification, ViTImageProcessor
from transformers.utils import logging as hf_logging

from nullspace_hf import NullspaceConfig, NullspaceTrainer
from nullspace_hf.applications import (
    compare_fingerprints,
    embed_watermark,
    map_correlation,
    nullspace_fingerprint,
    saliency_maps,
    targeted_image,
)
from nullspace_hf.applications.nullspace_fit import pixel_nullspace
from nullspace_hf.data import TensorRows, digits_dataset
from nullspace_hf.modeling import patch_projection
from nullspace_hf.pixels import PixelTransform
from nullspace_hf.plots import plot_saliency_triplet, plot_watermark

CIFAR_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
PICTURES_VIT = dict(image_size=64, patch_size=16, hidden_size=192, num_hidden_layers=4, num_attention_heads=3,
                    intermediate_size=384)
FINGERPRINT_VIT = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=128)


def tiny_vit(labels: list[str], seed: int, architecture: dict) -> ViTForImageClassification:
    """A randomly initialised ViT classifier (seeded) of the given architecture."""
    torch.manual_seed(seed)
    config = ViTConfig(**architecture, num_labels=len(labels), id2label=dict(enumerate(labels)),
                       label2id={name: i for i, name in enumerate(labels)})
    return ViTForImageClassification(config)


class Snapshots(TrainerCallback):
    """Keeps a copy of the weights after the given optimizer steps."""

    def __init__(self, steps: list[int]) -> None:
        self.steps, self.weights = steps, {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.steps:
            self.weights[state.global_step] = {k: v.detach().clone() for k, v in model.state_dict().items()}


def train(model, data: TensorRows, *, steps: int, lr: float, seed: int, noise_mode: str = "none",
          batch_size: int = 64, callbacks: list[TrainerCallback] | None = None):
    """Train with ``NullspaceTrainer`` (``noise_mode="none"``: plain cross-entropy through the same code path)."""
    with tempfile.TemporaryDirectory() as output_dir:
        args = NullspaceConfig(
            output_dir=output_dir, noise_mode=noise_mode, max_steps=steps, per_device_train_batch_size=batch_size,
            learning_rate=lr, warmup_steps=steps // 10, lr_scheduler_type="cosine", weight_decay=0.05,
            noise_refresh_steps=40, noise_max_steps=300, seed=seed, save_strategy="no", report_to="none",
            use_cpu=True, disable_tqdm=True, logging_strategy="no",
        )
        NullspaceTrainer(model=model, args=args, train_dataset=data, callbacks=callbacks).train()
    return model.eval()


@torch.no_grad()
def accuracy(model, data: TensorRows) -> float:
    """Top-1 accuracy in percent."""
    predictions = torch.cat([model(pixel_values=chunk).logits.argmax(-1) for chunk in data.pixel_values.split(512)])
    return 100.0 * float((predictions == data.labels).float().mean())


def cifar_images(folder: Path, split: str, count: int) -> tuple[list[Image.Image], torch.Tensor]:
    """The first ``count`` images of a CIFAR-10 parquet split, as PIL images and labels."""
    frame = pd.read_parquet(folder / f"{split}.parquet").iloc[:count]
    images = [Image.open(io.BytesIO(cell["bytes"])).convert("RGB") for cell in frame["img"]]
    return images, torch.tensor(frame["label"].to_numpy())


def make_logo(size: int) -> Image.Image:
    """A strong logo: dark-blue "NS" on an orange disc over white."""
    logo = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(logo)
    draw.ellipse((1, 1, size - 2, size - 2), fill=(255, 140, 0))
    draw.text((size / 2, size / 2), "NS", fill=(0, 0, 120), anchor="mm", font=ImageFont.load_default(size=size // 2))
    return logo


WATERMARK_HEADER = (
    "| model | images | PSNR (dB), median [min, max] | prediction unchanged | largest logit change (float32) | "
    "prediction unchanged, 8-bit PNG | largest logit change, 8-bit PNG |\n|---|---|---|---|---|---|---|"
)
TARGETED_HEADER = (
    "| model | low-frequency share of the nullspace | pairs | closer to target (MSE) | "
    "MSE to target / MSE to source, median | prediction = source's | "
    "largest logit change vs. source | rollout corr. with source: transformed (min) / target (median) | "
    "Grad-CAM corr. with source: transformed (min) / target (median) |\n|---|---|---|---|---|---|---|---|---|"
)


def watermark_row(name: str, model, processor, images: list[Image.Image], figures: list[Path]) -> str:
    """Watermark every image, draw Fig. 6 for the first ones into ``figures``, return a Markdown row."""
    logo = make_logo(model.config.image_size)
    results, eight_bit_changes, eight_bit_same = [], [], []
    for image in images:
        result = embed_watermark(model, image, logo, processor=processor)
        results.append(result)
        with torch.no_grad():
            logits = model(**processor(images=[image, result.to_pil()], return_tensors="pt")).logits
        eight_bit_changes.append(float((logits[1] - logits[0]).abs().max()))
        eight_bit_same.append(bool(logits[1].argmax() == logits[0].argmax()))
    for result, path in zip(results, figures, strict=True):
        plot_watermark(result, path, model.config.id2label)
    psnrs = np.array([r.psnr for r in results])
    same = np.mean([r.prediction_after == r.prediction_before for r in results])
    return (
        f"| {name} | {len(results)} | {np.median(psnrs):.1f} [{psnrs.min():.1f}, {psnrs.max():.1f}] | "
        f"{100 * same:.0f}% | "
        f"{max(r.max_logit_change for r in results):.1e} | {100 * np.mean(eight_bit_same):.1f}% | "
        f"{max(eight_bit_changes):.1e} |"
    )


def low_frequency_share(model, processor) -> float:
    """Mean share of a unit patch of frequency ≤ 1 (DCT-II, per channel) that lies in the pixel-space nullspace.

    About nullity / (c·r²) for a random patch embedding; smaller when training has aligned the row
    space with the smooth content of natural images.
    """
    space = pixel_nullspace(model, PixelTransform.from_processor(processor, model.config.num_channels))
    channels, (height, width) = model.config.num_channels, space.patch_size
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    directions = []
    for channel, fy, fx in itertools.product(range(channels), range(2), range(2)):
        patch = np.zeros((channels, height, width))
        patch[channel] = np.cos(np.pi * fy * (rows + 0.5) / height) * np.cos(np.pi * fx * (cols + 0.5) / width)
        directions.append(patch.reshape(-1) / np.linalg.norm(patch))
    fitted = space.project_patches(torch.tensor(np.array(directions)))
    return float(fitted.square().sum(dim=-1).mean())


def targeted_row(name: str, model, processor, images: list[Image.Image], figures: list[Path]) -> str:
    """Transform pairs (source 2i, target 2i+1), draw Fig. 7 for the first ones, return a Markdown row."""
    rows = []
    for index in range(0, len(images) - 1, 2):
        result = targeted_image(model, images[index], images[index + 1], processor=processor)
        maps = saliency_maps(model, torch.stack([result.source, result.target, result.image]), processor)
        rows.append({
            "closer": result.mse_to_target < result.mse_to_source,
            "ratio": result.mse_to_target / result.mse_to_source,
            "same": result.transformed_prediction == result.source_prediction,
            "change": result.max_logit_change,
            **{f"{method}/transformed": map_correlation(values[0], values[2]) for method, values in maps.items()},
            **{f"{method}/target": map_correlation(values[0], values[1]) for method, values in maps.items()},
        })
        if index // 2 < len(figures):
            plot_saliency_triplet(model, result, figures[index // 2], processor=processor)
    frame = pd.DataFrame(rows)
    return (
        f"| {name} | {low_frequency_share(model, processor):.2f} | {len(frame)} | "
        f"{100 * frame['closer'].mean():.0f}% | {frame['ratio'].median():.2f} | "
        f"{100 * frame['same'].mean():.0f}% | {frame['change'].max():.1e} | "
        f"{frame['rollout/transformed'].min():.4f} / {frame['rollout/target'].median():.2f} | "
        f"{frame['grad_cam/transformed'].min():.4f} / {frame['grad_cam/target'].median():.2f} |"
    )


def pictures(cifar: Path, out: Path, train_count: int, steps: int, test_count: int) -> str:
    """Part 1: the ViT at initialisation, part-way and after training on CIFAR-10; watermark and targeted tables."""
    size = PICTURES_VIT["image_size"]
    processor = ViTImageProcessor(size={"height": size, "width": size}, image_mean=IMAGENET_MEAN,
                                  image_std=IMAGENET_STD)
    train_images, train_labels = cifar_images(cifar, "train", train_count)
    test_images, test_labels = cifar_images(cifar, "test", test_count)

    def to_rows(images: list[Image.Image], labels: torch.Tensor) -> TensorRows:
        return TensorRows(processor(images=images, return_tensors="pt")["pixel_values"], labels)

    initial = tiny_vit(CIFAR_LABELS, seed=0, architecture=PICTURES_VIT).eval()
    trained = tiny_vit(CIFAR_LABELS, seed=0, architecture=PICTURES_VIT)
    snapshots = Snapshots([steps // 4])
    train(trained, to_rows(train_images, train_labels), steps=steps, lr=1e-3, seed=0, batch_size=128,
          callbacks=[snapshots])
    partial = tiny_vit(CIFAR_LABELS, seed=0, architecture=PICTURES_VIT).eval()
    partial.load_state_dict(snapshots.weights[steps // 4])
    test_rows = to_rows(test_images, test_labels)
    models = [  # name, model, watermark figures, targeted figures
        (f"trained, {steps} steps × 128", trained, ["watermark_1", "watermark_2"], ["targeted_1", "targeted_2"]),
        (f"part-way, {steps // 4} steps", partial, [], []),
        ("at initialisation", initial, [], ["targeted_init_1"]),
    ]
    watermark, targeted = [WATERMARK_HEADER], [TARGETED_HEADER]
    for name, model, watermark_figures, targeted_figures in models:
        name = f"{name} ({accuracy(model, test_rows):.0f}% test acc.)"
        watermark.append(watermark_row(name, model, processor, test_images,
                                       [out / f"{figure}.png" for figure in watermark_figures]))
        targeted.append(targeted_row(name, model, processor, test_images,
                                     [out / f"{figure}.png" for figure in targeted_figures]))
    return "\n".join(watermark) + "\n\n" + "\n".join(targeted)


def fingerprints(cifar: Path, steps: int) -> str:
    """Part 2: the original, its descendants and independent models on digits; a Markdown table."""
    size = FINGERPRINT_VIT["image_size"]
    processor = ViTImageProcessor(size={"height": size, "width": size})
    digits = digits_dataset()
    labels = [str(d) for d in range(10)]
    rows = {split: TensorRows(processor(images=list(digits[split]["image"]), return_tensors="pt")["pixel_values"],
                              torch.tensor(digits[split]["label"])) for split in ("train", "test")}
    cifar_train, cifar_labels = cifar_images(cifar, "train", 10_000)
    cifar_rows = TensorRows(processor(images=cifar_train, return_tensors="pt")["pixel_values"], cifar_labels)

    def from_scratch(init_seed: int, order_seed: int):
        return train(tiny_vit(labels, seed=init_seed, architecture=FINGERPRINT_VIT), rows["train"], steps=steps,
                     lr=2e-3, seed=order_seed)

    def fine_tuned(data: TensorRows, noise_mode: str, lr: float, fine_steps: int):
        child = tiny_vit(labels, seed=0, architecture=FINGERPRINT_VIT)
        child.load_state_dict(original.state_dict())
        return train(child, data, steps=fine_steps, lr=lr, seed=1, noise_mode=noise_mode)

    original = from_scratch(0, 0)
    candidates = [
        ("vanilla fine-tuned (lr 1e-4)", "descendant", fine_tuned(rows["train"], "none", 1e-4, steps // 2)),
        ("nullspace fine-tuned (lr 1e-4, Algorithm 1)", "descendant",
         fine_tuned(rows["train"], "nullspace", 1e-4, steps // 2)),
        ("vanilla fine-tuned, as long and fast as training (lr 2e-3)", "descendant",
         fine_tuned(rows["train"], "none", 2e-3, steps)),
        ("fine-tuned on CIFAR-10 (lr 2e-3)", "descendant", fine_tuned(cifar_rows, "none", 2e-3, steps)),
        *[(f"trained from scratch, seed {seed}", "independent", from_scratch(seed, seed)) for seed in (1, 2, 3)],
        ("same initialisation, other data order", "shares the init", from_scratch(0, 7)),
    ]
    reference = nullspace_fingerprint(original)
    weight = patch_projection(original).weight.detach()
    lines = ["| model | relation | digits test accuracy | ‖ΔW‖ / ‖W‖ | similarity | largest principal angle |",
             "|---|---|---|---|---|---|",
             f"| original (seed 0, {steps} steps) | itself | {accuracy(original, rows['test']):.1f}% | 0 | 1.000 "
             "| 0.0° |"]
    for name, relation, model in candidates:
        match = compare_fingerprints(reference, nullspace_fingerprint(model))
        change = float((patch_projection(model).weight.detach() - weight).norm() / weight.norm())
        lines.append(f"| {name} | {relation} | {accuracy(model, rows['test']):.1f}% | {change:.2f} | "
                     f"{match.similarity:.3f} | {match.largest_angle_degrees:.1f}° |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar", type=Path, required=True, help="Folder with CIFAR-10 train/test.parquet.")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/applications"), help="Figure folder.")
    parser.add_argument("--train_images", type=int, default=20_000, help="CIFAR-10 training images for part 1.")
    parser.add_argument("--cifar_steps", type=int, default=1000, help="Training steps (batch 128) for part 1.")
    parser.add_argument("--test_images", type=int, default=200, help="CIFAR-10 test images measured in part 1.")
    parser.add_argument("--digits_steps", type=int, default=300, help="Training steps (batch 64) for part 2.")
    args = parser.parse_args(argv)
    hf_logging.set_verbosity_error()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    picture_tables = pictures(args.cifar, args.out, args.train_images, args.cifar_steps, args.test_images)
    middle = time.perf_counter()
    fingerprint_table = fingerprints(args.cifar, args.digits_steps)
    end = time.perf_counter()
    print(f"{picture_tables}\n\n{fingerprint_table}\n")
    print(f"part 1: {middle - start:.0f} s, part 2: {end - middle:.0f} s, total {end - start:.0f} s")


if __name__ == "__main__":
    main()
