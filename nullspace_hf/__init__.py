"""nullspace_hf: approximate nullspace augmented fine-tuning for robust Vision Transformers."""

from .linalg import PatchNullspace, patch_embedding_nullspace

__version__ = "0.1.0"

__all__ = ["PatchNullspace", "patch_embedding_nullspace", "__version__"]
