"""Reproduce the paper's comparisons at CIFAR-10 scale: Tables 2–4 and Figures 3–5 (see docs/results.md).

    accelerate launch recipes/reproduce_cifar10.py                 # the full run (~1.5 h on 2 CPU cores)
    accelerate launch recipes/reproduce_cifar10.py --quick         # smoke run on a tiny subset (< 2 min)
    accelerate launch recipes/reproduce_cifar10.py --train_file my/train --test_file my/test --image_column image

Stages, each written under ``--output_dir`` and skipped when its result is already there (so an
interrupted run resumes where it stopped):

1. pretrain a small ViT from scratch (patch 8, width 128: nullity 3·8² − 128 = 64) — the "pretrained model";
2. fine-tune it, same steps and data, with every method (vanilla, random ε-noise, nullspace noise with the
   paper's schedule, fresh U(−1, 1) and the package defaults, Madry and TRADES PGD training) and seed, and
   the ε ablation (nullspace and random noise at each ε);
3. evaluate every model on the test set: clean, FGSM, PGD (``--eval_attacks``; add ``autoattack`` for the
   AutoAttack column, which a later invocation also adds to runs already evaluated), 19 corruptions × 5
   severities, on the fly or read from the released CIFAR-10-C (``--eval_corruption_source``) (mean
   corruption accuracy, and CE relative to the pretrained model);
4. measure Fig. 3 (learned vs. permuted noise), Fig. 4 (noise and metrics over rounds), Fig. 5 (α·v,
   α₁v₁ + α₂v₂) with ``nullspace_hf.analysis``;
5. write ``results.json``, ``results_tables.md`` and the figures to ``--report_dir``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from datasets import Dataset
from transformers import AutoImageProcessor, HfArgumentParser, TrainingArguments, ViTForImageClassification, set_seed

from nullspace_hf import NullspaceConfig, NullspaceTrainer
from nullspace_hf.adversarial import AdversarialConfig, AdversarialTrainer
from nullspace_hf.analysis import combination_grid, noise_set, regularization_sweep, scaling_curve
from nullspace_hf.callbacks import RoundMetricsCallback
from nullspace_hf.data import (
    ImageClassificationTransform,
    check_image_classification_columns,
    collate_image_classification,
    load_split,
)
from nullspace_hf.errors import NullspaceError
from nullspace_hf.evaluation import RobustnessReport, evaluate_robustness
from nullspace_hf.evaluation.metrics import mean_corruption_error
from nullspace_hf.parsing import run_command
from nullspace_hf.plots import plot_noise_combinations, plot_noise_dynamics, plot_regularization_sweep
from nullspace_hf.scripts.pretrain import PretrainArguments, pretrain

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10"
METHODS = ("vanilla", "random", "nullspace", "nullspace_a1", "nullspace_fast", "madry", "trades")
METHOD_LABELS = {"vanilla": "Vanilla fine-tuning", "random": "Random ε-noise",
                 "nullspace": "Nullspace (paper schedule: fresh U(−3, 3) each round)",
                 "nullspace_a1": "Nullspace (fresh U(−1, 1) each round)",
                 "nullspace_fast": "Nullspace (package defaults: token-scaled search on minibatches of 8, fresh "
                                   "U(−3, 3) each round)",
                 "madry": "Madry (PGD)", "trades": "TRADES"}
NOISE_METHODS = ("random", "nullspace", "nullspace_a1", "nullspace_fast")
VARIANT_SETTINGS = ("noise_train_scale", "noisy_loss", "noisy_kl_weight", "noise_bank_size", "noise_random_scale")
MAIN_EPS = 0.03
PROTOCOLS = ("plain", "paper")
NORMALIZATIONS = ("pretrained", "imagenet")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# The authors' augmentation (Liu-Hy/easyrobust, examples/imageclassification/imagenet/dat/main.py), as NullspaceConfig
# fields; kornia's versions of them (docs/trainer.md says where they differ from timm's).
PAPER_AUGMENTATION = {"crop_min_scale": 0.08, "horizontal_flip_prob": 0.5, "rand_augment_ops": 2,
                      "rand_augment_magnitude": 9.0, "random_erasing_prob": 0.25, "mixup_prob": 1.0,
                      "mixup_switch_prob": 0.5, "label_smoothing_factor": 0.1}
PAPER_SCHEDULE = {"learning_rate": 1e-5, "finetune_steps": 800,
                  "methods": ",".join(m for m in METHODS if m not in ("madry", "trades"))}


@dataclass
class ReproduceArguments:
    """Data, model shape, budgets and output of the reproduction; ``--quick`` shrinks all of them."""

    train_file: str = field(default=str(DEFAULT_DATA / "train.parquet"),
                            metadata={"help": "Training images: a parquet file or an imagefolder directory."})
    test_file: str = field(default=str(DEFAULT_DATA / "test.parquet"),
                           metadata={"help": "Test images: a parquet file or an imagefolder directory."})
    image_column: str = field(default="img", metadata={"help": "Column of images."})
    label_column: str = field(default="label", metadata={"help": "Column of class indices."})
    output_dir: str = field(default="outputs/reproduce_cifar10", metadata={"help": "Models and per-run results."})
    report_dir: str | None = field(default=None, metadata={
        "help": "Where results.json, results_tables.md and the figures go (default: <output_dir>/report)."})
    quick: bool = field(default=False, metadata={
        "help": "Smoke run: tiny subsets, few steps, one seed (flags given beside it keep their values)."})
    seeds: str = field(default="0,1,2", metadata={"help": "Fine-tuning seeds."})
    methods: str = field(default=",".join(METHODS), metadata={"help": f"Comma-separated, from {', '.join(METHODS)}."})
    ablation_eps: str = field(default="0.01,0.1", metadata={"help": "ε values of Table 4 besides 0.03 ('none')."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training images."})
    pretrain_epochs: float = field(default=8.0, metadata={"help": "Epochs of pretraining from scratch."})
    patch_size: int = field(default=8, metadata={"help": "ViT patch size r."})
    hidden_size: int = field(default=128, metadata={"help": "ViT width d (nullity 3·r² − d)."})
    num_hidden_layers: int = field(default=6, metadata={"help": "ViT depth."})
    finetune_steps: int = field(default=240, metadata={"help": "Optimizer steps of every fine-tuning run."})
    batch_size: int = field(default=64, metadata={"help": "Fine-tuning batch size (also the synthesis batch)."})
    learning_rate: float = field(default=3e-4, metadata={"help": "Fine-tuning learning rate (AdamW, cosine)."})
    noise_refresh_steps: int = field(default=40, metadata={"help": "Steps between noise syntheses."})
    noise_max_steps: int = field(default=3000, metadata={
        "help": "Synthesis budget of the fresh-start schedules (nullspace, nullspace_a1; the package defaults keep "
                "theirs)."})
    adversarial_epsilon: float = field(default=1 / 255, metadata={"help": "L∞ budget of Madry/TRADES training."})
    adversarial_steps: int = field(default=3, metadata={"help": "PGD steps per batch in Madry/TRADES training."})
    eval_samples: int = field(default=1000, metadata={"help": "Test images of the robustness evaluation."})
    eval_severities: str = field(default="1,2,3,4,5", metadata={"help": "Corruption severities."})
    eval_attacks: str = field(default="fgsm,pgd", metadata={
        "help": "Attacks of the robustness evaluation (comma-separated, ε = 1/255); 'fgsm,pgd,autoattack' adds the "
                "AutoAttack column, also to the runs of an earlier invocation (only the missing attack is run)."})
    eval_corruption_source: str | None = field(default=None, metadata={
        "help": "The released CIFAR-10-C folder (<corruption>.npy, labels.npy) to read instead of corrupting on the "
                "fly; its first eval_samples images per corruption and severity are used."})
    eval_corruption_workers: int = field(default=0, metadata={
        "help": "Worker processes that corrupt (or read) images during the evaluations."})
    round_eval_samples: int = field(default=500, metadata={"help": "Test images of Fig. 4's per-round metrics."})
    analysis_noises: int = field(default=8, metadata={"help": "Fig. 5: m noises from different initialisations."})
    analysis_pairs: int = field(default=4, metadata={"help": "Fig. 5: n pairs of noises in the heat-map."})
    analysis_samples: int = field(default=256, metadata={"help": "Test images that measure noise influence."})
    analysis_steps: int = field(default=600, metadata={"help": "Fig. 3: synthesis steps per regularisation."})
    regularization_strengths: str = field(default="0,1,10,100", metadata={"help": "Fig. 3: λ values of Eq. 4."})
    analysis: bool = field(default=True, metadata={
        "help": "Measure and draw Fig. 3 and Fig. 5 on the pretrained model (false: the method tables and Fig. 4 "
                "only)."})
    protocol: str = field(default="plain", metadata={
        "help": "'plain': hard-label CE, no augmentation. 'paper': the authors' fine-tuning protocol transferred "
                "(RandomResizedCrop 0.08-1, flip, RandAugment n=2 m=9, random erasing 0.25, mixup/cutmix with soft "
                "targets in both CE terms, label smoothing 0.1; learning rate 1e-5, 800 steps and the noise methods "
                "unless given)."})
    normalization: str = field(default="pretrained", metadata={
        "help": "'pretrained': fine-tune and evaluate with the normalisation the model was pretrained with; "
                "'imagenet': with ImageNet's mean/std instead (the mismatch of the paper's ViT-S/B rows)."})
    pretrained_dir: str | None = field(default=None, metadata={
        "help": "Fine-tune this pretrained model instead of pretraining one in <output_dir>/pretrained."})
    pretrain_augment: bool = field(default=False, metadata={
        "help": "Pretrain with RandomResizedCrop (area 0.35-1) and horizontal flips (a stronger pretrained model)."})
    noise_variant: str = field(default="", metadata={
        "help": "A variant of Eq. 6 (issue 26) for every noise method (random and nullspace*, so that each has its "
                f"random-noise control): comma-separated settings from {', '.join(VARIANT_SETTINGS)}, e.g. "
                "'noise_train_scale=4,noisy_loss=kl'. Its runs are cached under their own names."})

    def __post_init__(self) -> None:
        if self.quick:
            quick = {"seeds": "0", "max_train_samples": 256, "pretrain_epochs": 1.0, "finetune_steps": 4,
                     "batch_size": 16, "noise_refresh_steps": 2, "noise_max_steps": 20, "adversarial_steps": 1,
                     "eval_samples": 32, "eval_severities": "1", "round_eval_samples": 16, "analysis_noises": 2,
                     "analysis_pairs": 1, "analysis_samples": 16, "analysis_steps": 5,
                     "regularization_strengths": "0,1", "ablation_eps": "0.1"}
            self._set_unless_given(quick)
        if self.protocol == "paper":
            self._set_unless_given(PAPER_SCHEDULE)
        if self.protocol not in PROTOCOLS or self.normalization not in NORMALIZATIONS:
            raise NullspaceError(f"--protocol is one of {PROTOCOLS} and --normalization one of {NORMALIZATIONS}.")
        if self.protocol == "paper" and {"madry", "trades"} & set(self.method_list):
            raise NullspaceError("--protocol paper applies to the noise methods (vanilla, random, nullspace*): drop "
                                 "madry "
                                 "and trades from --methods.")
        if self.pretrained_dir and not (Path(self.pretrained_dir) / "config.json").is_file():
            raise NullspaceError(f"--pretrained_dir {self.pretrained_dir} holds no saved model (no config.json).")
        self.variant_settings = self._parsed_variant()  # checked before any work
        unknown = sorted(set(self.method_list) - set(METHODS))
        if unknown:
            raise NullspaceError(f"Unknown methods {unknown}: choose from {', '.join(METHODS)}.")
        for name in ("train_file", "test_file"):
            if not Path(getattr(self, name)).exists():
                raise NullspaceError(f"--{name} {getattr(self, name)} does not exist: pass a parquet file or an "
                                     "imagefolder directory.")

    def _set_unless_given(self, values: dict[str, Any]) -> None:
        """Set each of ``values`` whose argument still has its default: flags given beside --quick or
        --protocol paper win."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name, value in values.items():
            if getattr(self, name) == defaults[name]:
                setattr(self, name, value)

    def _parsed_variant(self) -> dict[str, Any]:
        """``--noise_variant`` as NullspaceConfig settings (each converted to its field's type)."""
        types = {f.name: f.type for f in dataclasses.fields(NullspaceConfig) if f.name in VARIANT_SETTINGS}
        settings: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in self.noise_variant.split(","))):
            name, _, text = item.partition("=")
            name = name.strip()
            if name not in types or not text:
                raise NullspaceError(f"--noise_variant {item!r}: give name=value with a name from "
                                     f"{', '.join(VARIANT_SETTINGS)}.")
            kind = getattr(types[name], "__name__", types[name])  # the class, or its name under postponed annotations
            try:
                settings[name] = (text.strip().lower() in ("1", "true", "yes") if kind == "bool"
                                  else int(text) if kind == "int" else float(text) if kind == "float"
                                  else text.strip())
            except ValueError as error:
                raise NullspaceError(f"--noise_variant {item!r}: {name} takes a value of type {kind}, got "
                                     f"{text!r}.") from error
        return settings

    @property
    def variant_tag(self) -> str:
        """The variant in run names: ``noise_train_scale=4,noisy_loss=kl`` → ``noise_train_scale4-noisy_losskl``."""
        return "-".join(f"{name}{value}" for name, value in self.variant_settings.items()).replace("+", "_")

    @property
    def method_list(self) -> list[str]:
        return [m.strip() for m in self.methods.split(",") if m.strip()]

    @property
    def seed_list(self) -> list[int]:
        return [int(s) for s in self.seeds.split(",") if s.strip()]

    @property
    def attack_list(self) -> tuple[str, ...]:
        return tuple(a.strip() for a in self.eval_attacks.split(",") if a.strip())

    @property
    def severity_list(self) -> list[int]:
        return [int(s) for s in self.eval_severities.split(",")]

    @property
    def eps_list(self) -> list[float]:
        extra = [] if self.ablation_eps.strip().lower() == "none" else [float(e) for e in self.ablation_eps.split(",")]
        return sorted({MAIN_EPS, *extra})


