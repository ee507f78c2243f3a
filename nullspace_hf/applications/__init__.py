"""What the exact patch-embedding nullspace is good for besides training (paper App. E, App. F, §6).

* :func:`embed_watermark` — a visible watermark the model cannot see (App. E, Fig. 6);
* :func:`targeted_image` — an image that looks like one picture and is seen as another (App. F, Fig. 7);
* :func:`attention_rollout`, :func:`grad_cam` — saliency maps to compare them (Figs. 7b, 8);
* :func:`nullspace_fingerprint`, :func:`compare_fingerprints` — does a checkpoint derive from another (§6)?
"""

from .figures import plot_saliency_triplet, plot_watermark
from .fingerprint import FingerprintMatch, NullspaceFingerprint, compare_fingerprints, nullspace_fingerprint
from .pixels import PixelSpace
from .saliency import attention_rollout, grad_cam, map_correlation, saliency_maps
from .targeted import TargetedResult, targeted_image
from .watermark import WatermarkResult, embed_watermark

__all__ = [
    "FingerprintMatch",
    "NullspaceFingerprint",
    "PixelSpace",
    "TargetedResult",
    "WatermarkResult",
    "attention_rollout",
    "compare_fingerprints",
    "embed_watermark",
    "grad_cam",
    "map_correlation",
    "nullspace_fingerprint",
    "plot_saliency_triplet",
    "plot_watermark",
    "saliency_maps",
    "targeted_image",
]
