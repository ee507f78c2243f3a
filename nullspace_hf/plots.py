"""Every figure the package draws: the paper's Figs. 2–7, each from the result of one library call.

* Fig. 2 :func:`plot_nullspace_example` — an image, exact nullspace noise and the noisy image (§3.1);
* Fig. 3 :func:`plot_regularization_sweep` — learned vs. permuted noise
  (:func:`~nullspace_hf.analysis.regularization_sweep`);
* Fig. 4 :func:`plot_noise_dynamics` — the noise of every fine-tuning round (``trainer.noise_history``), and
  test metrics over fine-tuning (:class:`~nullspace_hf.callbacks.RoundMetricsCallback`);
* Fig. 5 :func:`plot_noise_combinations` — α·v and α₁v₁ + α₂v₂ (:func:`~nullspace_hf.analysis.scaling_curve`,
  :func:`~nullspace_hf.analysis.combination_grid`);
* Fig. 6 :func:`plot_watermark` — :func:`~nullspace_hf.applications.embed_watermark` (App. E);
* Fig. 7 :func:`plot_saliency_triplet` — :func:`~nullspace_hf.applications.targeted_image` with saliency maps (App. F).

Figures are built on ``matplotlib.figure.Figure`` and written to a file: drawing one neither needs
nor changes pyplot's backend or state (a notebook keeps its own).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image
from transformers import BaseImageProcessor, PreTrainedModel

from .applications.saliency import map_correlation, saliency_maps
from .modeling import frozen_eval
from .nullspace import patch_embedding_nullspace
from .pixels import PixelTransform

if TYPE_CHECKING:
    from .applications.targeted import TargetedResult
    from .applications.watermark import WatermarkResult

SALIENCY_TITLES = {"rollout": "attention rollout", "grad_cam": "Grad-CAM"}
METRIC_COLORS = ("tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown")
RUN_STYLES = ("-", ":", "--", "-.")


def _image_array(pixels: torch.Tensor) -> np.ndarray:
    """One ``(c, H, W)`` image of [0, 1] pixels as an array for ``imshow`` (clipped; 2-d for one channel)."""
    array = pixels.detach().to(device="cpu", dtype=torch.float64).clamp(0, 1).permute(1, 2, 0).numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


def _rescale(noise: torch.Tensor) -> np.ndarray:
    """Map one ``(c, H, W)`` noise to [0, 1] for display."""
    array = noise.detach().to(torch.float32).cpu()
    return _image_array((array - array.min()) / (array.max() - array.min()).clamp_min(1e-12))


def _show(axis: Axes, array: np.ndarray, title: str, fontsize: int = 8) -> None:
    axis.imshow(array, cmap="gray" if array.ndim == 2 else None, interpolation="nearest")
    axis.set_title(title, fontsize=fontsize)
    axis.axis("off")


def _label(id2label: Mapping[int, str] | None, index: int) -> str:
    return (id2label or {}).get(index, str(index))


def _integer_ticks(*axes: Axis) -> None:
    """Integer ticks (rounds, step counts) on each ``xaxis`` / ``yaxis`` given, also when it spans a single value.

    ``MaxNLocator(integer=True)`` alone falls back to fractional ticks when the view holds fewer than two
    integers, as for a run of one round.
    """
    for axis in axes:
        axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


@torch.no_grad()
def plot_nullspace_example(
    model: PreTrainedModel,
    processor: BaseImageProcessor,
    image: Image.Image,
    output_path: str | Path,
    *,
    scale: float = 1.0,
    seed: int = 0,
) -> dict[str, str]:
    """Draw Fig. 2: the image, exact nullspace noise (Eq. 2), and the noisy image, each with the prediction.

    The noise is drawn in the model's input space (after the processor's normalisation), so the
    noisy input differs from the clean one only by nullspace patches and the prediction is unchanged.

    Returns:
        ``{"clean": label, "noisy": label}``: the two predicted labels.
    """
    nullspace = patch_embedding_nullspace(model)
    pixel_values = processor(images=image.convert("RGB" if nullspace.num_channels == 3 else "L"),
                             return_tensors="pt")["pixel_values"]
    pixel_values = pixel_values.to(next(model.parameters()).dtype)
    generator = torch.Generator().manual_seed(seed)
    noise = nullspace.sample(1, tuple(pixel_values.shape[-2:]), scale=scale, generator=generator)
    noise = noise.to(pixel_values.dtype)
    with frozen_eval(model):
        logits = model(pixel_values=torch.cat([pixel_values, pixel_values + noise])).logits
    labels = [_label(model.config.id2label, int(index)) for index in logits.argmax(-1)]
    transform = PixelTransform.from_processor(processor, nullspace.num_channels)

    figure = Figure(figsize=(9, 3.4))
    panels = [
        (_image_array(transform.to_pixels(pixel_values[0].double())), f"(a) input\npred: {labels[0]}"),
        (_rescale(noise[0]), "(b) nullspace noise\n(rescaled for display)"),
        (_image_array(transform.to_pixels((pixel_values[0] + noise[0]).double())),
         f"(c) input + noise\npred: {labels[1]}"),
    ]
    for axis, (array, title) in zip(figure.subplots(1, 3), panels, strict=True):
        _show(axis, array, title, fontsize=9)
    figure.tight_layout()
    figure.savefig(output_path, dpi=150)
    return {"clean": labels[0], "noisy": labels[1]}


def plot_regularization_sweep(records: Sequence[Mapping[str, float]], output_path: str | Path) -> None:
    """Draw Fig. 3: match rate and MSE probability of learned (solid) and permuted (dashed) noise, and the
    noise norm, at each strength λ of Eq. 4's −λ·log‖ṽ‖ term.

    Args:
        records: :func:`~nullspace_hf.analysis.regularization_sweep`'s records, one per λ.
    """
    strengths = [record["strength"] for record in records]
    positions = range(len(strengths))
    figure = Figure(figsize=(12, 3.4))
    match_axis, distance_axis, norm_axis = figure.subplots(1, 3)
    for kind, style in (("learned", "-o"), ("permuted", "--s")):
        match_axis.plot(positions, [100 * r[f"{kind}_match_rate"] for r in records], style, label=kind)
        distance_axis.plot(positions, [r[f"{kind}_mse_prob"] for r in records], style, label=kind)
    norm_axis.plot(positions, [r["norm"] for r in records], "-o")
    for axis, title in zip((match_axis, distance_axis, norm_axis),
                           ("matching predictions (%)", "MSE probability", "noise L2 norm"), strict=True):
        axis.set_xticks(list(positions), [f"{s:g}" for s in strengths])
        axis.set_xlabel("regularisation strength λ (Eq. 4)")
        axis.set_title(title)
    match_axis.legend()
    distance_axis.set_yscale("log")
    figure.tight_layout()
    figure.savefig(output_path, dpi=120)


def plot_noise_dynamics(
    noise_history: Sequence[Mapping[str, Any]],
    output_path: str | Path,
    eps: float | None = None,
    band: float | None = None,
    *,
    round_metrics: Mapping[str, Sequence[Mapping[str, float]]] | None = None,
    metric_names: Sequence[str] = ("clean", "fgsm", "corruption"),
) -> None:
    """Draw Fig. 4: per round the noise norm, the synthesis steps, and Eq. 5's distance; optionally the
    test metrics over fine-tuning.

    The steps panel stacks gradient steps and forward-only (scale search) passes, hatched where the
    gradient budget was used up. The distance panel shows each round's start and final mse_prob on a
    log axis with ε (and the band ``[band·ε, ε)`` the search stops in) so that a round which did not
    end just inside ε stands out. Rounds and step counts get integer ticks.

    Args:
        noise_history: ``trainer.noise_history``: one record per round (``round``, ``norm``, ``steps``,
            ``mse_prob``; ``forward_steps``, ``start_mse_prob``, ``budget_hit`` where logged).
        output_path: the image file to write.
        eps: ε of Eq. 5, drawn on the distance panel.
        band: the stopping band's lower end as a fraction of ε.
        round_metrics: per run (its legend name), the records of a
            :class:`~nullspace_hf.callbacks.RoundMetricsCallback` (``step`` and the metrics): a fourth panel
            draws each of ``metric_names`` over fine-tuning steps, divided by its value at the first record,
            one line style per run.
        metric_names: the metrics of ``round_metrics`` to draw.
    """
    rounds = [record["round"] for record in noise_history]
    gradient = [record["steps"] for record in noise_history]
    forward = [record.get("forward_steps", 0) for record in noise_history]
    runs = {name: records for name, records in (round_metrics or {}).items() if records}
    figure = Figure(figsize=(16 if runs else 12, 3.4))
    axes = figure.subplots(1, 4 if runs else 3)
    norm_axis, steps_axis, distance_axis = axes[:3]
    norm_axis.plot(rounds, [record["norm"] for record in noise_history], marker="o")
    norm_axis.set(xlabel="round", ylabel="noise norm ‖ṽ‖", title="Noise norm per round")
    bars = steps_axis.bar(rounds, gradient, color="tab:blue", label="gradient steps")
    for bar, record in zip(bars, noise_history, strict=True):
        if record.get("budget_hit"):
            bar.set_hatch("//")
    steps_axis.bar(rounds, forward, bottom=gradient, color="tab:orange", label="forward-only passes")
    steps_axis.set(xlabel="round", ylabel="synthesis passes", title="Synthesis cost (hatched: budget used up)")
    steps_axis.legend(fontsize=8)
    distance_axis.plot(rounds, [record.get("start_mse_prob", float("nan")) for record in noise_history], "s--",
                       color="tab:gray", label="start")
    distance_axis.plot(rounds, [record["mse_prob"] for record in noise_history], "o-", color="tab:green",
                       label="final")
    if eps is not None:
        distance_axis.axhline(eps, color="tab:red", linestyle=":", label="ε")
        if band:
            distance_axis.axhspan(band * eps, eps, color="tab:green", alpha=0.12, label="target band")
    distance_axis.set_yscale("log")
    distance_axis.set(xlabel="round", ylabel="mse_prob (Eq. 5)", title="Distance at start and end")
    distance_axis.legend(fontsize=8)
    _integer_ticks(norm_axis.xaxis, steps_axis.xaxis, distance_axis.xaxis, steps_axis.yaxis)
    if runs:
        _plot_round_metrics(axes[3], runs, metric_names)
    figure.tight_layout()
    figure.savefig(output_path, dpi=120)


def _plot_round_metrics(axis: Axes, runs: Mapping[str, Sequence[Mapping[str, float]]],
                        metric_names: Sequence[str]) -> None:
    """Fig. 4's metrics panel: each metric over fine-tuning steps relative to its first value, a line style per run."""
    for index, (run, records) in enumerate(runs.items()):
        steps = [record["step"] for record in records]
        for number, metric in enumerate(metric_names):
            axis.plot(steps, [record[metric] / records[0][metric] for record in records],
                      RUN_STYLES[index % len(RUN_STYLES)], color=METRIC_COLORS[number % len(METRIC_COLORS)],
                      label=f"{run}: {metric}")
    axis.set(xlabel="fine-tuning step", ylabel="value / value at step 0", title="Test metrics over fine-tuning")
    axis.legend(fontsize=7)
    _integer_ticks(axis.xaxis)


