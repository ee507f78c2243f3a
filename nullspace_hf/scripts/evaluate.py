"""Robustness report of any image classifier: attacks, corruptions (mCE) and out-of-distribution sets (§5, Table 2).

    nullspace-hf evaluate MODEL --dataset digits --attacks fgsm,pgd --corruptions fog --severities 1,3
    accelerate launch -m nullspace_hf.scripts.evaluate MODEL --dataset ...     # several processes

Lists are comma-separated (``none`` for an empty one), as in every command of the package.
"""

from __future__ import annotations

import argparse
import os
import sys
from fractions import Fraction
from typing import TYPE_CHECKING

from nullspace_hf.errors import NullspaceError
from nullspace_hf.parsing import comma_ints, comma_list, job_parser, run_command

if TYPE_CHECKING:
    from accelerate import PartialState

    from nullspace_hf.evaluation.attacks import Attack
    from nullspace_hf.evaluation.report import RobustnessReport

NAME = "evaluate"
HELP = "Robustness report: attacks, corruptions (mCE) and OOD sets (paper §5, Table 2)."


def _number(text: str) -> float:
    """A float, also written as a fraction such as ``1/255``."""
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError) as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 0.004 or 1/255)") from error


def make_parser(subparsers: argparse._SubParsersAction | None = None) -> argparse.ArgumentParser:
    """The job's parser; given the ``nullspace-hf`` sub-parsers, it is registered there as ``evaluate``."""
    description = ("Evaluate an image classifier under FGSM, PGD, CW, PatchFool and AutoAttack, common corruptions "
                   "(on the fly, or the released ImageNet-C / CIFAR-10-C) and out-of-distribution sets; print a JSON "
                   "or Markdown report. Lists are comma-separated.")
    parser = job_parser(NAME, subparsers, help=HELP, description=description)
    parser.add_argument("model", metavar="MODEL", help="Local directory or Hub id of an image classifier.")
    parser.add_argument("--dataset", required=True,
                        help="'digits' (embedded), a save_to_disk directory, an image folder or a Hub dataset id.")
    parser.add_argument("--split", default="test", help="Split of --dataset (default: test).")
    parser.add_argument("--max_samples", type=int, metavar="N", help="Evaluate the first N images only.")
    parser.add_argument("--image_column", help="Image column (default: found automatically).")
    parser.add_argument("--label_column", help="Label column (default: found automatically).")
    parser.add_argument("--attacks", type=comma_list, default=["fgsm", "pgd", "cw", "patchfool"], metavar="NAMES",
                        help="Attacks: fgsm, pgd, cw, patchfool, autoattack, or none (default: fgsm,pgd,cw,patchfool).")
    parser.add_argument("--epsilon", type=_number, metavar="EPS",
                        help="Budget of FGSM, PGD and AutoAttack in [0, 1] pixel units, e.g. 1/255 (the default) "
                             "or 8/255 (RobustBench's CIFAR-10 L∞).")
    parser.add_argument("--autoattack_norm", choices=["Linf", "L2"], help="Norm of AutoAttack's ball (default Linf).")
    parser.add_argument("--pgd_steps", type=int, metavar="N", help="PGD steps (default 10).")
    parser.add_argument("--pgd_step_size", type=_number, metavar="ALPHA", help="PGD step size (default ε/4).")
    parser.add_argument("--cw_steps", type=int, metavar="N", help="Carlini–Wagner Adam steps (default 50).")
    parser.add_argument("--patchfool_steps", type=int, metavar="N", help="PatchFool iterations (default 250).")
    parser.add_argument("--corruptions", type=comma_list, default=["all"], metavar="NAMES",
                        help="Corruption names or a group: all (15 ImageNet-C + 4 extra), imagenet-c, extra, none.")
    parser.add_argument("--severities", type=comma_ints, default=[1, 2, 3, 4, 5], metavar="S",
                        help="Corruption severities, 1 to 5 (default: 1,2,3,4,5).")
    parser.add_argument("--corruption_source", metavar="SOURCE",
                        help="Read a released corruption set instead of corrupting on the fly: an ImageNet-C folder "
                             "(<corruption>/<severity>/<wnid>/*.JPEG), a CIFAR-10-C folder (<corruption>.npy, "
                             "labels.npy), or a datasets copy (save_to_disk folder or Hub id) with corruption and "
                             "severity columns. --max_samples also limits each corruption and severity.")
    parser.add_argument("--corruption_workers", type=int, default=0, metavar="N",
                        help="Worker processes that corrupt (or read) images while the model runs (default 0: "
                             "in the main process); the images are the same whatever N.")
    parser.add_argument("--reference", metavar="MODEL",
                        help="Reference model for the corruption errors (e.g. the checkpoint before fine-tuning).")
    parser.add_argument("--ood", type=comma_list, default=[], metavar="NAME=SOURCE,...",
                        help="Out-of-distribution sets and their Hub ids or folders, e.g. "
                             "imagenet-r=/data/imagenet-r,imagenet-a=/data/imagenet-a (names: imagenet-a, imagenet-r, "
                             "imagenet-v2, imagenet-sketch, stylized-imagenet, damagenet).")
    parser.add_argument("--batch_size", type=int, default=32, help="Images per batch and process (default 32).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of random starts and corruptions (default 0).")
    parser.add_argument("--cache_dir", help="Keep corrupted images here and reuse them in later evaluations.")
    parser.add_argument("--output", metavar="JSON", help="Write the report as JSON to this file.")
    parser.add_argument("--markdown", action="store_true", help="Print the report as Markdown (Table-2 layout).")
    parser.add_argument("--no_progress", action="store_true", help="Hide the progress bars.")
    return parser


