"""NullspaceTrainer / plain Trainer on several models: is the synthesis cost small and predictable everywhere?

    python -m benchmarks.matrix --json docs/benchmarks_matrix.json            # every setup, 800 steps, 3 repeats
    python -m benchmarks.matrix --setups digits-tiny,deit-tiny --steps 200 --repeats 1

For each setup (a model and its training images, pre-processed once), in one process: the wall time
of ``train()`` for ``--steps`` model steps at batch 64 with a plain ``transformers.Trainer`` and with
``NullspaceTrainer`` at the package defaults (medians of ``--repeats``), and once with the paper's
schedule (fresh U(−3, 3) every round, ≤ 3000 steps) over ``--paper_steps``; the paper's schedule pays
the same per round whatever the number of rounds, so its ratio over a few rounds is its ratio over 20.
Every round's start and final mse_prob, gradient and forward-only synthesis steps and noise norm are
printed and written to ``--json``.

The models are small ViT-family classifiers trained briefly from scratch on scikit-learn's digits
(cached under ``--cache_dir``), the shipped ``nullspace_hf/scripts/embedded/vit-tiny-digits``, and the CIFAR-10
ViT of ``recipes/reproduce_cifar10.py`` when ``--cifar_model`` exists.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    DeiTConfig,
    DeiTForImageClassification,
    Dinov2Config,
    Dinov2ForImageClassification,
    Trainer,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

from benchmarks.overhead import CIFAR, DIGITS_MODEL, ROOT, load_rows, timed_run

PAPER = {"noise_warm_start": False, "noise_init_limit": 3.0, "noise_max_steps": 3000, "noise_lr": 0.1}


@dataclass(frozen=True)
class Setup:
    """One row of the matrix: a model (a checkpoint, or a config trained briefly on digits) and its data."""

    name: str
    description: str
    checkpoint: str | None = None
    family: str = "vit"
    image_size: int = 32
    config: dict = field(default_factory=dict)
    data: str = "digits"


SETUPS = (
    Setup("cifar10-vit", "the reproduction's CIFAR-10 ViT (patch 8, width 128, 6 layers; 16 patches)", data="cifar10"),
    Setup("digits-tiny", "shipped nullspace_hf/scripts/embedded/vit-tiny-digits (patch 8, width 64; 16 patches)",
          checkpoint=str(DIGITS_MODEL)),
    Setup("digits-patch4", "ViT, 4 layers, patch 4, width 64, 32x32 digits (64 patches)",
          config=dict(patch_size=4, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128)),
    Setup("deit-tiny", "DeiT (CLS + distillation token), 4 layers, patch 8, width 64 (16 patches)", family="deit",
          config=dict(patch_size=8, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128)),
    Setup("dinov2-tiny", "Dinov2 (layer scale, SwiGLU off), 4 layers, patch 8, width 64 (16 patches)",
          family="dinov2", config=dict(patch_size=8, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                       mlp_ratio=2)),
    Setup("vit-144-tokens", "ViT, 2 layers, patch 4, width 32, 48x48 digits (144 patches)", image_size=48,
          config=dict(patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)),
)
FAMILIES = {"vit": (ViTConfig, ViTForImageClassification), "deit": (DeiTConfig, DeiTForImageClassification),
            "dinov2": (Dinov2Config, Dinov2ForImageClassification)}


def prepare_checkpoint(setup: Setup, args: argparse.Namespace) -> str:
    """The setup's checkpoint; configs are trained from scratch on digits once (plain CE) and cached."""
    if setup.data == "cifar10":
        return args.cifar_model
    if setup.checkpoint:
        return setup.checkpoint
    directory = Path(args.cache_dir) / setup.name
    if (directory / "model.safetensors").is_file():
        return str(directory)
    config_class, model_class = FAMILIES[setup.family]
    torch.manual_seed(0)
    model = model_class(config_class(image_size=setup.image_size, num_channels=3, num_labels=10, **setup.config))
    processor = ViTImageProcessor(size={"height": setup.image_size, "width": setup.image_size})
    processor.save_pretrained(directory)
    model.save_pretrained(directory)
    rows, _ = load_rows(str(directory), "digits", 4096)
    training = TrainingArguments(output_dir=str(directory / "run"), max_steps=args.pretrain_steps,
                                 per_device_train_batch_size=64, learning_rate=1e-3, lr_scheduler_type="cosine",
                                 warmup_steps=20, weight_decay=0.05, save_strategy="no", report_to="none", seed=0,
                                 disable_tqdm=True, logging_strategy="no", use_cpu=True)
    Trainer(model=model, args=training, train_dataset=rows).train()
    model.save_pretrained(directory)
    return str(directory)


def rounds_table(history: list[dict]) -> dict[str, list]:
    """Per-round columns of a ``noise_history`` (keys missing in older histories are None)."""
    keys = ("steps", "forward_steps", "start_mse_prob", "mse_prob", "norm", "budget_hit")
    return {key: [record.get(key) for record in history] for key in keys}


