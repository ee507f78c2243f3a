"""The project's exception for user errors: what the command line reports in one line, with exit status 2."""

from __future__ import annotations


class NullspaceError(ValueError):
    """A setting, a file or an input the user gave cannot work; the message says what to fix.

    Every error of this package that a user can fix derives from it (:class:`~nullspace_hf.checks.SaveError`,
    :class:`~nullspace_hf.hub.HubPushError`, ...). The doors (``nullspace-hf``, the recipes) print such an
    error as one line ``prog: error: ...`` and exit with status 2; any other exception, a plain
    ``ValueError`` from a bug included, keeps its traceback. It is a ``ValueError``, so code that caught the
    package's bad-input errors as ``ValueError`` still does.
    """
