"""One run per output directory: a lock held for the run's lifetime that names its holder.

The lock is an operating-system file lock (``filelock``) on ``output_dir/_run.lock``: the kernel
releases it when its process ends, however it ends, so a killed run never leaves ``output_dir``
locked. Beside it, ``output_dir/_run.holder.json`` names the holder (host, pid, start time, command)
for the error a second run gets. A run that ends removes both; a holder file left by a run that was
killed is reported when the next run takes the lock over. Both names start with ``_``, which
``Trainer.push_to_hub`` never uploads (and :data:`~nullspace_hf.hub.PUSH_EXCLUDE` names them for ``hf upload``).

Within one process the lock is re-entrant (the recipe holds it for the whole job, its trainer's
``train`` takes it again); under several processes the main process takes it and every process gets
the same answer.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from filelock import FileLock, Timeout
from transformers.utils import logging

from .errors import NullspaceError

LOCK_FILE = "_run.lock"
HOLDER_FILE = "_run.holder.json"

logger = logging.get_logger(__name__)
_held: dict[str, tuple[FileLock, int]] = {}  # real path -> (lock, how many times this process holds it)


class OutputDirBusyError(NullspaceError):
    """Another run holds the output directory; nothing was done."""


@dataclass
class Holder:
    """Who holds an output directory."""

    host: str
    pid: int
    started: str
    command: str

    @classmethod
    def this_process(cls) -> Holder:
        return cls(socket.gethostname(), os.getpid(), time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                   " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]])[:300])

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host}, started {self.started}: {self.command}"


def read_holder(output_dir: str) -> Holder | None:
    """The holder recorded in ``output_dir`` (the current one, or one that was killed), if any."""
    try:
        with open(os.path.join(output_dir, HOLDER_FILE), encoding="utf-8") as handle:
            return Holder(**json.load(handle))
    except (OSError, ValueError, TypeError):
        return None


def _acquire(path: str) -> FileLock:
    """Take the lock of the directory ``path`` or raise :class:`OutputDirBusyError` naming its holder."""
    os.makedirs(path, exist_ok=True)
    lock = FileLock(os.path.join(path, LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = read_holder(path)
        who = holder.describe() if holder else "a process that has not written its name yet"
        raise OutputDirBusyError(
            f"output_dir {path!r} is in use by another run ({who}): wait for it to end, stop it, or choose "
            "another --output_dir (output_dir=...)."
        ) from None
    previous = read_holder(path)
    if previous is not None:
        logger.warning(f"output_dir {path}: the run that held it ({previous.describe()}) ended without releasing "
                       "it (killed or crashed); this run takes it over.")
    with open(os.path.join(path, HOLDER_FILE), "w", encoding="utf-8") as handle:
        json.dump(asdict(Holder.this_process()), handle)
    return lock


def _release(path: str, lock: FileLock) -> None:
    """Remove the holder and lock files, then unlock (filelock re-checks, when it locks, that its file still
    exists, so a run that opened the file just before it was removed does not get a lock no one else sees)."""
    for name in (HOLDER_FILE, LOCK_FILE):
        try:
            os.remove(os.path.join(path, name))
        except OSError:
            pass
    lock.release()


def _agreed(error: str | None) -> str | None:
    """The main process's answer (an error message or ``None``), the same on every process."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    if PartialState().num_processes <= 1:
        return error
    return broadcast_object_list([error])[0]


@contextmanager
def hold_output_dir(output_dir: str) -> Iterator[None]:
    """Hold ``output_dir`` for the block: a second run into it stops at once, naming this one.

    Raises:
        OutputDirBusyError: another process holds it (the message names host, pid, start time and command).
    """
    from accelerate import PartialState

    path = os.path.realpath(output_dir)
    main = PartialState().is_main_process
    error = None
    if main and path not in _held:
        try:
            _held[path] = (_acquire(path), 0)
        except OutputDirBusyError as busy:
            error = str(busy)
    error = _agreed(error)
    if error is not None:
        raise OutputDirBusyError(error)
    if not main:
        yield
        return
    lock, count = _held[path]
    _held[path] = (lock, count + 1)
    try:
        yield
    finally:
        lock, count = _held[path]
        if count > 1:
            _held[path] = (lock, count - 1)
        else:
            del _held[path]
            _release(path, lock)
