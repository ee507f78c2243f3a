"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch

from nullspace_hf.data import digits_dataset

from .helpers import load_recipe, save_tiny_model


@pytest.fixture
def tiny_vit_dir(tmp_path):
    """A directory holding a saved tiny ViT (32×32 RGB, patch 8, hidden 32) and its image processor."""
    path = tmp_path / "tiny-vit"
    save_tiny_model(path)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module: tiny models gain nothing from more, and lose much when the CPU
    is shared. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def recipe():
    """The main job's module, ``nullspace_hf.scripts.finetune``."""
    return load_recipe()


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """Digits as local parquet files (train 200, test 40) and a tiny 10-class ViT with its processor."""
    root = tmp_path_factory.mktemp("data")
    data = digits_dataset()
    data["train"].select(range(200)).to_parquet(str(root / "train.parquet"))
    data["test"].select(range(40)).to_parquet(str(root / "test.parquet"))
    save_tiny_model(root / "model", num_labels=10)
    return root
