"""Fine-tune a ViT with approximate-nullspace noise (Algorithm 1), evaluate it before and after, publish it.

    nullspace-hf finetune                          # the embedded default (digits, < 5 min), through accelerate
    nullspace-hf finetune --config recipes/configs/cifar10.yaml --num_processes 2
    accelerate launch recipes/finetune.py --model_name_or_path google/vit-base-patch16-224 \
        --dataset_name imagenet-1k --max_train_samples 0.1 --push_to_hub --hub_model_id user/vit-b16-nullspace
    python -m nullspace_hf.scripts.finetune        # in this process, without accelerate (also recipes/finetune.py)

`nullspace-hf finetune` starts the job through `accelerate launch`, so the user's `accelerate config`
applies; the flags the job does not know (`--num_processes`, `--config_file`, `--mixed_precision`, ...)
go to `accelerate launch`. `recipes/finetune.py` and `python -m nullspace_hf.scripts.finetune` run it in
the process they are started in (under `accelerate launch` or torchrun when these start them).

Without `--config` the job starts from the embedded default (`embedded/digits.yaml` beside this file:
the tiny ViT in `embedded/vit-tiny-digits` fine-tuned on scikit-learn's digits, shipped with the
package), and the flags given override it. `--config` takes any YAML or JSON file of the arguments
below instead; flags override it too.

Before any work the job takes `output_dir` for itself (a second job into it stops at once, naming this
one), and checks the checkpoint to resume from, that `output_dir` holds no earlier run
(`--overwrite_output_dir true` replaces one), the Hub id and token of a push, the labels and every image's
header. SIGTERM or SIGINT ends it after the current optimizer step with a complete checkpoint
(`--resume_from_checkpoint true` continues it); a failed save is one error naming the last complete one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
from datasets import Dataset, Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    EvalPrediction,
    HfArgumentParser,
    IntervalStrategy,
    set_seed,
)
from transformers.utils import logging as hf_logging

from nullspace_hf import NullspaceConfig, NullspaceTrainer, patch_embedding_nullspace
from nullspace_hf.checkpoint import resolve_checkpoint
from nullspace_hf.checks import check_output_dir
from nullspace_hf.data import (
    ImageClassificationTransform,
    check_image_classification_columns,
    check_images,
    collate_image_classification,
    find_columns,
    load_image_dataset,
)
from nullspace_hf.errors import NullspaceError
from nullspace_hf.evaluation import evaluate_robustness, load_metric
from nullspace_hf.hub import RESULTS_FILE, check_push_settings, noise_rounds_table, push_output_dir
from nullspace_hf.lock import hold_output_dir
from nullspace_hf.modeling import check_model_source
from nullspace_hf.parsing import comma_ints, comma_list, config_given, parse_with_config, run_command
from nullspace_hf.plots import plot_noise_dynamics
from nullspace_hf.preemption import follow_launcher, handle_stop_signals, stop_if_requested

EMBEDDED = Path(__file__).resolve().parent / "embedded"
DEFAULT_CONFIG = EMBEDDED / "digits.yaml"


@dataclass
class ScriptArguments:
    """Model, data and evaluation of the recipe (the training settings are in ``NullspaceConfig``)."""

    model_name_or_path: str = field(
        default=str(EMBEDDED / "vit-tiny-digits"),
        metadata={"help": "Checkpoint to fine-tune: a Hub id or a local directory (with its image processor)."},
    )
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset id (none: scikit-learn digits)."})
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration of the Hub dataset."})
    data_files: str | None = field(
        default=None, metadata={"help": "Local data files: a path, or JSON {\"train\": ..., \"test\": ...}."}
    )
    train_dir: str | None = field(default=None, metadata={"help": "An imagefolder directory (one folder per class)."})
    image_column: str | None = field(default=None, metadata={"help": "Column of images (default: found, e.g. "
                                                                     "'image' or 'img')."})
    label_column: str | None = field(default=None, metadata={"help": "Column of class indices (default: found, e.g. "
                                                                     "'label')."})
    train_split: str = field(default="train", metadata={"help": "Split to fine-tune on."})
    eval_split: str = field(default="test", metadata={"help": "Split of the robustness evaluation before and after."})
    validation_split: str = field(
        default="validation",
        metadata={"help": "Split evaluated during training (--eval_strategy steps|epoch, --do_eval); when the dataset "
                          "has none: --validation_dir, else a --train_val_split share of the train split."})
    validation_dir: str | None = field(default=None, metadata={"help": "An imagefolder directory to evaluate on "
                                                                       "during training."})
    train_val_split: float = field(default=0.15, metadata={"help": "Share of the train split held out for evaluation "
                                                                   "during training when there is no validation set."})
    max_train_samples: float | None = field(
        default=None, metadata={"help": "Train on this many samples, or this fraction when < 1 (paper: 0.1)."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on at most this many samples."})
    eval_attacks: str = field(default="fgsm", metadata={"help": "Comma-separated attacks, or 'none'."})
    eval_corruptions: str = field(default="all", metadata={"help": "Comma-separated corruptions, a group, or 'none'."})
    eval_severities: str = field(default="1,2,3,4,5", metadata={"help": "Comma-separated corruption severities."})
    eval_corruption_source: str | None = field(
        default=None, metadata={"help": "A released corruption set to read instead of corrupting on the fly: an "
                                        "ImageNet-C or CIFAR-10-C folder, or a datasets copy (folder or Hub id) with "
                                        "corruption and severity columns (max_eval_samples limits each set)."})
    eval_corruption_workers: int = field(default=0, metadata={"help": "Worker processes that corrupt or read images "
                                                                      "during the robustness evaluation."})
    eval_batch_size: int = field(default=128, metadata={"help": "Batch size of the robustness evaluation."})
    license: str | None = field(
        default=None, metadata={"help": "License of the fine-tuned model for its card (an SPDX id such as apache-2.0); "
                                        "unset: the card says the base model's terms apply."})
    check_images: bool = field(
        default=True,
        metadata={"help": "Open every image's header before any work, so that a broken file is named at once "
                          "(turn off for very large image folders; a broken file is then named when it is met)."},
    )
    model_revision: str = field(default="main", metadata={"help": "Revision (branch, tag or commit) of the model."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the checkpoint's own modeling code."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Load weights whose shapes differ from the model's (they are initialised "
                                         "afresh); a new classifier for another number of classes is made anyway."})
    use_peft: bool = field(default=False, metadata={"help": "Fine-tune LoRA adapters (peft) instead of all weights; "
                                                            "they are merged into a plain checkpoint at the end."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(default="q_proj,v_proj", metadata={"help": "Comma-separated module names that "
                                                                                "get adapters (ViT: q_proj,v_proj)."})
    drop_path_rate: float | None = field(
        default=None,
        metadata={"help": "Stochastic depth while fine-tuning (the authors: 0.25), for model families whose config "
                          "has drop_path_rate (BEiT, Data2VecVision, Dinov2, Swin, ...); transformers' ViT and DeiT "
                          "have none."},
    )


@dataclass
class LoadedData:
    """The splits of a run and what they hold."""

    train: Dataset
    validation: Dataset | None
    evaluation: Dataset
    names: list[str]
    image_column: str
    label_column: str


def _subsample(dataset, limit: float | None, seed: int):
    if limit is None:
        return dataset
    count = int(limit * len(dataset)) if limit < 1 else int(limit)
    if count < 1:
        raise NullspaceError(f"max_train_samples={limit} leaves no sample of {len(dataset)}.")
    return dataset.shuffle(seed=seed).select(range(min(count, len(dataset))))


def _wants_evaluation(training_args: NullspaceConfig) -> bool:
    return training_args.do_eval or training_args.eval_strategy != IntervalStrategy.NO


def load_data(script_args: ScriptArguments, training_args: NullspaceConfig) -> LoadedData:
    """Load and check the splits: train, validation (only when evaluation during training is asked for) and the
    robustness evaluation split, with the class names and the image and label columns."""
    files = script_args.data_files  # a path, a JSON mapping on the command line, or a mapping from a --config YAML
    if isinstance(files, str) and files.lstrip().startswith("{"):
        files = json.loads(files)
    data = load_image_dataset(script_args.dataset_name, script_args.dataset_config, files, script_args.train_dir)
    for split in (script_args.train_split, script_args.eval_split):
        if split not in data:
            raise NullspaceError(f"The dataset has no split {split!r}; its splits are {list(data)}. "
                                 "Pass --train_split / --eval_split.")
        if len(data[split]) == 0:
            raise NullspaceError(f"The split {split!r} of the dataset is empty.")
    train = data[script_args.train_split]
    image_column, label_column = find_columns(train, script_args.image_column, script_args.label_column)
    names = check_image_classification_columns(train, image_column, label_column)
    eval_names = check_image_classification_columns(data[script_args.eval_split], image_column, label_column)
    if len(eval_names) > len(names):
        raise NullspaceError(f"The {script_args.eval_split!r} split has labels up to {len(eval_names) - 1}, the "
                             f"{script_args.train_split!r} split only up to {len(names) - 1}: the classes must match.")
    validation = None
    if _wants_evaluation(training_args):
        if script_args.validation_split in data:
            validation = data[script_args.validation_split]
        elif script_args.validation_dir:
            validation = load_image_dataset(train_dir=script_args.validation_dir)["train"]
        else:
            if not 0 < script_args.train_val_split < 1:
                raise NullspaceError(f"train_val_split must be in (0, 1), got {script_args.train_val_split}.")
            parts = train.train_test_split(test_size=script_args.train_val_split, seed=training_args.seed)
            train, validation = parts["train"], parts["test"]
        check_image_classification_columns(validation, image_column, label_column)
    if script_args.check_images:
        for split in (train, validation, data[script_args.eval_split]):
            if split is not None:
                check_images(split, image_column)
    train = _subsample(train, script_args.max_train_samples, training_args.seed)
    evaluation = data[script_args.eval_split]
    if script_args.max_eval_samples is not None:
        evaluation = evaluation.select(range(min(script_args.max_eval_samples, len(evaluation))))
        if validation is not None:
            validation = validation.select(range(min(script_args.max_eval_samples, len(validation))))
    lazy = Image(decode=False)  # decoded by the transform, which names a broken file
    return LoadedData(train.cast_column(image_column, lazy),
                      None if validation is None else validation.cast_column(image_column, lazy),
                      evaluation, names, image_column, label_column)


def load_model(script_args: ScriptArguments, names: list[str]):
    """The checkpoint and its image processor; a new head when the dataset has other classes."""
    options = {"revision": script_args.model_revision, "trust_remote_code": script_args.trust_remote_code}
    overrides = {} if script_args.drop_path_rate is None else {"drop_path_rate": script_args.drop_path_rate}
    name = script_args.model_name_or_path
    check_model_source(name)
    try:
        config = AutoConfig.from_pretrained(name, **options)
        processor = AutoImageProcessor.from_pretrained(name, **options)
    except (OSError, ValueError) as error:
        raise NullspaceError(f"Could not load {name!r} with its image processor: {error}") from error
    if overrides and not hasattr(config, "drop_path_rate"):
        raise NullspaceError(f"--drop_path_rate: {type(config).__name__} has no drop path in transformers (no "
                             "drop_path_rate in its config); leave it unset for this model.")
    if getattr(config, "num_labels", None) != len(names):
        overrides.update(num_labels=len(names), id2label=dict(enumerate(names)),
                         label2id={label: i for i, label in enumerate(names)}, ignore_mismatched_sizes=True)
    elif script_args.ignore_mismatched_sizes:
        overrides["ignore_mismatched_sizes"] = True
    model = AutoModelForImageClassification.from_pretrained(name, **options, **overrides)
    patch_embedding_nullspace(model)  # a clear error now for models without a patch embedding
    return model, processor


def lora_config(script_args: ScriptArguments):
    """The ``peft.LoraConfig`` of ``--use_peft``: adapters on ``lora_target_modules``, the classifier fully trained."""
    try:
        from peft import LoraConfig
    except ImportError as error:
        raise NullspaceError("--use_peft needs the peft package: pip install peft (or nullspace-hf[peft]).") from error
    targets = [name.strip() for name in script_args.lora_target_modules.split(",") if name.strip()]
    return LoraConfig(r=script_args.lora_r, lora_alpha=script_args.lora_alpha, lora_dropout=script_args.lora_dropout,
                      target_modules=targets, modules_to_save=["classifier"])


def accuracy(prediction: EvalPrediction) -> dict[str, float]:
    """Top-1 accuracy of an evaluation during training (``compute_metrics``), by the package's ``evaluate`` module."""
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return load_metric("accuracy").compute(predictions=np.argmax(logits, axis=-1), references=prediction.label_ids)


