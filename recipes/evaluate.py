"""Robustness evaluation (paper §5, Table 2) on one or several processes.

    accelerate launch --num_processes 2 recipes/evaluate.py MODEL --dataset digits --output results.json

Each process evaluates its own share of the images; the counts are summed over processes, so every image
is counted once. The options are those of ``nullspace-hf evaluate`` (``--help``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from accelerate import PartialState

from nullspace_hf.evaluation.cli import add_evaluate_arguments, run_evaluate


def make_parser() -> argparse.ArgumentParser:
    """The recipe's parser: the options of ``nullspace-hf evaluate``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_evaluate_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, evaluate, and return the exit status (2 with one line on stderr for a user error)."""
    args = make_parser().parse_args(argv)
    try:
        run_evaluate(args)
    except ValueError as error:
        if PartialState().is_main_process:
            print(f"evaluate: error: {error}", file=sys.stderr)
        return 2
    finally:  # under torchrun, an open gloo group sometimes aborts the process at exit
        PartialState().destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
