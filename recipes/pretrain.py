"""Pretrain a small ViT from scratch (the embedded default's checkpoint, the CIFAR-10 reproduction's model).

    python recipes/pretrain.py --output_dir nullspace_hf/scripts/embedded/vit-tiny-digits --overwrite_output_dir true

See ``nullspace_hf/scripts/pretrain.py`` (also ``nullspace-hf pretrain`` and
``python -m nullspace_hf.scripts.pretrain``, which write into ``outputs/vit-pretrained`` unless given ``--output_dir``).
"""

import sys

from nullspace_hf.scripts.pretrain import cli

if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
