"""PGD adversarial fine-tuning baselines of Table 3: Madry et al. (ICLR 2018) and TRADES (Zhang et al., ICML 2019).

Users compare nullspace fine-tuning against these, so they live in the package:
``AdversarialTrainer(model, AdversarialConfig(adversarial_method="trades"), processing_class=processor)``.
The perturbation budget is an L∞ ball in [0, 1] pixel units (the unit of the evaluation's FGSM/PGD);
the attack runs on the model's normalised input, where that ball is a per-channel box
(:class:`~nullspace_hf.pixels.InputBox`) of the image processor's rescale and normalisation
(:class:`~nullspace_hf.pixels.PixelTransform`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, Trainer

from .config import BaseConfig
from .distributed import FullyShardedMixin
from .errors import NullspaceError
from .faults import FaultTolerantMixin
from .hub import ModelCardMixin
from .lora import PeftSaveMixin, wrap_with_peft
from .modeling import float_logits, frozen_eval
from .pixels import InputBox, PixelTransform

ADVERSARIAL_METHODS = ("madry", "trades")


@dataclass
class AdversarialConfig(BaseConfig):
    """Training arguments of :class:`AdversarialTrainer`: ``TrainingArguments``,
    :class:`~nullspace_hf.config.BaseConfig` (finite settings, no token in ``training_args.bin``,
    ``overwrite_output_dir``) and the PGD settings.

    Parameters:
        > The attack that makes the training examples

        adversarial_method (`str`, defaults to `"madry"`):
            ``"madry"``: CE on PGD examples only; ``"trades"``: CE(clean) + β·KL(clean ‖ adversarial).
        adversarial_epsilon (`float`, defaults to `1/255`):
            L∞ radius of the perturbation in [0, 1] pixel units.
        adversarial_steps (`int`, defaults to `10`):
            PGD steps per training batch.
        adversarial_step_size (`float` or `None`, defaults to `None`):
            PGD step in pixel units; ``None``: 2.5·ε / steps (Madry et al.).

        > TRADES

        trades_beta (`float`, defaults to `6.0`):
            β, the weight of the KL term.
    """

    adversarial_method: str = field(
        default="madry",
        metadata={"help": "'madry': CE on PGD examples only; 'trades': CE(clean) + beta * KL(clean || adversarial).",
                  "choices": list(ADVERSARIAL_METHODS)},
    )
    adversarial_epsilon: float = field(
        default=1 / 255,
        metadata={"help": "L-inf radius of the perturbation in [0, 1] pixel units (paper FGSM: 1/255)."},
    )
    adversarial_steps: int = field(default=10, metadata={"help": "PGD steps per training batch."})
    adversarial_step_size: float | None = field(
        default=None, metadata={"help": "PGD step in pixel units (default 2.5 * epsilon / steps, Madry et al.)."}
    )
    trades_beta: float = field(default=6.0, metadata={"help": "beta of TRADES (weight of the KL term)."})

    def _problems(self) -> list[str]:
        problems = super()._problems()
        if self.adversarial_method not in ADVERSARIAL_METHODS:
            problems.append(f"adversarial_method={self.adversarial_method!r} is not one of "
                            f"{', '.join(ADVERSARIAL_METHODS)}")
        if not self.adversarial_epsilon > 0:
            problems.append(f"adversarial_epsilon must be > 0, got {self.adversarial_epsilon!r}")
        if self.adversarial_steps < 1:
            problems.append(f"adversarial_steps must be >= 1, got {self.adversarial_steps!r}")
        if self.adversarial_step_size is not None and not self.adversarial_step_size > 0:
            problems.append(f"adversarial_step_size must be > 0, got {self.adversarial_step_size!r}")
        if self.trades_beta < 0:
            problems.append(f"trades_beta must be >= 0, got {self.trades_beta!r}")
        return problems

    @property
    def pgd_step_size(self) -> float:
        """The PGD step in pixel units."""
        if self.adversarial_step_size is not None:
            return self.adversarial_step_size
        return 2.5 * self.adversarial_epsilon / self.adversarial_steps


def pgd_perturb(
    model: nn.Module,
    pixel_values: torch.Tensor,
    objective: Callable[[torch.Tensor], torch.Tensor],
    box: InputBox,
    *,
    epsilon: float,
    step_size: float,
    steps: int,
    start: str = "uniform",
) -> torch.Tensor:
    """L∞ projected gradient ascent on ``objective(logits)`` around ``pixel_values`` (Madry et al., Eq. 2.1 inner max).

    Each step moves the input by ``step_size`` along the sign of the gradient, then projects it back
    onto the ε-ball around the clean input and onto the valid pixel range. Budgets are in pixel units.

    Args:
        model: the classifier (called as ``model(pixel_values=...)``); its weights get no gradient.
        pixel_values: the clean, normalised batch.
        objective: maps the logits of the perturbed batch to the scalar to maximise.
        box: the valid input range and the pixel unit (:class:`~nullspace_hf.pixels.InputBox`).
        epsilon, step_size: L∞ radius and step, in pixel units.
        steps: number of gradient steps.
        start: ``"uniform"`` (U(−ε, ε), Madry) or ``"gaussian"`` (0.001·N(0, 1), TRADES).
    """
    box = box.to(pixel_values)
    clean = pixel_values.detach()
    radius = epsilon * box.unit
    low, high = torch.maximum(clean - radius, box.lower), torch.minimum(clean + radius, box.upper)
    if start == "uniform":
        noise = (torch.rand_like(clean) * 2 - 1) * radius
    elif start == "gaussian":
        noise = 0.001 * torch.randn_like(clean) * box.unit
    else:
        raise NullspaceError(f"Unknown PGD start {start!r}: use 'uniform' or 'gaussian'.")
    adversarial = torch.clamp(clean + noise, low, high)
    with frozen_eval(model):
        for _ in range(steps):
            adversarial.requires_grad_(True)
            with torch.enable_grad():
                (gradient,) = torch.autograd.grad(objective(float_logits(model, adversarial)), [adversarial])
            adversarial = torch.clamp(adversarial.detach() + step_size * box.unit * gradient.sign(), low, high)
    return adversarial.detach()


def madry_loss(model: nn.Module, pixel_values: torch.Tensor, labels: torch.Tensor, box: InputBox, *,
               epsilon: float, step_size: float, steps: int,
               attack_model: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Madry et al. (Eq. 2.1): CE(f(x'), y) at the PGD maximiser x' of CE in the ε-ball.

    ``attack_model`` (default ``model``) searches x', e.g. the module inside a distributed wrapper.
    Returns the loss and the logits it was computed from.
    """
    adversarial = pgd_perturb(attack_model or model, pixel_values, lambda logits: F.cross_entropy(logits, labels),
                              box, epsilon=epsilon, step_size=step_size, steps=steps, start="uniform")
    logits = float_logits(model, adversarial)
    return F.cross_entropy(logits, labels), logits


