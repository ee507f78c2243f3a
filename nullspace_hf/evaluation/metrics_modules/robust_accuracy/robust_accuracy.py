"""Robust accuracy under an adversarial attack, as an ``evaluate`` metric module (loads offline from its folder).

As RobustBench reports it (Croce et al., NeurIPS 2021 Datasets and Benchmarks, "RobustBench: a standardized
adversarial robustness benchmark"): the share of all evaluated images still classified correctly after the
attack, the images misclassified when clean counted as not robust. With the clean predictions, also the
attack's success rate: the share of the clean-correct images that the attack makes wrong.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = ("Robust accuracy: the share of images classified correctly under attack (a fraction in [0, 1]); "
                "with clean_predictions, also the attack success rate on the clean-correct images.")
_KWARGS = """
Args:
    predictions (list of int): predicted class indices of the adversarial images.
    references (list of int): true class indices.
    clean_predictions (list of int, optional): predicted class indices of the clean images, in the same order.
Returns:
    robust_accuracy (float): the share of images correct under attack; nan for no images.
    attack_success_rate (float): with clean_predictions, the share of clean-correct images made wrong
        (nan when none is correct).
"""


class RobustAccuracy(evaluate.Metric):
    """Robust accuracy (and attack success rate) of predictions on adversarial images."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, clean_predictions=None):
        references = np.asarray(references, dtype=np.int64)
        robust = np.asarray(predictions, dtype=np.int64) == references
        result = {"robust_accuracy": float(robust.mean()) if robust.size else float("nan")}
        if clean_predictions is not None:
            clean = np.asarray(clean_predictions, dtype=np.int64)
            if clean.shape != references.shape:
                raise ValueError(f"clean_predictions has {clean.size} entries for {references.size} references.")
            correct = clean == references
            result["attack_success_rate"] = (float((correct & ~robust).sum() / correct.sum()) if correct.any()
                                             else float("nan"))
        return result
