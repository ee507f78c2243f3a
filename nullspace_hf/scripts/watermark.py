"""Embed a logo in an image with nullspace noise of a model's patch embedding (App. E): visible, the model's output
unchanged.

    nullspace-hf watermark MODEL IMAGE LOGO --out marked.png [--figure fig6.png] [--strength 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

from PIL import Image
from transformers import AutoImageProcessor, BaseImageProcessor
from transformers.utils import logging as hf_logging

from nullspace_hf.applications.watermark import embed_watermark
from nullspace_hf.errors import NullspaceError
from nullspace_hf.modeling import load_model
from nullspace_hf.parsing import job_parser, run_command
from nullspace_hf.pixels import PixelSpaceClassifier, PixelTransform, pixels_for_model

NAME = "watermark"
HELP = "Overlay a logo with patch-embedding nullspace noise; the model's output does not change."


def _open_image(path: str, role: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except OSError as error:
        raise NullspaceError(f"Could not read {role} {path!r}: {error}") from error


def _load_processor(model_name: str) -> BaseImageProcessor:
    try:
        return AutoImageProcessor.from_pretrained(model_name)
    except (OSError, ValueError) as error:
        raise NullspaceError(
            f"{model_name!r} has no image processor: the watermark needs its resizing and normalisation ({error})"
        ) from error


def main(args: argparse.Namespace) -> dict:
    """Embed ``args.logo`` in ``args.image``, write ``args.out`` (and ``args.figure``), print and return a summary."""
    hf_logging.disable_progress_bar()
    model = load_model(args.model, for_classification=True)
    processor = _load_processor(args.model)
    result = embed_watermark(model, _open_image(args.image, "IMAGE"), _open_image(args.logo, "LOGO"),
                             args.strength, processor=processor)
    marked = result.to_pil()
    try:
        marked.save(args.out)
    except (OSError, ValueError) as error:
        raise NullspaceError(f"Could not write --out {args.out!r}: {error}") from error
    classifier = PixelSpaceClassifier(model, PixelTransform.from_processor(processor, model.config.num_channels))
    saved_logits = classifier.logits(pixels_for_model(marked, model, processor)[None])[0]
    id2label = model.config.id2label
    summary = {
        "out": args.out,
        "prediction_before": id2label.get(result.prediction_before, str(result.prediction_before)),
        "prediction_after": id2label.get(result.prediction_after, str(result.prediction_after)),
        "max_logit_change": result.max_logit_change,
        "max_logit_change_8bit": float((saved_logits - result.logits_before).abs().max()),
        "psnr_db": result.psnr,
    }
    if args.figure:
        from nullspace_hf.plots import plot_watermark

        plot_watermark(result, args.figure, id2label)
        summary["figure"] = args.figure
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"wrote {args.out}: prediction {summary['prediction_before']} -> {summary['prediction_after']}, "
            f"max |Δlogit| {summary['max_logit_change']:.2e} (after 8-bit rounding "
            f"{summary['max_logit_change_8bit']:.2e}), PSNR {summary['psnr_db']:.1f} dB"
            + (f"; figure {args.figure}" if args.figure else "")
        )
    return summary


def make_parser(subparsers: argparse._SubParsersAction | None = None) -> argparse.ArgumentParser:
    """The job's parser; given the ``nullspace-hf`` sub-parsers, it is registered there as ``watermark``."""
    description = ("Embed LOGO in IMAGE with exact nullspace noise of MODEL's patch embedding (paper App. E, Eq. 12): "
                   "visible to people, invisible to the model. The result has the model's input size.")
    parser = job_parser(NAME, subparsers, help=HELP, description=description)
    parser.add_argument("model", metavar="MODEL", help="Local directory or Hub id (with an image processor).")
    parser.add_argument("image", metavar="IMAGE", help="The picture to mark.")
    parser.add_argument("logo", metavar="LOGO", help="The watermark picture (resized to the model's input size).")
    parser.add_argument("--out", required=True, metavar="PNG", help="Where to write the watermarked image.")
    parser.add_argument("--figure", metavar="PNG", help="Also draw Fig. 6 (image, logo, noise, result) here.")
    parser.add_argument("--strength", type=float, default=1.0,
                        help="How far towards the logo to go; 1 aims at reproducing it (default 1).")
    parser.add_argument("--json", action="store_true", help="Print the summary as JSON.")
    return parser


def cli(argv: list[str]) -> int:
    """Parse ``argv`` and run :func:`main` in this process; a user error is one line on stderr and exit status 2."""
    return run_command(NAME, lambda: main(make_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
