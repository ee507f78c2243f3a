"""The result of a robustness evaluation, as a dict, JSON, or Markdown in the layout of the paper's Table 2."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

TABLE2_COLUMNS: tuple[str, ...] = (
    "Clean", "PatchFool", "CW", "FGSM", "DamageNet", "A", "C↓", "V2", "R", "Sketch", "Stylized",
)
"""The columns of Table 2 (paper §5.2), before "Average"."""


@dataclass
class RobustnessReport:
    """Accuracies (in %) of one model under attacks, corruptions and distribution shifts.

    Attributes:
        model: the model's name or path.
        dataset: the evaluation set's name.
        num_samples: images evaluated (each counted once, over all processes).
        clean_accuracy: top-1 accuracy on the clean images.
        attacks: per attack name, ``{"column", "accuracy", "attack_success_rate", "threat_model", "epsilon",
            "config"}`` (accuracies in %, ε in [0, 1] pixel units, ``None`` for an unbounded attack).
        corruptions: per corruption, accuracy per severity.
        corruption_errors: per corruption, ``CE_c`` (a ratio, see :mod:`~nullspace_hf.evaluation.metrics`).
        mce: mean corruption error ×100 over the ImageNet-C corruptions evaluated (lower is better), or
            ``None`` without a baseline.
        mce_baseline: ``"alexnet"``, ``"reference"`` or ``None``.
        mce_official: whether all 15 ImageNet-C corruptions at all 5 severities went into ``mce``.
        relative_mce: 100 · the mean over every corruption evaluated of the CE relative to the reference model
            (``None`` without one).
        corruption_source: where the corrupted images came from: ``{"kind": "on-the-fly" | "imagenet-c" |
            "cifar-10-c" | "datasets", "name", "description", "images_per_set"}`` (and ``"resolution"`` on the
            fly); ``None`` without corruptions.
        preprocessing: the image processor's steps before the model (size, crop, rescale, mean, std).
        reference: the reference model's name, clean accuracy and corruption accuracies, if one was given.
        ood: per out-of-distribution set, ``{"column", "accuracy", "num_samples"}``.
        settings: seed, batch size and the other choices that shape the numbers.
    """

    model: str
    dataset: str
    num_samples: int
    clean_accuracy: float
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    corruptions: dict[str, dict[int, float]] = field(default_factory=dict)
    corruption_errors: dict[str, float] = field(default_factory=dict)
    mce: float | None = None
    mce_baseline: str | None = None
    mce_official: bool = False
    relative_mce: float | None = None
    corruption_source: dict[str, Any] | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] | None = None
    ood: dict[str, dict[str, Any]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        """The headline numbers: ``clean``, each attack's accuracy by its name, and ``corruption``, the mean
        accuracy over every corruption and severity evaluated."""
        summary = {"clean": self.clean_accuracy}
        summary.update({name: attack["accuracy"] for name, attack in self.attacks.items()})
        accuracies = [value for by_severity in self.corruptions.values() for value in by_severity.values()]
        if accuracies:
            summary["corruption"] = sum(accuracies) / len(accuracies)
        return summary

    def preprocessing_text(self) -> str:
        """The preprocessing in one line, e.g. ``ViTImageProcessor: 32×32 input, rescale ×1/255, normalise mean …``."""
        steps = self.preprocessing
        if not steps:
            return "unknown"
        height, width = steps["input_size"]
        return (f"{steps['processor']}: {height}×{width} input"
                + (f", centre crop {steps['center_crop']}" if steps.get("center_crop") else "")
                + f", rescale ×{_factor(steps['rescale'])}, normalise mean {_numbers(steps['mean'])} "
                  f"std {_numbers(steps['std'])} (inside the attacked model)")

    def summary_details(self) -> dict[str, dict[str, Any]]:
        """For each number of :meth:`summary`, what it was measured under, as RobustBench's model entries state it:
        ``value``, ``threat_model`` (``"Linf"``, ``"L2"``, ``"patch"``, ``"corruptions"`` or ``None`` for clean
        images), ``epsilon`` (in [0, 1] pixel units; ``None`` when unbounded or not an attack), ``attack`` (name
        and settings), ``corruption_source`` and ``preprocessing``."""
        preprocessing = self.preprocessing_text()
        details: dict[str, dict[str, Any]] = {}
        for name, value in self.summary().items():
            entry = {"value": value, "threat_model": None, "epsilon": None, "attack": None, "corruption_source": None,
                     "preprocessing": preprocessing}
            if name in self.attacks:
                attack = self.attacks[name]
                entry.update(threat_model=attack.get("threat_model"), epsilon=attack.get("epsilon"),
                             attack={"name": name, **attack.get("config", {})})
            elif name == "corruption":
                severities = sorted({s for by_severity in self.corruptions.values() for s in by_severity})
                entry.update(threat_model="corruptions", corruption_source=(self.corruption_source or {}).get(
                    "description"), corruptions=list(self.corruptions), severities=severities)
            details[name] = entry
        return details

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain Python values, the :meth:`summary` under ``"summary"`` and the
        :meth:`summary_details` under ``"summary_details"``."""
        return {**dataclasses.asdict(self), "summary": self.summary(), "summary_details": self.summary_details()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RobustnessReport:
        """The report of a :meth:`to_dict` (also read back from JSON, whose severity keys are strings)."""
        known = {f.name for f in dataclasses.fields(cls)}
        report = cls(**{key: value for key, value in values.items() if key in known})
        report.corruptions = {name: {int(s): acc for s, acc in by_severity.items()}
                              for name, by_severity in report.corruptions.items()}
        return report

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The report as JSON text; also written to ``path`` when one is given."""
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False)
        if path is not None:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
        return text

    def table2_row(self) -> dict[str, float | None]:
        """The Table-2 columns measured here (``None`` where not measured) and their ``Average``.

        As in the paper (§5.2), ``C↓`` is the mCE and enters the average as ``100 − mCE``; the average is
        taken over the measured columns, the clean accuracy included.
        """
        row: dict[str, float | None] = dict.fromkeys(TABLE2_COLUMNS)
        row["Clean"] = self.clean_accuracy
        for result in [*self.attacks.values(), *self.ood.values()]:
            if result["column"] in row:
                row[result["column"]] = result["accuracy"]
        row["C↓"] = self.mce
        scores = [100 - value if column == "C↓" else value for column, value in row.items() if value is not None]
        row["Average"] = sum(scores) / len(scores)
        return row

    def to_markdown(self) -> str:
        """Table 2's row for this model, then the details: every attack, corruption and OOD set."""
        row = self.table2_row()
        lines = [
            f"## Robustness of {self.model} on {self.dataset} ({self.num_samples} images)",
            "",
            "| Model | " + " | ".join(row) + " |",
            "|---|" + "---|" * len(row),
            f"| {self.model} | " + " | ".join(_cell(value) for value in row.values()) + " |",
            "",
            "Accuracies in %; C↓ is the mCE"
            + (f" (baseline: {self.mce_baseline}{'' if self.mce_official else ', not the full 15 × 5 protocol'})"
               if self.mce is not None else " (no baseline: see the corruption accuracies)")
            + "; Average counts C↓ as 100 − mCE and skips the columns not measured.",
        ]
        if self.attacks:
            lines += ["", "### Attacks", "", "| Attack | Accuracy | Settings |", "|---|---|---|"]
            lines += [f"| {name} | {_cell(result['accuracy'])} | "
                      + (f"{result['threat_model']}, " if result.get("threat_model") else "")
                      + ", ".join(f"{key}={value:.6g}" if isinstance(value, float) else f"{key}={value}"
                                  for key, value in result["config"].items()) + " |"
                      for name, result in self.attacks.items()]
        if self.corruptions:
            severities = sorted({s for by_severity in self.corruptions.values() for s in by_severity})
            source = (self.corruption_source or {}).get("description", "unknown source")
            lines += ["", f"### Corruptions (accuracy per severity; {source})", "",
                      "| Corruption | " + " | ".join(str(s) for s in severities) + " | Mean | CE |",
                      "|---|" + "---|" * (len(severities) + 2)]
            for name, by_severity in self.corruptions.items():
                mean = sum(by_severity.values()) / len(by_severity)
                ce = self.corruption_errors.get(name)
                lines.append(f"| {name} | " + " | ".join(_cell(by_severity.get(s)) for s in severities)
                             + f" | {_cell(mean)} | {_cell(None if ce is None else 100 * ce)} |")
        if self.ood:
            lines += ["", "### Out-of-distribution sets", "", "| Set | Accuracy | Images |", "|---|---|---|"]
            lines += [f"| {name} | {_cell(result['accuracy'])} | {result['num_samples']} |"
                      for name, result in self.ood.items()]
        if self.reference:
            lines += ["", f"Reference model: {self.reference['model']} "
                          f"(clean accuracy {_cell(self.reference['clean_accuracy'])})"
                          + (f"; CE relative to it, mean over the corruptions: {_cell(self.relative_mce)}."
                             if self.relative_mce is not None else ".")]
        return "\n".join(lines) + "\n"


def _factor(value: float) -> str:
    return "1/255" if abs(value * 255 - 1) < 1e-9 else f"{value:.6g}"


def _numbers(values: list[float]) -> str:
    return "[" + ", ".join(f"{value:.4g}" for value in values) + "]"


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"
