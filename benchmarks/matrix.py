"""NullspaceTrainer / plain Trainer on ViTs with 16–256 patch tokens: is the default noise the paper's, and its cost?

    python -m benchmarks.matrix --json docs/benchmarks_matrix.json        # every setup, 20 and 5 rounds, 3 repeats
    python -m benchmarks.matrix --setups vit-196-tokens --rounds 5 --repeats 1

For each setup (a model and its training images, pre-processed once), in one process and for each number
of 40-step rounds in ``--rounds``: the wall time of ``train()`` with a plain ``transformers.Trainer`` and with
``NullspaceTrainer`` at the package defaults (medians of ``--repeats``); for the first default run, every
round's gradient steps, forward-only passes, synthesis-batch and held-out mse_prob (on ``--held_out`` test
images the synthesis never saw), noise norm and RMS; and at the first and the last round the paper's own
search (fresh U(−3, 3), AdamW lr 0.1, ≤ 3000 steps, stop at the first batch below ε) on the same weights and
minibatches of the training batch size, with the default/paper norm ratio. Printed and written
to ``--json``.

The models are small ViT-family classifiers trained briefly from scratch on scikit-learn's digits
(cached under ``--cache_dir``), the shipped ``nullspace_hf/scripts/embedded/vit-tiny-digits``, and the CIFAR-10
ViT of ``recipes/reproduce_cifar10.py`` when ``--cifar_model`` exists.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    DeiTConfig,
    DeiTForImageClassification,
    Dinov2Config,
    Dinov2ForImageClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

from benchmarks.overhead import CIFAR, DIGITS_MODEL, ROOT, build_trainer, load_rows, timed_run, timed_train
from nullspace_hf import NullspaceTrainer
from nullspace_hf.noise import noise_influence, synthesize_noise

PAPER_SEARCH = {"init_limit": 3.0, "lr": 0.1, "max_steps": 3000, "token_lr": 0.0, "band": None}
"""The paper's search (App. C, Algorithm 1): fresh U(−3, 3), AdamW lr 0.1, stop at the first batch below ε."""
REFRESH_STEPS = 40
TMP = f"/tmp/nullspace-matrix-{os.getpid()}"  # one output_dir per process: two runs may not share one


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
    Setup("vit-196-tokens", "ViT, 3 layers, patch 4, width 48, 56x56 digits (196 patches, ViT-B/16's count)",
          image_size=56, config=dict(patch_size=4, hidden_size=48, num_hidden_layers=3, num_attention_heads=3,
                                     intermediate_size=96)),
    Setup("vit-ti-196", "ViT-Ti/16-shaped: width 192, 3 heads, MLP 768, 4 layers, patch 8, 112x112 digits "
          "(196 patches)", image_size=112, config=dict(patch_size=8, hidden_size=192, num_hidden_layers=4,
                                                      num_attention_heads=3, intermediate_size=768)),
    Setup("vit-256-tokens", "ViT, 3 layers, patch 4, width 64, 64x64 digits (256 patches, ViT-L/14's count)",
          image_size=64, config=dict(patch_size=4, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                     intermediate_size=128)),
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


