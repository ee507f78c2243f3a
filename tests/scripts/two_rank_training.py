"""Run under `accelerate launch --multi_gpu --num_processes 2` on a CPU machine: a short NullspaceTrainer run whose
ranks see different (and differently sized) batches; each rank writes the noise and weights it ends with."""

import os
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import ViTConfig, ViTForImageClassification

from nullspace_hf import NullspaceConfig, NullspaceTrainer


class Rows(torch.utils.data.Dataset):
    def __init__(self, count: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.pixels = torch.randn(count, 3, 16, 16, generator=generator)
        self.labels = torch.randint(0, 4, (count,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.pixels[index], "labels": self.labels[index]}


def main(output_dir: str) -> None:
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                                num_attention_heads=2, intermediate_size=64, num_labels=4,
                                                initializer_range=0.2))
    args = NullspaceConfig(output_dir=output_dir, max_steps=6, per_device_train_batch_size=16, noise_refresh_steps=3,
                           noise_max_steps=30, learning_rate=1e-3, save_strategy="no", report_to="none",
                           disable_tqdm=True, use_cpu=True)
    trainer = NullspaceTrainer(model=model, args=args, train_dataset=Rows(101))
    trainer.train()
    rank = trainer.args.process_index
    torch.save({"world_size": trainer.args.world_size, "noise": trainer.noise.cpu(), "history": trainer.noise_history,
                "weights": {k: v.cpu() for k, v in trainer.model.state_dict().items()}},
               Path(output_dir) / f"rank{rank}.pt")


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    finally:  # without it, gloo's threads sometimes abort the process at exit ("terminate called ...")
        PartialState().destroy_process_group()
    # gloo's threads can still abort the interpreter's teardown after the work is saved ("terminate called without an
    # active exception", seen with accelerate 1.16 and torch 2.13): once main has returned, leave without it
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
