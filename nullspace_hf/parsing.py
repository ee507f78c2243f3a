"""Command lines: ``HfArgumentParser`` with a ``--config`` file, comma-separated lists, and user errors as one line
and exit status 2.

Every command of the package writes its flags in ``--snake_case`` and its lists comma-separated
(``--attacks fgsm,pgd``, ``--severities 1,3``), as the ``TrainingArguments`` flags are written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from .errors import NullspaceError


def comma_list(text: str) -> list[str]:
    """The items of a comma-separated list flag (``"fgsm, pgd"`` → ``["fgsm", "pgd"]``); ``none`` is the empty list."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    return [] if [item.lower() for item in items] == ["none"] else items


def comma_ints(text: str) -> list[int]:
    """The integers of a comma-separated list flag (``"1,3"`` → ``[1, 3]``)."""
    try:
        return [int(item) for item in comma_list(text)]
    except ValueError as error:
        raise NullspaceError(f"{text!r} is not a comma-separated list of integers (e.g. 1,3,5).") from error


def job_parser(name: str, subparsers: argparse._SubParsersAction | None, *, help: str,
               description: str) -> argparse.ArgumentParser:
    """The ``argparse`` parser of the job ``name``: standalone (``python -m nullspace_hf.scripts.<name>``), or
    registered as the sub-command ``name`` on the ``nullspace-hf`` sub-parsers."""
    if subparsers is None:
        return argparse.ArgumentParser(prog=name, description=description)
    return subparsers.add_parser(name, help=help, description=description, formatter_class=argparse.HelpFormatter)


def config_given(argv: Sequence[str]) -> bool:
    """Whether ``argv`` names a config file (``--config FILE``, ``--config=FILE`` or a lone ``.yaml``/``.json``)."""
    return any(arg == "--config" or arg.startswith("--config=") for arg in argv) or (
        len(argv) == 1 and str(argv[0]).endswith((".json", ".yaml", ".yml")))


def parse_with_config(parser: HfArgumentParser, argv: Sequence[str], *, default_config: str | Path | None = None,
                      return_remaining: bool = False) -> tuple[Any, ...]:
    """Parse ``argv`` into the parser's dataclasses; ``--config x.yaml`` (or ``.json``) supplies defaults.

    Values come, from weakest to strongest, from the dataclass defaults, the file and the command-line
    flags, so a flag always wins over the file (as in TRL's scripts). A single argument naming a
    ``.json`` or ``.yaml`` file is read as the config, as transformers' example scripts read a JSON file.
    ``--config`` is listed in ``--help``.

    Args:
        default_config: the config file read when ``argv`` names none (a job's embedded default).
        return_remaining: also return the strings the parser does not know, in their order (the
            ``accelerate launch`` flags of ``nullspace-hf finetune``), instead of refusing them.

    Raises:
        NullspaceError: the file is missing, is not a mapping, or names unknown arguments; or a config
            refuses the values given (``TrainingArguments`` checks its settings when it is built).
    """
    argv = list(argv)
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        argv = ["--config", argv[0]]
    if default_config is not None and not config_given(argv) and not {"-h", "--help"} & set(argv):
        argv = ["--config", str(default_config), *argv]
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
        parsed = tuple(parser.parse_args_into_dataclasses(rest, return_remaining_strings=return_remaining))
    except NullspaceError:
        raise
    except ValueError as error:  # a config's own check of the values given (TrainingArguments.__post_init__)
        raise NullspaceError(str(error)) from error
    count = len(parser.dataclass_types)
    return (*parsed[:count], parsed[-1]) if return_remaining else parsed[:count]


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