def plot_noise_combinations(
    alphas: Sequence[float],
    scaling: Sequence[float],
    grid_alphas: Sequence[float],
    grid: Sequence[Sequence[float]] | torch.Tensor,
    output_path: str | Path,
    *,
    eps: float,
    num_noises: int,
) -> None:
    """Draw Fig. 5: the MSE probability of α·v (with the line α·ε) and the α₁v₁ + α₂v₂ heat-map.

    Args:
        alphas, scaling: :func:`~nullspace_hf.analysis.scaling_curve`'s α values and its mean MSE probabilities.
        grid_alphas, grid: :func:`~nullspace_hf.analysis.combination_grid`'s α values and its grid
            (``grid[i][j]`` for α₁ = ``grid_alphas[i]``, α₂ = ``grid_alphas[j]``).
        output_path: the image file to write.
        eps: the ε the noises were searched for.
        num_noises: how many noises ``scaling`` averages.
    """
    figure = Figure(figsize=(10, 4))
    scaling_axis, grid_axis = figure.subplots(1, 2)
    scaling_axis.plot(alphas, scaling, "-o", label="α·v")
    scaling_axis.plot(alphas, [a * eps for a in alphas], ":", color="gray", label="α·ε")
    scaling_axis.set(xlabel="α", ylabel="MSE probability", yscale="log",
                     title=f"scalar multiples (mean of {num_noises} noises)")
    scaling_axis.legend()
    image = grid_axis.imshow(np.asarray(grid), origin="lower", cmap="viridis",
                             extent=(-0.05, grid_alphas[-1] + 0.05, -0.05, grid_alphas[-1] + 0.05))
    grid_axis.set(xlabel="α₂", ylabel="α₁", title="α₁v₁ + α₂v₂: MSE probability")
    figure.colorbar(image, ax=grid_axis)
    figure.tight_layout()
    figure.savefig(output_path, dpi=120)


