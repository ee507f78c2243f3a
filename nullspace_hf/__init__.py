"""nullspace_hf: approximate nullspace augmented fine-tuning for robust Vision Transformers."""

from .adversarial import AdversarialConfig, AdversarialTrainer
from .applications import (
    FingerprintMatch,
    NullspaceFingerprint,
    TargetedResult,
    WatermarkResult,
    attention_rollout,
    compare_fingerprints,
    embed_watermark,
    grad_cam,
    nullspace_fingerprint,
    targeted_image,
)
from .config import BaseConfig, NullspaceConfig
from .evaluation import RobustnessReport, evaluate_robustness
from .noise import NoiseInjector, NoiseResult, noise_influence, random_noise, synthesize_noise
from .nullspace import PatchNullspace, patch_embedding_nullspace
from .trainer import NullspaceTrainer

__version__ = "0.1.0"

__all__ = [
    "AdversarialConfig",
    "AdversarialTrainer",
    "BaseConfig",
    "FingerprintMatch",
    "NullspaceFingerprint",
    "TargetedResult",
    "WatermarkResult",
    "attention_rollout",
    "compare_fingerprints",
    "embed_watermark",
    "grad_cam",
    "nullspace_fingerprint",
    "targeted_image",
    "NoiseInjector",
    "NoiseResult",
    "NullspaceConfig",
    "NullspaceTrainer",
    "PatchNullspace",
    "RobustnessReport",
    "__version__",
    "evaluate_robustness",
    "noise_influence",
    "patch_embedding_nullspace",
    "random_noise",
    "synthesize_noise",
]
