"""The trainers' configs: ``BaseConfig`` (what every config of this package shares) and ``NullspaceConfig``."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from transformers import TrainingArguments

from .errors import NullspaceError
from .objectives import NOISY_LOSSES
from .processes import launched_without_accelerator

NOISE_MODES = ("nullspace", "random", "none")
NOISE_LOSSES = ("squared_l2", "l2")
NOISY_FORWARDS = ("separate", "concat")


HUB_ID_RULE = ("'name' or 'user/name' of letters, digits, '-', '_' and '.', neither starting nor ending with '-' or "
               "'.', at most 96 characters")


def valid_hub_id(repo_id: str) -> bool:
    """Whether ``repo_id`` can name a Hub repository (``huggingface_hub.utils.validate_repo_id``)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return False
    return True


@dataclass
class BaseConfig(TrainingArguments):
    """``TrainingArguments`` with what every trainer of this package needs (as TRL's configs share one base).

    Its settings are checked when it is built, so that nothing fails after the work is done; the
    trainers built on it (``NullspaceTrainer``, ``AdversarialTrainer``) share the fault handling of
    :class:`~nullspace_hf.faults.FaultTolerantMixin`.

    Parameters:
        > What the base adds to ``TrainingArguments``

        overwrite_output_dir (`bool`, defaults to `False`):
            Train into an ``output_dir`` that holds an earlier run, replacing it; without it such an
            ``output_dir`` is refused unless ``resume_from_checkpoint`` is set.

        > What it checks and changes

        - every float setting its subclass adds (and ``learning_rate``) is finite, ``max_steps`` is not 0,
          ``hub_model_id`` is a valid Hub id;
        - ``training_args.bin`` (the pickled config, written into every checkpoint and the model and
          pushed with them) holds no ``*_token`` field: the live object keeps ``hub_token``, a loaded
          copy has ``None``;
        - several processes launched together on a machine without accelerator run as one CPU job
          (``use_cpu``), and no memory is pinned without a device.
    """

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into an output_dir that holds an earlier run (its checkpoints, model, results), "
                          "replacing it. Without it such an output_dir is refused unless resume_from_checkpoint is "
                          "set."},
    )

    def __getstate__(self) -> dict[str, Any]:
        """The pickled state (``training_args.bin``) without secrets: every ``*_token`` field is left out.

        ``Trainer`` saves its arguments with ``torch.save`` into every checkpoint and the final model,
        which ``push_to_hub`` uploads; transformers pickles ``hub_token`` in clear. The loaded copy has
        ``hub_token=None`` (the Hub login or ``HF_TOKEN`` still applies).
        """
        return {key: None if key.endswith("_token") else value for key, value in self.__dict__.items()}

    def __deepcopy__(self, memo: dict[int, Any]) -> BaseConfig:
        """A deep copy in memory keeps the token (only pickles leave it out)."""
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone

    def _problems(self) -> list[str]:
        """What is wrong with the settings, one phrase each; subclasses add theirs to this list."""
        problems = []
        inherited = {f.name for f in fields(TrainingArguments)}
        for f in fields(self):
            value = getattr(self, f.name)
            if (f.name not in inherited or f.name == "learning_rate") and isinstance(value, float) \
                    and not math.isfinite(value):
                problems.append(f"{f.name} must be a finite number, got {value!r}")
        if self.max_steps == 0:
            problems.append("max_steps=0 trains nothing: give a number of optimizer steps, or -1 to train for "
                            "num_train_epochs")
        if self.hub_model_id is not None and not valid_hub_id(self.hub_model_id):
            problems.append(f"hub_model_id={self.hub_model_id!r} is not a valid Hub repository id: give {HUB_ID_RULE}")
        return problems

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise NullspaceError(f"Invalid {type(self).__name__}: " + "; ".join(problems) + ".")
        if not self.use_cpu and launched_without_accelerator():
            self.use_cpu = True  # a real multi-process CPU run instead of the whole job once per process
        if self.use_cpu or not torch.accelerator.is_available():
            self.dataloader_pin_memory = False  # no device memory to pin for: torch warns on every DataLoader
        super().__post_init__()


