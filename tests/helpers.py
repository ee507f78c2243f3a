"""Tiny, offline model factories shared by the tests."""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from transformers import (
    BeitConfig,
    BeitForImageClassification,
    DeiTConfig,
    DeiTForImageClassification,
    Dinov2Config,
    Dinov2ForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=3)

FAMILIES = {
    "vit": (ViTConfig, ViTForImageClassification),
    "deit": (DeiTConfig, DeiTForImageClassification),
    "dinov2": (Dinov2Config, Dinov2ForImageClassification),
    "beit": (BeitConfig, BeitForImageClassification),
}


def make_tiny_model(family: str = "vit", seed: int = 0, **overrides):
    """A random tiny image classifier of the given family, in eval mode.

    ``initializer_range`` is larger than the default 0.02 so that random inputs give logits with
    a visible spread (small perturbations are then measurable).
    """
    config_cls, model_cls = FAMILIES[family]
    kwargs = {**TINY, "image_size": 32, "patch_size": 8, "num_channels": 3, "initializer_range": 0.2, **overrides}
    if family == "dinov2":
        kwargs.setdefault("mlp_ratio", 2)
        kwargs.pop("intermediate_size")
    torch.manual_seed(seed)
    return model_cls(config_cls(**kwargs)).eval()


def save_tiny_model(path, family: str = "vit", **overrides):
    """Save a tiny model and a matching image processor with ``save_pretrained``; return the model."""
    model = make_tiny_model(family, **overrides)
    model.save_pretrained(path)
    size = model.config.image_size
    ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(path)
    return model



def digits_tensors(split: str = "train", image_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn digits as normalised ``(N, 3, size, size)`` tensors and labels (no download).

    Processed once per (split, size) in a test session (about a second each); every call gets its own copy."""
    pixels, labels = _digits_tensors(split, image_size)
    return pixels.clone(), labels.clone()


@functools.cache
def _digits_tensors(split: str, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from nullspace_hf.data import digits_dataset

    data = digits_dataset()[split]
    processor = ViTImageProcessor(size={"height": image_size, "width": image_size})
    pixels = processor(list(data["image"]), return_tensors="pt")["pixel_values"]
    return pixels, torch.tensor(list(data["label"]))


def train_briefly(model, pixels: torch.Tensor, labels: torch.Tensor, steps: int = 150, lr: float = 3e-3, seed: int = 0):
    """A few Adam steps of plain cross-entropy training; returns the model in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(labels), (64,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(pixel_values=pixels[index]).logits, labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for torchrun's rendezvous in multi-process tests)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "finetune.py"


def load_recipe():
    """The main job's module (``recipes/finetune.py`` runs it)."""
    import nullspace_hf.scripts.finetune as finetune

    return finetune


def recipe_args(root: Path, output_dir: Path, *extra: str) -> list[str]:
    """Recipe flags for a seconds-long run on the ``small_data`` fixture's files."""
    return ["--model_name_or_path", str(root / "model"),
            "--data_files", json.dumps({"train": str(root / "train.parquet"), "test": str(root / "test.parquet")}),
            "--output_dir", str(output_dir), "--max_steps", "4", "--per_device_train_batch_size", "16",
            "--noise_refresh_steps", "2", "--noise_max_steps", "20", "--save_strategy", "no", "--report_to", "none",
            "--eval_attacks", "fgsm", "--eval_corruptions", "gaussian_noise", "--eval_severities", "1",
            "--disable_tqdm", "true", *extra]


def hub_env(endpoint: str, home: Path) -> dict[str, str]:
    """The environment of a process that talks to the loopback Hub (online, whatever the user set)."""
    return {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "test-token",
            "HF_HOME": str(home), "HF_HUB_OFFLINE": "0"}


def run_recipe(args: list[str], endpoint: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the recipe in a subprocess against the loopback Hub at ``endpoint``."""
    return subprocess.run([sys.executable, str(RECIPE), *args], capture_output=True, text=True, cwd=cwd,
                          env=hub_env(endpoint, cwd / "hf_home"), timeout=600)
