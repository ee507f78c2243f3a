"""The ``nullspace-hf`` command: one sub-command per job of :mod:`nullspace_hf.scripts`, built as ``trl`` is.

Every job module gives its parser with ``make_parser(subparsers)`` and runs with ``main(...)``. The
training jobs (``finetune``, ``pretrain``) are started through ``accelerate launch``, so the user's
``accelerate config`` applies and the flags the job does not know go to the launcher; the others run in
this process. ``python -m nullspace_hf.scripts.<job>`` runs any job in the process it is started in.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from transformers import HfArgumentParser

from .launcher import launch, split_launch_args
from .parsing import parse_with_config, run_command
from .scripts import evaluate, finetune, inspect, pretrain, watermark

LAUNCHED_JOBS: tuple[ModuleType, ...] = (finetune, pretrain)
IN_PROCESS_JOBS: tuple[ModuleType, ...] = (inspect, evaluate, watermark)


def make_parser() -> argparse.ArgumentParser:
    """The ``nullspace-hf`` parser: one sub-command per job, registered by the job's ``make_parser(subparsers)``."""
    parser = argparse.ArgumentParser(prog="nullspace-hf", description="Approximate nullspace augmented fine-tuning "
                                     "of Vision Transformers: one sub-command per job.",
                                     epilog="Flags are --snake_case and lists comma-separated in every command.")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=HfArgumentParser)
    for job in LAUNCHED_JOBS:
        job.make_parser(subparsers)
    for job in IN_PROCESS_JOBS:
        job.make_parser(subparsers).set_defaults(func=job.main)
    return parser


def _launch(job: ModuleType, parser: HfArgumentParser, argv: list[str]) -> int:
    """Check ``argv`` against the job's parser here (a bad flag stops before any process starts), then run the job
    under ``accelerate launch`` with the flags it does not know as the launcher's."""
    status = 0

    def start() -> None:
        nonlocal status
        *_, launch_args = parse_with_config(parser, argv, default_config=getattr(job, "DEFAULT_CONFIG", None),
                                            return_remaining=True)
        status = launch(job.__name__, launch_args, split_launch_args(argv, launch_args))

    return run_command(f"nullspace-hf {job.NAME}", start) or status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nullspace-hf`` console script; user errors print one line and exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    launched = {job.NAME: job for job in LAUNCHED_JOBS}
    if argv[:1] and argv[0] in launched:
        subparsers = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
        return _launch(launched[argv[0]], subparsers.choices[argv[0]], argv[1:])
    args = parser.parse_args(argv)
    return run_command(f"nullspace-hf {args.command}", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
