"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch

from .helpers import save_tiny_model


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
