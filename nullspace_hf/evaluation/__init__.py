"""Robustness evaluation (paper §5, Table 2): attacks, common corruptions and out-of-distribution sets.

    from nullspace_hf.evaluation import evaluate_robustness
    report = evaluate_robustness("path/to/model", dataset, attacks=("fgsm", "pgd", "autoattack"),
                                 corruptions="imagenet-c", corruption_source="/data/ImageNet-C")
    print(report.to_markdown())
"""

from .attacks import (
    ATTACKS,
    DEFAULT_ATTACKS,
    FGSM,
    PGD,
    Attack,
    AutoAttack,
    CarliniWagnerL2,
    PatchFool,
    resolve_attacks,
)
from .corruption_stream import corrupt_dataset
from .corruptions import CORRUPTIONS, EXTRA_CORRUPTIONS, IMAGENET_C_CORRUPTIONS, corrupt_pixels, resolve_corruptions
from .hf_metrics import load_metric
from .metrics import ALEXNET_ERRORS, corruption_error, mean_corruption_error
from .ood import OOD_SETS, load_ood_dataset
from .released import CIFAR10_CLASSES, CorruptionSet, open_corruption_set
from .report import RobustnessReport
from .robustness import evaluate_robustness

__all__ = [
    "ALEXNET_ERRORS",
    "ATTACKS",
    "Attack",
    "AutoAttack",
    "CIFAR10_CLASSES",
    "CORRUPTIONS",
    "CorruptionSet",
    "CarliniWagnerL2",
    "DEFAULT_ATTACKS",
    "EXTRA_CORRUPTIONS",
    "FGSM",
    "IMAGENET_C_CORRUPTIONS",
    "OOD_SETS",
    "PGD",
    "PatchFool",
    "RobustnessReport",
    "corrupt_dataset",
    "corrupt_pixels",
    "corruption_error",
    "evaluate_robustness",
    "load_metric",
    "load_ood_dataset",
    "mean_corruption_error",
    "open_corruption_set",
    "resolve_attacks",
    "resolve_corruptions",
]