@dataclass(frozen=True)
class RunSpec:
    """One fine-tuning run."""

    method: str
    eps: float
    seed: int
    variant: str = ""

    @property
    def name(self) -> str:
        return f"{self.method}-eps{self.eps:g}-seed{self.seed}" + (f"-{self.variant}" if self.variant else "")


def _spec(method: str, eps: float, seed: int, args: ReproduceArguments) -> RunSpec:
    """A run of ``method``, tagged with ``--noise_variant`` when that applies to it (every noise method)."""
    return RunSpec(method, eps, seed, args.variant_tag if method in NOISE_METHODS else "")


def plan_runs(args: ReproduceArguments) -> list[RunSpec]:
    """Every method at ε = 0.03 for each seed, then nullspace and random noise at the other ε values."""
    runs = [_spec(method, MAIN_EPS, seed, args) for seed in args.seed_list for method in args.method_list]
    for eps in args.eps_list:
        if eps != MAIN_EPS:
            runs += [_spec(method, eps, seed, args) for seed in args.seed_list for method in ("nullspace", "random")
                     if method in args.method_list]
    return runs


# ---- data and models ----

def _load_split(path: str, args: ReproduceArguments) -> tuple[Dataset, list[str]]:
    """One parquet file or image folder, checked, with its class names."""
    split = load_split(path, "train")
    return split, check_image_classification_columns(split, args.image_column, args.label_column)


