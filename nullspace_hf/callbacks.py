"""Trainer callbacks: an exponential moving average of the weights."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import TrainerCallback


class EMACallback(TrainerCallback):
    """Keeps an exponential moving average of a model's floating-point weights and buffers.

    After every optimizer step ``ema ← decay·ema + (1 − decay)·weights`` (the authors evaluated their
    models with decay 0.9998). The average lives beside the model, in the weights' dtype and device;
    :meth:`swapped_into` puts it into the model for evaluation or saving.
    """

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {}

    def _float_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {name: tensor for name, tensor in model.state_dict().items() if tensor.is_floating_point()}

    def on_train_begin(self, args, state, control, model: nn.Module | None = None, **kwargs) -> None:
        if not self.shadow and model is not None:
            self.shadow = {name: tensor.detach().clone() for name, tensor in self._float_state(model).items()}

    @torch.no_grad()
    def on_step_end(self, args, state, control, model: nn.Module | None = None, **kwargs) -> None:
        if model is None:
            return
        current = self._float_state(model)
        names = list(self.shadow)
        torch._foreach_lerp_([self.shadow[n] for n in names], [current[n].detach() for n in names], 1 - self.decay)

    @contextmanager
    def swapped_into(self, model: nn.Module) -> Iterator[nn.Module]:
        """Inside the block the model holds the averaged weights; its own weights come back afterwards."""
        if not self.shadow:
            yield model
            return
        backup = {name: tensor.detach().clone() for name, tensor in self._float_state(model).items()}
        model.load_state_dict(self.shadow, strict=False)
        try:
            yield model
        finally:
            model.load_state_dict(backup, strict=False)
