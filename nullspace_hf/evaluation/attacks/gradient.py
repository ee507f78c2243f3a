"""FGSM, PGD and Carlini–Wagner L2, run through foolbox in [0, 1] pixel space.

foolbox (Rauber et al., JOSS 2020) is used as it stands: it works on torch tensors end to end, takes
any ``nn.Module`` returning logits, clips to the pixel bounds, and its FGSM agrees bit for bit with a
hand-written one (see ``docs/evaluation.md`` for the measurements behind this choice).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ...errors import NullspaceError
from ...modeling import frozen_eval
from ...pixels import PixelSpaceClassifier
from .base import Attack, check_positive


def _foolbox() -> Any:
    try:
        import foolbox
    except ImportError as error:
        raise NullspaceError(
            "The FGSM, PGD and CW attacks need foolbox: pip install 'nullspace-hf[eval]'."
        ) from error
    return foolbox


def _run_foolbox(attack: Any, classifier: PixelSpaceClassifier, pixels: torch.Tensor, labels: torch.Tensor,
                 epsilon: float | None) -> torch.Tensor:
    """Run a foolbox attack on pixels in [0, 1] (the model in eval mode, its weights frozen) and return its
    clipped adversarial images."""
    with frozen_eval(classifier):
        model = _foolbox().PyTorchModel(classifier, bounds=(0.0, 1.0), device=pixels.device)
        _, clipped, _ = attack(model, pixels, labels, epsilons=epsilon)
    return clipped.detach()


@dataclass(frozen=True)
class FGSM(Attack):
    """Fast Gradient Sign Method (Goodfellow et al., ICLR 2015): ``x + ε·sign(∇ₓ CE)``, clipped to [0, 1].

    The paper (§5.1, App. C) uses ε = 1/255, following Mao et al. (2022).
    """

    epsilon: float = 1 / 255

    name: ClassVar[str] = "fgsm"
    column: ClassVar[str] = "FGSM"

    def __post_init__(self) -> None:
        if not self.epsilon >= 0:
            raise NullspaceError(f"FGSM: epsilon must be >= 0, got {self.epsilon}.")

    def threat_model(self) -> dict[str, Any]:
        """L∞, ε in [0, 1] pixel units."""
        return {"threat_model": "Linf", "epsilon": self.epsilon}

    def perturb(self, classifier: PixelSpaceClassifier, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One signed-gradient step of size ``epsilon`` (L∞)."""
        return _run_foolbox(_foolbox().attacks.FGSM(), classifier, pixels, labels, self.epsilon)


@dataclass(frozen=True)
class PGD(Attack):
    """L∞ projected gradient descent (Madry et al., ICLR 2018), the attack of the paper's Table 3 baselines.

    ``steps`` signed-gradient steps of ``step_size`` from a uniform random start in the ε-ball, each
    projected back onto the ball and onto [0, 1]. Defaults: ε = 1/255 (the FGSM budget of Table 2, so
    that both columns compare), step size ε/4 (``step_size=None``), 10 steps, random start.
    """

    epsilon: float = 1 / 255
    step_size: float | None = None
    steps: int = 10
    random_start: bool = True

    name: ClassVar[str] = "pgd"
    column: ClassVar[str] = "PGD"

    def __post_init__(self) -> None:
        if not self.epsilon >= 0:
            raise NullspaceError(f"PGD: epsilon must be >= 0, got {self.epsilon}.")
        check_positive("PGD", steps=self.steps)
        if self.step_size is not None:
            check_positive("PGD", step_size=self.step_size)

    def config(self) -> dict[str, Any]:
        """The hyper-parameters, with the step size actually used."""
        return {**super().config(), "step_size": self.step_size if self.step_size is not None else self.epsilon / 4}

    def threat_model(self) -> dict[str, Any]:
        """L∞, ε in [0, 1] pixel units."""
        return {"threat_model": "Linf", "epsilon": self.epsilon}

    def perturb(self, classifier: PixelSpaceClassifier, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``steps`` projected signed-gradient steps inside the L∞ ball of radius ``epsilon``."""
        attack = _foolbox().attacks.LinfPGD(abs_stepsize=self.config()["step_size"], steps=self.steps,
                                            random_start=self.random_start)
        return _run_foolbox(attack, classifier, pixels, labels, self.epsilon)


@dataclass(frozen=True)
class CarliniWagnerL2(Attack):
    """Carlini–Wagner L2 attack (Carlini and Wagner, IEEE S&P 2017).

    Minimises ``‖δ‖₂² + c·max(Z_y − max_{i≠y} Z_i, −κ)`` with Adam in tanh space; the result is the
    smallest successful perturbation found, or the clean image. Defaults follow torchattacks' ``CW``,
    the library of the authors' evaluation code: c = 1, κ = 0, 50 Adam steps of 0.01, no binary
    search over c.
    """

    steps: int = 50
    step_size: float = 0.01
    confidence: float = 0.0
    initial_const: float = 1.0
    binary_search_steps: int = 1

    name: ClassVar[str] = "cw"
    column: ClassVar[str] = "CW"

    def __post_init__(self) -> None:
        check_positive("CW", steps=self.steps, step_size=self.step_size, initial_const=self.initial_const,
                       binary_search_steps=self.binary_search_steps)
        if self.confidence < 0:
            raise NullspaceError(f"CW: confidence must be >= 0, got {self.confidence}.")

    def threat_model(self) -> dict[str, Any]:
        """L2, unbounded: the smallest successful perturbation found."""
        return {"threat_model": "L2", "epsilon": None}

    def perturb(self, classifier: PixelSpaceClassifier, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The minimal-L2 adversarial image found for each sample (unbounded attack)."""
        attack = _foolbox().attacks.L2CarliniWagnerAttack(
            binary_search_steps=self.binary_search_steps, steps=self.steps, stepsize=self.step_size,
            confidence=self.confidence, initial_const=self.initial_const, abort_early=True,
        )
        return _run_foolbox(attack, classifier, pixels, labels, None)