def load_splits(args: ReproduceArguments) -> tuple[Dataset, Dataset, list[str]]:
    """Train and test sets (the train set cut to ``max_train_samples``) and the class names."""
    (train, names), (test, _) = _load_split(args.train_file, args), _load_split(args.test_file, args)
    if args.max_train_samples is not None:
        train = train.select(range(min(args.max_train_samples, len(train))))
    return train, test, names


def ensure_pretrained(args: ReproduceArguments, train: Dataset, test: Dataset, names: list[str]) -> Path:
    """Stage 1: the pretrained ViT (``--pretrained_dir``, or reused when ``<output_dir>/pretrained`` holds one)."""
    if args.pretrained_dir:
        return Path(args.pretrained_dir)
    directory = Path(args.output_dir) / "pretrained"
    if (directory / "model.safetensors").is_file():
        return directory
    shape = PretrainArguments(image_column=args.image_column, label_column=args.label_column, image_size=32,
                              patch_size=args.patch_size, hidden_size=args.hidden_size,
                              num_hidden_layers=args.num_hidden_layers, num_attention_heads=4,
                              intermediate_size=2 * args.hidden_size)
    augment = {"crop_min_scale": 0.35, "horizontal_flip_prob": 0.5} if args.pretrain_augment else {}
    training = NullspaceConfig(
        noise_mode="none", **augment,
        output_dir=str(directory), num_train_epochs=args.pretrain_epochs, per_device_train_batch_size=128,
        learning_rate=1e-3, weight_decay=0.05, warmup_steps=0 if args.quick else 200, lr_scheduler_type="cosine",
        eval_strategy="no", save_strategy="no", logging_steps=100, remove_unused_columns=False, report_to="none",
        seed=0, disable_tqdm=True, overwrite_output_dir=True)  # stage 1 runs only when no pretrained model is there
    started = time.perf_counter()
    metrics = pretrain(train, test, names, shape, training)
    _write_json(directory / "pretrain_metrics.json", {**metrics, "seconds": time.perf_counter() - started})
    return directory


