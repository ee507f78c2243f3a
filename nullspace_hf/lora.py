"""LoRA (peft) fine-tuning for the trainers: ``peft_config=`` wraps the model, the saved model is merged.

As in TRL's trainers, ``NullspaceTrainer(model, args, peft_config=LoraConfig(...))`` (and
``AdversarialTrainer``) wraps ``model`` with ``peft.get_peft_model``: only the adapters, and the modules
the config names in ``modules_to_save`` (the classifier head), are trained. Checkpoints hold the
adapters (``adapter_model.safetensors``), so a run resumes from them; the final model
(``trainer.save_model()``, the push) is a plain checkpoint with the adapters merged into the weights,
which ``from_pretrained`` loads without peft.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from typing import Any

from torch import nn

from .errors import NullspaceError


def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` is wrapped by peft (a ``PeftModel``)."""
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def wrap_with_peft(model: nn.Module, peft_config: Any | None, args: Any) -> nn.Module:
    """``model`` with the adapters of ``peft_config`` (``model`` itself when there is none).

    Raises:
        NullspaceError: peft is not installed, ``peft_config`` is not a peft config, ``model`` is already a
            ``PeftModel``, the config names modules the model does not have, or the run shards the model
            with FSDP (the merged save needs the whole model on one process).
    """
    if peft_config is None:
        return model
    try:
        from peft import PeftConfig, get_peft_model
    except ImportError as error:
        raise NullspaceError("peft_config needs the peft package: pip install peft (or nullspace-hf[peft]).") from error
    if not isinstance(peft_config, PeftConfig):
        raise NullspaceError(f"peft_config must be a peft config such as peft.LoraConfig(...), got "
                             f"{type(peft_config).__name__}.")
    if is_peft_model(model):
        raise NullspaceError("The model is already a PeftModel and peft_config is given too: pass either the base "
                             "model with peft_config, or the PeftModel alone.")
    if getattr(args, "fsdp", None) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        raise NullspaceError("peft_config with FSDP (fsdp / accelerate launch --use_fsdp) is not supported: the merged "
                             "final model needs the whole model on one process. Fine-tune LoRA adapters with DDP (they "
                             "are small), or train all weights under FSDP.")
    try:
        return get_peft_model(model, peft_config)
    except ValueError as error:
        raise NullspaceError(f"peft_config (target_modules={peft_config.target_modules!r}, modules_to_save="
                             f"{getattr(peft_config, 'modules_to_save', None)!r}) does not fit "
                             f"{type(model).__name__}: {error}") from error


def merged_copy(model: nn.Module) -> nn.Module:
    """A plain model (no peft wrapper) equal to ``model`` with its adapters merged into the weights.

    ``model`` itself keeps its adapters, so training, evaluation and later checkpoints go on with it.
    """
    return copy.deepcopy(model).merge_and_unload()


class PeftSaveMixin:
    """Saves a peft-wrapped model as a plain merged checkpoint, except inside checkpoints (adapters, resumable).

    Mix in after the package's other mixins and before ``transformers.Trainer``.
    """

    _saving_checkpoint = False

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        self._saving_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._saving_checkpoint = False

    def merged_model(self) -> nn.Module:
        """The trained model as a plain ``transformers`` model: a merged copy when it is peft-wrapped, else itself."""
        return merged_copy(self.model) if is_peft_model(self.model) else self.model

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """``Trainer.save_model``; a peft model is saved merged into a plain checkpoint outside checkpoints."""
        with self._merged_for_saving():
            super().save_model(output_dir, _internal_call)

    @contextlib.contextmanager
    def _merged_for_saving(self) -> Iterator[None]:
        """``self.model`` is a merged copy inside the block when the model is peft-wrapped and not checkpointed."""
        if self._saving_checkpoint or not is_peft_model(self.model):
            yield
            return
        trained = self.model
        self.model = self.merged_model()
        try:
            yield
        finally:
            self.model = trained
