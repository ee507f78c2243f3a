"""Checkpoints: which are complete, how one becomes visible, the noise state beside the weights, and their
validation before resume.

A checkpoint is written as ``tmp-checkpoint-N/checkpoint-N`` and renamed to ``checkpoint-N`` once every
file is in it (:func:`publish_checkpoint`), so a ``checkpoint-N`` folder is complete unless something
other than this package wrote it; :func:`incomplete_reason` checks anyway. A ``NullspaceTrainer``
checkpoint (and the final ``output_dir``) holds ``nullspace_noise.safetensors`` (the current round's
noise), ``noise_history.json`` (every round's statistics and the current round's index) and, with EMA
on, ``ema.safetensors``. :func:`resolve_checkpoint` reads them all before any work, so a missing or
broken file is one clear error instead of a run that continues without its noise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers.utils import logging

from .checks import WEIGHT_FILES, non_finite_tensors
from .errors import NullspaceError

NOISE_FILE = "nullspace_noise.safetensors"
HISTORY_FILE = "noise_history.json"
EMA_FILE = "ema.safetensors"
TRAINER_STATE = "trainer_state.json"
STAGING_PREFIX = "tmp-"  # transformers' checkpoint patterns (``checkpoint-N``) never match a staged save
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")

logger = logging.get_logger(__name__)


def incomplete_reason(checkpoint: str) -> str | None:
    """Why ``checkpoint`` cannot be resumed from (no weights, no or broken trainer state); ``None`` if it can."""
    if not any(os.path.exists(os.path.join(checkpoint, name)) for name in WEIGHT_FILES):
        return f"no model weights ({WEIGHT_FILES[0]})"
    try:
        with open(os.path.join(checkpoint, TRAINER_STATE), encoding="utf-8") as handle:
            json.load(handle)["global_step"]
    except OSError:
        return f"no {TRAINER_STATE}"
    except (ValueError, KeyError, TypeError):
        return f"a broken {TRAINER_STATE}"
    return None


def checkpoints(output_dir: str) -> list[str]:
    """The ``checkpoint-N`` folders of ``output_dir``, newest (largest N) first."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(match.group(1)), name) for name in os.listdir(output_dir)
             if (match := CHECKPOINT_NAME.match(name)) and os.path.isdir(os.path.join(output_dir, name))]
    return [os.path.join(output_dir, name) for _, name in sorted(found, reverse=True)]


def staged_saves(output_dir: str) -> list[str]:
    """The ``tmp-checkpoint-N`` folders of ``output_dir``: saves that were cut short (or are under way)."""
    if not os.path.isdir(output_dir):
        return []
    return sorted(os.path.join(output_dir, name) for name in os.listdir(output_dir)
                  if name.startswith(STAGING_PREFIX) and CHECKPOINT_NAME.match(name[len(STAGING_PREFIX):]))


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest ``checkpoint-N`` of ``output_dir`` that can be resumed from."""
    return next((path for path in checkpoints(output_dir) if incomplete_reason(path) is None), None)


def publish_checkpoint(staged: str, final: str) -> None:
    """Make the complete checkpoint ``staged`` visible as ``final`` with one rename (an older ``final`` is
    replaced; a kill at any moment leaves either of them, complete, under the name ``final`` or none)."""
    if os.path.exists(final):
        previous = os.path.join(os.path.dirname(staged), "replaced")
        os.replace(final, previous)
        os.replace(staged, final)
        shutil.rmtree(previous, ignore_errors=True)
    else:
        os.replace(staged, final)
    shutil.rmtree(os.path.dirname(staged), ignore_errors=True)


def remove_staged_saves(output_dir: str) -> None:
    """Delete the ``tmp-checkpoint-N`` folders that saves cut short left in ``output_dir`` (and say so)."""
    for path in staged_saves(output_dir):
        logger.warning(f"Removing {path}: a checkpoint save that was cut short (it was never complete).")
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class NoiseState:
    """What a checkpoint holds of Algorithm 1: the round, its noise, the history of rounds, the EMA weights, and the
    earlier rounds' noises that a ``noise_bank_size`` > 1 keeps beside the current one (oldest first)."""

    round: int = -1
    noise: torch.Tensor | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    ema: dict[str, torch.Tensor] | None = None
    bank: torch.Tensor | None = None


def save_noise_state(directory: str, state: NoiseState, noise_mode: str) -> None:
    """Write ``state`` into ``directory`` (the noise only when there is one, the EMA only when given)."""
    os.makedirs(directory, exist_ok=True)
    if state.noise is not None:
        tensors = {"noise": state.noise.detach().float().cpu().contiguous()}
        if state.bank is not None:
            tensors["bank"] = state.bank.detach().float().cpu().contiguous()
        save_file(tensors, os.path.join(directory, NOISE_FILE), metadata={"round": str(state.round),
                                                                         "noise_mode": noise_mode})
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
        raise NullspaceError(f"{path} is not a readable noise history ({type(error).__name__}: {error}); restore it "
                             "from a copy or resume from another checkpoint.") from error
    return round_index, rounds