def _training_config(spec: RunSpec, args: ReproduceArguments, output_dir: Path) -> TrainingArguments:
    common = {"output_dir": str(output_dir), "max_steps": args.finetune_steps,
              "per_device_train_batch_size": args.batch_size, "learning_rate": args.learning_rate,
              "lr_scheduler_type": "cosine", "weight_decay": 0.05, "logging_steps": 20, "save_strategy": "no",
              "report_to": "none", "seed": spec.seed, "remove_unused_columns": False, "disable_tqdm": True,
              "overwrite_output_dir": True}  # only unfinished runs are redone
    if spec.method in ("madry", "trades"):
        return AdversarialConfig(adversarial_method=spec.method, adversarial_epsilon=args.adversarial_epsilon,
                                 adversarial_steps=args.adversarial_steps, **common)
    fresh = {"noise_mode": "nullspace", "noise_warm_start": False, "noise_max_steps": args.noise_max_steps,
             "noise_token_lr": 0.0, "noise_batch_size": 0, "noise_stop_batches": 1}
    noise = {"vanilla": {"noise_mode": "none"}, "random": {"noise_mode": "random"},
             "nullspace": {**fresh, "noise_init_limit": 3.0},
             "nullspace_a1": {**fresh, "noise_init_limit": 1.0},
             "nullspace_fast": {"noise_mode": "nullspace"}}
    augmentation = PAPER_AUGMENTATION if args.protocol == "paper" else {}
    variant = args.variant_settings if spec.method in NOISE_METHODS else {}
    return NullspaceConfig(noise_eps=spec.eps, noise_refresh_steps=args.noise_refresh_steps, **noise[spec.method],
                           **variant, **augmentation, **common)


