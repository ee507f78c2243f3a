"""The interface every attack implements."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from ...errors import NullspaceError
from ...pixels import PixelSpaceClassifier


class Attack(ABC):
    """An adversarial attack on a :class:`~nullspace_hf.pixels.PixelSpaceClassifier`.

    Subclasses are frozen dataclasses whose fields are the attack's hyper-parameters; ``name`` is
    the key used by :func:`~nullspace_hf.evaluation.attacks.resolve_attacks` and in reports,
    ``column`` the column title in the paper's Table 2.
    """

    name: ClassVar[str]
    column: ClassVar[str]

    @abstractmethod
    def perturb(self, classifier: PixelSpaceClassifier, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return adversarial versions of ``pixels`` (same shape, values in [0, 1]) for the true ``labels``."""

    def config(self) -> dict[str, Any]:
        """The attack's hyper-parameters, as written into reports."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @abstractmethod
    def threat_model(self) -> dict[str, Any]:
        """The threat model, as RobustBench's entries state it: ``{"threat_model": "Linf" | "L2" | "patch",
        "epsilon": the budget in [0, 1] pixel units, or None for an unbounded attack}``."""


def check_positive(owner: str, **values: float) -> None:
    """Raise a ``ValueError`` naming ``owner`` and the field for each value that is not > 0."""
    for field, value in values.items():
        if not value > 0:
            raise NullspaceError(f"{owner}: {field} must be > 0, got {value}.")