def run_setup(setup: Setup, args: argparse.Namespace) -> dict:
    """Plain and NullspaceTrainer wall times and the rounds of the defaults and the paper's schedule."""
    checkpoint = prepare_checkpoint(setup, args)
    rows, data_name = load_rows(checkpoint, setup.data, args.samples)
    run_args = argparse.Namespace(model=checkpoint, steps=args.steps, batch_size=64, attn="sdpa", bf16=False,
                                  torch_compile=False)
    tmp = "/tmp/nullspace-matrix"
    plain, defaults, history = [], [], []
    for _ in range(args.repeats):
        plain.append(timed_run("plain", run_args, rows, tmp)[0])
        seconds, history = timed_run("nullspace", run_args, rows, tmp)
        defaults.append(seconds)
    result = {"description": setup.description, "checkpoint": checkpoint, "data": data_name, "samples": len(rows),
              "plain_seconds": statistics.median(plain), "defaults_seconds": statistics.median(defaults),
              "plain_runs": plain, "defaults_runs": defaults, "defaults_rounds": rounds_table(history)}
    result["defaults_ratio"] = result["defaults_seconds"] / result["plain_seconds"]
    if args.paper_steps:
        paper_args = argparse.Namespace(**{**vars(run_args), "steps": args.paper_steps})
        paper_plain = timed_run("plain", paper_args, rows, tmp)[0]
        paper_seconds, paper_history = timed_run("nullspace", paper_args, rows, tmp, **PAPER)
        result.update(paper_steps=args.paper_steps, paper_plain_seconds=paper_plain, paper_seconds=paper_seconds,
                      paper_ratio=paper_seconds / paper_plain, paper_rounds=rounds_table(paper_history))
    return result


def _fmt(values: list, pattern: str) -> str:
    return "[" + ", ".join("–" if v is None else format(v, pattern) for v in values) + "]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setups", default=",".join(s.name for s in SETUPS), help="Comma-separated setup names.")
    parser.add_argument("--steps", type=int, default=800, help="Model steps per run (the paper's 20 rounds of 40).")
    parser.add_argument("--paper_steps", type=int, default=160, help="Model steps of the paper-schedule run (0: none).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=4096, help="Training images per setup (pre-processed once).")
    parser.add_argument("--pretrain_steps", type=int, default=300, help="Plain training of the digits models.")
    parser.add_argument("--cifar_model", default=str(ROOT / "outputs" / "reproduce_cifar10" / "pretrained"))
    parser.add_argument("--cache_dir", default=str(ROOT / "outputs" / "benchmark_models"))
    parser.add_argument("--json", help="Also write the measurements to this JSON file.")
    args = parser.parse_args()
    chosen = [setup for setup in SETUPS if setup.name in args.setups.split(",")]
    unknown = set(args.setups.split(",")) - {setup.name for setup in chosen}
    if unknown:
        parser.error(f"unknown setups {sorted(unknown)}; choose from {', '.join(s.name for s in SETUPS)}")
    if any(setup.data == "cifar10" for setup in chosen) and not (
            (CIFAR / "train.parquet").exists() and (Path(args.cifar_model) / "model.safetensors").exists()):
        print(f"skipping cifar10-vit: needs {CIFAR / 'train.parquet'} and {args.cifar_model}")
        chosen = [setup for setup in chosen if setup.data != "cifar10"]
    print(f"{args.steps} model steps, batch 64, median of {args.repeats}; CPU threads {torch.get_num_threads()}")
    results = {"arguments": vars(args), "setups": {}}
    for setup in chosen:
        result = run_setup(setup, args)
        results["setups"][setup.name] = result
        rounds = result["defaults_rounds"]
        print(f"\n{setup.name}: {setup.description}\n"
              f"  plain {result['plain_seconds']:.2f} s | defaults {result['defaults_seconds']:.2f} s | "
              f"ratio {result['defaults_ratio']:.2f}x"
              + (f" | paper schedule {result['paper_ratio']:.2f}x over {result['paper_steps']} steps"
                 if "paper_ratio" in result else "") + "\n"
              f"  gradient steps per round {rounds['steps']}\n"
              f"  forward-only steps       {rounds['forward_steps']}\n"
              f"  start mse_prob           {_fmt(rounds['start_mse_prob'], '.2g')}\n"
              f"  final mse_prob           {_fmt(rounds['mse_prob'], '.4f')}\n"
              f"  noise norm               {_fmt(rounds['norm'], '.1f')}\n"
              f"  budget hit               {rounds['budget_hit']}", flush=True)
        if "paper_rounds" in result:
            print(f"  paper: gradient steps {result['paper_rounds']['steps']}, final mse_prob "
                  f"{_fmt(result['paper_rounds']['mse_prob'], '.4f')}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print("\n| setup | plain (s) | defaults (s) | ratio | paper schedule ratio |\n|---|---|---|---|---|")
    for name, result in results["setups"].items():
        print(f"| {name} | {result['plain_seconds']:.1f} | {result['defaults_seconds']:.1f} | "
              f"{result['defaults_ratio']:.2f}x | {result.get('paper_ratio', float('nan')):.2f}x |")


if __name__ == "__main__":
    main()