def load_processor(pretrained: Path, args: ReproduceArguments) -> Any:
    """The pretrained model's image processor, with ImageNet's mean/std under ``--normalization imagenet``."""
    processor = AutoImageProcessor.from_pretrained(pretrained)
    if args.normalization == "imagenet":
        processor.image_mean, processor.image_std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    return processor


def _robustness(model: torch.nn.Module, processor: Any, test: Dataset, args: ReproduceArguments, *,
                severities: list[int], attacks: tuple[str, ...] | None = None, corruptions: str = "all",
                corruption_source: str | None = None) -> dict[str, Any]:
    return evaluate_robustness(
        model, test, image_processor=processor, attacks=args.attack_list if attacks is None else attacks,
        corruptions=corruptions, severities=severities, corruption_source=corruption_source,
        max_corruption_samples=args.eval_samples, corruption_workers=args.eval_corruption_workers, batch_size=250,
        seed=0, image_column=args.image_column, label_column=args.label_column,
        cache_dir=Path(args.output_dir) / "corruption_cache", dataset_name="cifar10", progress=False).to_dict()


def add_missing_attacks(report: dict[str, Any], load_model, processor: Any, test: Dataset,
                        args: ReproduceArguments) -> bool:
    """Evaluate the ``--eval_attacks`` a cached report lacks (e.g. ``autoattack`` added later) and merge them in.

    Returns:
        Whether the report changed (and should be written back).
    """
    missing = tuple(name for name in args.attack_list if name not in report["attacks"])
    if not missing:
        return False
    added = _robustness(load_model(), processor, test, args, severities=args.severity_list, attacks=missing,
                        corruptions="none")
    merged = RobustnessReport.from_dict(report)
    merged.attacks.update(added["attacks"])
    report.clear()
    report.update(merged.to_dict())
    return True


def _round_metrics(processor: Any, test: Dataset, args: ReproduceArguments):
    """Fig. 4's measure: clean, FGSM and mean corruption accuracy at severity 3 on a test subset."""
    subset = test.select(range(min(args.round_eval_samples, len(test))))

    def measure(model: torch.nn.Module) -> dict[str, float]:
        return _robustness(model, processor, subset, args, severities=[3], attacks=("fgsm",))["summary"]

    return measure


def finetune_and_evaluate(spec: RunSpec, args: ReproduceArguments, pretrained: Path, train: Dataset,
                          test: Dataset) -> dict[str, Any]:
    """Stages 2 and 3 for one run: fine-tune from the pretrained model, then evaluate on the test set."""
    run_dir = Path(args.output_dir) / "runs" / spec.name
    set_seed(spec.seed)
    processor = load_processor(pretrained, args)
    model = ViTForImageClassification.from_pretrained(pretrained)
    transform = ImageClassificationTransform(processor, args.image_column, args.label_column)
    config = _training_config(spec, args, run_dir)
    trainer_class = AdversarialTrainer if isinstance(config, AdversarialConfig) else NullspaceTrainer
    trainer = trainer_class(model=model, args=config, train_dataset=train.with_transform(transform),
                            data_collator=collate_image_classification, processing_class=processor)
    tracker = None
    if spec.seed == args.seed_list[0] and spec.eps == MAIN_EPS and spec.method in ("vanilla", "nullspace"):
        tracker = RoundMetricsCallback(_round_metrics(processor, test, args), args.noise_refresh_steps)
        trainer.add_callback(tracker)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started - (tracker.seconds if tracker else 0.0)  # Fig. 4's measurements aside
    trainer.save_model()
    return {"method": spec.method, "eps": spec.eps, "seed": spec.seed, "variant": spec.variant,
            "train_seconds": seconds,
            "report": _robustness(trainer.model, processor, test, args, severities=args.severity_list,
                                  corruption_source=args.eval_corruption_source),
            "noise_history": getattr(trainer, "noise_history", []),
            "rounds": tracker.records if tracker else [], "final_loss": trainer.state.log_history[-1].get("train_loss")}


# ---- analysis (Fig. 3 and Fig. 5) on the pretrained model ----

def _pixel_batches(processor: Any, dataset: Dataset, args: ReproduceArguments, size: int) -> list[torch.Tensor]:
    transform = ImageClassificationTransform(processor, args.image_column, args.label_column)
    return list(transform(dataset[:len(dataset)])["pixel_values"].split(size))


def analysis_inputs(args: ReproduceArguments, pretrained: Path, train: Dataset, test: Dataset):
    """The pretrained model, 8 training minibatches for the noise searches and held-out test batches."""
    processor = load_processor(pretrained, args)
    model = ViTForImageClassification.from_pretrained(pretrained)
    synthesis = _pixel_batches(processor, train.shuffle(seed=0).select(range(min(len(train), 8 * args.batch_size))),
                               args, args.batch_size)
    held_out = _pixel_batches(processor, test.select(range(min(len(test), args.analysis_samples))), args, 256)
    return model, synthesis, held_out


