"""What the exact patch-embedding nullspace is good for besides training (paper App. E, App. F, §6).

* :func:`embed_watermark` — a visible watermark the model cannot see (App. E, Fig. 6);
* :func:`targeted_image` — an image that looks like one picture and is seen as another (App. F, Fig. 7);
* :func:`attention_rollout`, :func:`grad_cam` — saliency maps to compare them (Figs. 7b, 8);
* :func:`nullspace_fingerprint`, :func:`compare_fingerprints` — does a checkpoint derive from another (§6)?

Their figures (Figs. 6, 7) are drawn by :func:`nullspace_hf.plots.plot_watermark` and
:func:`nullspace_hf.plots.plot_saliency_triplet`.
"""

from .fingerprint import FingerprintMatch, NullspaceFingerprint, compare_fingerprints, nullspace_fingerprint
from .saliency import attention_rollout, grad_cam, map_correlation, saliency_maps
from .targeted import TargetedResult, targeted_image
from .watermark import WatermarkResult, embed_watermark

__all__ = [
    "FingerprintMatch",
    "NullspaceFingerprint",
    "TargetedResult",
    "WatermarkResult",
    "attention_rollout",
    "compare_fingerprints",
    "embed_watermark",
    "grad_cam",
    "map_correlation",
    "nullspace_fingerprint",
    "saliency_maps",
    "targeted_image",
]
