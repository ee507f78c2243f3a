"""Cost of nullspace fine-tuning against a plain ``transformers.Trainer``, measured in one process.

    python benchmarks/overhead.py                      # CIFAR-10 from ../shared/data when present, else digits
    python benchmarks/overhead.py --repeats 5 --steps 160 --variants paper,a1 --json docs/benchmarks.json

Prints, as ratios against the plain Trainer measured in the same run (medians of --repeats):
  P1  wall time of NullspaceTrainer / Trainer for the same model steps and batch, with this project's
      defaults and with the paper's protocol (fresh U(-3, 3) init every round, <= 3000 steps);
  P2  one synthesis step / one plain training step (same batch): naive, as implemented, and on a kept
      minibatch whose clean logits are reused (noise_reuse_batches > 0);
  P3  peak memory NullspaceTrainer / Trainer at the same batch, median of --repeats fresh subprocesses
      (CUDA: allocator peak; CPU: peak resident memory above the level before train(), sampled every ms);
plus the synthesis steps of every round and whether each reached eps.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from transformers import AutoModelForImageClassification, Trainer, TrainingArguments

from nullspace_hf import NullspaceConfig, NullspaceTrainer
from nullspace_hf.data import TensorRows
from nullspace_hf.modeling import frozen_eval
from nullspace_hf.noise import NoiseInjector, exploration_loss, probability_distance

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10"
DIGITS_MODEL = ROOT / "nullspace_hf" / "scripts" / "embedded" / "vit-tiny-digits"


def load_rows(model_path: str, data: str, limit: int, split: str = "train") -> tuple[TensorRows, str]:
    """The benchmark data (``split``: ``"train"`` or ``"test"``), processed once by the model's image processor."""
    from transformers import AutoImageProcessor

    from nullspace_hf.data import digits_dataset, load_image_dataset

    processor = AutoImageProcessor.from_pretrained(model_path)
    if data == "cifar10":
        rows = load_image_dataset(data_files={split: str(CIFAR / f"{split}.parquet")})[split]
        images, labels, name = rows["img"][:limit], rows["label"][:limit], "CIFAR-10"
    else:
        rows = digits_dataset()[split]
        images, labels, name = list(rows["image"])[:limit], list(rows["label"])[:limit], "digits"
    pixels = processor([image.convert("RGB") for image in images], return_tensors="pt")["pixel_values"]
    return TensorRows(pixels, torch.tensor(list(labels))), name


def training_args(cls, output_dir: str, args: argparse.Namespace, **extra):
    return cls(output_dir=output_dir, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
               learning_rate=1e-4, lr_scheduler_type="cosine", save_strategy="no", report_to="none", seed=0,
               disable_tqdm=True, logging_strategy="no", use_cpu=not torch.cuda.is_available(),
               bf16=args.bf16, torch_compile=args.torch_compile, **extra)


def build_trainer(kind: str, args: argparse.Namespace, rows: TensorRows, tmp: str, **noise) -> Trainer:
    """A plain ``Trainer`` or a ``NullspaceTrainer`` with the benchmark's training arguments and ``noise`` settings."""
    model = AutoModelForImageClassification.from_pretrained(args.model, attn_implementation=args.attn)
    if kind == "plain":
        return Trainer(model=model, args=training_args(TrainingArguments, tmp, args), train_dataset=rows)
    return NullspaceTrainer(model=model, args=training_args(NullspaceConfig, tmp, args, **noise), train_dataset=rows)


def timed_train(trainer: Trainer) -> float:
    """Wall time of one ``train()``."""
    synchronize()
    start = time.perf_counter()
    trainer.train()
    synchronize()
    return time.perf_counter() - start


