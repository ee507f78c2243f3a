"""What every trainer of this package does against lost work: ``FaultTolerantMixin``.

- The constructor checks the Hub id and token of a push (``push_to_hub``) before the Trainer creates
  the repository; ``train`` holds ``output_dir`` for the whole run (:mod:`~nullspace_hf.lock`), checks
  before the first step what would otherwise fail later (the checkpoint to resume from, an earlier run
  in ``output_dir``, the training data), and removes the folders of saves that were cut short.
- A checkpoint is written under ``tmp-checkpoint-N`` and renamed to ``checkpoint-N`` when complete;
  older checkpoints are rotated out (``save_total_limit``) only after that, so a kill at any moment
  leaves the previous checkpoint usable.
- A failed write (full disk, quota, read-only) is one :class:`~nullspace_hf.checks.SaveError` naming
  the path, the cause and the last complete checkpoint; the partial save is removed, nothing earlier.
- SIGTERM or SIGINT (:mod:`~nullspace_hf.preemption`) ends the run after the current optimizer step
  with a complete checkpoint, then :class:`~nullspace_hf.preemption.Interrupted`.
- A resumed checkpoint's weights are loaded through ``from_pretrained`` (transformers 5.24 loads ViT
  checkpoints without converting their legacy key names, restoring no encoder weight).

Mix in before ``transformers.Trainer``; a trainer adds its own checks, state files and checkpoint
validation through :meth:`_check_before_training`, :meth:`_save_extra_state` and
:meth:`_resolve_checkpoint`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from .checkpoint import (
    STAGING_PREFIX,
    TRAINER_STATE,
    last_complete_checkpoint,
    publish_checkpoint,
    remove_staged_saves,
    resolve_checkpoint,
)
from .checks import SaveError, check_output_dir, write_failure
from .hub import check_push_settings
from .lock import hold_output_dir
from .preemption import PreemptionCallback, handle_stop_signals, requested, stop_if_requested


class FaultTolerantMixin:
    """Output-dir lock, checks before the first step, complete-or-invisible checkpoints, clear save errors,
    preemption by SIGTERM/SIGINT (see the module's docstring). Mix in before ``transformers.Trainer``."""

    _staging_run_dir: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        config = kwargs.get("args")
        if config is not None and config.push_to_hub:  # before Trainer.__init__ creates the Hub repository
            check_push_settings(config.hub_model_id or Path(config.output_dir).absolute().name, config.hub_token)
        super().__init__(*args, **kwargs)
        self.preemption = PreemptionCallback(self._any_process)
        self.add_callback(self.preemption)

    # ---- hooks for the trainers ----

    def _resolve_checkpoint(self, resume_from_checkpoint: str | bool | None) -> str | None:
        """The checkpoint to resume from, checked (:func:`~nullspace_hf.checkpoint.resolve_checkpoint`)."""
        return resolve_checkpoint(resume_from_checkpoint, self.args.output_dir, "none")

    def _check_before_training(self) -> None:
        """The trainer's own checks before any work (its training data)."""

    def _save_extra_state(self, directory: str, checkpoint: bool) -> None:
        """Write the trainer's own files beside the weights into ``directory`` (a checkpoint or the model)."""

    # ---- the run ----

    def train(self, resume_from_checkpoint: str | bool | None = None, trial: Any = None, **kwargs: Any) -> Any:
        """``Trainer.train`` holding ``output_dir``, after checking before any work the checkpoint to resume
        from, the output directory (no earlier run is overwritten without ``overwrite_output_dir``) and the
        trainer's own inputs.

        Raises:
            Interrupted: a stop signal came; the message names the checkpoint saved after the step under way.
        """
        args = self.args
        self.preemption.stopped_at = None
        with hold_output_dir(args.output_dir), handle_stop_signals():
            checkpoint = self._resolve_checkpoint(resume_from_checkpoint)
            check_output_dir(args.output_dir, overwrite=args.overwrite_output_dir, resuming=checkpoint is not None)
            self._check_before_training()
            if args.should_save:
                remove_staged_saves(args.output_dir)
            result = super().train(resume_from_checkpoint=checkpoint, trial=trial, **kwargs)
            if requested() is not None:
                if self.preemption.stopped_at != self.state.global_step:  # the signal came after the last step
                    self._save_checkpoint(self.model, trial)
                saved = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
                stop_if_requested(f"training stopped after step {self.state.global_step} of {self.state.max_steps}; "
                                  f"the complete checkpoint {saved} holds it. Resume with --resume_from_checkpoint "
                                  "true (train(resume_from_checkpoint=True)).")
            return result

    def _any_process(self, flag: bool) -> bool:
        """``flag`` of any process (one tiny all-reduce per optimizer step, only under several processes)."""
        if self.args.world_size <= 1:
            return flag
        count = self.accelerator.reduce(torch.tensor([int(flag)], device=self.args.device), reduction="sum")
        return bool(count.item())

    # ---- checkpoints: complete or invisible ----

    def _get_output_dir(self, trial: Any) -> str:
        return self._staging_run_dir or super()._get_output_dir(trial)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """``Trainer._save_checkpoint`` into ``tmp-checkpoint-N/checkpoint-N``, renamed to ``checkpoint-N``
        once complete on every process; then the push of the checkpoint and the rotation of older ones.

        Raises:
            SaveError: a write failed (the message names the path, the cause, the last complete checkpoint).
        """
        run_dir = self._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        final, staging = os.path.join(run_dir, name), os.path.join(run_dir, STAGING_PREFIX + name)
        push, self.args.push_to_hub = self.args.push_to_hub, False  # pushed from its final name below
        self._staging_run_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        except Exception as error:
            if self.args.should_save:
                shutil.rmtree(staging, ignore_errors=True)
            self._raise_save_error(error, final, run_dir)
            raise
        finally:
            self._staging_run_dir = None
            self.args.push_to_hub = push
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            self._fix_best_checkpoint(run_dir, os.path.join(staging, name))
            publish_checkpoint(os.path.join(staging, name), final)
        if push:
            self._push_from_checkpoint(final)
        if self.args.should_save:
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)

    def _fix_best_checkpoint(self, run_dir: str, staged: str) -> None:
        """Point ``best_model_checkpoint`` at the final name of the best checkpoint (``Trainer`` saw the staging
        folder) and write the state of ``staged`` again with it."""
        best = self.state.best_global_step
        if not best:
            return
        path = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{best}")
        if best == self.state.global_step or os.path.isdir(path):
            self.state.best_model_checkpoint = path
            self.state.save_to_json(os.path.join(staged, TRAINER_STATE))

    def _raise_save_error(self, error: Exception, target: str, run_dir: str) -> None:
        """Raise :class:`SaveError` for ``error`` when it is a failed write into ``target``."""
        cause = write_failure(error, target)
        if cause is None:
            return
        last = last_complete_checkpoint(run_dir)
        raise SaveError(
            f"Could not save {target} at step {self.state.global_step}: {cause}. "
            + (f"The last complete checkpoint is {last}; nothing earlier was removed. " if last else
               "There is no complete checkpoint yet. ")
            + "Free space (or choose another output_dir) and resume with --resume_from_checkpoint true."
        ) from error

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """``Trainer.save_model`` and the trainer's own files; a failed write is one :class:`SaveError`."""
        target = output_dir if output_dir is not None else self.args.output_dir
        try:
            super().save_model(output_dir, _internal_call)
            if self.args.should_save:
                self._save_extra_state(target, checkpoint=_internal_call)
        except Exception as error:
            if not _internal_call:  # a checkpoint's failed write is reported by _save_checkpoint
                self._raise_save_error(error, target, self.args.output_dir)
            raise

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Restore the weights through ``from_pretrained`` (which converts legacy key names)."""
        target = self.model if model is None else model
        if isinstance(target, PreTrainedModel) and not self.is_fsdp_enabled:
            restored = type(target).from_pretrained(resume_from_checkpoint, dtype=target.dtype)
            target.load_state_dict(restored.state_dict())
        else:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
