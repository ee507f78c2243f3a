"""Checks that turn a fault into one clear error before it costs work or loses a result.

They run before any expensive work (the output directory is writable and holds no earlier run), and
during training (weights, noise and loss stay finite, so no NaN model is ever saved or pushed).
"""

from __future__ import annotations

import os
import tempfile
from glob import escape, glob

import torch
from torch import nn

# Files holding a model's weights (a full model, a sharded one, an adapter).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "adapter_model.safetensors")
# Files whose presence means an output directory holds an earlier run's results.
RUN_FILES = (*WEIGHT_FILES, "trainer_state.json", "results.json", "training_args.bin")


class NonFiniteError(ValueError):
    """A loss, noise or weight is nan or inf; nothing non-finite was saved."""


def non_finite_tensors(named_tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a nan or an inf."""
    return [name for name, tensor in named_tensors.items()
            if tensor.is_floating_point() and not torch.isfinite(tensor).all()]


def check_finite_weights(model: nn.Module, what: str, advice: str) -> None:
    """Raise when a weight of ``model`` is nan or inf.

    Raises:
        NonFiniteError: how many tensors are affected, the first ones, ``what`` holds them, then ``advice``.
    """
    bad = non_finite_tensors(dict(model.named_parameters()))
    if bad:
        names = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise NonFiniteError(f"{len(bad)} weight tensors of {what} hold nan or inf ({names}): {advice}")


def check_writable(directory: str, what: str) -> None:
    """Create ``directory`` if needed and check that a file can be written in it.

    Raises:
        ValueError: naming ``what`` (the setting) and the reason.
    """
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise ValueError(f"{what} {directory!r} is not writable ({error.strerror or error}): choose another "
                         "directory.") from error


def earlier_run(output_dir: str) -> list[str]:
    """What of an earlier run ``output_dir`` holds: its ``checkpoint-*`` folders and result files."""
    if not os.path.isdir(output_dir):
        return []
    found = sorted(os.path.basename(p) for p in glob(os.path.join(escape(output_dir), "checkpoint-*")))
    return found + [name for name in RUN_FILES if os.path.exists(os.path.join(output_dir, name))]


def check_output_dir(output_dir: str, *, overwrite: bool, resuming: bool) -> None:
    """Refuse to train into an ``output_dir`` that holds an earlier run, unless resuming it or told to overwrite.

    Then check that ``output_dir`` is writable. Both happen before any expensive work.

    Raises:
        ValueError: listing what is there and the three ways out.
    """
    if not (overwrite or resuming):
        found = earlier_run(output_dir)
        if found:
            shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
            raise ValueError(
                f"output_dir {output_dir!r} already holds a run ({shown}); it would be overwritten. Pass "
                "--overwrite_output_dir true (overwrite_output_dir=True) to replace it, --resume_from_checkpoint "
                "to continue it, or another --output_dir."
            )
    check_writable(output_dir, "output_dir")
