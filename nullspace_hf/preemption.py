"""Preemption: SIGTERM or SIGINT stops a run after its current optimizer step, with a complete checkpoint.

A cluster stops a job with SIGTERM (then SIGKILL after a grace period). While
:func:`handle_stop_signals` is active, SIGTERM and SIGINT only record the request;
:class:`PreemptionCallback` asks the Trainer to save and stop at the end of the step under way, and
the trainer then raises :class:`Interrupted`, whose one-line message says where the checkpoint is.
Under several processes the request of any one of them stops all of them at the same step.

``accelerate launch`` (one process) does not pass a signal on to the job it started, and a job whose
launcher ends would go on alone: :func:`follow_launcher` has the kernel send the job SIGTERM when its
launcher ends (Linux). With ``--multi_gpu`` the launcher is torch's elastic agent, which passes
SIGTERM and SIGINT on to every process and kills them after ``TORCHELASTIC_SHUTDOWN_TIMEOUT``
seconds (default 30): the step under way and the checkpoint must fit in it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from transformers import TrainerCallback
from transformers.utils import logging

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
PR_SET_PDEATHSIG = 1  # linux/prctl.h

logger = logging.get_logger(__name__)
_state: dict[str, int | None] = {"signal": None, "depth": 0}


class Interrupted(RuntimeError):
    """The run stopped at a stop signal; the message says what is saved and how to resume."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signal_number  # what a shell reports for a process ended by that signal


def requested() -> int | None:
    """The stop signal received while :func:`handle_stop_signals` was active, if any."""
    return _state["signal"]


def signal_name(number: int) -> str:
    return signal.Signals(number).name


def _record(number: int, frame: FrameType | None) -> None:
    if _state["signal"] is None:
        logger.warning(f"{signal_name(number)} received: finishing the current optimizer step, then saving a "
                       "checkpoint and stopping.")
    _state["signal"] = number


@contextmanager
def handle_stop_signals() -> Iterator[None]:
    """Record SIGTERM and SIGINT instead of dying at once, for the block (nested blocks share one request).

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outermost = _state["depth"] == 0
    if outermost:
        _state["signal"] = None
        previous = {number: signal.signal(number, _record) for number in STOP_SIGNALS}
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        if outermost:
            for number, handler in previous.items():
                signal.signal(number, handler)


def stop_if_requested(what_is_saved: str) -> None:
    """Raise :class:`Interrupted` when a stop signal came, saying ``what_is_saved``."""
    number = requested()
    if number is not None:
        raise Interrupted(f"stopped by {signal_name(number)}: {what_is_saved}", number)


class PreemptionCallback(TrainerCallback):
    """At the end of every optimizer step: when a stop signal came (on any process), save and stop.

    Args:
        agree: maps this process's ``bool`` (a signal came) to the answer of all processes (any of them).
    """

    def __init__(self, agree: Callable[[bool], bool]) -> None:
        self.agree = agree
        self.stopped_at: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.agree(requested() is not None):
            if _state["signal"] is None:  # another process got it: stop for the same reason
                _state["signal"] = int(signal.SIGTERM)
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control


def launched_alone() -> bool:
    """True in a process started by ``accelerate launch`` without torch's elastic agent (one process), whose
    launcher passes no signal on."""
    return "ACCELERATE_MIXED_PRECISION" in os.environ and "TORCHELASTIC_RUN_ID" not in os.environ


def follow_launcher() -> None:
    """In a job started by ``accelerate launch`` with one process, get SIGTERM when the launcher ends (Linux
    ``PR_SET_PDEATHSIG``); the elastic agent of ``--multi_gpu`` passes signals on itself.

    Elsewhere (no launcher, or no ``prctl``) it does nothing.
    """
    if not launched_alone():
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher ended before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