def evaluate(model, processor, dataset, script_args: ScriptArguments, training_args: NullspaceConfig, name: str,
             columns: tuple[str, str]):
    """Clean, attack and corruption accuracy of ``model`` on the evaluation split."""
    return evaluate_robustness(
        model, dataset, image_processor=processor, attacks=comma_list(script_args.eval_attacks),
        corruptions=comma_list(script_args.eval_corruptions),
        severities=comma_ints(script_args.eval_severities),
        corruption_source=script_args.eval_corruption_source, max_corruption_samples=script_args.max_eval_samples,
        corruption_workers=script_args.eval_corruption_workers,
        batch_size=script_args.eval_batch_size, seed=training_args.seed, image_column=columns[0],
        label_column=columns[1], cache_dir=os.path.join(training_args.output_dir, "corruption_cache"),
        dataset_name=name,
    )


def print_table(results: dict) -> None:
    """Before/after table: clean accuracy, attack accuracy, mean corruption accuracy."""
    summaries = {run: report["summary"] for run, report in results.items()}
    metrics = list(dict.fromkeys(m for summary in summaries.values() for m in summary))
    print("\n" + "model".ljust(8) + "".join(m.rjust(14) for m in metrics))
    for run, summary in summaries.items():
        print(run.ljust(8) + "".join(f"{summary.get(m, float('nan')):14.2f}" for m in metrics))
    print("(accuracy in %; 'corruption' is the mean over corruptions and severities)\n")


