"""`python push_with_token.py NAMES OUTPUT_DIR TOKEN`, with HF_ENDPOINT set to the loopback Hub: for each trainer of
NAMES (comma-separated: nullspace, adversarial), a two-step run of it with `hub_token=TOKEN` into OUTPUT_DIR (its `{}`
replaced by the name) that pushes every checkpoint and the final model to `user/<name>`.

A separate process because `transformers.trainer` reads HF_ENDPOINT when it is imported."""

import sys

import torch
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

from nullspace_hf import AdversarialConfig, AdversarialTrainer, NullspaceConfig, NullspaceTrainer
from nullspace_hf.data import TensorRows


def main(name: str, output_dir: str, token: str) -> None:
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                                num_attention_heads=2, intermediate_size=64, num_labels=4))
    rows = TensorRows(torch.randn(32, 3, 16, 16), torch.randint(0, 4, (32,)))
    values = dict(output_dir=output_dir, max_steps=2, per_device_train_batch_size=16, report_to="none", use_cpu=True,
                  save_strategy="steps", save_steps=1, push_to_hub=True, hub_model_id=f"user/{name}",
                  hub_strategy="all_checkpoints", hub_token=token, disable_tqdm=True)
    processor = ViTImageProcessor(size={"height": 16, "width": 16})
    if name == "nullspace":
        trainer = NullspaceTrainer(model=model, args=NullspaceConfig(**values, noise_max_steps=5), train_dataset=rows,
                                   processing_class=processor)
    else:
        trainer = AdversarialTrainer(model=model, args=AdversarialConfig(**values, adversarial_steps=1),
                                     train_dataset=rows, processing_class=processor)
    trainer.train()
    trainer.push_to_hub(blocking=True)


if __name__ == "__main__":
    names, output_dir, token = sys.argv[1:4]
    for name in names.split(","):
        main(name, output_dir.format(name), token)
