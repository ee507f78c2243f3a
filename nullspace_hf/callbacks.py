"""Trainer callbacks: an exponential moving average of the weights, and the test metrics of every noise round."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .errors import NullspaceError


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


class RoundMetricsCallback(TrainerCallback):
    """Fig. 4: at the start of every ``every``-th noise round, and at the end, record test metrics.

    Args:
        measure: maps the model to a dict of metrics (e.g. clean, FGSM and corruption accuracy).
        refresh_steps: the trainer's ``noise_refresh_steps`` (one round).
        every: measure every this many rounds.

    Attributes:
        records: ``{"step": ..., **metrics}`` in order; the trainer's ``noise_history`` has the noise
            statistics of the same rounds.
        seconds: wall time spent measuring (to leave out of training-time comparisons).
    """

    def __init__(self, measure: Callable[[nn.Module], dict[str, float]], refresh_steps: int, every: int = 1):
        if refresh_steps < 1 or every < 1:
            raise NullspaceError(f"refresh_steps and every must be >= 1, got {refresh_steps} and {every}.")
        self.measure, self.interval = measure, refresh_steps * every
        self.records: list[dict[str, float]] = []
        self.seconds = 0.0

    def _record(self, step: int, model: nn.Module) -> None:
        if not self.records or self.records[-1]["step"] != step:
            started = time.perf_counter()
            self.records.append({"step": step, **self.measure(model)})
            self.seconds += time.perf_counter() - started

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: nn.Module | None = None, **kwargs: Any) -> None:
        self._record(state.global_step, model)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: nn.Module | None = None, **kwargs: Any) -> None:
        if state.global_step % self.interval == 0 or state.global_step == state.max_steps:
            self._record(state.global_step, model)
