"""nullspace_hf: approximate nullspace augmented fine-tuning for robust Vision Transformers.

The trainers, their configs and the noise are imported with the package; the evaluation suite and the
applications (watermark, targeted noise, saliency, fingerprint) are imported on first use of one of their
names, so that a training job does not pay for them.
"""

from __future__ import annotations

import importlib
from typing import Any

from .adversarial import AdversarialConfig, AdversarialTrainer
from .config import BaseConfig, NullspaceConfig
from .errors import NullspaceError
from .noise import NoiseInjector, NoiseResult, noise_influence, random_noise, synthesize_noise
from .nullspace import PatchNullspace, patch_embedding_nullspace
from .trainer import NullspaceTrainer

__version__ = "0.1.0"

_LAZY = {
    **dict.fromkeys(("RobustnessReport", "evaluate_robustness"), ".evaluation"),
    **dict.fromkeys(("FingerprintMatch", "NullspaceFingerprint", "TargetedResult", "WatermarkResult",
                     "attention_rollout", "compare_fingerprints", "embed_watermark", "grad_cam",
                     "nullspace_fingerprint", "targeted_image"), ".applications"),
}

__all__ = [
    "AdversarialConfig",
    "AdversarialTrainer",
    "BaseConfig",
    "FingerprintMatch",
    "NoiseInjector",
    "NoiseResult",
    "NullspaceConfig",
    "NullspaceError",
    "NullspaceFingerprint",
    "NullspaceTrainer",
    "PatchNullspace",
    "RobustnessReport",
    "TargetedResult",
    "WatermarkResult",
    "__version__",
    "attention_rollout",
    "compare_fingerprints",
    "embed_watermark",
    "evaluate_robustness",
    "grad_cam",
    "noise_influence",
    "nullspace_fingerprint",
    "patch_embedding_nullspace",
    "random_noise",
    "synthesize_noise",
    "targeted_image",
]


def __getattr__(name: str) -> Any:
    """The names of :mod:`nullspace_hf.evaluation` and :mod:`nullspace_hf.applications`, imported on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
