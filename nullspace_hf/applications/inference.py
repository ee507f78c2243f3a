"""Running a model on [0, 1] pixels: the processor's normalisation, eval mode, float32 logits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import PreTrainedModel

from .pixels import PixelSpace


@contextmanager
def eval_mode(model: PreTrainedModel) -> Iterator[None]:
    """Put the model in eval mode (no dropout) and restore its training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def model_input(model: PreTrainedModel, pixels: torch.Tensor, pixel_space: PixelSpace) -> torch.Tensor:
    """``(B, c, H, W)`` [0, 1] pixels as ``pixel_values`` on the model's device, in its dtype."""
    parameter = next(model.parameters())
    inputs = pixel_space.to_model_input(pixels.to(torch.float64))
    return inputs.to(device=parameter.device, dtype=parameter.dtype)


@torch.no_grad()
def model_logits(model: PreTrainedModel, pixels: torch.Tensor, pixel_space: PixelSpace) -> torch.Tensor:
    """Logits of a ``(B, c, H, W)`` batch of [0, 1] pixels, in float32 on the CPU, computed in eval mode."""
    with eval_mode(model):
        logits = model(pixel_values=model_input(model, pixels, pixel_space)).logits
    return logits.to(device="cpu", dtype=torch.float32)
