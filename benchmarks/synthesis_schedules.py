"""How fast does each synthesis schedule reach eps, and what noise does it find?

    python -m benchmarks.synthesis_schedules --model outputs/vit-cifar10

For each schedule (noise learning rate, initial range A), on the same trained model and the same
training minibatches: synthesis steps and seconds until the batch mean of sum((softmax
difference)^2) < eps, the noise norm, its influence on held-out images, and the influence of the
same noise with its elements permuted (Fig. 3's control). A good schedule is fast and keeps a large
noise that stays near eps on held-out data.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.overhead import CIFAR, DIGITS_MODEL, load_rows
from nullspace_hf import noise_influence, synthesize_noise

SCHEDULES = {
    "paper (lr 0.1, A 3)": {"lr": 0.1, "init_limit": 3.0},
    "lr 0.3, A 3": {"lr": 0.3, "init_limit": 3.0},
    "lr 1.0, A 3": {"lr": 1.0, "init_limit": 3.0},
    "lr 0.1, A 1": {"lr": 0.1, "init_limit": 1.0},
    "lr 0.3, A 1": {"lr": 0.3, "init_limit": 1.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DIGITS_MODEL))
    parser.add_argument("--data", choices=["cifar10", "digits"],
                        default="cifar10" if (CIFAR / "train.parquet").exists() else "digits")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--eps", type=float, default=0.03)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()

    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(args.model).eval()
    rows, name = load_rows(args.model, args.data, 8192)
    train = [rows.pixel_values[i : i + args.batch_size] for i in range(0, 6144, args.batch_size)]
    held_out = [rows.pixel_values[i : i + 256] for i in range(6144, 8192, 256)]
    print(f"model {args.model} | {name} | batch {args.batch_size} | eps {args.eps} | "
          f"{torch.get_num_threads()} threads")
    print("| schedule | seed | steps | seconds | noise norm | held-out mse_prob | held-out match | "
          "permuted mse_prob |\n|---|---|---|---|---|---|---|---|")
    for label, schedule in SCHEDULES.items():
        for seed in range(args.seeds):
            start = time.perf_counter()
            result = synthesize_noise(model, train, eps=args.eps, generator=torch.Generator().manual_seed(seed),
                                      **schedule)
            seconds = time.perf_counter() - start
            held = noise_influence(model, held_out, result.noise)
            order = torch.randperm(result.noise.numel(), generator=torch.Generator().manual_seed(seed))
            permuted = noise_influence(model, held_out, result.noise.flatten()[order].reshape(result.noise.shape))
            print(f"| {label} | {seed} | {result.steps}{'' if result.reached else ' (not reached)'} | "
                  f"{seconds:.1f} | {result.norm:.1f} | {held['mse_prob']:.4f} | {held['match_rate']:.3f} | "
                  f"{permuted['mse_prob']:.4f} |")


if __name__ == "__main__":
    main()
