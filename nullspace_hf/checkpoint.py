"""The noise state a ``NullspaceTrainer`` checkpoint holds beside the weights, and its validation before resume.

A checkpoint (and the final ``output_dir``) holds ``nullspace_noise.safetensors`` (the current
round's noise), ``noise_history.json`` (every round's statistics and the current round's index) and,
with EMA on, ``ema.safetensors``. :func:`resolve_checkpoint` reads them all before any work, so a
missing or broken file is one clear error instead of a run that continues without its noise.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .checks import WEIGHT_FILES, non_finite_tensors

NOISE_FILE = "nullspace_noise.safetensors"
HISTORY_FILE = "noise_history.json"
EMA_FILE = "ema.safetensors"


@dataclass
class NoiseState:
    """What a checkpoint holds of Algorithm 1: the round, its noise, the history of rounds, the EMA weights."""

    round: int = -1
    noise: torch.Tensor | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    ema: dict[str, torch.Tensor] | None = None


def save_noise_state(directory: str, state: NoiseState, noise_mode: str) -> None:
    """Write ``state`` into ``directory`` (the noise only when there is one, the EMA only when given)."""
    os.makedirs(directory, exist_ok=True)
    if state.noise is not None:
        save_file({"noise": state.noise.detach().float().cpu().contiguous()}, os.path.join(directory, NOISE_FILE),
                  metadata={"round": str(state.round), "noise_mode": noise_mode})
    with open(os.path.join(directory, HISTORY_FILE), "w", encoding="utf-8") as handle:
        json.dump({"noise_mode": noise_mode, "round": state.round, "rounds": state.history}, handle, indent=2)
    if state.ema:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.ema.items()}, os.path.join(directory, EMA_FILE))


def _read_history(path: str) -> tuple[int, list[dict[str, Any]]]:
    try:
        with open(path, encoding="utf-8") as handle:
            history = json.load(handle)
        round_index, rounds = int(history["round"]), list(history["rounds"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a readable noise history ({type(error).__name__}: {error}); restore it "
                         "from a copy or resume from another checkpoint.") from error
    return round_index, rounds


def _read_tensors(path: str, key: str | None) -> dict[str, torch.Tensor]:
    try:
        tensors = load_file(path)
    except (OSError, SafetensorError) as error:
        raise ValueError(f"{path} is not a readable safetensors file ({error}); restore it from a copy or resume "
                         "from another checkpoint.") from error
    if key is not None and key not in tensors:
        raise ValueError(f"{path} holds no tensor {key!r} (it holds {sorted(tensors)}): it was not written by "
                         "NullspaceTrainer; restore it or resume from another checkpoint.")
    if non_finite_tensors(tensors):
        raise ValueError(f"{path} holds non-finite values (nan or inf); resume from another checkpoint.")
    return tensors


def _check_matches_history(noise_path: str, state: NoiseState) -> None:
    """The noise file must be the noise whose norm the history recorded for the current round.

    The norm is recomputed from the same float32 tensor, so only the summation order may differ: a relative
    tolerance of 1e-4 is far above that and far below any change to the file.
    """
    recorded = next((r.get("norm") for r in reversed(state.history) if r.get("round") == state.round), None)
    if recorded is None:
        return
    norm = float(state.noise.norm())
    if abs(norm - recorded) > 1e-4 * max(abs(recorded), 1e-12):
        raise ValueError(f"{noise_path} does not hold the noise of round {state.round} that {HISTORY_FILE} recorded "
                         f"(norm {norm:.6g}, recorded {recorded:.6g}): the file was changed or mixed up with another "
                         "checkpoint's. Restore it or resume from another checkpoint.")


def load_noise_state(checkpoint: str, noise_mode: str, with_ema: bool) -> NoiseState:
    """Read and check the noise state of ``checkpoint``.

    Raises:
        ValueError: a file is unreadable, has the wrong key or holds non-finite values, the noise is not the one
            the history recorded, or the history says a round was under way (``noise_mode`` other than
            ``"none"``) but its noise file is missing.
    """
    state = NoiseState()
    history_path = os.path.join(checkpoint, HISTORY_FILE)
    if os.path.isfile(history_path):
        state.round, state.history = _read_history(history_path)
    noise_path = os.path.join(checkpoint, NOISE_FILE)
    if os.path.isfile(noise_path):
        state.noise = _read_tensors(noise_path, "noise")["noise"]
        _check_matches_history(noise_path, state)
    elif noise_mode != "none" and state.round >= 0:
        raise ValueError(
            f"{checkpoint} is in noise round {state.round} ({HISTORY_FILE}) but has no {NOISE_FILE}: resuming would "
            "continue the round without its noise. Restore the file or resume from another checkpoint."
        )
    ema_path = os.path.join(checkpoint, EMA_FILE)
    if with_ema and os.path.isfile(ema_path):
        state.ema = _read_tensors(ema_path, None)
    return state


def resolve_checkpoint(resume_from_checkpoint: str | bool | None, output_dir: str, noise_mode: str,
                       with_ema: bool = False) -> str | None:
    """The checkpoint directory to resume from, checked before any work; ``None`` for a fresh run.

    ``True`` (or ``"true"``) means the latest ``checkpoint-*`` of ``output_dir``, as in ``Trainer.train``.

    Raises:
        ValueError: there is no such checkpoint, it holds no weights, or its noise state is broken
            (:func:`load_noise_state`).
    """
    from transformers.trainer_utils import get_last_checkpoint

    if resume_from_checkpoint in (None, False, "", "false", "False"):
        return None
    if resume_from_checkpoint in (True, "true", "True"):
        found = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if found is None:
            raise ValueError(f"resume_from_checkpoint=true, but {output_dir} holds no checkpoint-* folder: give the "
                             "checkpoint's path, or start without resume_from_checkpoint.")
        resume_from_checkpoint = found
    path = str(resume_from_checkpoint)
    if not os.path.isdir(path):
        raise ValueError(f"resume_from_checkpoint={path!r} is not a directory: give a checkpoint-* folder written "
                         "by an earlier run (or true for the latest one in output_dir).")
    if not any(os.path.isfile(os.path.join(path, name)) for name in WEIGHT_FILES):
        raise ValueError(f"{path} holds no model weights ({WEIGHT_FILES[0]}): it is not a training checkpoint.")
    if not os.path.isfile(os.path.join(path, "trainer_state.json")):
        raise ValueError(f"{path} has no trainer_state.json: it is a saved model, not a training checkpoint; "
                         "fine-tune from it with model_name_or_path instead.")
    load_noise_state(path, noise_mode, with_ema)
    return path
