"""The exact patch-embedding nullspace of each model (paper §3.1, Table 1), and Fig. 2 on an image.

    nullspace-hf inspect google/vit-base-patch16-224,google/vit-base-patch32-224 [--json]
    nullspace-hf inspect MODEL --figure fig2.png --image photo.jpg
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from transformers.utils import logging as hf_logging

from nullspace_hf.errors import NullspaceError
from nullspace_hf.modeling import load_model
from nullspace_hf.nullspace import patch_embedding_nullspace
from nullspace_hf.parsing import comma_list, job_parser, run_command

NAME = "inspect"
HELP = "Table-1 row per model: rank and nullity of the patch embedding."


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


def main(args: argparse.Namespace) -> list[dict]:
    """Print the rows of ``args.models`` (a table, or JSON) and draw ``--figure``; return the rows."""
    hf_logging.disable_progress_bar()
    if not args.models:
        raise NullspaceError("Give at least one MODEL (comma-separated for several).")
    if args.figure and not args.image:
        raise NullspaceError("--figure needs --image PATH: the picture to draw the nullspace noise on.")
    rows = inspect_models(args.models, rtol=args.rtol)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    if args.figure:
        _draw_figure(args.models[0], args.image, args.figure, args.scale)
    return rows


def _draw_figure(model_name: str, image_path: str, figure: str, scale: float) -> None:
    from PIL import Image
    from transformers import AutoImageProcessor

    from nullspace_hf.plots import plot_nullspace_example

    try:
        processor = AutoImageProcessor.from_pretrained(model_name)
    except OSError as error:
        raise NullspaceError(f"{model_name!r} has no image processor to prepare --image with: {error}") from error
    try:
        image = Image.open(image_path)
    except OSError as error:
        raise NullspaceError(f"Could not read --image {image_path!r}: {error}") from error
    labels = plot_nullspace_example(load_model(model_name, for_classification=True), processor, image, figure,
                                    scale=scale)
    print(f"wrote {figure} (prediction clean: {labels['clean']}, with nullspace noise: {labels['noisy']})",
          file=sys.stderr)


def make_parser(subparsers: argparse._SubParsersAction | None = None) -> argparse.ArgumentParser:
    """The job's parser; given the ``nullspace-hf`` sub-parsers, it is registered there as ``inspect``."""
    description = "Print the exact patch-embedding nullspace of each model (paper §3.1, Table 1)."
    parser = job_parser(NAME, subparsers, help=HELP, description=description)
    parser.add_argument("models", type=comma_list, metavar="MODELS",
                        help="Local directories or Hub ids, comma-separated.")
    parser.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    parser.add_argument("--rtol", type=float, default=None,
                        help="Relative rank tolerance (default: max(d, c·r²)·eps of the weight dtype).")
    parser.add_argument("--figure", metavar="PNG", help="Draw Fig. 2 for the first model on --image.")
    parser.add_argument("--image", metavar="PATH", help="Image for --figure.")
    parser.add_argument("--scale", type=float, default=1.0, help="Std of the nullspace coefficients in --figure.")
    return parser


def cli(argv: list[str]) -> int:
    """Parse ``argv`` and run :func:`main` in this process; a user error is one line on stderr and exit status 2."""
    return run_command(NAME, lambda: main(make_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
