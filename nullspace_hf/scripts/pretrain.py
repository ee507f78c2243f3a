"""Pretrain a small ViT from scratch: the "pretrained model" that the recipes then fine-tune.

    nullspace-hf pretrain                          # digits, into outputs/vit-pretrained, through accelerate
    python -m nullspace_hf.scripts.pretrain        # the same in this process (also recipes/pretrain.py)

The embedded default of `nullspace-hf finetune` (`recipes/finetune.py`) starts from the checkpoint this job writes on
scikit-learn's digits (shipped in `nullspace_hf/scripts/embedded/vit-tiny-digits/`, rewritten in a checkout with):

    python recipes/pretrain.py --output_dir nullspace_hf/scripts/embedded/vit-tiny-digits --overwrite_output_dir true

Any image dataset works the same way (`--dataset_name`, `--data_files`, `--train_dir`), e.g. CIFAR-10:

    python recipes/pretrain.py --data_files '{"train": "train.parquet", "test": "test.parquet"}' \
        --image_column img --image_size 32 --patch_size 8 --hidden_size 128 --num_hidden_layers 6 \
        --num_train_epochs 8 --output_dir outputs/vit-cifar10
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field

import numpy as np
from datasets import Dataset
from transformers import HfArgumentParser, ViTConfig, ViTForImageClassification, set_seed

from nullspace_hf import NullspaceConfig, NullspaceTrainer
from nullspace_hf.data import (
    ImageClassificationTransform,
    check_image_classification_columns,
    collate_image_classification,
    load_image_dataset,
)
from nullspace_hf.parsing import parse_with_config, run_command


@dataclass
class PretrainArguments:
    """What to pretrain on and the ViT's shape (patch embedding nullity = 3·patch² − hidden)."""

    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset id (default: sklearn digits)."})
    data_files: str | None = field(default=None, metadata={"help": "A file, or a JSON {split: file} mapping."})
    train_dir: str | None = field(default=None, metadata={"help": "An imagefolder directory."})
    image_column: str = field(default="image", metadata={"help": "Column of images."})
    label_column: str = field(default="label", metadata={"help": "Column of class indices."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str = field(default="test", metadata={"help": "Split to report accuracy on."})
    image_size: int = field(default=32, metadata={"help": "Images are resized to this size."})
    patch_size: int = field(default=8, metadata={"help": "ViT patch size r."})
    hidden_size: int = field(default=64, metadata={"help": "Width d (nullity = 3·r² − d when positive)."})
    num_hidden_layers: int = field(default=4, metadata={"help": "Encoder depth."})
    num_attention_heads: int = field(default=4, metadata={"help": "Attention heads."})
    intermediate_size: int = field(default=128, metadata={"help": "MLP width."})


def pretrain(train: Dataset, evaluation: Dataset, names: list[str], pretrain_args: PretrainArguments,
             training_args: NullspaceConfig) -> dict:
    """Train a new ViT of ``pretrain_args``' shape on ``train``, save it with its image processor in
    ``training_args.output_dir``, and return its metrics on ``evaluation``.

    Training goes through :class:`~nullspace_hf.NullspaceTrainer` (``noise_mode="none"`` unless asked
    otherwise), so the config's training augmentation (crop, flip, RandAugment, ...) applies.
    """
    from transformers import ViTImageProcessor  # here: naming it warns when torchvision is missing

    set_seed(training_args.seed)
    processor = ViTImageProcessor(size={"height": pretrain_args.image_size, "width": pretrain_args.image_size})
    transform = ImageClassificationTransform(processor, pretrain_args.image_column, pretrain_args.label_column)
    config = ViTConfig(
        image_size=pretrain_args.image_size, patch_size=pretrain_args.patch_size,
        hidden_size=pretrain_args.hidden_size, num_hidden_layers=pretrain_args.num_hidden_layers,
        num_attention_heads=pretrain_args.num_attention_heads, intermediate_size=pretrain_args.intermediate_size,
        num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
    )
    trainer = NullspaceTrainer(
        model=ViTForImageClassification(config), args=training_args,
        train_dataset=train.with_transform(transform), eval_dataset=evaluation.with_transform(transform),
        data_collator=collate_image_classification, processing_class=processor,
        compute_metrics=lambda p: {"accuracy": float(np.mean(np.argmax(p.predictions, -1) == p.label_ids))},
    )
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model()
    print(f"held-out accuracy {metrics['eval_accuracy']:.3f}; saved to {training_args.output_dir}")
    return metrics


def main(pretrain_args: PretrainArguments, training_args: NullspaceConfig) -> dict:
    """Load the dataset of ``pretrain_args`` and :func:`pretrain` on it."""
    files = json.loads(pretrain_args.data_files) if (pretrain_args.data_files or "").startswith("{") \
        else pretrain_args.data_files
    data = load_image_dataset(pretrain_args.dataset_name, None, files, pretrain_args.train_dir)
    names = check_image_classification_columns(data[pretrain_args.train_split], pretrain_args.image_column,
                                               pretrain_args.label_column)
    return pretrain(data[pretrain_args.train_split], data[pretrain_args.eval_split], names, pretrain_args,
                    training_args)


NAME = "pretrain"
HELP = "Pretrain a small ViT from scratch (the model the recipes fine-tune), through accelerate launch."
DEFAULTS = {"output_dir": "outputs/vit-pretrained", "noise_mode": "none", "num_train_epochs": 40,
            "per_device_train_batch_size": 64, "learning_rate": 2e-3, "weight_decay": 0.05, "warmup_steps": 50,
            "lr_scheduler_type": "cosine", "eval_strategy": "no", "save_strategy": "no", "logging_steps": 50,
            "remove_unused_columns": False, "report_to": "none", "seed": 0}


def make_parser(subparsers: argparse._SubParsersAction | None = None) -> HfArgumentParser:
    """Parser over :class:`PretrainArguments` and ``NullspaceConfig`` with this job's defaults (no noise, output
    under ``outputs/`` of the working directory); given the ``nullspace-hf`` sub-parsers (whose parser class is
    ``HfArgumentParser``), it is registered there as ``pretrain``."""
    options = {"dataclass_types": (PretrainArguments, NullspaceConfig),
               "description": "Pretrain a small ViT from scratch on an image dataset (default: digits).",
               "epilog": "Flags not listed here go to `accelerate launch`. In this process, without accelerate: "
                         "python -m nullspace_hf.scripts.pretrain [flags]."}
    parser = HfArgumentParser(prog=NAME, **options) if subparsers is None else subparsers.add_parser(
        NAME, help=HELP, **options)
    parser.set_defaults(**DEFAULTS)
    return parser


def cli(argv: list[str]) -> int:
    """Run the job in this process; user errors end with one line on stderr and exit status 2."""
    return run_command(NAME, lambda: main(*parse_with_config(make_parser(), argv)))


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
