"""The ``nullspace-hf`` command line: thin doors that parse arguments and call the package."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from transformers.utils import logging as hf_logging

from .applications.cli import add_watermark_parser
from .errors import NullspaceError
from .evaluation.cli import add_evaluate_parser
from .modeling import load_model
from .nullspace import patch_embedding_nullspace
from .parsing import run_command


def inspect_models(models: Sequence[str], rtol: float | None = None, num_singular: int = 3) -> list[dict]:
    """Return one Table-1 style row per model: patch size, hidden, c·r², rank, nullity, smallest σ."""
    rows = []
    for name in models:
        nullspace = patch_embedding_nullspace(load_model(name), rtol=rtol)
        rows.append(
            {
                "model": name,
                "patch_size": list(nullspace.patch_size),
                "hidden_size": nullspace.hidden_size,
                "patch_dim": nullspace.patch_dim,
                "rank": nullspace.rank,
                "nullity": nullspace.nullity,
                "smallest_singular_values": [float(v) for v in nullspace.singular_values[-num_singular:]],
            }
        )
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """Format :func:`inspect_models` rows as an aligned text table."""
    header = ["model", "patch", "hidden", "c·r²", "rank", "nullity", "smallest singular values"]
    lines = [
        [
            row["model"],
            "×".join(str(p) for p in row["patch_size"]),
            str(row["hidden_size"]),
            str(row["patch_dim"]),
            str(row["rank"]),
            str(row["nullity"]),
            ", ".join(f"{v:.3g}" for v in row["smallest_singular_values"]),
        ]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
                     for line in [header, *lines])


def _run_inspect(args: argparse.Namespace) -> None:
    hf_logging.disable_progress_bar()
    rows = inspect_models(args.models, rtol=args.rtol)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    if args.figure:
        from PIL import Image
        from transformers import AutoImageProcessor

        from .plots import plot_nullspace_example

        if not args.image:
            raise NullspaceError("--figure needs --image PATH: the picture to draw the nullspace noise on.")
        model_name = args.models[0]
        try:
            processor = AutoImageProcessor.from_pretrained(model_name)
        except OSError as error:
            raise NullspaceError(f"{model_name!r} has no image processor to prepare --image with: {error}") from error
        try:
            image = Image.open(args.image)
        except OSError as error:
            raise NullspaceError(f"Could not read --image {args.image!r}: {error}") from error
        labels = plot_nullspace_example(
            load_model(model_name, for_classification=True), processor, image, args.figure, scale=args.scale
        )
        print(f"wrote {args.figure} (prediction clean: {labels['clean']}, with nullspace noise: {labels['noisy']})",
              file=sys.stderr)


def _add_inspect(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="Table-1 row per model: rank and nullity of the patch embedding.",
        description="Print the exact patch-embedding nullspace of each model (paper §3.1, Table 1).",
    )
    parser.add_argument("models", nargs="+", metavar="MODEL", help="Local directory or Hub id.")
    parser.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    parser.add_argument("--rtol", type=float, default=None,
                        help="Relative rank tolerance (default: max(d, c·r²)·eps of the weight dtype).")
    parser.add_argument("--figure", metavar="PNG", help="Draw Fig. 2 for the first MODEL on --image.")
    parser.add_argument("--image", metavar="PATH", help="Image for --figure.")
    parser.add_argument("--scale", type=float, default=1.0, help="Std of the nullspace coefficients in --figure.")
    parser.set_defaults(func=_run_inspect)


def _add_finetune(subparsers: argparse._SubParsersAction) -> None:
    """``nullspace-hf finetune``: listed here, parsed by the job's own ``HfArgumentParser`` (see :func:`main`)."""
    subparsers.add_parser(
        "finetune", add_help=False,
        help="The main job: fine-tune with nullspace noise, evaluate before and after, write and push the model "
             "(no flag: the embedded default; `nullspace-hf finetune --help` lists the flags).",
    )


def make_parser() -> argparse.ArgumentParser:
    """Build the ``nullspace-hf`` parser with one sub-command per door."""
    parser = argparse.ArgumentParser(prog="nullspace-hf", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_finetune(subparsers)
    _add_inspect(subparsers)
    add_evaluate_parser(subparsers)
    add_watermark_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nullspace-hf`` console script; user errors print one line and exit 2.

    ``finetune`` hands every later argument to the job (``nullspace_hf.scripts.finetune``), whose
    ``HfArgumentParser`` knows the ``TrainingArguments`` flags.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["finetune"]:
        from .scripts.finetune import cli as finetune

        return finetune(argv[1:])
    args = make_parser().parse_args(argv)
    return run_command(f"nullspace-hf {args.command}", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
