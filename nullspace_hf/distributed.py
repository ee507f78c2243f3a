"""FSDP for the package's trainers: applied on the CPU too, trained as under DDP, saved as one full model.

accelerate turns an FSDP launch (``accelerate launch --use_fsdp``, ``ACCELERATE_USE_FSDP=true``, or
``TrainingArguments.fsdp``) into ``DistributedType.FSDP`` only for accelerator devices (GPU, XPU, NPU,
...). Processes on the CPU (``use_cpu``, which :class:`~nullspace_hf.config.BaseConfig` sets for
several processes on a machine without accelerator) become ``MULTI_CPU``, and the job trains with DDP,
nothing sharded, without a word (accelerate 1.16, ``AcceleratorState.__init__``). Yet
``torch.distributed.fsdp.fully_shard`` (FSDP version 2) shards over gloo on the CPU, so
:class:`FullyShardedMixin` sets the state to FSDP there; FSDP version 1 (``FullyShardedDataParallel``)
has no CPU support, and asking for it is one error.

FSDP version 2 swaps sharded parameters for unsharded ones in a forward and leaves its root unit's
unsharded: :func:`~nullspace_hf.modeling.frozen_eval` (noise synthesis, the PGD search) therefore restores
``requires_grad`` on the parameters the model holds at its end too; before, the root unit's weights
(embeddings, final LayerNorm, head) did not train after a synthesis (0.014 from a DDP run's weights after
4 SGD steps, measured here; equal after the fix). The final model of an FSDP run is gathered
into one plain checkpoint (the Trainer writes none with accelerate's default ``SHARDED_STATE_DICT``).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType

from .errors import NullspaceError


def fsdp_launch_requested() -> bool:
    """Whether the launcher asked for FSDP (``accelerate launch --use_fsdp`` sets ``ACCELERATE_USE_FSDP``)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def requested_fsdp_version(training_args: Any) -> int | None:
    """The FSDP version the run asks for (``TrainingArguments.fsdp`` or ``accelerate launch --use_fsdp
    --fsdp_version``; accelerate's default is 1), or ``None`` without FSDP."""
    if training_args.fsdp_plugin_args is not None:
        return int(training_args.fsdp_plugin_args.get("fsdp_version", 1))
    if fsdp_launch_requested():
        return int(os.environ.get("FSDP_VERSION", "1"))
    return None


def check_fsdp_on_cpu(version: int | None) -> None:
    """Nothing for no FSDP or version 2; one clear error for version 1, which cannot run on the CPU.

    Raises:
        NullspaceError: FSDP version 1 on the CPU (only version 2, ``fully_shard``, runs there).
    """
    if version is not None and version != 2:
        raise NullspaceError(f"FSDP version {version} cannot shard on the CPU (torch's FullyShardedDataParallel "
                             "needs an accelerator): launch with --fsdp_version 2 (fsdp_config: fsdp_version: 2), or "
                             "without --use_fsdp for DDP.")


class FullyShardedMixin:
    """FSDP as launched: version 2 applied to processes on the CPU (version 1 there is one error), the final model
    saved as one plain full checkpoint whatever ``fsdp_state_dict_type`` is (see the module's docstring).

    Mix in before ``transformers.Trainer``.
    """

    _fsdp_plugin: Any | None = None

    def _on_cpu(self) -> bool:
        return self.args.use_cpu or not torch.accelerator.is_available()

    def _build_accelerator_args(self, **kwargs: Any) -> dict[str, Any]:
        args = super()._build_accelerator_args(**kwargs)
        if args.get("fsdp_plugin") is None and fsdp_launch_requested() and self._on_cpu():
            from accelerate.utils import FullyShardedDataParallelPlugin

            args["fsdp_plugin"] = FullyShardedDataParallelPlugin()  # what Accelerator builds from the environment
        self._fsdp_plugin = args.get("fsdp_plugin")
        return args

    def create_accelerator_and_postprocess(self) -> None:
        on_cpu = self._on_cpu()
        if on_cpu:
            check_fsdp_on_cpu(requested_fsdp_version(self.args))
        super().create_accelerator_and_postprocess()
        plugin = self._fsdp_plugin
        state = self.accelerator.state
        if not on_cpu or plugin is None or state.distributed_type != DistributedType.MULTI_CPU:
            return
        if state.mixed_precision != "no":
            plugin.set_mixed_precision(state.mixed_precision)
        state.distributed_type = DistributedType.FSDP  # as AcceleratorState does it for accelerator devices:
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # every later state copies this one
        state.fsdp_plugin = plugin
        self.is_fsdp_enabled = True

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """``Trainer.save_model``; under FSDP the final model is gathered into one plain full checkpoint (the
        Trainer writes none with the default ``SHARDED_STATE_DICT``), while checkpoints keep the plugin's type."""
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None) if self.is_fsdp_enabled else None
        if plugin is None or _internal_call:
            super().save_model(output_dir, _internal_call)
            return
        from torch.distributed.fsdp import StateDictType

        kept, plugin.state_dict_type = plugin.state_dict_type, StateDictType.FULL_STATE_DICT
        try:
            super().save_model(output_dir, _internal_call)
        finally:
            plugin.state_dict_type = kept
