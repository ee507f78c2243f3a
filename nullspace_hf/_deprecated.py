"""Old import paths that still work, with a ``DeprecationWarning`` naming the new one."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any


def moved_names(module: str, moved: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``module`` that resolves each old name in ``moved`` from its new home
    and warns that the old path is deprecated.

    Args:
        module: the old module's ``__name__``.
        moved: old name → ``"new.module"`` (same name there) or ``"new.module:NewName"``.
    """

    def __getattr__(name: str) -> Any:
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        target, _, new_name = moved[name].partition(":")
        new_name = new_name or name
        warnings.warn(f"{module}.{name} is deprecated: use {target}.{new_name}.", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(target), new_name)

    return __getattr__
