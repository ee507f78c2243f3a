"""Figures of the nullspace applications: the watermark (Fig. 6) and the targeted triplet with saliency (Figs. 7, 8)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import BaseImageProcessor, PreTrainedModel

from ..plots import _rescale, _to_display
from .saliency import map_correlation, saliency_maps
from .targeted import TargetedResult
from .watermark import WatermarkResult

SALIENCY_TITLES = {"rollout": "attention rollout", "grad_cam": "Grad-CAM"}


def _label(id2label: dict[int, str] | None, index: int) -> str:
    return (id2label or {}).get(index, str(index))


def _show(axis, array, title: str) -> None:
    axis.imshow(array, cmap="gray" if array.ndim == 2 else None, interpolation="nearest")
    axis.set_title(title, fontsize=8)
    axis.axis("off")


def plot_watermark(
    result: WatermarkResult, output_path: str | Path, id2label: dict[int, str] | None = None
) -> None:
    """Draw Fig. 6: image, watermark, the added nullspace noise, and the watermarked image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 4, figsize=(10, 3.2))
    panels = [
        (_to_display(result.original, None), f"(a) image\npred: {_label(id2label, result.prediction_before)}"),
        (_to_display(result.watermark, None), "(b) watermark"),
        (_rescale(result.noise), "(c) nullspace noise\n(rescaled for display)"),
        (_to_display(result.image, None),
         f"(d) watermarked, PSNR {result.psnr:.1f} dB\npred: {_label(id2label, result.prediction_after)}, "
         f"max |Δlogit| {result.max_logit_change:.1e}"),
    ]
    for axis, (array, title) in zip(axes, panels):
        _show(axis, array, title)
    figure.tight_layout()
    figure.savefig(output_path, dpi=150)
    plt.close(figure)


def plot_saliency_triplet(
    model: PreTrainedModel,
    result: TargetedResult,
    output_path: str | Path,
    *,
    processor: BaseImageProcessor | None = None,
) -> dict[str, dict[str, float]]:
    """Draw Fig. 7: source, target and transformed image, each with attention rollout and Grad-CAM.

    Returns:
        For each method, the correlation of the source's map with the transformed image's and with
        the target's: ``{"rollout": {"transformed": r, "target": r}, "grad_cam": {...}}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = torch.stack([result.source, result.target, result.image])
    maps = saliency_maps(model, images, processor)
    correlations = {
        method: {"transformed": map_correlation(values[0], values[2]), "target": map_correlation(values[0], values[1])}
        for method, values in maps.items()
    }
    id2label = model.config.id2label
    predictions = [result.source_prediction, result.target_prediction, result.transformed_prediction]
    names = ["source", "target", f"transformed (MSE to target {result.mse_to_target:.3f}, to source {result.mse_to_source:.3f})"]
    figure, axes = plt.subplots(1 + len(maps), 3, figsize=(9, 3.1 * (1 + len(maps))))
    height, width = images.shape[-2:]
    for column in range(3):
        _show(axes[0, column], _to_display(images[column], None),
              f"{names[column]}\npred: {_label(id2label, predictions[column])}")
        for row, (method, values) in enumerate(maps.items(), start=1):
            axis = axes[row, column]
            _show(axis, _to_display(images[column], None), "")
            axis.imshow(values[column].numpy(), cmap="jet", alpha=0.5, interpolation="bilinear",
                        extent=(-0.5, width - 0.5, height - 0.5, -0.5))
            title = SALIENCY_TITLES[method]
            if column:
                title += f"\ncorrelation with source: {correlations[method]['target' if column == 1 else 'transformed']:.3f}"
            axis.set_title(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(output_path, dpi=150)
    plt.close(figure)
    return correlations