def build_attacks(args: argparse.Namespace) -> list[Attack]:
    """The attacks named by ``--attacks``, with the hyper-parameters given on the command line."""
    from nullspace_hf.evaluation.attacks import ATTACKS, resolve_attacks

    options = {
        "fgsm": {"epsilon": args.epsilon},
        "pgd": {"epsilon": args.epsilon, "steps": args.pgd_steps, "step_size": args.pgd_step_size},
        "cw": {"steps": args.cw_steps},
        "patchfool": {"steps": args.patchfool_steps},
        "autoattack": {"epsilon": args.epsilon, "norm": args.autoattack_norm},
    }
    return resolve_attacks([
        ATTACKS[name](**{key: value for key, value in options[name].items() if value is not None})
        if name in ATTACKS else name
        for name in (name.lower() for name in args.attacks)
    ])


def _ood_sources(entries: list[str]) -> dict[str, str]:
    sources = {}
    for entry in entries:
        name, sep, source = entry.partition("=")
        if not sep or not name or not source:
            raise NullspaceError(f"--ood takes NAME=SOURCE (e.g. imagenet-r=/data/imagenet-r), got {entry!r}.")
        sources[name] = source
    return sources


def _process_state() -> PartialState:
    """accelerate's process state; processes launched together on a machine without GPU talk over gloo.

    ``accelerate launch --cpu`` starts several processes only through MPI; ``accelerate launch
    --multi_gpu`` (torchrun) starts them anywhere, but accelerate then treats them as distributed only
    when told they are CPU processes, which this does when no GPU is present.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from nullspace_hf.processes import launched_without_accelerator

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or launched_without_accelerator())


def main(args: argparse.Namespace) -> RobustnessReport:
    """Run the evaluation the arguments describe; the main process prints the report and writes ``--output``."""
    from transformers.utils import logging as hf_logging

    from nullspace_hf.checks import check_writable
    from nullspace_hf.data import load_split
    from nullspace_hf.evaluation.robustness import evaluate_robustness

    state = _process_state()
    if args.output:  # every process checks, so that all stop together
        check_writable(os.path.dirname(os.path.abspath(args.output)), "The folder of --output")
        if os.path.isdir(args.output):
            raise NullspaceError(f"--output {args.output!r} is a directory: give a file name such as results.json.")
    hf_logging.disable_progress_bar()
    attacks = build_attacks(args)
    dataset = load_split(args.dataset, args.split)
    if args.max_samples is not None:
        if args.max_samples < 1:
            raise NullspaceError(f"--max_samples must be >= 1, got {args.max_samples}.")
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    report = evaluate_robustness(
        args.model, dataset, attacks=attacks, corruptions=args.corruptions, severities=args.severities,
        corruption_source=args.corruption_source, max_corruption_samples=args.max_samples,
        corruption_workers=args.corruption_workers,
        reference_model=args.reference, ood_datasets=_ood_sources(args.ood), batch_size=args.batch_size,
        seed=args.seed, image_column=args.image_column, label_column=args.label_column, cache_dir=args.cache_dir,
        dataset_name=f"{args.dataset} ({args.split})",
        progress=not args.no_progress,
    )
    if state.is_main_process:
        if args.output:
            report.to_json(args.output)
        print(report.to_markdown() if args.markdown else report.to_json())
    return report


def cli(argv: list[str]) -> int:
    """Parse ``argv`` and run :func:`main` in this process; a user error is one line on stderr and exit status 2."""
    return run_command(NAME, lambda: main(make_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
