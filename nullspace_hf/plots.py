"""Figures that show the nullspace at work (paper Fig. 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import BaseImageProcessor, PreTrainedModel

from .evaluation.pixels import PixelTransform
from .linalg import patch_embedding_nullspace


def _to_display(pixel_values: torch.Tensor, processor: BaseImageProcessor) -> np.ndarray:
    """Undo the processor's rescale and normalisation of one ``(c, H, W)`` image; clip to [0, 1] for display."""
    image = pixel_values.detach().to(torch.float64).cpu()
    scale, offset = PixelTransform.from_processor(processor, image.shape[0]).affine()
    array = ((image - offset.view(-1, 1, 1)) / scale.view(-1, 1, 1)).clamp(0, 1).permute(1, 2, 0).numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


def _rescale(noise: torch.Tensor) -> np.ndarray:
    """Map one ``(c, H, W)`` noise to [0, 1] for display."""
    array = noise.detach().to(torch.float32).cpu()
    array = (array - array.min()) / (array.max() - array.min()).clamp_min(1e-12)
    array = array.permute(1, 2, 0).numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


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
    """Draw Fig. 2: the image, exact nullspace noise, and the noisy image, each with the prediction.

    The noise is drawn in the model's input space (after the processor's normalisation), so the
    noisy input differs from the clean one only by nullspace patches and the prediction is unchanged.

    Returns:
        ``{"clean": label, "noisy": label}``: the two predicted labels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model.eval()
    nullspace = patch_embedding_nullspace(model)
    pixel_values = processor(images=image.convert("RGB" if nullspace.num_channels == 3 else "L"),
                             return_tensors="pt")["pixel_values"]
    pixel_values = pixel_values.to(next(model.parameters()).dtype)
    generator = torch.Generator().manual_seed(seed)
    noise = nullspace.sample(1, tuple(pixel_values.shape[-2:]), scale=scale, generator=generator)
    noise = noise.to(pixel_values.dtype)
    logits = model(pixel_values=torch.cat([pixel_values, pixel_values + noise])).logits
    labels = [model.config.id2label.get(int(index), str(int(index))) for index in logits.argmax(-1)]

    figure, axes = plt.subplots(1, 3, figsize=(9, 3.4))
    panels = [
        (_to_display(pixel_values[0], processor), f"(a) input\npred: {labels[0]}"),
        (_rescale(noise[0]), "(b) nullspace noise\n(rescaled for display)"),
        (_to_display(pixel_values[0] + noise[0], processor), f"(c) input + noise\npred: {labels[1]}"),
    ]
    for axis, (array, title) in zip(axes, panels):
        axis.imshow(array, cmap="gray" if array.ndim == 2 else None)
        axis.set_title(title, fontsize=9)
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(output_path, dpi=150)
    plt.close(figure)
    return {"clean": labels[0], "noisy": labels[1]}


def plot_noise_dynamics(noise_history: list[dict], output_path: str | Path, eps: float | None = None,
                        band: float | None = None) -> None:
    """Draw Fig. 4's noise panels: per round the noise norm, the synthesis steps, and Eq. 5's distance.

    The steps panel stacks gradient steps and forward-only (scale search) passes, hatched where the
    gradient budget was used up. The distance panel shows each round's start and final mse_prob on a
    log axis with ε (and the band ``[band·ε, ε)`` the search stops in) so that a round which did not
    end just inside ε stands out.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rounds = [record["round"] for record in noise_history]
    gradient = [record["steps"] for record in noise_history]
    forward = [record.get("forward_steps", 0) for record in noise_history]
    figure = Figure(figsize=(12, 3.4))
    norm_axis, steps_axis, distance_axis = figure.subplots(1, 3)
    norm_axis.plot(rounds, [record["norm"] for record in noise_history], marker="o")
    norm_axis.set(xlabel="round", ylabel="noise norm ‖ṽ‖", title="Noise norm per round")
    bars = steps_axis.bar(rounds, gradient, color="tab:blue", label="gradient steps")
    for bar, record in zip(bars, noise_history):
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
    for axis in (norm_axis, steps_axis, distance_axis):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    steps_axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    figure.savefig(output_path, dpi=120)
