"""Run under `accelerate launch --num_processes 2` (with or without `--use_fsdp --fsdp_version 2 ...`) on a CPU machine:
a short NullspaceTrainer run of a tiny ViT; each rank writes whether its parameters were sharded (DTensor) during
training and the noise it ends with, and the trainer saves the final model into output_dir."""

import json
import os
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from torch.distributed.tensor import DTensor
from transformers import TrainerCallback, ViTConfig, ViTForImageClassification
from two_rank_training import Rows  # this folder is on sys.path when the script runs

from nullspace_hf import NullspaceConfig, NullspaceTrainer


class ShardingProbe(TrainerCallback):
    """Records, at each step's end, which parameters are DTensors and the share of their elements this rank holds."""

    def __init__(self) -> None:
        self.sharded: dict[str, float] = {}
        self.plain: list[str] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        for name, parameter in model.named_parameters():
            if isinstance(parameter, DTensor):
                self.sharded[name] = parameter.to_local().numel() / parameter.numel()
            else:
                self.plain.append(name)


def main(output_dir: str, overrides: dict) -> None:
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                                num_attention_heads=2, intermediate_size=64, num_labels=4,
                                                initializer_range=0.2))
    settings = dict(max_steps=4, per_device_train_batch_size=8, noise_refresh_steps=2, noise_max_steps=10,
                    optim="sgd", learning_rate=0.1, save_strategy="no", report_to="none", disable_tqdm=True)
    args = NullspaceConfig(output_dir=output_dir, **{**settings, **overrides})
    probe = ShardingProbe()
    trainer = NullspaceTrainer(model=model, args=args, train_dataset=Rows(64), callbacks=[probe])
    trainer.train()
    trainer.save_model()
    rank = trainer.args.process_index
    torch.save({"world_size": trainer.args.world_size, "distributed_type": str(trainer.accelerator.distributed_type),
                "noise": None if trainer.noise is None else trainer.noise.cpu(), "history": trainer.noise_history,
                "sharded": probe.sharded,
                "plain": sorted(set(probe.plain))}, Path(output_dir) / f"rank{rank}.pt")


if __name__ == "__main__":
    try:
        main(sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
    finally:  # without it, gloo's threads sometimes abort the process at exit ("terminate called ...")
        PartialState().destroy_process_group()
    # gloo's threads can still abort the interpreter's teardown after the work is saved ("terminate called without an
    # active exception", seen with accelerate 1.16 and torch 2.13): once main has returned, leave without it
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
