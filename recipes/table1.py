"""Reproduce the architecture side of Table 1: patch-embedding rank and nullity of the eight ViTs.

Weights are random (the Hub is not reachable here), so the numbers are the rank–nullity values
max(c·r² − d, 0); the paper's column comes from trained ImageNet checkpoints.

    python recipes/table1.py
"""

from __future__ import annotations

import argparse

import torch
from transformers import ViTConfig, ViTModel

from nullspace_hf import patch_embedding_nullspace

# name: (patch size, hidden size, paper's nullity with trained weights)
ARCHITECTURES = {
    "ViT-T/16": (16, 192, 576),
    "ViT-S/32": (32, 384, 2688),
    "ViT-S/16": (16, 384, 384),
    "ViT-B/32": (32, 768, 2304),
    "ViT-B/16": (16, 768, 2),
    "ViT-B/8": (8, 768, 0),
    "ViT-L/32": (32, 1024, 2048),
    "ViT-L/16": (16, 1024, 0),
}


def table1_rows(seed: int = 0) -> list[dict]:
    """Compute rank and nullity of each architecture's patch embedding from its config."""
    rows = []
    for name, (patch, hidden, paper) in ARCHITECTURES.items():
        torch.manual_seed(seed)
        config = ViTConfig(patch_size=patch, hidden_size=hidden, num_hidden_layers=0, image_size=224)
        nullspace = patch_embedding_nullspace(ViTModel(config, add_pooling_layer=False))
        rows.append({"model": name, "patch_dim": nullspace.patch_dim, "hidden": hidden, "rank": nullspace.rank,
                     "nullity": nullspace.nullity, "paper": paper})
    return rows


def to_markdown(rows: list[dict]) -> str:
    """Format rows as the Markdown table of ``docs/table1.md``."""
    lines = ["| model | c·r² | d | rank | nullity (random weights) | nullity in the paper (trained) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['patch_dim']} | {r['hidden']} | {r['rank']} | {r['nullity']} | {r['paper']} |"
              for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    print(to_markdown(table1_rows()))
