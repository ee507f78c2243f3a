"""Start a job of the package through ``accelerate launch``, as ``trl <command>`` does: the user's ``accelerate
config`` (or ``--config_file``) applies, and the launch flags given on the command line override it."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from .errors import NullspaceError


def split_launch_args(argv: Sequence[str], launch_args: Sequence[str]) -> list[str]:
    """``argv`` without ``launch_args``, an ordered subsequence of it: what the job itself is given."""
    pending = list(launch_args)
    kept = []
    for arg in argv:
        if pending and arg == pending[0]:
            pending.pop(0)
        else:
            kept.append(arg)
    return kept


def launch(module: str, launch_args: Sequence[str], job_args: Sequence[str]) -> int:
    """Run ``accelerate launch [launch_args] -m module [job_args]`` in this process and return the job's exit status.

    Raises:
        NullspaceError: ``launch_args`` holds a flag that ``accelerate launch`` does not know either.

    ``-m`` keeps the job's folder off ``sys.path`` (its modules are named like the commands, e.g.
    ``inspect``). Each process prints its own errors; a failed job is its exit status here, not
    accelerate's ``CalledProcessError`` traceback.
    """
    from accelerate.commands.launch import launch_command, launch_command_parser

    parser = launch_command_parser()
    _, unknown = parser.parse_known_args([*launch_args, "--module", module])
    if unknown:
        raise NullspaceError(f"Unknown flags {' '.join(unknown)}: neither the job's ({module}) nor `accelerate "
                             "launch`'s; see --help of the command and `accelerate launch --help`.")
    args = parser.parse_args([*launch_args, "--module", module, *job_args])
    try:
        launch_command(args)
    except subprocess.CalledProcessError as error:
        return error.returncode
    except Exception as error:  # torchrun's ChildFailedError: the first failed process's exit status
        failures = getattr(error, "failures", None)
        if not failures:
            raise
        return next(iter(failures.values())).exitcode or 1
    return 0
