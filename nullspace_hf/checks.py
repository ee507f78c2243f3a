"""Checks that turn a fault into one clear error before it costs work or loses a result.

They run before any expensive work (the output directory is writable and holds no earlier run), and
during training (weights, noise and loss stay finite, so no NaN model is ever saved or pushed).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from glob import escape, glob

import torch
from torch import nn

from .errors import NullspaceError

# Files holding a model's weights (a full model, a sharded one, an adapter, accelerate's FSDP sharded state folder).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "adapter_model.safetensors",
                "pytorch_model_fsdp_0")
# Files whose presence means an output directory holds an earlier run's results.
RUN_FILES = (*WEIGHT_FILES, "trainer_state.json", "results.json", "training_args.bin")


# errno of a failed write, in words for the one-line error
WRITE_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is used up",
                errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied", errno.EIO: "an input/output error",
                errno.EFBIG: "the file is too large"}
# what torch.save (its zip writer) and safetensors say when a write fails, without an errno
WRITE_FAILURE_TEXTS = ("inline_container", "unexpected pos", "file write failed", "IoError")
LOW_SPACE = 1 << 20  # bytes: less than this free after a failed write means the disk is full


class NonFiniteError(NullspaceError):
    """A loss, noise or weight is nan or inf; nothing non-finite was saved."""


class SaveError(NullspaceError):
    """A checkpoint or model could not be written (disk full, read-only, quota); nothing earlier was removed."""


def _free_bytes(path: str) -> int | None:
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path or ".").free
    except OSError:
        return None


def write_failure(error: BaseException, path: str) -> str | None:
    """The cause of a failed write into ``path`` in words, or ``None`` when ``error`` is not a failed write.

    torch's zip writer reports a full disk as ``[enforce fail at inline_container.cc] unexpected pos``,
    safetensors as an ``IoError``: the free space left on ``path``'s device tells a full disk apart.
    """
    chain, seen = [], error
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    codes = [e.errno for e in chain if isinstance(e, OSError)]
    codes += [int(code) for e in chain for code in re.findall(r"code: (\d+)", str(e))]  # safetensors' IoError
    known = next((WRITE_ERRORS[code] for code in codes if code in WRITE_ERRORS), None)
    if known is None and not any(isinstance(e, OSError) or any(text in str(e) for text in WRITE_FAILURE_TEXTS)
                                 for e in chain):
        return None
    free = _free_bytes(path)
    if known is None and free is not None and free < LOW_SPACE:
        known = WRITE_ERRORS[errno.ENOSPC]
    if known is None:
        known = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return known + (f" ({free / 2**20:.1f} MiB free there)" if free is not None else "")


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
        raise NullspaceError(f"{what} {directory!r} is not writable ({error.strerror or error}): choose another "
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
            raise NullspaceError(
                f"output_dir {output_dir!r} already holds a run ({shown}); it would be overwritten. Pass "
                "--overwrite_output_dir true (overwrite_output_dir=True) to replace it, --resume_from_checkpoint "
                "to continue it, or another --output_dir."
            )
    check_writable(output_dir, "output_dir")