def timed_run(kind: str, args: argparse.Namespace, rows: TensorRows, tmp: str, **noise) -> tuple[float, list]:
    """Wall time of one ``train()`` (model load excluded) and the noise rounds."""
    trainer = build_trainer(kind, args, rows, tmp, **noise)
    return timed_train(trainer), getattr(trainer, "noise_history", [])


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def step_times(args: argparse.Namespace, rows: TensorRows, repeats: int = 20) -> dict[str, float]:
    """P2: median seconds of a plain training step, a naive synthesis step and the implemented one."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForImageClassification.from_pretrained(args.model, attn_implementation=args.attn).to(device)
    batch = rows.pixel_values[: args.batch_size].to(device)
    labels = rows.labels[: args.batch_size].to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=args.bf16)
    with NoiseInjector(model) as injector:
        # --torch_compile compiles the training forward, as the Trainer does; the synthesis runs the model itself
        train_forward = torch.compile(model) if args.torch_compile else model
        with torch.no_grad():
            model(pixel_values=batch)
        noise = torch.zeros(injector.output_shape, device=device, requires_grad=True)

        def plain() -> None:
            model.train()
            with autocast:
                loss = torch.nn.functional.cross_entropy(train_forward(pixel_values=batch).logits.float(), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        def naive() -> None:
            # before the optimisation: weights keep requires_grad, backward() fills their .grad too
            model.eval()
            with autocast:
                clean = model(pixel_values=batch).logits
                with injector.applied(noise):
                    noisy = model(pixel_values=batch).logits
            probability_distance(clean.detach(), noisy.detach()).mean().item()
            exploration_loss(clean, noisy, noise, 0.0, "squared_l2").backward()
            model.zero_grad()
            noise.grad = None

        def search_step(clean: torch.Tensor) -> None:
            with injector.applied(noise):
                noisy = model(pixel_values=batch).logits
            probability_distance(clean, noisy.detach()).mean().item()
            torch.autograd.grad(exploration_loss(clean, noisy, noise, 0.0, "squared_l2"), [noise])

        def implemented() -> None:
            with frozen_eval(model), autocast:
                with torch.no_grad():
                    clean = model(pixel_values=batch).logits
                search_step(clean)

        with frozen_eval(model), autocast, torch.no_grad():
            kept_clean = model(pixel_values=batch).logits

        def reused() -> None:
            # noise_reuse_batches > 0: the clean logits of a kept minibatch are already there
            with frozen_eval(model), autocast:
                search_step(kept_clean)

        times = {}
        for name, function in (("plain", plain), ("naive", naive), ("implemented", implemented), ("reused", reused)):
            for _ in range(3):
                function()
            samples = []
            for _ in range(repeats):
                synchronize()
                start = time.perf_counter()
                function()
                synchronize()
                samples.append(time.perf_counter() - start)
            times[name] = statistics.median(samples)
    return times


def peak_memory(kind: str, args: argparse.Namespace, noise: dict) -> float:
    """Median over ``--repeats`` of the peak memory of a ``--memory_steps`` training run, each in a fresh
    subprocess (bytes)."""
    command = [sys.executable, __file__, "--memory_child", kind, "--noise", json.dumps(noise), "--model", args.model,
               "--data", args.data, "--samples", str(args.samples), "--steps", str(args.memory_steps),
               "--batch_size", str(args.batch_size), "--attn", args.attn, *(["--bf16"] if args.bf16 else []),
               *(["--torch_compile"] if args.torch_compile else [])]
    peaks = [float(subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
             for _ in range(args.repeats)]
    return statistics.median(peaks)


def memory_child(args: argparse.Namespace) -> None:
    rows, _ = load_rows(args.model, args.data, args.samples)
    noise = json.loads(args.noise)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        timed_run(args.memory_child, args, rows, "/tmp/nullspace-bench-memory", **noise)
        print(torch.cuda.max_memory_allocated())
        return
    gc.collect()
    baseline = _rss()
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    timed_run(args.memory_child, args, rows, "/tmp/nullspace-bench-memory", **noise)
    done.set()
    sampler.join()
    print(peak[0] - baseline)


def _rss() -> int:
    """Resident set size of this process in bytes (Linux)."""
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DIGITS_MODEL), help="Checkpoint to fine-tune (with its processor).")
    parser.add_argument("--data", choices=["cifar10", "digits"],
                        default="cifar10" if (CIFAR / "train.parquet").exists() else "digits")
    parser.add_argument("--samples", type=int, default=4096, help="Training samples (pre-processed once).")
    parser.add_argument("--steps", type=int, default=800, help="Model steps per run (the paper's 20 rounds of 40).")
    parser.add_argument("--memory_steps", type=int, default=160, help="Model steps of each P3 run (4 rounds).")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU).")
    parser.add_argument("--torch_compile", action="store_true",
                        help="TrainingArguments(torch_compile=True) for both trainers; P2's training step compiled "
                        "too (the synthesis runs uncompiled, as in NullspaceTrainer).")
    parser.add_argument("--variants", default="defaults,paper", help="Comma-separated NullspaceTrainer variants.")
    parser.add_argument("--json", help="Also write the measurements to this JSON file.")
    parser.add_argument("--memory_child", help=argparse.SUPPRESS)
    parser.add_argument("--noise", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args)
        return

    variants = {
        "defaults": {},
        "paper": {"noise_warm_start": False, "noise_init_limit": 3.0, "noise_max_steps": 3000, "noise_lr": 0.1,
                  "noise_token_lr": 0.0},
        "a1": {"noise_warm_start": False, "noise_init_limit": 1.0, "noise_max_steps": 3000, "noise_token_lr": 0.0},
        "reuse8": {"noise_reuse_batches": 8},
        "concat": {"noisy_forward": "concat"},
    }
    chosen = {name: variants[name] for name in args.variants.split(",")}
    rows, data_name = load_rows(args.model, args.data, args.samples)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"model {args.model} | data {data_name} ({len(rows)} samples) | batch {args.batch_size} | "
          f"{args.steps} model steps | attention {args.attn} | bf16 {args.bf16} | {device}")

    with_tmp = "/tmp/nullspace-bench"
    walls: dict[str, list[float]] = {"plain": []}
    rounds: dict[str, list] = {}
    for _ in range(args.repeats):
        walls["plain"].append(timed_run("plain", args, rows, with_tmp)[0])
        for name, noise in chosen.items():
            seconds, history = timed_run("nullspace", args, rows, with_tmp, **noise)
            walls.setdefault(name, []).append(seconds)
            rounds[name] = history
    plain = statistics.median(walls["plain"])
    print(f"\nP1  wall time for {args.steps} model steps (median of {args.repeats}); plain Trainer {plain:.2f} s")
    results = {"setup": vars(args) | {"device": device, "data": data_name}, "plain_seconds": plain, "variants": {}}
    for name in chosen:
        median = statistics.median(walls[name])
        steps = [record["steps"] for record in rounds[name]]
        reached = [record["reached"] for record in rounds[name]]
        print(f"    {name:<10} {median:8.2f} s  ratio {median / plain:5.2f}x  synthesis steps per round {steps}  "
              f"reached {reached}")
        results["variants"][name] = {"seconds": median, "ratio": median / plain, "steps": steps, "reached": reached}

    steps = step_times(args, rows)
    print(f"\nP2  one step (median of 20): plain training {1000 * steps['plain']:.1f} ms | synthesis naive "
          f"{1000 * steps['naive']:.1f} ms ({steps['naive'] / steps['plain']:.2f}x) | synthesis implemented "
          f"{1000 * steps['implemented']:.1f} ms ({steps['implemented'] / steps['plain']:.2f}x) | synthesis on a kept "
          f"minibatch (clean logits reused) {1000 * steps['reused']:.1f} ms ({steps['reused'] / steps['plain']:.2f}x)")
    results["step_seconds"] = steps

    plain_memory = peak_memory("plain", args, {})
    print(f"\nP3  peak memory increase during {args.memory_steps} steps (median of {args.repeats} processes): "
          f"plain {plain_memory / 2**20:.1f} MiB")
    results["memory"] = {"plain": plain_memory}
    for name, noise in chosen.items():
        used = peak_memory("nullspace", args, noise)
        results["memory"][name] = used
        print(f"    {name:<10} {used / 2**20:8.1f} MiB  ratio {used / plain_memory:5.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