class RoundRecorder(TrainerCallback):
    """Keeps the weights each noise round was synthesised on and the round's noise, for the fidelity columns.

    Cloning a small model's state dict once per round costs milliseconds; the paper search and the held-out
    distances are computed after the timed ``train()`` from what is kept here.
    """

    def __init__(self, trainer: NullspaceTrainer, refresh_steps: int) -> None:
        self.trainer, self.refresh_steps = trainer, refresh_steps
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        self.noises: dict[int, torch.Tensor] = {}

    def on_step_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001 - TrainerCallback's API
        if state.global_step % self.refresh_steps == 0:
            self.weights[state.global_step // self.refresh_steps] = {
                key: value.detach().clone() for key, value in model.state_dict().items()}

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 - TrainerCallback's API
        self.noises.setdefault((state.global_step - 1) // self.refresh_steps, self.trainer.noise.detach().clone())


def shuffled_batches(pixels: torch.Tensor, batch_size: int, seed: int,
                     drop_last: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Endless minibatches of ``pixels`` in a new seeded shuffle every pass (without the last, smaller one of a pass
    when ``drop_last``)."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        for index in torch.randperm(len(pixels), generator=generator).split(batch_size):
            if len(index) == batch_size or not drop_last:
                yield {"pixel_values": pixels[index]}


def training_batches(trainer: NullspaceTrainer, round_index: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless shuffled minibatches of the training batch size from the trainer's train set: the paper's synthesis
    batches (the defaults' own are smaller, ``noise_batch_size``)."""
    return shuffled_batches(trainer.train_dataset.pixel_values, trainer.args.per_device_train_batch_size,
                            trainer.args.seed + round_index)


def paper_search(trainer: NullspaceTrainer, round_index: int, held: list[torch.Tensor]) -> dict:
    """The paper's search (fresh U(−3, 3), AdamW lr 0.1, ≤ 3000 steps, stop at the first batch below ε) on the
    weights the trainer now holds and on minibatches of its training batch size."""
    started = time.perf_counter()
    result = synthesize_noise(trainer.model, training_batches(trainer, round_index), eps=trainer.args.noise_eps,
                              generator=torch.Generator().manual_seed(1000 + round_index), **PAPER_SEARCH)
    held_out = noise_influence(trainer.model, held, result.noise)["mse_prob"]
    return {"norm": result.norm, "rms": result.rms, "steps": result.steps, "mse_prob": result.mse_prob,
            "reached": result.reached, "held_out_mse_prob": held_out, "seconds": time.perf_counter() - started}


def fidelity(trainer: NullspaceTrainer, recorder: RoundRecorder, held: list[torch.Tensor],
             paper_rounds: dict[int, dict]) -> dict:
    """Per round: the held-out mse_prob of the default's noise on its own weights, and at the first and last round
    the paper search's norm on the same weights and batches (``paper_rounds`` caches searches already made)."""
    rounds = sorted(recorder.weights)
    held_out = []
    for round_index in rounds:
        trainer.model.load_state_dict(recorder.weights[round_index])
        held_out.append(noise_influence(trainer.model, held, recorder.noises[round_index])["mse_prob"])
        if round_index in (rounds[0], rounds[-1]) and round_index not in paper_rounds:
            paper_rounds[round_index] = paper_search(trainer, round_index, held)
    norms = [record["norm"] for record in trainer.noise_history]
    return {"held_out_mse_prob": held_out,
            "paper": {str(r): paper_rounds[r] for r in (rounds[0], rounds[-1])},
            "ratio_to_paper": {str(r): norms[r] / paper_rounds[r]["norm"] for r in (rounds[0], rounds[-1])}}


def rounds_table(history: list[dict]) -> dict[str, list]:
    """Per-round columns of a ``noise_history`` (keys missing in older histories are None)."""
    keys = ("steps", "forward_steps", "start_mse_prob", "mse_prob", "norm", "rms", "budget_hit")
    return {key: [record.get(key) for record in history] for key in keys}


def run_setup(setup: Setup, args: argparse.Namespace) -> dict:
    """For each number of rounds: plain and default wall times (medians), every round's noise, its held-out
    distance and the paper search's norm on the same weights at the first and the last round."""
    checkpoint = prepare_checkpoint(setup, args)
    rows, data_name = load_rows(checkpoint, setup.data, args.samples)
    held_rows, _ = load_rows(checkpoint, setup.data, args.held_out, split="test")
    held = list(held_rows.pixel_values.split(64))
    result = {"description": setup.description, "checkpoint": checkpoint, "data": data_name, "samples": len(rows),
              "held_out_samples": len(held_rows), "batch_size": args.batch_size, "runs": {}}
    paper_rounds: dict[int, dict] = {}
    for rounds in args.rounds:
        run_args = argparse.Namespace(model=checkpoint, steps=rounds * REFRESH_STEPS, batch_size=args.batch_size,
                                      attn="sdpa", bf16=False, torch_compile=False)
        plain, defaults, measured = [], [], None
        for repeat in range(args.repeats):
            plain.append(timed_run("plain", run_args, rows, TMP)[0])
            trainer = build_trainer("nullspace", run_args, rows, TMP)
            if repeat == 0:
                measured = (trainer, RoundRecorder(trainer, REFRESH_STEPS))
                trainer.add_callback(measured[1])
            defaults.append(timed_train(trainer))
        result["noise_batch_size"] = measured[0].args.noise_batch_size
        result["noise_stop_batches"] = measured[0].args.noise_stop_batches
        run = {"plain_seconds": statistics.median(plain), "defaults_seconds": statistics.median(defaults),
               "plain_runs": plain, "defaults_runs": defaults, "rounds": rounds_table(measured[0].noise_history)}
        run["ratio"] = run["defaults_seconds"] / run["plain_seconds"]
        run.update(fidelity(*measured, held, paper_rounds))
        result["runs"][str(rounds)] = run
    return result


def _fmt(values: list, pattern: str) -> str:
    return "[" + ", ".join("–" if v is None else format(v, pattern) for v in values) + "]"


def report(name: str, setup: Setup, rounds: str, run: dict) -> str:
    """The printed block of one setup and number of rounds."""
    paper = "; ".join(f"round {r}: paper {p['norm']:.1f} in {p['steps']} steps (held-out {p['held_out_mse_prob']:.4f}),"
                      f" defaults/paper {run['ratio_to_paper'][r]:.2f}" for r, p in run["paper"].items())
    table = run["rounds"]
    return (f"\n{name} ({rounds} rounds): {setup.description}\n"
            f"  plain {run['plain_seconds']:.1f} s | defaults {run['defaults_seconds']:.1f} s | "
            f"ratio {run['ratio']:.2f}x\n"
            f"  gradient steps per round {table['steps']}\n"
            f"  forward-only passes      {table['forward_steps']}\n"
            f"  final mse_prob           {_fmt(table['mse_prob'], '.4f')}\n"
            f"  held-out mse_prob        {_fmt(run['held_out_mse_prob'], '.4f')}\n"
            f"  noise norm               {_fmt(table['norm'], '.1f')}\n"
            f"  noise RMS                {_fmt(table['rms'], '.3f')}\n"
            f"  budget hit               {table['budget_hit']}\n"
            f"  {paper}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setups", default=",".join(s.name for s in SETUPS), help="Comma-separated setup names.")
    parser.add_argument("--rounds", default="20,5", help="Comma-separated numbers of 40-step rounds to run.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs per setup and number of rounds (median).")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4096, help="Training images per setup (pre-processed once).")
    parser.add_argument("--held_out", type=int, default=512, help="Test images for the held-out mse_prob.")
    parser.add_argument("--pretrain_steps", type=int, default=300, help="Plain training of the digits models.")
    parser.add_argument("--cifar_model", default=str(ROOT / "outputs" / "reproduce_cifar10" / "pretrained"))
    parser.add_argument("--cache_dir", default=str(ROOT / "outputs" / "benchmark_models"))
    parser.add_argument("--json", help="Also write the measurements to this JSON file (updated after every setup).")
    parser.add_argument("--table", nargs="+", metavar="JSON", help="Only print the markdown table of these files.")
    args = parser.parse_args()
    if args.table:
        setups: dict = {}
        for path in args.table:  # the runs of one setup from several files are merged
            for name, result in json.loads(Path(path).read_text())["setups"].items():
                merged = setups.setdefault(name, {**result, "runs": {}})
                merged["runs"].update(result["runs"])
        print(markdown_table(setups))
        return
    args.rounds = [int(value) for value in args.rounds.split(",")]
    chosen = [setup for setup in SETUPS if setup.name in args.setups.split(",")]
    unknown = set(args.setups.split(",")) - {setup.name for setup in chosen}
    if unknown:
        parser.error(f"unknown setups {sorted(unknown)}; choose from {', '.join(s.name for s in SETUPS)}")
    if any(setup.data == "cifar10" for setup in chosen) and not (
            (CIFAR / "train.parquet").exists() and (Path(args.cifar_model) / "model.safetensors").exists()):
        print(f"skipping cifar10-vit: needs {CIFAR / 'train.parquet'} and {args.cifar_model}")
        chosen = [setup for setup in chosen if setup.data != "cifar10"]
    print(f"rounds {args.rounds} x {REFRESH_STEPS} steps, batch {args.batch_size}, median of {args.repeats}; "
          f"CPU threads {torch.get_num_threads()}")
    previous = json.loads(Path(args.json).read_text()) if args.json and Path(args.json).exists() else {}
    results = {"arguments": vars(args), "setups": previous.get("setups", {})}
    for setup in chosen:
        result = run_setup(setup, args)
        results["setups"][setup.name] = result
        for rounds, run in result["runs"].items():
            print(report(setup.name, setup, rounds, run), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print("\n" + markdown_table(results["setups"]))


def markdown_table(setups: dict) -> str:
    """One row per setup and number of rounds: cost, and the default noise against the paper's search."""
    lines = ["| setup | rounds × 40 | batch | plain (s) | defaults (s) | ratio "
             "| norm round 0: defaults / paper (ratio) | norm last round: defaults / paper (ratio) "
             "| gradient steps, all rounds | held-out mse_prob: defaults max / paper | budget hit |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, result in setups.items():
        for rounds, run in result.get("runs", {}).items():
            norms, (first, last) = run["rounds"]["norm"], run["paper"].values()
            held = " / ".join(f"{paper['held_out_mse_prob']:.3f}" for paper in (first, last))
            lines.append(
                f"| {name} | {rounds} | {result['batch_size']} | {run['plain_seconds']:.1f} | "
                f"{run['defaults_seconds']:.1f} | {run['ratio']:.2f}× | {norms[0]:.1f} / {first['norm']:.1f} "
                f"({norms[0] / first['norm']:.2f}) | {norms[-1]:.1f} / {last['norm']:.1f} "
                f"({norms[-1] / last['norm']:.2f}) "
                f"| {sum(run['rounds']['steps'])} | {max(run['held_out_mse_prob']):.3f} / {held} | "
                f"{sum(bool(hit) for hit in run['rounds']['budget_hit'])} of {len(norms)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
