"""How this process was started: alone, or as one of several launched together (torchrun, ``accelerate launch``).

Shared by the training side (:class:`~nullspace_hf.config.BaseConfig`) and the evaluation suite, which
imports nothing from the training side.
"""

from __future__ import annotations

import os

import torch


def launched_without_accelerator() -> bool:
    """True for one of several processes started together (torchrun, ``accelerate launch --multi_gpu``) on a
    machine without GPU or other accelerator.

    accelerate treats such processes as distributed only when told they run on the CPU; without it each
    one would run the whole job alone.
    """
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available()
