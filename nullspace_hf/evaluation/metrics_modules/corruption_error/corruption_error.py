"""Corruption error, mCE and relative CE (Hendrycks and Dietterich, ICLR 2019, §3), as an ``evaluate`` metric
module that loads offline from its folder.

Each prediction comes with its image's corruption and severity. The module gives the top-1 error per
corruption and severity and, against a baseline, ``CE_c = Σ_s E_{s,c} / Σ_s E_{s,c}(baseline)`` per
corruption and ``mCE = 100 · mean_c CE_c`` over the 15 ImageNet-C corruptions. The baseline is
``"alexnet"`` (AlexNet's ImageNet-C errors, the official normaliser) or a reference model's errors per
corruption and severity on the same images (the ``errors`` this module returned for it): the CE is then
relative to that model, and ``relative_mce`` averages it over every corruption given (ImageNet-C or not).
"""

import datasets
import evaluate
import numpy as np

from nullspace_hf.evaluation.metrics import ALEXNET_ERRORS, is_official_mce, mean_corruption_error

_DESCRIPTION = "Top-1 error per corruption and severity, corruption errors CE_c and their mean (mCE)."
_KWARGS = """
Args:
    predictions (list of int): predicted class indices of the corrupted images.
    references (list of int): true class indices.
    corruptions (list of str): each image's corruption (e.g. "gaussian_noise").
    severities (list of int): each image's severity, 1 to 5.
    baseline ("alexnet", a dict {corruption: {severity: error}}, or None): what the errors are divided by.
Returns:
    errors ({corruption: {severity: float}}): top-1 error (a fraction).
    accuracy ({corruption: {severity: float}}): top-1 accuracy (a fraction).
    corruption_errors ({corruption: float}): CE_c, for the corruptions the baseline covers.
    mce (float or None): 100 · mean CE_c over the ImageNet-C corruptions among them.
    relative_mce (float or None): 100 · mean CE_c over all of them (a reference-model baseline).
    official (bool): whether the 15 ImageNet-C corruptions at all 5 severities are in (the published protocol).
"""


class CorruptionError(evaluate.Metric):
    """Errors per corruption and severity, CE_c, mCE and relative mCE."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64"),
                                        "corruptions": datasets.Value("string"),
                                        "severities": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, corruptions, severities, baseline=None):
        correct = np.asarray(predictions, dtype=np.int64) == np.asarray(references, dtype=np.int64)
        names, levels = np.asarray(corruptions, dtype=object), np.asarray(severities, dtype=np.int64)
        accuracy: dict = {}
        for name in dict.fromkeys(names.tolist()):
            chosen = names == name
            accuracy[name] = {int(s): float(correct[chosen & (levels == s)].mean())
                              for s in sorted(set(levels[chosen].tolist()))}
        errors = {name: {s: 1.0 - value for s, value in by_severity.items()} for name, by_severity in accuracy.items()}
        if baseline == "alexnet":
            normaliser = ALEXNET_ERRORS
        elif baseline is None:
            normaliser = {}
        elif isinstance(baseline, dict):
            normaliser = {name: {int(s): float(e) for s, e in by_severity.items()}
                          for name, by_severity in baseline.items()}
        else:
            raise ValueError(f"baseline must be 'alexnet', a dict of errors per corruption and severity, or None; "
                             f"got {baseline!r}.")
        ces, mce = mean_corruption_error(errors, normaliser)
        relative = 100 * sum(ces.values()) / len(ces) if ces and baseline != "alexnet" else None
        return {"errors": errors, "accuracy": accuracy, "corruption_errors": ces, "mce": mce,
                "relative_mce": relative, "official": is_official_mce(errors)}
