"""Issue 26's table: each Eq. 6 variant against vanilla and against its own random-noise control, paired by seed.

Reads the ``results.json`` that ``recipes/reproduce_cifar10.py --noise_variant ...`` wrote for each variant (with
``--methods vanilla,random,nullspace_fast``) and prints one markdown table: per variant, the nullspace runs'
mean ± sd, the paired effects nullspace − vanilla, nullspace − random control and random − vanilla with their
t values (mean / (sd / √n)), train time and noise norm::

    python recipes/variant_effects.py docs/results/issue22_defaults docs/results/variants/*
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

METRICS = ("clean", "fgsm", "pgd", "corruption")


def _runs(results: dict, method: str) -> dict[int, dict]:
    return {int(name.split("-seed")[1].split("-")[0]): run for name, run in results["runs"].items()
            if name.startswith(f"{method}-eps0.03-")}


def paired(first: dict[int, dict], second: dict[int, dict], metric: str) -> str:
    """``mean ± sd (t)`` of ``first − second`` over the seeds both have."""
    differences = [first[s][metric] - second[s][metric] for s in sorted(first.keys() & second.keys())]
    if len(differences) < 2:
        return "–"
    mean, sd = statistics.mean(differences), statistics.stdev(differences)
    t = mean / (sd / math.sqrt(len(differences))) if sd > 0 else math.inf
    return f"{mean:+.2f} ± {sd:.2f} ({t:+.1f})"


def _mean_sd(runs: dict[int, dict], metric: str, digits: int = 2) -> str:
    values = [run[metric] for run in runs.values()]
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "–"


def table(report_dirs: list[Path]) -> str:
    """The markdown table of every variant in ``report_dirs``."""
    header = ("| variant | runs | " + " | ".join(METRICS) + " | train (s) | noise norm | "
              + " | ".join(f"{m}: vs vanilla" for m in METRICS) + " | "
              + " | ".join(f"{m}: vs random control" for m in METRICS) + " |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for directory in report_dirs:
        results = json.loads((directory / "results.json").read_text(encoding="utf-8"))
        variant = results["arguments"].get("noise_variant") or "none (Eq. 6)"
        vanilla = _runs(results, "vanilla")
        for method in ("nullspace_fast", "random"):
            runs = _runs(results, method)
            if not runs:
                continue
            control = _runs(results, "random") if method == "nullspace_fast" else {}
            cells = [_mean_sd(runs, m) for m in METRICS] + [_mean_sd(runs, "train_seconds", 1),
                                                            _mean_sd(runs, "noise_norm", 1)]
            cells += [paired(runs, vanilla, m) for m in METRICS]
            cells += [paired(runs, control, m) if control else "–" for m in METRICS]
            name = "nullspace" if method == "nullspace_fast" else "random ε-noise"
            lines.append(f"| `{variant}` | {name} × {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report_dirs", nargs="+", type=Path, help="Report directories with a results.json.")
    print(table(parser.parse_args().report_dirs))


if __name__ == "__main__":
    main()
