"""Command lines: ``HfArgumentParser`` with a ``--config`` file, and user errors as one line and exit status 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

import yaml
from transformers import HfArgumentParser

from .errors import NullspaceError


def parse_with_config(parser: HfArgumentParser, argv: Sequence[str]) -> tuple[Any, ...]:
    """Parse ``argv`` into the parser's dataclasses; ``--config x.yaml`` (or ``.json``) supplies defaults.

    Values come, from weakest to strongest, from the dataclass defaults, the file and the command-line
    flags, so a flag always wins over the file (as in TRL's scripts). A single argument naming a
    ``.json`` or ``.yaml`` file is read as the config, as transformers' example scripts read a JSON file.
    ``--config`` is listed in ``--help``.

    Raises:
        NullspaceError: the file is missing, is not a mapping, or names unknown arguments; or a config
            refuses the values given (``TrainingArguments`` checks its settings when it is built).
    """
    argv = list(argv)
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        argv = ["--config", argv[0]]
    if not any(action.dest == "config" for action in parser._actions):
        parser.add_argument("--config", metavar="FILE",
                            help="YAML or JSON file of argument values; flags given beside it override them.")
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, rest = pre.parse_known_args(argv)
    if known.config:
        try:
            with open(known.config, encoding="utf-8") as handle:
                values = yaml.safe_load(handle) or {}
        except OSError as error:
            raise NullspaceError(f"Could not read --config {known.config!r}: {error}") from error
        if not isinstance(values, dict):
            raise NullspaceError(f"--config {known.config!r} must hold a mapping of argument names to values.")
        accepted = {action.dest for action in parser._actions} - {"config"}
        unknown = sorted(set(values) - accepted)
        if unknown:
            raise NullspaceError(f"--config {known.config!r} has unknown arguments: {', '.join(unknown)}.")
        parser.set_defaults(**values)
    try:
        return tuple(parser.parse_args_into_dataclasses(rest))[: len(parser.dataclass_types)]
    except NullspaceError:
        raise
    except ValueError as error:  # a config's own check of the values given (TrainingArguments.__post_init__)
        raise NullspaceError(str(error)) from error


def run_command(prog: str, job: Callable[[], Any]) -> int:
    """Run ``job`` and return the exit status: 0; 2 after one line ``prog: error: ...`` on stderr for a user error
    (:class:`~nullspace_hf.errors.NullspaceError`); 128 + the signal's number after one line ``prog: stopped by
    SIGTERM: ...`` when a stop signal ended the job (:class:`~nullspace_hf.preemption.Interrupted`). Any other
    exception, a ``ValueError`` from a bug included, propagates with its traceback.

    Under several processes only the main one prints. The process group, if one was opened, is closed on
    the way out: under torchrun an open gloo/NCCL group sometimes aborts the process at exit.
    """
    from accelerate import PartialState

    from .preemption import Interrupted

    try:
        job()
    except Interrupted as stop:
        if PartialState().is_main_process:
            print(f"{prog}: {stop}", file=sys.stderr)
        return stop.exit_code
    except NullspaceError as error:
        if PartialState().is_main_process:
            print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    finally:
        PartialState().destroy_process_group()
    return 0