def trades_loss(model: nn.Module, pixel_values: torch.Tensor, labels: torch.Tensor, box: InputBox, *,
                epsilon: float, step_size: float, steps: int, beta: float,
                attack_model: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """TRADES (Zhang et al., Eq. 5): CE(f(x), y) + β·KL(f(x) ‖ f(x')), x' the PGD maximiser of the KL term.

    Returns the loss and the clean logits.
    """
    logits = float_logits(model, pixel_values)
    target = logits.detach().softmax(-1)
    adversarial = pgd_perturb(
        attack_model or model, pixel_values,
        lambda perturbed: F.kl_div(perturbed.log_softmax(-1), target, reduction="batchmean"), box,
        epsilon=epsilon, step_size=step_size, steps=steps, start="gaussian")
    robust = F.kl_div(float_logits(model, adversarial).log_softmax(-1), logits.softmax(-1), reduction="batchmean")
    return F.cross_entropy(logits, labels) + beta * robust, logits


class AdversarialTrainer(FaultTolerantMixin, ModelCardMixin, PeftSaveMixin, FullyShardedMixin, Trainer):
    """A ``transformers.Trainer`` for PGD adversarial fine-tuning (Madry or TRADES), the baselines of Table 3.

    The attack needs to know what one pixel is in the model's input: pass the image processor as
    ``processing_class`` (its rescale and normalisation), or a
    :class:`~nullspace_hf.pixels.PixelTransform` as ``pixel_transform``.

    Args:
        model: an image-classification model (``model(pixel_values=...).logits``).
        args: an :class:`AdversarialConfig`.
        pixel_transform: the input normalisation; read from ``processing_class`` when not given.
        peft_config: a peft config (``peft.LoraConfig``): only its adapters and ``modules_to_save`` train, and the
            saved model is a plain checkpoint with the adapters merged (:mod:`~nullspace_hf.lora`).
        **kwargs: any other ``transformers.Trainer`` argument.
    """

    _tag_names = ["adversarial-training", "robustness", "vision-transformer", "image-classification"]
    loss_is_scaled_for_ga = False

    def __init__(self, model: PreTrainedModel | None = None, args: AdversarialConfig | None = None,
                 pixel_transform: PixelTransform | None = None, peft_config: Any | None = None, **kwargs: Any):
        if not isinstance(args, AdversarialConfig):
            raise NullspaceError(f"AdversarialTrainer needs an AdversarialConfig as `args`, got {type(args).__name__}.")
        if model is None or not isinstance(model, nn.Module):
            raise NullspaceError("AdversarialTrainer needs `model`: an image-classification model instance.")
        if pixel_transform is None:
            processor = kwargs.get("processing_class")
            if processor is None or not hasattr(processor, "rescale_factor"):
                raise NullspaceError("AdversarialTrainer needs the model's image processor as `processing_class` "
                                     "(or `pixel_transform=`) to express the pixel-space budget on its input.")
            pixel_transform = PixelTransform.from_processor(processor, model.config.num_channels)
        model = wrap_with_peft(model, peft_config, args)
        super().__init__(model=model, args=args, **kwargs)
        self.box = InputBox.from_transform(pixel_transform)

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The Madry or TRADES loss in training; the clean cross-entropy in evaluation."""
        labels, pixel_values = inputs["labels"], inputs["pixel_values"]
        if not model.training:
            outputs = model(pixel_values=pixel_values)
            loss = F.cross_entropy(outputs.logits.float(), labels)
            return (loss, outputs) if return_outputs else loss
        args = self.args
        budget = {"epsilon": args.adversarial_epsilon, "step_size": args.pgd_step_size, "steps": args.adversarial_steps,
                  "attack_model": self.accelerator.unwrap_model(model)}
        if args.adversarial_method == "madry":
            loss, logits = madry_loss(model, pixel_values, labels, self.box, **budget)
        else:
            loss, logits = trades_loss(model, pixel_values, labels, self.box, beta=args.trades_beta, **budget)
        return (loss, {"logits": logits}) if return_outputs else loss
