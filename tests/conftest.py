"""Shared fixtures."""

from __future__ import annotations

import pytest

from .helpers import save_tiny_model


@pytest.fixture
def tiny_vit_dir(tmp_path):
    """A directory holding a saved tiny ViT (32×32 RGB, patch 8, hidden 32) and its image processor."""
    path = tmp_path / "tiny-vit"
    save_tiny_model(path)
    return path
