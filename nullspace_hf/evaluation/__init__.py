"""Robustness evaluation (paper §5, Table 2): attacks, common corruptions and out-of-distribution sets.

    from nullspace_hf.evaluation import evaluate_robustness
    report = evaluate_robustness("path/to/model", dataset, attacks=("fgsm", "pgd"), corruptions="imagenet-c")
    print(report.to_markdown())
"""

from .._deprecated import moved_names
from ..data import load_split as load_eval_dataset
from .attacks import ATTACKS, DEFAULT_ATTACKS, FGSM, PGD, Attack, CarliniWagnerL2, PatchFool, resolve_attacks
from .corruptions import CORRUPTIONS, EXTRA_CORRUPTIONS, IMAGENET_C_CORRUPTIONS, corrupt_pixels, resolve_corruptions
from .metrics import ALEXNET_ERRORS, corruption_error, mean_corruption_error
from .ood import OOD_SETS, load_ood_dataset
from .report import RobustnessReport
from .robustness import evaluate_robustness

__all__ = [
    "ALEXNET_ERRORS",
    "ATTACKS",
    "Attack",
    "CORRUPTIONS",
    "CarliniWagnerL2",
    "DEFAULT_ATTACKS",
    "EXTRA_CORRUPTIONS",
    "FGSM",
    "IMAGENET_C_CORRUPTIONS",
    "OOD_SETS",
    "PGD",
    "PatchFool",
    "RobustnessReport",
    "corrupt_pixels",
    "corruption_error",
    "evaluate_robustness",
    "load_eval_dataset",
    "load_ood_dataset",
    "mean_corruption_error",
    "resolve_attacks",
    "resolve_corruptions",
]

__getattr__ = moved_names(__name__, {name: "nullspace_hf.pixels"
                                     for name in ("PixelSpaceClassifier", "PixelTransform", "images_to_pixels")})
