"""Adversarial attacks in [0, 1] pixel space: FGSM, PGD and CW through foolbox, AutoAttack through the authors'
code (pyautoattack), PatchFool written here."""

from __future__ import annotations

from collections.abc import Iterable

from ...errors import NullspaceError
from .autoattack import AutoAttack
from .base import Attack
from .gradient import FGSM, PGD, CarliniWagnerL2
from .patchfool import PatchFool

ATTACKS: dict[str, type[Attack]] = {cls.name: cls for cls in (FGSM, PGD, CarliniWagnerL2, PatchFool, AutoAttack)}
"""Attack classes by name; ``ATTACKS[name]()`` has the paper's defaults."""

DEFAULT_ATTACKS: tuple[str, ...] = ("fgsm", "pgd", "cw", "patchfool")


def resolve_attacks(attacks: Iterable[str | Attack] | str | None) -> list[Attack]:
    """Turn attack names (default hyper-parameters) and configured :class:`Attack` objects into attacks.

    ``None``, ``"none"`` or an empty sequence mean no attack.

    Raises:
        ValueError: an unknown name (the message lists the known ones) or a name given twice.
    """
    if attacks is None or attacks == "none":
        return []
    if isinstance(attacks, (str, Attack)):
        attacks = [attacks]
    resolved: list[Attack] = []
    for attack in attacks:
        if isinstance(attack, str):
            if attack.lower() not in ATTACKS:
                raise NullspaceError(f"Unknown attack {attack!r}: choose from {', '.join(ATTACKS)}.")
            attack = ATTACKS[attack.lower()]()
        elif not isinstance(attack, Attack):
            raise NullspaceError(f"Attacks are names ({', '.join(ATTACKS)}) or Attack objects, got {attack!r}.")
        if any(other.name == attack.name for other in resolved):
            raise NullspaceError(f"Attack {attack.name!r} is given twice.")
        resolved.append(attack)
    return resolved


__all__ = ["ATTACKS", "DEFAULT_ATTACKS", "Attack", "AutoAttack", "CarliniWagnerL2", "FGSM", "PGD", "PatchFool",
           "resolve_attacks"]
