"""Command lines: ``HfArgumentParser`` with a ``--config`` file, and user errors as one line and exit status 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

import yaml
from transformers import HfArgumentParser


def parse_with_config(parser: HfArgumentParser, argv: Sequence[str]) -> tuple[Any, ...]:
    """Parse ``argv`` into the parser's dataclasses; ``--config x.yaml`` (or ``.json``) supplies defaults.

    Values come, from weakest to strongest, from the dataclass defaults, the file and the command-line
    flags, so a flag always wins over the file (as in TRL's scripts). A single argument naming a
    ``.json`` or ``.yaml`` file is read as the config, as transformers' example scripts read a JSON file.
    ``--config`` is listed in ``--help``.

    Raises:
        ValueError: the file is missing, is not a mapping, or names unknown arguments.
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
            raise ValueError(f"Could not read --config {known.config!r}: {error}") from error
        if not isinstance(values, dict):
            raise ValueError(f"--config {known.config!r} must hold a mapping of argument names to values.")
        accepted = {action.dest for action in parser._actions} - {"config"}
        unknown = sorted(set(values) - accepted)
        if unknown:
            raise ValueError(f"--config {known.config!r} has unknown arguments: {', '.join(unknown)}.")
        parser.set_defaults(**values)
    return tuple(parser.parse_args_into_dataclasses(rest))[: len(parser.dataclass_types)]


def run_command(prog: str, job: Callable[[], Any], errors: tuple[type[BaseException], ...] = (ValueError,)) -> int:
    """Run ``job`` and return the exit status: 0, or 2 after one line ``prog: error: ...`` on stderr for ``errors``,
    or 128 + the signal's number after one line ``prog: stopped by SIGTERM: ...`` when a stop signal ended the
    job (:class:`~nullspace_hf.preemption.Interrupted`).

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
    except errors as error:
        if PartialState().is_main_process:
            print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    finally:
        PartialState().destroy_process_group()
    return 0
