"""User errors: one project exception type, one line and exit status 2 at the command line; anything else keeps
its traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from transformers import HfArgumentParser

from nullspace_hf import NullspaceConfig, NullspaceError
from nullspace_hf.checks import NonFiniteError, SaveError
from nullspace_hf.cli import main
from nullspace_hf.hub import HubPushError
from nullspace_hf.lock import OutputDirBusyError
from nullspace_hf.parsing import parse_with_config, run_command


@pytest.mark.parametrize("error_type", [NonFiniteError, SaveError, HubPushError, OutputDirBusyError])
def test_the_package_errors_a_user_can_fix_are_nullspace_errors(error_type):
    assert issubclass(error_type, NullspaceError) and issubclass(NullspaceError, ValueError)


def test_a_user_error_is_one_line_and_exit_status_2(capsys):
    def job():
        raise SaveError("Could not save the model: no space left on the device.")

    assert run_command("finetune", job) == 2
    assert capsys.readouterr().err == "finetune: error: Could not save the model: no space left on the device.\n"


def test_a_plain_value_error_keeps_its_traceback():
    with pytest.raises(ValueError, match="invalid literal"):
        run_command("finetune", lambda: int("a bug"))


def test_a_bug_under_the_command_line_keeps_its_traceback(monkeypatch, tiny_vit_dir):
    def broken(*args, **kwargs):
        raise ValueError("a bug inside the package")

    monkeypatch.setattr("nullspace_hf.scripts.inspect.inspect_models", broken)
    with pytest.raises(ValueError, match="a bug inside the package"):
        main(["inspect", str(tiny_vit_dir)])


def test_the_console_script_prints_a_traceback_for_a_bug_and_one_line_for_a_user_error(tmp_path):
    # both processes start at once (their imports take seconds each), then each is checked
    bug = subprocess.Popen([sys.executable, "-c", "import sys; from nullspace_hf.parsing import run_command; "
                            "sys.exit(run_command('prog', lambda: int('a bug')))"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    user = subprocess.Popen([sys.executable, "-m", "nullspace_hf.cli", "inspect", str(tmp_path / "missing")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    _, bug_stderr = bug.communicate(timeout=300)
    _, user_stderr = user.communicate(timeout=300)
    assert bug.returncode == 1
    assert "Traceback (most recent call last)" in bug_stderr and "ValueError: invalid literal" in bug_stderr
    assert user.returncode == 2, user_stderr
    assert user_stderr.strip().splitlines() == [
        f"nullspace-hf inspect: error: {str(tmp_path / 'missing')!r} does not exist: give a model directory or a Hub "
        "id such as 'user/name'."]


def test_a_setting_that_training_arguments_refuses_is_a_user_error():
    parser = HfArgumentParser(NullspaceConfig)
    with pytest.raises(NullspaceError, match="load_best_model_at_end"):
        parse_with_config(parser, ["--output_dir", "out", "--load_best_model_at_end", "true",
                                   "--eval_strategy", "steps", "--save_strategy", "epoch"])