def measure_fig3(args: ReproduceArguments, inputs) -> list[dict[str, float]]:
    """Fig. 3: learned vs. permuted noise at each regularisation strength, on the pretrained model."""
    model, synthesis, held_out = inputs
    strengths = [float(s) for s in args.regularization_strengths.split(",")]
    return regularization_sweep(model, synthesis, held_out, strengths, steps=args.analysis_steps)


def measure_fig5(args: ReproduceArguments, inputs) -> dict[str, Any]:
    """Fig. 5: m noises inside ε = 0.033, their scalar multiples and pairwise combinations (held-out images)."""
    model, synthesis, held_out = inputs
    noises = noise_set(model, synthesis, args.analysis_noises, eps=0.033, max_steps=args.noise_max_steps)
    vectors = [result.noise for result in noises]
    alphas = [round(0.25 * i, 2) for i in range(13)]
    grid_alphas = [round(0.1 * i, 1) for i in range(11)] if not args.quick else [0.0, 0.5, 1.0]
    generator = torch.Generator().manual_seed(0)
    pairs = [tuple(vectors[i] for i in torch.randperm(len(vectors), generator=generator)[:2].tolist())
             for _ in range(args.analysis_pairs)]
    return {"eps": 0.033, "noises": [result.as_dict() for result in noises], "alphas": alphas,
            "scaling": scaling_curve(model, held_out, vectors, alphas), "grid_alphas": grid_alphas,
            "grid": combination_grid(model, held_out, pairs, grid_alphas).tolist()}


# ---- tables ----

def relative_ce(report: dict[str, Any], reference: dict[str, Any]) -> float | None:
    """Mean over corruptions of Σ_s error / Σ_s error of the pretrained model (×100), as ImageNet-C's mCE."""
    def errors(rep: dict[str, Any]) -> dict[str, dict[int, float]]:
        return {c: {int(s): 1 - a / 100 for s, a in by.items()} for c, by in rep["corruptions"].items()}

    ces, _ = mean_corruption_error(errors(report), errors(reference))
    return 100 * sum(ces.values()) / len(ces) if ces else None


