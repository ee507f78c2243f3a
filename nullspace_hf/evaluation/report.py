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
        attacks: per attack name, ``{"column", "accuracy", "config"}``.
        corruptions: per corruption, accuracy per severity.
        corruption_errors: per corruption, ``CE_c`` (a ratio, see :mod:`~nullspace_hf.evaluation.metrics`).
        mce: mean corruption error ×100 over the ImageNet-C corruptions evaluated (lower is better), or
            ``None`` without a baseline.
        mce_baseline: ``"alexnet"``, ``"reference"`` or ``None``.
        mce_official: whether all 15 ImageNet-C corruptions at all 5 severities went into ``mce``.
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

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain Python values, and the :meth:`summary` under ``"summary"``."""
        return {**dataclasses.asdict(self), "summary": self.summary()}

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
                      + ", ".join(f"{key}={value:.6g}" if isinstance(value, float) else f"{key}={value}"
                                  for key, value in result["config"].items()) + " |"
                      for name, result in self.attacks.items()]
        if self.corruptions:
            severities = sorted({s for by_severity in self.corruptions.values() for s in by_severity})
            lines += ["", "### Corruptions (accuracy per severity)", "",
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
                          f"(clean accuracy {_cell(self.reference['clean_accuracy'])})."]
        return "\n".join(lines) + "\n"


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"