def plot_watermark(
    result: WatermarkResult, output_path: str | Path, id2label: Mapping[int, str] | None = None
) -> None:
    """Draw Fig. 6: image, watermark, the added nullspace noise, and the watermarked image (App. E)."""
    figure = Figure(figsize=(10, 3.2))
    panels = [
        (_image_array(result.original), f"(a) image\npred: {_label(id2label, result.prediction_before)}"),
        (_image_array(result.watermark), "(b) watermark"),
        (_rescale(result.noise), "(c) nullspace noise\n(rescaled for display)"),
        (_image_array(result.image),
         (f"(d) watermarked, PSNR {result.psnr:.1f} dB\npred: {_label(id2label, result.prediction_after)}, "
          f"max |Δlogit| {result.max_logit_change:.1e}")),
    ]
    for axis, (array, title) in zip(figure.subplots(1, 4), panels, strict=True):
        _show(axis, array, title)
    figure.tight_layout()
    figure.savefig(output_path, dpi=150)


def plot_saliency_triplet(
    model: PreTrainedModel,
    result: TargetedResult,
    output_path: str | Path,
    *,
    processor: BaseImageProcessor | None = None,
) -> dict[str, dict[str, float]]:
    """Draw Fig. 7: source, target and transformed image, each with attention rollout and Grad-CAM (App. F).

    Returns:
        For each method, the correlation of the source's map with the transformed image's and with
        the target's: ``{"rollout": {"transformed": r, "target": r}, "grad_cam": {...}}``.
    """
    images = torch.stack([result.source, result.target, result.image])
    maps = saliency_maps(model, images, processor)
    correlations = {
        method: {"transformed": map_correlation(values[0], values[2]), "target": map_correlation(values[0], values[1])}
        for method, values in maps.items()
    }
    id2label = model.config.id2label
    predictions = [result.source_prediction, result.target_prediction, result.transformed_prediction]
    names = ["source", "target",
             f"transformed (MSE to target {result.mse_to_target:.3f}, to source {result.mse_to_source:.3f})"]
    figure = Figure(figsize=(9, 3.1 * (1 + len(maps))))
    axes = figure.subplots(1 + len(maps), 3)
    height, width = images.shape[-2:]
    for column in range(3):
        _show(axes[0, column], _image_array(images[column]),
              f"{names[column]}\npred: {_label(id2label, predictions[column])}")
        for row, (method, values) in enumerate(maps.items(), start=1):
            axis = axes[row, column]
            _show(axis, _image_array(images[column]), "")
            axis.imshow(values[column].numpy(), cmap="jet", alpha=0.5, interpolation="bilinear",
                        extent=(-0.5, width - 0.5, height - 0.5, -0.5))
            title = SALIENCY_TITLES[method]
            if column:
                correlation = correlations[method]["target" if column == 1 else "transformed"]
                title += f"\ncorrelation with source: {correlation:.3f}"
            axis.set_title(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(output_path, dpi=150)
    return correlations
