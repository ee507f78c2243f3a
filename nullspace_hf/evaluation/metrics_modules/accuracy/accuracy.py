"""Top-1 accuracy, as an ``evaluate`` metric module that loads offline: ``evaluate.load(<path of this folder>)``.

The share of images whose predicted class is the true one (the "Clean" column of the paper's Table 2).
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Top-1 accuracy: the share of predictions equal to the reference labels (a fraction in [0, 1])."
_KWARGS = """
Args:
    predictions (list of int): predicted class indices.
    references (list of int): true class indices.
Returns:
    accuracy (float): the share of correct predictions; nan for no predictions.
"""


class Accuracy(evaluate.Metric):
    """Top-1 accuracy of class predictions."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        correct = np.asarray(predictions, dtype=np.int64) == np.asarray(references, dtype=np.int64)
        return {"accuracy": float(correct.mean()) if correct.size else float("nan")}
