"""Synthesis schedules inside fine-tuning: steps per round, time, and how each round's noise generalises.

    python -m benchmarks.training_schedules --model outputs/reproduce_cifar10/pretrained --steps 400

For each schedule, a ``NullspaceTrainer`` fine-tunes the same model on the same data for ``--steps``
model steps (a round every 40) and the table gives: the wall time of ``train()`` and the part spent in
synthesis, the synthesis steps of every round, the noise norm of every round, and the influence
(mean Σ(Δsoftmax)², Eq. 5) of every round's noise on held-out images, measured right after the
round's synthesis (outside the timed part). A good schedule is cheap, reaches ε every round and keeps
the held-out influence near ε.
"""

from __future__ import annotations

import argparse
import json
import time

from transformers import AutoModelForImageClassification

from benchmarks.overhead import CIFAR, DIGITS_MODEL, load_rows, training_args
from nullspace_hf import NullspaceConfig, NullspaceTrainer, noise_influence
from nullspace_hf.data import TensorRows

SCHEDULES = {  # name: (what it is, NullspaceConfig overrides)
    "paper": ("fresh U(-3, 3) every round", {"noise_warm_start": False, "noise_init_limit": 3.0,
                                             "noise_max_steps": 3000, "noise_token_lr": 0.0}),
    "a1": ("fresh U(-1, 1) every round", {"noise_warm_start": False, "noise_init_limit": 1.0,
                                          "noise_max_steps": 3000, "noise_token_lr": 0.0}),
    "defaults": ("U(-1, 1), then previous noise x 1.1", {}),
    "warm1.25": ("U(-1, 1), then previous noise x 1.25", {"noise_warm_start_scale": 1.25}),
    "warm1.5": ("U(-1, 1), then previous noise x 1.5", {"noise_warm_start_scale": 1.5}),
    "warm2": ("U(-1, 1), then previous noise x 2", {"noise_warm_start_scale": 2.0}),
    "reuse8": ("defaults, 8 kept minibatches per round", {"noise_reuse_batches": 8}),
}


class _HeldOutProbe:
    """Wraps ``trainer._make_noise``: times the synthesis and measures each noise on held-out images."""

    def __init__(self, trainer: NullspaceTrainer, held_out: list) -> None:
        self.trainer, self.held_out, self.make = trainer, held_out, trainer._make_noise
        self.synthesis_seconds, self.probe_seconds, self.influence = 0.0, 0.0, []
        trainer._make_noise = self

    def __call__(self, round_index: int):
        start = time.perf_counter()
        result = self.make(round_index)
        probe = time.perf_counter()
        self.synthesis_seconds += probe - start
        self.influence.append(noise_influence(self.trainer.model, self.held_out, result.noise)["mse_prob"])
        self.probe_seconds += time.perf_counter() - probe
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DIGITS_MODEL))
    parser.add_argument("--data", choices=["cifar10", "digits"],
                        default="cifar10" if (CIFAR / "train.parquet").exists() else "digits")
    parser.add_argument("--steps", type=int, default=400, help="Model steps (10 rounds of 40).")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--schedules", default=",".join(SCHEDULES), help="Comma-separated names from SCHEDULES.")
    parser.add_argument("--json", help="Also write the measurements to this JSON file.")
    args = parser.parse_args()
    args.bf16, args.attn, args.torch_compile = False, "sdpa", False

    rows, name = load_rows(args.model, args.data, 6144)
    train = TensorRows(rows.pixels[:4096], rows.labels[:4096])
    held_out = [rows.pixels[i : i + 256] for i in range(4096, len(rows), 256)]
    print(f"model {args.model} | {name}: 4096 training, {len(rows) - 4096} held-out images | batch "
          f"{args.batch_size} | {args.steps} model steps")
    print("| schedule | start | train() s | synthesis s | steps per round | noise norm per round | held-out mse_prob "
          "per round |\n|---|---|---|---|---|---|---|")
    results = {}
    for label in args.schedules.split(","):
        description, overrides = SCHEDULES[label]
        model = AutoModelForImageClassification.from_pretrained(args.model)
        trainer = NullspaceTrainer(model=model, train_dataset=train,
                                   args=training_args(NullspaceConfig, "/tmp/nullspace-schedules", args,
                                                      **overrides))
        probe = _HeldOutProbe(trainer, held_out)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start - probe.probe_seconds
        history = trainer.noise_history
        results[label] = {"seconds": seconds, "synthesis_seconds": probe.synthesis_seconds,
                          "steps": [r["steps"] for r in history], "norm": [r["norm"] for r in history],
                          "reached": [r["reached"] for r in history], "held_out_mse_prob": probe.influence}
        reached = "" if all(results[label]["reached"]) else " (not all reached)"
        norms, influence = [round(n, 1) for n in results[label]["norm"]], [round(m, 3) for m in probe.influence]
        print(f"| {label} | {description} | {seconds:.1f} | {probe.synthesis_seconds:.1f} | "
              f"{results[label]['steps']}{reached} | {norms} | {influence} |", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"setup": vars(args), "schedules": results}, handle, indent=2)


if __name__ == "__main__":
    main()
