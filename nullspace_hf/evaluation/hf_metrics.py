"""The evaluation's metrics as ``evaluate`` modules shipped in this package, loaded offline from their folders.

``metrics_modules/<name>/<name>.py`` are ordinary ``evaluate`` metric scripts: ``evaluate.load(<folder>)``
loads each without the Hub (``evaluate.load("accuracy")`` would fetch the Hub's). :func:`load_metric` is
that call, kept in memory (no Arrow cache files) and loaded once per process.

* ``accuracy``: top-1 accuracy (the training-time ``compute_metrics`` and the clean accuracy);
* ``robust_accuracy``: accuracy under attack, and the attack's success rate (RobustBench's robust accuracy);
* ``corruption_error``: error per corruption and severity, ``CE_c``, mCE and the CE relative to a reference.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from ..errors import NullspaceError

METRICS_DIR = Path(__file__).resolve().parent / "metrics_modules"
METRIC_NAMES: tuple[str, ...] = ("accuracy", "robust_accuracy", "corruption_error")


def metric_path(name: str) -> Path:
    """The folder of the shipped metric ``name``, what ``evaluate.load`` takes.

    Raises:
        ValueError: an unknown name (the message lists the shipped ones).
    """
    if name not in METRIC_NAMES:
        raise NullspaceError(f"Unknown metric {name!r}: the shipped ones are {', '.join(METRIC_NAMES)}.")
    return METRICS_DIR / name


@functools.cache
def load_metric(name: str) -> Any:
    """``evaluate.load`` of the shipped metric ``name`` (from its local folder, nothing from the Hub), in memory."""
    import evaluate

    return evaluate.load(str(metric_path(name)), keep_in_memory=True)
