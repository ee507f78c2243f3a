"""``NullspaceConfig``: ``TrainingArguments`` plus the settings of Algorithm 1."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

NOISE_MODES = ("nullspace", "random", "none")
NOISE_LOSSES = ("squared_l2", "l2")
NOISY_FORWARDS = ("separate", "concat")


@dataclass
class NullspaceConfig(TrainingArguments):
    """Training arguments of :class:`~nullspace_hf.NullspaceTrainer`.

    Every ``transformers.TrainingArguments`` field is accepted; the fields below configure the noise
    synthesis and the augmented loss of Algorithm 1 (paper App. C). Defaults are the paper's except
    the synthesis schedule, chosen by ``benchmarks/overhead.py`` (docs/benchmarks.md): round 0 starts
    from U(−1, 1) and every later round from the previous noise × 1.1, which reaches ε in a few steps
    instead of ~300. ``noise_init_limit=3.0, noise_warm_start=False`` is the paper's schedule.
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
        default=1.0,
        metadata={"help": "A: a fresh noise starts from U(-A, A) (a large noise that is then shrunk; the paper: 3)."},
    )
    noise_max_steps: int = field(
        default=3000, metadata={"help": "T: largest number of synthesis steps per round (early stop at eps)."}
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
        default=True,
        metadata={
            "help": "Start each synthesis after round 0 from the previous round's noise (times noise_warm_start_scale, "
            "with noise_lr scaled to its size) instead of a fresh U(-A, A) (the paper: False)."
        },
    )
    noise_warm_start_scale: float = field(
        default=1.1,
        metadata={
            "help": "With noise_warm_start, the previous noise is multiplied by this factor before the new search, "
            "so that the search can follow the enlarged approximate nullspace of the fine-tuned model."
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

    def __post_init__(self) -> None:
        problems = []
        if self.noise_mode not in NOISE_MODES:
            problems.append(f"noise_mode={self.noise_mode!r} is not one of {', '.join(NOISE_MODES)}")
        if self.noise_loss not in NOISE_LOSSES:
            problems.append(f"noise_loss={self.noise_loss!r} is not one of {', '.join(NOISE_LOSSES)}")
        if self.noisy_forward not in NOISY_FORWARDS:
            problems.append(f"noisy_forward={self.noisy_forward!r} is not one of {', '.join(NOISY_FORWARDS)}")
        for name in ("noise_eps", "noise_lr", "noise_init_limit", "noise_refresh_steps", "noise_warm_start_scale"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("noise_max_steps", "noisy_loss_weight", "noise_log_norm_weight", "noise_reuse_batches"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            problems.append(f"ema_decay must be in (0, 1), got {self.ema_decay!r}")
        if problems:
            raise ValueError("Invalid NullspaceConfig: " + "; ".join(problems) + ".")
        super().__post_init__()