def main(script_args: ScriptArguments, training_args: NullspaceConfig) -> dict:
    """Fine-tune, evaluate before and after, write ``output_dir`` completely, then push if asked; ``output_dir`` is
    held for the whole job and a stop signal ends it after the current step (or phase) with nothing lost."""
    set_seed(training_args.seed)
    log_level = training_args.get_process_log_level()
    hf_logging.set_verbosity(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    print(f"Process {training_args.process_index} of {training_args.world_size} ({training_args.device}).")
    with hold_output_dir(training_args.output_dir), handle_stop_signals():
        return _run(script_args, training_args)


def _run(script_args: ScriptArguments, training_args: NullspaceConfig) -> dict:
    output = Path(training_args.output_dir)
    push = training_args.push_to_hub
    repo_id = training_args.hub_model_id or output.name
    if push:
        check_push_settings(repo_id, training_args.hub_token)
    checkpoint = resolve_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir,
                                    training_args.noise_mode, with_ema=training_args.ema_decay is not None)
    check_output_dir(training_args.output_dir, overwrite=training_args.overwrite_output_dir,
                     resuming=checkpoint is not None)
    data = load_data(script_args, training_args)
    model, processor = load_model(script_args, data.names)
    columns = (data.image_column, data.label_column)
    transform = ImageClassificationTransform(processor, *columns, model.config.num_channels)
    training_args.push_to_hub = False  # the finished output_dir is pushed at the end, once complete
    training_args.remove_unused_columns = False  # the transform needs the image column
    source = script_args.data_files or script_args.train_dir
    if isinstance(source, dict):
        source = next(iter(source.values()))
    dataset_name = script_args.dataset_name or ("digits" if not source else Path(str(source)).stem)
    before = evaluate(model, processor, data.evaluation, script_args, training_args, dataset_name, columns)
    before.model = script_args.model_name_or_path
    results = {"before": before.to_dict()}
    trainer = NullspaceTrainer(
        model=model, args=training_args, peft_config=lora_config(script_args) if script_args.use_peft else None,
        train_dataset=data.train.with_transform(transform),
        eval_dataset=None if data.validation is None else data.validation.with_transform(transform),
        compute_metrics=None if data.validation is None else accuracy,
        data_collator=collate_image_classification, processing_class=processor,
    )
    card = trainer.model_card_data  # what every card of the run (checkpoints too) names
    card.dataset_name, card.license = dataset_name, script_args.license
    card.dataset_id = None if script_args.dataset_name == "digits" else script_args.dataset_name
    trainer.add_robustness_report("before", before)
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_model()  # with --use_peft a plain checkpoint: the adapters merged into the weights
    trainer.save_state()
    stop_if_requested(f"the fine-tuned model is saved in {output}; the evaluation after fine-tuning, the model "
                      "card and the push were not done (run the job again with --resume_from_checkpoint true).")
    if data.validation is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    after = evaluate(trainer.merged_model(), processor, data.evaluation, script_args, training_args, dataset_name,
                     columns)
    after.model = training_args.hub_model_id or training_args.output_dir
    results["after"] = after.to_dict()
    trainer.add_robustness_report("after", after)
    robustness = {f"{run}_{metric}": value for run, report in results.items()
                  for metric, value in report["summary"].items()}
    trainer.save_metrics("robustness", robustness)
    stop_if_requested(f"the fine-tuned model is saved in {output}; its results.json, model card and push were not "
                      "written (run the job again with --resume_from_checkpoint true).")
    if trainer.is_world_process_zero():
        (output / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        if trainer.noise_history:
            plot_noise_dynamics(trainer.noise_history, output / "noise_dynamics.png", eps=training_args.noise_eps,
                                band=training_args.noise_boundary_band)
            print(f"Noise rounds (eps = {training_args.noise_eps}):\n{noise_rounds_table(trainer.noise_history)}")
        trainer.create_model_card()
        print_table(results)
        print(f"Wrote {output}: model.safetensors, README.md (model card), {RESULTS_FILE}, noise files"
              + (", noise_dynamics.png" if trainer.noise_history else ""))
        if push:
            url = push_output_dir(str(output), repo_id, token=training_args.hub_token,
                                  private=training_args.hub_private_repo, revision=training_args.hub_revision)
            print(f"Pushed to {repo_id}: {url}")
    return results


NAME = "finetune"
HELP = ("The main job: fine-tune with nullspace noise, evaluate before and after, write and push the model (no flag: "
        "the embedded default), through accelerate launch.")
LAUNCH_EPILOG = ("Flags not listed here go to `accelerate launch` (e.g. --num_processes 2, --config_file FILE). "
                 "In this process, without accelerate: python -m nullspace_hf.scripts.finetune [flags].")


def make_parser(subparsers: argparse._SubParsersAction | None = None) -> HfArgumentParser:
    """The job's parser over :class:`ScriptArguments` and :class:`NullspaceConfig`; given the ``nullspace-hf``
    sub-parsers (whose parser class is ``HfArgumentParser``), it is registered there as ``finetune``."""
    options = {"dataclass_types": (ScriptArguments, NullspaceConfig), "epilog": LAUNCH_EPILOG,
               "description": "Fine-tune a ViT with approximate-nullspace noise (Algorithm 1); lists are "
                              "comma-separated."}
    if subparsers is None:
        return HfArgumentParser(prog=NAME, **options)
    return subparsers.add_parser(NAME, help=HELP, **options)


def cli(argv: list[str]) -> int:
    """Run the job in this process; user errors end with one line on stderr and exit status 2."""
    if not config_given(argv) and not {"-h", "--help"} & set(argv):
        print(f"No --config: starting from the embedded default ({DEFAULT_CONFIG.name}: a tiny ViT on scikit-learn's "
              "digits)" + ("; the flags given override it." if argv else "."))
    follow_launcher()
    return run_command(NAME, lambda: main(*parse_with_config(make_parser(), argv, default_config=DEFAULT_CONFIG)))


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
