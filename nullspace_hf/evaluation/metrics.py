"""Corruption error and mean corruption error (Hendrycks and Dietterich, ICLR 2019, §3).

For a model f, a corruption c and severities s: ``CE_c = Σ_s E_{s,c}(f) / Σ_s E_{s,c}(baseline)``, and
``mCE = 100 · mean_c CE_c`` over the 15 ImageNet-C corruptions (lower is better). On ImageNet the
baseline is AlexNet; on any other data set it is a reference model given by the user (the checkpoint
before fine-tuning, say), evaluated on the same corrupted images.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import NullspaceError
from .corruptions import IMAGENET_C_CORRUPTIONS, SEVERITIES

ALEXNET_ERRORS: dict[str, float] = dict(zip(IMAGENET_C_CORRUPTIONS, (
    0.886428, 0.894468, 0.922640, 0.819880, 0.826268, 0.785948, 0.798360, 0.866816,
    0.826572, 0.819324, 0.564592, 0.853204, 0.646056, 0.717840, 0.606500,
), strict=True))
"""AlexNet's ImageNet-C top-1 error per corruption, averaged over severities 1–5 (the official normaliser)."""


def corruption_error(errors: Mapping[int, float], baseline: float | Mapping[int, float]) -> float | None:
    """``CE_c``: the model's error on one corruption, relative to the baseline's, over the same severities.

    Args:
        errors: the model's top-1 error (a fraction) per severity.
        baseline: the baseline's error per severity (a reference model evaluated on the same severities),
            or one number, its error averaged over severities 1–5 (AlexNet); the model's errors are then
            averaged over the severities given, so they should be 1–5 for the official number.

    Returns:
        The ratio, or ``None`` when the baseline makes no error (the ratio is undefined).

    Raises:
        ValueError: the baseline misses one of the model's severities.
    """
    if isinstance(baseline, Mapping):
        missing = sorted(set(errors) - set(baseline))
        if missing:
            raise NullspaceError(f"The baseline has no error for severities {missing}.")
        denominator = sum(baseline[s] for s in errors) / len(errors)
    else:
        denominator = float(baseline)
    if denominator <= 0:
        return None
    return sum(errors.values()) / len(errors) / denominator


def mean_corruption_error(errors: Mapping[str, Mapping[int, float]],
                          baseline: Mapping[str, float | Mapping[int, float]]) -> tuple[dict[str, float], float | None]:
    """Corruption errors ``CE_c`` for each corruption with a baseline, and ``mCE`` (×100) over those of ImageNet-C.

    Args:
        errors: the model's top-1 error (fraction) per corruption and severity.
        baseline: per corruption, what :func:`corruption_error` accepts (e.g. :data:`ALEXNET_ERRORS`).

    Returns:
        ``(CE_c per corruption, mCE)``; corruptions without a baseline (or whose baseline makes no error)
        have no ``CE_c``; ``mCE`` is ``None`` when no ImageNet-C corruption has one.
    """
    ces: dict[str, float] = {}
    for name, by_severity in errors.items():
        if name in baseline:
            value = corruption_error(by_severity, baseline[name])
            if value is not None:
                ces[name] = value
    benchmark = [ces[name] for name in IMAGENET_C_CORRUPTIONS if name in ces]
    return ces, (100 * sum(benchmark) / len(benchmark) if benchmark else None)


def is_official_mce(errors: Mapping[str, Mapping[int, float]]) -> bool:
    """Whether ``errors`` covers all 15 ImageNet-C corruptions at all 5 severities (the published protocol)."""
    return all(name in errors and set(errors[name]) == set(SEVERITIES) for name in IMAGENET_C_CORRUPTIONS)