@dataclass
class NullspaceConfig(BaseConfig):
    """Training arguments of :class:`~nullspace_hf.NullspaceTrainer`.

    Every ``transformers.TrainingArguments`` and :class:`BaseConfig` field is accepted; the fields below configure the
    noise synthesis and the augmented loss of Algorithm 1 (paper App. C). Defaults are the paper's except
    the synthesis schedule, chosen by ``benchmarks/matrix.py`` on nine models with 16–256 patch tokens
    (docs/benchmarks.md, issue 22): every round, as in the paper, searches from a fresh U(−3, 3), but with
    the token-scaled descent (``noise_token_lr``) for at most 400 gradient steps, which ends with about the
    norm of the paper's own search in tens instead of hundreds to thousands of steps; its steps run on
    minibatches of 8 images (``noise_batch_size``) and it stops when its last 8 minibatches, 64 images, agree
    that the noise is inside ε (``noise_stop_batches``). ``noise_warm_start``
    starts later rounds from a redrawn start with the previous noise's size per token instead
    (:func:`~nullspace_hf.noise.redrawn_start`): fewer steps, but measured unstable on a 196-token ViT, so
    it is off by default. Every round ends with its mse_prob in ``[noise_boundary_band·ε, ε)``.
    ``noise_token_lr=0, noise_max_steps=3000, noise_batch_size=0, noise_stop_batches=1`` is the paper's schedule.
    """

    noise_mode: str = field(
        default="nullspace",
        metadata={
            "help": "Which noise augments fine-tuning: 'nullspace' (learned, Eq. 7/8), 'random' (Gaussian scaled "
            "into the eps-ball, Table 4 baseline) or 'none' (vanilla fine-tuning, same code path).",
            "choices": list(NOISE_MODES),
        },
    )
    noise_eps: float = field(
        default=0.03,
        metadata={"help": "eps of Eq. 5: synthesis stops once the batch mean of sum((softmax difference)^2) < eps."},
    )
    noise_lr: float = field(default=0.1, metadata={"help": "Learning rate of the noise synthesis (AdamW, cosine)."})
    noise_init_limit: float = field(
        default=3.0,
        metadata={"help": "A: a fresh noise starts from U(-A, A) (a large noise that is then shrunk; the paper: 3)."},
    )
    noise_token_lr: float = field(
        default=0.4,
        metadata={
            "help": "Learning rate of the per-token scales of the token-scaled descent (noise = s * (start + delta), "
            "one scale s in (0, 2) per patch token, beside the element-wise change delta at noise_lr): it finds "
            "the paper's large noise in tens instead of hundreds to thousands of steps on ViTs with many patches "
            "(docs/benchmarks.md, issue 22). 0 runs the paper's element-wise descent on the noise itself."
        },
    )
    noise_max_steps: int = field(
        default=400,
        metadata={
            "help": "T: gradient-step budget of a fresh synthesis (round 0, or every round without warm start; the "
            "paper: 3000). A search that uses it up is scaled into eps along its direction and logged with a warning."
        },
    )
    noise_warm_lr: float = field(
        default=0.1,
        metadata={
            "help": "Learning rate of a warm-started synthesis, like noise_lr given for a noise the size of U(-A, A) "
            "and scaled to the start's size (the same as noise_lr by default: a redrawn start lies nearer eps than a "
            "fresh one and needs fewer steps, not smaller ones; docs/benchmarks.md, issue 22)."
        },
    )
    noise_warm_max_steps: int = field(
        default=200,
        metadata={
            "help": "Gradient-step budget of a warm-started synthesis whose start is outside eps (a start inside eps "
            "takes no gradient step). A round that uses it up without entering eps ends with the larger of its last "
            "noise and the previous round's, each scaled into eps (the previous one never grown), and is logged "
            "with a warning."
        },
    )
    noise_boundary_band: float = field(
        default=0.5,
        metadata={
            "help": "Every round's noise ends with its synthesis-batch mse_prob in [band*eps, eps): a fresh start "
            "inside eps is first grown out of it, and the last step (or a warm start inside eps) is scaled to just "
            "inside (forward passes only). 0 runs "
            "the bare Algorithm 1 stop rule (a start inside eps is used as it is)."
        },
    )
    noise_refresh_steps: int = field(
        default=40, metadata={"help": "S: optimizer steps between two noise syntheses (one round of Algorithm 1)."}
    )
    noise_loss: str = field(
        default="squared_l2",
        metadata={
            "help": "Synthesis objective: 'squared_l2' (paper, Eq. 7/8) or 'l2' (the authors' first code).",
            "choices": list(NOISE_LOSSES),
        },
    )
    noise_log_norm_weight: float = field(
        default=0.0,
        metadata={"help": "lambda of Eq. 4's -lambda*log||v|| exploration term (0: plain Eq. 7/8)."},
    )
    noise_warm_start: bool = field(
        default=False,
        metadata={
            "help": "Start each synthesis after round 0 from a fresh U(-A, A) draw with the previous noise's size "
            "per patch token times noise_warm_start_scale, instead of a plain fresh U(-A, A) (the paper: False). A "
            "start the updated model still tolerates (inside eps) is kept and only placed in the band; one it does "
            "not is searched (noise_warm_lr, noise_warm_max_steps). Measured with noise_token_lr 0.2: at the default "
            "0.4 a warm round can overshoot and the next fall back (docs/benchmarks.md, issue 22)."
        },
    )
    noise_warm_start_scale: float = field(
        default=1.1,
        metadata={
            "help": "With noise_warm_start, the previous noise's size per token is multiplied by this factor for the "
            "next start, "
            "so that the search can follow the enlarged approximate nullspace of the fine-tuned model."
        },
    )
    noise_batch_size: int = field(
        default=8,
        metadata={
            "help": "Images per synthesis minibatch and device: each gradient step of the search runs on a new "
            "minibatch of this size (a quarter of the cost of a batch of 32 on the CPU, docs/benchmarks.md, issue "
            "22). 0: per_device_train_batch_size (the authors: their training batch)."
        },
    )
    noise_stop_batches: int = field(
        default=8,
        metadata={
            "help": "The search stops when Eq. 5's mse_prob over its last n minibatches, measured again on the noise "
            "of that step, is below eps, and its scale into [band*eps, eps) is judged on those n minibatches "
            "(forward passes only): with small minibatches the stop statistic is then a mean over n * "
            "noise_batch_size images, not over one lucky minibatch. 1: the paper's stop on the current minibatch."
        },
    )
    noise_reuse_batches: int = field(
        default=0,
        metadata={
            "help": "0: a new training minibatch every synthesis step (Algorithm 1). n > 0: each round's search "
            "cycles over n minibatches and computes their clean logits once (cheaper steps, noise fitted to "
            "n minibatches)."
        },
    )
    noisy_loss_weight: float = field(
        default=1.0, metadata={"help": "w in CE(clean) + w * CE(noisy) (Eq. 6 uses 1)."}
    )
    noise_train_scale: float = field(
        default=1.0,
        metadata={
            "help": "alpha: the noisy branch of Eq. 6 trains on alpha * noise, the noise still found on the eps "
            "boundary (alpha > 1: beyond the boundary, a noise the model is not yet invariant to; issue 26). 1: Eq. 6."
        },
    )
    noisy_loss: str = field(
        default="ce",
        metadata={
            "help": "The noisy term of Eq. 6: 'ce' (w * CE(f(u + v), y), the paper), 'kl' (beta * KL(softmax f(u) || "
            "softmax f(u + v)), an invariance loss of TRADES' shape, instead of the CE term) or 'ce+kl' (both). "
            "'kl' and 'ce+kl' run clean and noisy forwards in one backward (the gradient flows through both).",
            "choices": list(NOISY_LOSSES),
        },
    )
    noisy_kl_weight: float = field(
        default=6.0, metadata={"help": "beta of the KL term of noisy_loss 'kl' and 'ce+kl' (TRADES: 6)."}
    )
    noise_bank_size: int = field(
        default=1,
        metadata={
            "help": "K: keep the noises of the last K rounds and let every sample draw one of them at every step "
            "(more directions per step; issue 26). 1: Eq. 6's one noise per round."
        },
    )
    noise_random_scale: bool = field(
        default=False,
        metadata={
            "help": "Scale every sample's noise by its own factor drawn from U(0, 1) at every step, so the noisy "
            "branch sees the whole segment from 0 to noise_train_scale * noise (issue 26). False: Eq. 6."
        },
    )
    noisy_forward: str = field(
        default="separate",
        metadata={
            "help": "'separate': clean and noisy batches in two forward passes (less memory); 'concat': one "
            "forward over the concatenated batch.",
            "choices": list(NOISY_FORWARDS),
        },
    )
    ema_decay: float | None = field(
        default=None,
        metadata={
            "help": "Decay of an exponential moving average of the weights, used for evaluation and the saved "
            "model (the authors used 0.9998). Off when unset."
        },
    )

    train_ratio: float | None = field(
        default=None,
        metadata={
            "help": "The authors' round length: each round (noise_refresh_steps) is one pass over this share of the "
            "training set (they: 0.004 of ImageNet, 20 rounds). Sets noise_refresh_steps from the dataset size and "
            "the global batch; with max_steps unset, num_train_epochs counts rounds. Unset: noise_refresh_steps."
        },
    )
    crop_min_scale: float = field(
        default=1.0,
        metadata={"help": "Training augmentation: RandomResizedCrop with area scale in [this, 1] (the authors: "
                          "0.08); 1 = no crop."},
    )
    horizontal_flip_prob: float = field(
        default=0.0, metadata={"help": "Training augmentation: probability of a horizontal flip (the authors: 0.5)."}
    )
    rand_augment_ops: int = field(
        default=0, metadata={"help": "Training augmentation: RandAugment's number of operations (the authors: 2; "
                                     "0 = off)."}
    )
    rand_augment_magnitude: float = field(
        default=9.0, metadata={"help": "RandAugment's magnitude on timm's 0-10 scale (the authors: 9)."}
    )
    random_erasing_prob: float = field(
        default=0.0, metadata={"help": "Training augmentation: probability of erasing a random box (the authors: "
                                       "0.25)."}
    )
    mixup_prob: float = field(
        default=0.0,
        metadata={"help": "Probability that a training batch is mixed by mixup or cutmix, with soft targets in both "
                          "terms of Eq. 6 (the authors: 1.0; 0 = off). label_smoothing_factor smooths the targets."},
    )
    mixup_switch_prob: float = field(
        default=0.5,
        metadata={"help": "Share of the mixed batches that use cutmix instead of mixup (the authors: 0.5)."}
    )

    def _problems(self) -> list[str]:
        problems = super()._problems()
        if self.noise_mode not in NOISE_MODES:
            problems.append(f"noise_mode={self.noise_mode!r} is not one of {', '.join(NOISE_MODES)}")
        if self.noise_loss not in NOISE_LOSSES:
            problems.append(f"noise_loss={self.noise_loss!r} is not one of {', '.join(NOISE_LOSSES)}")
        if self.noisy_forward not in NOISY_FORWARDS:
            problems.append(f"noisy_forward={self.noisy_forward!r} is not one of {', '.join(NOISY_FORWARDS)}")
        for name in ("noise_eps", "noise_lr", "noise_warm_lr", "noise_init_limit", "noise_refresh_steps",
                     "noise_warm_start_scale"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("noise_max_steps", "noise_warm_max_steps", "noisy_loss_weight", "noise_log_norm_weight",
                     "noise_reuse_batches", "noise_token_lr", "noise_batch_size"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.noisy_loss not in NOISY_LOSSES:
            problems.append(f"noisy_loss={self.noisy_loss!r} is not one of {', '.join(NOISY_LOSSES)}")
        if not self.noise_train_scale > 0:
            problems.append(f"noise_train_scale must be > 0, got {self.noise_train_scale!r}")
        if self.noisy_kl_weight < 0:
            problems.append(f"noisy_kl_weight must be >= 0, got {self.noisy_kl_weight!r}")
        if self.noise_bank_size < 1:
            problems.append(f"noise_bank_size must be >= 1, got {self.noise_bank_size!r}")
        if self.noise_stop_batches < 1:
            problems.append(f"noise_stop_batches must be >= 1, got {self.noise_stop_batches!r}")
        if not 0 <= self.noise_boundary_band < 1:
            problems.append(f"noise_boundary_band must be in [0, 1), got {self.noise_boundary_band!r}")
        if self.train_ratio is not None and not 0 < self.train_ratio <= 1:
            problems.append(f"train_ratio must be in (0, 1], got {self.train_ratio!r}")
        if not 0 < self.crop_min_scale <= 1:
            problems.append(f"crop_min_scale must be in (0, 1], got {self.crop_min_scale!r}")
        for name in ("horizontal_flip_prob", "random_erasing_prob", "mixup_prob", "mixup_switch_prob"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} must be a probability in [0, 1], got {getattr(self, name)!r}")
        if self.rand_augment_ops < 0:
            problems.append(f"rand_augment_ops must be >= 0, got {self.rand_augment_ops!r}")
        if not 0 < self.rand_augment_magnitude < 10:
            problems.append(f"rand_augment_magnitude must be in (0, 10), got {self.rand_augment_magnitude!r}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            problems.append(f"ema_decay must be in (0, 1), got {self.ema_decay!r}")
        return problems
