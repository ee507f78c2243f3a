"""One round-0 search per variant and batch order: synthesis minibatch size, stop window, per-token rate, budget.

    python -m benchmarks.matrix --setups vit-196-tokens --rounds 5 --repeats 1    # trains and caches the model once
    OMP_NUM_THREADS=1 python -m benchmarks.search_batches outputs/benchmark_models/vit-196-tokens --orders 3

On the weights of a checkpoint (a model of ``benchmarks.matrix``, trained briefly on digits) and for each variant
and each of ``--orders`` shuffles of the training images: the norm, gradient steps, forward-only passes, the
final mse_prob on the images the stop was judged on, the held-out mse_prob on digits test images the search never
saw, whether the budget ran out, and the seconds (one process; compare seconds within a run only). The first
variant is the paper's search on minibatches of the training batch size, the reference of issue 22.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import AutoModelForImageClassification

from benchmarks.matrix import shuffled_batches
from benchmarks.overhead import load_rows
from nullspace_hf.noise import noise_influence, synthesize_noise

VARIANTS = {
    "paper-b32": {"batch": 32, "token_lr": 0.0, "max_steps": 3000, "band": None},  # the paper's search
    "token-b32": {"batch": 32, "token_lr": 0.2, "max_steps": 200},  # the first issue-22 default
    "b8-stop1": {"batch": 8, "token_lr": 0.2, "max_steps": 200},
    "b8-stop8-scales0.2": {"batch": 8, "token_lr": 0.2, "max_steps": 200, "stop_batches": 8},
    "defaults": {"batch": 8, "token_lr": 0.4, "max_steps": 400, "stop_batches": 8},
    "defaults-reuse16": {"batch": 8, "token_lr": 0.4, "max_steps": 400, "stop_batches": 8, "reuse_batches": 16},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="A ViT checkpoint with its image processor (a benchmarks.matrix model).")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="Comma-separated variant names.")
    parser.add_argument("--orders", type=int, default=3, help="Shuffles of the training images, one search each.")
    parser.add_argument("--samples", type=int, default=4096)
    args = parser.parse_args()
    chosen = args.variants.split(",")
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    model = AutoModelForImageClassification.from_pretrained(args.checkpoint)
    rows, _ = load_rows(args.checkpoint, "digits", args.samples)
    held_rows, _ = load_rows(args.checkpoint, "digits", 512, split="test")
    held = list(held_rows.pixel_values.split(64))
    for name in chosen:
        settings = dict(VARIANTS[name])
        batch = settings.pop("batch")
        for order in range(args.orders):
            started = time.perf_counter()
            result = synthesize_noise(model, shuffled_batches(rows.pixel_values, batch, order, drop_last=True),
                                      generator=torch.Generator().manual_seed(order), **settings)
            seconds = time.perf_counter() - started
            held_out = noise_influence(model, held, result.noise)["mse_prob"]
            print(json.dumps({"variant": name, "order": order, "norm": round(result.norm, 1), "steps": result.steps,
                              "forward_steps": result.forward_steps, "mse_prob": round(result.mse_prob, 4),
                              "held_out_mse_prob": round(held_out, 4), "budget_hit": result.budget_hit,
                              "seconds": round(seconds, 1)}), flush=True)


if __name__ == "__main__":
    main()