def _read_tensors(path: str, key: str | None) -> dict[str, torch.Tensor]:
    try:
        tensors = load_file(path)
    except (OSError, SafetensorError) as error:
        raise NullspaceError(f"{path} is not a readable safetensors file ({error}); restore it from a copy or resume "
                             "from another checkpoint.") from error
    if key is not None and key not in tensors:
        raise NullspaceError(f"{path} holds no tensor {key!r} (it holds {sorted(tensors)}): it was not written by "
                             "NullspaceTrainer; restore it or resume from another checkpoint.")
    if non_finite_tensors(tensors):
        raise NullspaceError(f"{path} holds non-finite values (nan or inf); resume from another checkpoint.")
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
        raise NullspaceError(f"{noise_path} does not hold the noise of round {state.round} that {HISTORY_FILE} "
                             f"recorded (norm {norm:.6g}, recorded {recorded:.6g}): the file was changed or mixed up "
                             "with another checkpoint's. Restore it or resume from another checkpoint.")


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
        tensors = _read_tensors(noise_path, "noise")
        state.noise, state.bank = tensors["noise"], tensors.get("bank")
        _check_matches_history(noise_path, state)
    elif noise_mode != "none" and state.round >= 0:
        raise NullspaceError(
            f"{checkpoint} is in noise round {state.round} ({HISTORY_FILE}) but has no {NOISE_FILE}: resuming would "
            "continue the round without its noise. Restore the file or resume from another checkpoint."
        )
    ema_path = os.path.join(checkpoint, EMA_FILE)
    if with_ema and os.path.isfile(ema_path):
        state.ema = _read_tensors(ema_path, None)
    return state


def _newest_complete(output_dir: str) -> str:
    """The newest complete ``checkpoint-N`` of ``output_dir``, saying which it is and which were skipped."""
    skipped = [f"{os.path.basename(path)} (a save cut short)" for path in staged_saves(output_dir)]
    for path in checkpoints(output_dir):
        reason = incomplete_reason(path)
        if reason is None:
            logger.warning(f"Resuming from {path}, the newest complete checkpoint"
                           + (f"; skipped the incomplete {', '.join(skipped)}." if skipped else "."))
            return path
        skipped.append(f"{os.path.basename(path)} ({reason})")
    raise NullspaceError(f"resume_from_checkpoint=true, but {output_dir} holds no checkpoint-* folder to resume from"
                         + (f" (incomplete: {', '.join(skipped)})" if skipped else "")
                         + ": give the checkpoint's path, or start without resume_from_checkpoint.")


def resolve_checkpoint(resume_from_checkpoint: str | bool | None, output_dir: str, noise_mode: str,
                       with_ema: bool = False) -> str | None:
    """The checkpoint directory to resume from, checked before any work; ``None`` for a fresh run.

    ``True`` (or ``"true"``) means the newest complete ``checkpoint-*`` of ``output_dir``: incomplete ones
    (a save cut short, by a kill or by a full disk) are skipped, and the choice is logged.

    Raises:
        ValueError: there is no such checkpoint, it is incomplete or holds no weights, or its noise state is
            broken (:func:`load_noise_state`).
    """
    if resume_from_checkpoint in (None, False, "", "false", "False"):
        return None
    if resume_from_checkpoint in (True, "true", "True"):
        path = _newest_complete(output_dir)
    else:
        path = str(resume_from_checkpoint)
    if not os.path.isdir(path):
        raise NullspaceError(f"resume_from_checkpoint={path!r} is not a directory: give a checkpoint-* folder written "
                             "by an earlier run (or true for the latest one in output_dir).")
    reason = incomplete_reason(path)
    name = os.path.basename(os.path.normpath(path))
    if reason is not None and (CHECKPOINT_NAME.match(name) or name.startswith(STAGING_PREFIX)):
        newest = last_complete_checkpoint(os.path.dirname(os.path.normpath(path)))
        raise NullspaceError(f"{path} is an incomplete checkpoint ({reason}: its save was cut short); resume from "
                             + (f"{newest}, the newest complete one" if newest else "an earlier run's checkpoint")
                             + ", or pass resume_from_checkpoint=true to take the newest complete one.")
    if reason is not None and reason.startswith("no model weights"):
        raise NullspaceError(f"{path} holds no model weights ({WEIGHT_FILES[0]}): it is not a training checkpoint.")
    if reason is not None:
        raise NullspaceError(f"{path} has {reason}: it is a saved model, not a training checkpoint; "
                             "fine-tune from it with model_name_or_path instead.")
    load_noise_state(path, noise_mode, with_ema)
    return path
