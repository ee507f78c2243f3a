"""AutoAttack (Croce and Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks"), its standard version, through the authors' code (``pyautoattack``).

The standard version is the one RobustBench reports: APGD-CE (100 iterations, no restart), APGD-T (targeted
DLR loss, 9 target classes), FAB-T (9 target classes) and Square (5,000 queries), each run on the images the
previous ones left correctly classified. Models need at least 4 classes (APGD-T's DLR loss). ``pyautoattack`` is
the authors' ``fra31/auto-attack`` as a PyPI package (torch only); ART's ``AutoAttack`` runs APGD-CE, APGD-DLR,
DeepFool and Square and has no FAB, so it cannot run the standard version (``docs/evaluation.md``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from ...errors import NullspaceError
from ...modeling import frozen_eval
from ...pixels import PixelSpaceClassifier
from .base import Attack

NORMS: tuple[str, ...] = ("Linf", "L2")


def _pyautoattack() -> Any:
    try:
        import pyautoattack
    except ImportError as error:
        raise NullspaceError("AutoAttack needs pyautoattack: pip install 'nullspace-hf[eval]'.") from error
    return pyautoattack


@dataclass(frozen=True)
class AutoAttack(Attack):
    """AutoAttack's standard version (APGD-CE, APGD-T, FAB-T, Square) within an ``norm`` ball of ``epsilon``.

    ``epsilon`` is in [0, 1] pixel units, like FGSM's and PGD's (default 1/255, their budget here; RobustBench
    uses 8/255 on CIFAR-10 and 4/255 on ImageNet for L∞). The targeted attacks take 9 target classes, or
    all but the true one for models with fewer than 10 classes. The random draws come from a seed taken
    from torch's generator, which the evaluation seeds per batch.
    """

    epsilon: float = 1 / 255
    norm: Literal["Linf", "L2"] = "Linf"
    version: ClassVar[str] = "standard"
    components: ClassVar[tuple[str, ...]] = ("apgd-ce", "apgd-t", "fab-t", "square")

    name: ClassVar[str] = "autoattack"
    column: ClassVar[str] = "AutoAttack"

    def __post_init__(self) -> None:
        if not self.epsilon > 0:
            raise NullspaceError(f"AutoAttack: epsilon must be > 0, got {self.epsilon}.")
        if self.norm not in NORMS:
            raise NullspaceError(f"AutoAttack: norm must be one of {', '.join(NORMS)}, got {self.norm!r}.")

    def config(self) -> dict[str, Any]:
        """The budget, norm, version and the attacks it runs."""
        return {"epsilon": self.epsilon, "norm": self.norm, "version": self.version,
                "attacks": ",".join(self.components)}

    def threat_model(self) -> dict[str, Any]:
        """``norm`` ball of radius ``epsilon`` in [0, 1] pixel units."""
        return {"threat_model": self.norm, "epsilon": self.epsilon}

    def perturb(self, classifier: PixelSpaceClassifier, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The images after the four attacks: adversarial where one succeeded, else the clean image."""
        seed = int(torch.randint(0, 2**31 - 1, ()))
        with frozen_eval(classifier):
            num_classes = classifier(pixels[:1]).shape[-1]
            if num_classes < 4:
                raise NullspaceError(f"AutoAttack needs a model with at least 4 classes (APGD-T's targeted DLR loss "
                                     f"compares the 1st, 3rd and 4th largest logits); this one has {num_classes}.")
            attack = _pyautoattack().AutoAttack(classifier, norm=self.norm, eps=self.epsilon, version=self.version,
                                                seed=seed, device=pixels.device)
            attack.verbose = False
            attack.apgd_targeted.n_target_classes = attack.fab.n_target_classes = min(9, num_classes - 1)
            logging.getLogger("auto-attack").setLevel(logging.ERROR)  # its checks also warn through `warnings`
            adversarial, _ = attack.run_standard_evaluation(pixels, labels, batch_size=len(pixels))
        adversarial = adversarial.detach()
        broken = ~torch.isfinite(adversarial).flatten(1).all(dim=1)  # a failed search never replaces the image
        adversarial[broken] = pixels[broken]
        return adversarial.clamp(0.0, 1.0)