def run_metrics(result: dict[str, Any], reference: dict[str, Any]) -> dict[str, float]:
    """The table columns of one run."""
    summary = RobustnessReport.from_dict(result["report"]).summary()
    history = result.get("noise_history") or []
    return {"clean": summary["clean"], "fgsm": summary.get("fgsm", math.nan), "pgd": summary.get("pgd", math.nan),
            "autoattack": summary.get("autoattack", math.nan), "corruption": summary.get("corruption", math.nan),
            "rel_ce": relative_ce(result["report"], reference) or math.nan, "train_seconds": result["train_seconds"],
            "noise_norm": sum(r["norm"] for r in history) / len(history) if history else math.nan,
            "synthesis_steps": sum(r["steps"] for r in history) / len(history) if history else math.nan}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def aggregate(results: dict[str, dict[str, Any]], reference: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per (method, ε): mean and std over seeds of every column, and the seeds used."""
    groups: dict[str, list[dict[str, float]]] = {}
    for result in results.values():
        groups.setdefault(f"{result['method']}@{result['eps']:g}", []).append(run_metrics(result, reference))
    table = {}
    for key, rows in groups.items():
        table[key] = {"n": len(rows), **{column: mean_std([row[column] for row in rows]) for column in rows[0]}}
    return table


def paired_differences(results: dict[str, dict[str, Any]], reference: dict[str, Any],
                       baseline: str = "vanilla") -> dict[str, dict[str, Any]]:
    """Effect sizes at ε = 0.03: per method, mean ± sd over seeds of (method − ``baseline`` of the same seed)
    and of (method − the pretrained model), for every accuracy column."""
    reference_row = run_metrics({"report": reference, "train_seconds": math.nan}, reference)
    rows = {(r["method"], r["eps"], r["seed"]): run_metrics(r, reference) for r in results.values()}
    effects: dict[str, dict[str, list[dict[str, float]]]] = {}
    for (method, eps, seed), row in rows.items():
        if eps != MAIN_EPS:
            continue
        versus = effects.setdefault(method, {"pretrained": [], baseline: []})
        versus["pretrained"].append({k: row[k] - reference_row[k] for k, _ in EFFECT_COLUMNS})
        base = rows.get((baseline, MAIN_EPS, seed))
        if base is not None and method != baseline:
            versus[baseline].append({k: row[k] - base[k] for k, _ in EFFECT_COLUMNS})
    return {method: {against: {"n": len(diffs), **{k: mean_std([d[k] for d in diffs]) for k, _ in EFFECT_COLUMNS}}
                     for against, diffs in versus.items() if diffs}
            for method, versus in effects.items()}


def effect_table(effects: dict[str, dict[str, Any]], methods: list[str], baseline: str = "vanilla") -> str:
    """Markdown: each method's change against the pretrained model and against ``baseline`` (same seeds)."""
    header = "| Method | versus | " + " | ".join(label for _, label in EFFECT_COLUMNS) + " | seeds |"
    lines = ["### Effect sizes (ε = 0.03; differences in points, mean ± sd over seeds, paired by seed)", "", header,
             "|---" * (len(EFFECT_COLUMNS) + 3) + "|"]
    for method in methods:
        for against in ("pretrained", baseline):
            row = effects.get(method, {}).get(against)
            if row:
                lines.append(f"| {METHOD_LABELS[method]} | {against} | "
                             + " | ".join(_signed(row[k], row["n"]) for k, _ in EFFECT_COLUMNS) + f" | {row['n']} |")
    return "\n".join(lines) + "\n"


def _signed(value: tuple[float, float], n: int) -> str:
    mean, std = value
    if math.isnan(mean):
        return "–"
    return f"{mean:+.2f} ± {std:.2f}" if n > 1 else f"{mean:+.2f}"


EFFECT_COLUMNS = (("clean", "Clean"), ("fgsm", "FGSM"), ("pgd", "PGD"), ("autoattack", "AutoAttack"),
                  ("corruption", "Corruption acc."), ("rel_ce", "Rel. CE (↓)"))
COLUMNS = (("clean", "Clean"), ("fgsm", "FGSM"), ("pgd", "PGD"), ("autoattack", "AutoAttack"),
           ("corruption", "Corruption acc."),
           ("rel_ce", "Rel. CE (↓)"), ("train_seconds", "Train time (s)"))


def _cell(value: tuple[float, float], n: int) -> str:
    mean, std = value
    if math.isnan(mean):
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


def markdown_tables(table: dict[str, dict[str, Any]], reference_row: dict[str, float], methods: list[str],
                    eps_values: list[float]) -> str:
    """Table 3 layout (every method at ε = 0.03, the pretrained model first) and Table 4 (ε × noise)."""
    header = "| Method | " + " | ".join(label for _, label in COLUMNS) + " | seeds |"
    rule = "|---" * (len(COLUMNS) + 2) + "|"
    lines = ["### Methods (ε = 0.03 for the noise methods; Table 2/3 layout)", "", header, rule,
             "| Pretrained (before fine-tuning) | " + " | ".join(
                 "–" if key == "train_seconds" else _cell((reference_row[key], 0.0), 1) for key, _ in COLUMNS)
             + " | – |"]
    for method in methods:
        row = table.get(f"{method}@{MAIN_EPS:g}")
        if row:
            lines.append(f"| {METHOD_LABELS[method]} | " + " | ".join(_cell(row[k], row["n"]) for k, _ in COLUMNS)
                         + f" | {row['n']} |")
    labels = " | ".join(label for _, label in COLUMNS)
    lines += ["", "### ε ablation (Table 4 layout)", "",
              f"| ε | Fine-tuning | {labels} | noise norm | synthesis steps / round | seeds |",
              "|---" * (len(COLUMNS) + 5) + "|"]
    for eps in eps_values:
        for method in ("nullspace", "random"):
            row = table.get(f"{method}@{eps:g}")
            if row:
                lines.append(f"| {eps:g} | {method} | " + " | ".join(_cell(row[k], row["n"]) for k, _ in COLUMNS)
                             + f" | {_cell(row['noise_norm'], row['n'])} | {_cell(row['synthesis_steps'], row['n'])}"
                             + f" | {row['n']} |")
    return "\n".join(lines) + "\n"


# ---- driver ----

def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _cached(path: Path, compute) -> Any:
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    value = compute()
    _write_json(path, value)
    return value


# The arguments that shape a cached result: a later invocation must give the same ones for the same output_dir.
RUN_SETTINGS = ("protocol", "normalization", "pretrained_dir", "pretrain_augment", "pretrain_epochs", "patch_size",
                "hidden_size", "num_hidden_layers", "max_train_samples", "finetune_steps", "batch_size",
                "learning_rate", "noise_refresh_steps", "noise_max_steps", "adversarial_epsilon", "adversarial_steps",
                "eval_samples", "eval_severities", "eval_corruption_source", "train_file", "test_file")


def check_settings(args: ReproduceArguments) -> None:
    """Record the run-shaping arguments in ``<output_dir>/settings.json``, or refuse ones that differ from them.

    Results are cached by run name (method, ε, seed) only, so reusing an output directory with another
    protocol, normalisation or budget would silently mix results of different experiments.
    """
    path = Path(args.output_dir) / "settings.json"
    current = {name: getattr(args, name) for name in RUN_SETTINGS}
    for name in ("pretrained_dir", "train_file", "test_file"):  # the same file, whichever folder it is named from
        current[name] = str(Path(current[name]).resolve()) if current[name] else None
    if path.is_file():
        recorded = json.loads(path.read_text(encoding="utf-8"))
        changed = [f"--{k} {recorded[k]!r} (now {current[k]!r})" for k in RUN_SETTINGS
                   if k in recorded and recorded[k] != current[k]]
        if changed:
            raise NullspaceError(f"{args.output_dir} holds results made with {', '.join(changed)}: pass those values "
                                 "to add to it, or another --output_dir for a new experiment.")
    _write_json(path, current)


def main(args: ReproduceArguments) -> dict[str, Any]:
    """Run every stage that has no result yet; write the report. Returns the aggregated results."""
    if PartialState().num_processes > 1:
        raise NullspaceError("reproduce_cifar10.py runs its many small jobs in one process: launch it without "
                             "--num_processes (the fine-tuning recipe itself scales to several processes).")
    started = time.perf_counter()
    check_settings(args)
    output = Path(args.output_dir)
    report_dir = Path(args.report_dir) if args.report_dir else output / "report"
    train, test, names = load_splits(args)
    pretrained = ensure_pretrained(args, train, test, names)
    test = test.select(range(min(args.eval_samples, len(test))))
    processor = load_processor(pretrained, args)

    def reference_report() -> dict[str, Any]:
        return _robustness(ViTForImageClassification.from_pretrained(pretrained), processor, test, args,
                           severities=args.severity_list, corruption_source=args.eval_corruption_source)

    reference = _cached(output / "pretrained_results.json", reference_report)
    if add_missing_attacks(reference, lambda: ViTForImageClassification.from_pretrained(pretrained), processor, test,
                           args):
        _write_json(output / "pretrained_results.json", reference)
    results = {}
    for spec in plan_runs(args):
        print(f"[reproduce] {spec.name}", flush=True)
        run_dir = output / "runs" / spec.name
        results[spec.name] = _cached(run_dir / "run_results.json",
                                     lambda spec=spec: finetune_and_evaluate(spec, args, pretrained, train, test))
        if add_missing_attacks(results[spec.name]["report"],
                               lambda run_dir=run_dir: ViTForImageClassification.from_pretrained(run_dir), processor,
                               test, args):
            _write_json(run_dir / "run_results.json", results[spec.name])
    inputs = functools.cache(lambda: analysis_inputs(args, pretrained, train, test))  # loaded once, if needed
    analysis = {"fig3": _cached(output / "analysis_fig3.json", lambda: measure_fig3(args, inputs())),
                "fig5": _cached(output / "analysis_fig5.json", lambda: measure_fig5(args, inputs()))} \
        if args.analysis else {}

    table = aggregate(results, reference)
    effects = paired_differences(results, reference)
    reference_row = run_metrics({"report": reference, "train_seconds": math.nan}, reference)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "results_tables.md").write_text(
        markdown_tables(table, reference_row, args.method_list, args.eps_list) + "\n"
        + effect_table(effects, args.method_list), encoding="utf-8")
    if analysis:
        plot_regularization_sweep(analysis["fig3"], report_dir / "fig3_learned_vs_permuted.png")
        fig5 = analysis["fig5"]
        plot_noise_combinations(fig5["alphas"], fig5["scaling"], fig5["grid_alphas"], fig5["grid"],
                                report_dir / "fig5_scaling_and_combination.png", eps=fig5["eps"],
                                num_noises=len(fig5["noises"]))
    first_seed = args.seed_list[0]
    nullspace_run = results.get(_spec("nullspace", MAIN_EPS, first_seed, args).name)
    if nullspace_run:
        runs = (nullspace_run, results.get(_spec("vanilla", MAIN_EPS, first_seed, args).name))
        plot_noise_dynamics(nullspace_run["noise_history"], report_dir / "fig4_rounds.png", eps=MAIN_EPS,
                            round_metrics={run["method"]: run["rounds"] for run in runs if run})
    pretrain_metrics = json.loads((pretrained / "pretrain_metrics.json").read_text()) \
        if (pretrained / "pretrain_metrics.json").is_file() else {}
    summary = {"arguments": dataclasses.asdict(args), "pretrained": {"metrics": pretrain_metrics, **reference_row},
               "table": table, "effects": effects,
               "runs": {name: run_metrics(result, reference) for name, result in results.items()},
               "analysis": analysis, "seconds_this_invocation": time.perf_counter() - started}
    _write_json(report_dir / "results.json", summary)
    print((report_dir / "results_tables.md").read_text(encoding="utf-8"))
    print(f"[reproduce] wrote {report_dir} in {summary['seconds_this_invocation']:.0f} s")
    return summary


def cli(argv: list[str]) -> int:
    """Parse the arguments and run; bad input ends with one line on stderr and exit status 2."""
    return run_command("reproduce_cifar10.py",
                       lambda: main(*HfArgumentParser(ReproduceArguments).parse_args_into_dataclasses(argv)))


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
