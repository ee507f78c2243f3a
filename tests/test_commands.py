"""``nullspace-hf <command>``: one pattern for every job, one flag style, the training jobs through accelerate."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from nullspace_hf import cli
from nullspace_hf.parsing import comma_ints, comma_list, parse_with_config
from nullspace_hf.scripts import evaluate, finetune, inspect, pretrain, watermark

JOBS = [finetune, pretrain, inspect, evaluate, watermark]
SNAKE_FLAG = re.compile(r"^--[a-z][a-z0-9_]*$")


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.make_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("job", JOBS, ids=lambda job: job.NAME)
def test_every_job_is_a_module_with_make_parser_main_and_cli(job):
    assert callable(job.main) and callable(job.cli)
    standalone = job.make_parser()
    registered = _subcommands()[job.NAME]
    assert isinstance(standalone, argparse.ArgumentParser) and registered.prog == f"nullspace-hf {job.NAME}"
    flags = lambda parser: {s for a in parser._actions for s in a.option_strings}  # noqa: E731
    assert flags(standalone) == flags(registered)


def test_the_command_has_exactly_the_jobs_of_the_package():
    assert set(_subcommands()) == {job.NAME for job in JOBS}
    assert {job.NAME for job in cli.LAUNCHED_JOBS} == {"finetune", "pretrain"}


@pytest.mark.parametrize("name", ["finetune", "pretrain", "inspect", "evaluate", "watermark"])
def test_every_flag_is_written_in_snake_case(name):
    parser = _subcommands()[name]
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        # HfArgumentParser also accepts a --dashed-alias of each --snake_case field; the snake one is always there
        snake = [flag for flag in action.option_strings if SNAKE_FLAG.match(flag)]
        assert snake, f"{name}: {action.option_strings} has no --snake_case spelling"
        if name in ("inspect", "evaluate", "watermark"):
            assert action.option_strings == snake, f"{name}: {action.option_strings}"


def test_lists_are_comma_separated_everywhere():
    assert comma_list("fgsm, pgd") == ["fgsm", "pgd"] and comma_list("none") == [] and comma_ints("1,3") == [1, 3]
    args = evaluate.make_parser().parse_args(["m", "--dataset", "digits", "--attacks", "fgsm,pgd",
                                              "--severities", "1,3", "--ood", "imagenet-r=/r,imagenet-a=/a"])
    assert (args.attacks, args.severities, args.ood) == (["fgsm", "pgd"], [1, 3], ["imagenet-r=/r", "imagenet-a=/a"])
    assert inspect.make_parser().parse_args(["a,b"]).models == ["a", "b"]
    script_args, _ = parse_with_config(finetune.make_parser(), ["--eval_attacks", "fgsm,pgd", "--output_dir", "o"])
    assert comma_list(script_args.eval_attacks) == ["fgsm", "pgd"]


@pytest.mark.parametrize("job", [finetune, pretrain], ids=lambda job: job.NAME)
def test_every_training_job_takes_config_and_a_flag_wins_over_it(job, tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("learning_rate: 0.25\nseed: 7\noutput_dir: from-config\n", encoding="utf-8")
    _, training_args = parse_with_config(job.make_parser(), ["--config", str(config), "--seed", "3"])
    assert (training_args.learning_rate, training_args.seed, training_args.output_dir) == (0.25, 3, "from-config")


def test_pretrain_writes_under_outputs_of_the_working_directory_by_default():
    _, training_args = parse_with_config(pretrain.make_parser(), [])
    assert training_args.output_dir == os.path.join("outputs", "vit-pretrained")
    assert not Path(training_args.output_dir).is_absolute()


def _capture_launch(monkeypatch) -> list[argparse.Namespace]:
    import accelerate.commands.launch as accelerate_launch

    launched = []
    monkeypatch.setattr(accelerate_launch, "launch_command", launched.append)
    return launched


def test_nullspace_hf_finetune_goes_through_accelerate_launch(monkeypatch, tmp_path):
    launched = _capture_launch(monkeypatch)
    accelerate_config = tmp_path / "accelerate.yaml"
    accelerate_config.write_text("num_processes: 1\n", encoding="utf-8")
    argv = ["--max_steps", "3", "--num_processes", "2", "--output_dir", str(tmp_path / "out"),
            "--config_file", str(accelerate_config), "--eval_attacks", "fgsm,pgd"]
    assert cli.main(["finetune", *argv]) == 0
    (args,) = launched
    assert args.module and args.training_script == "nullspace_hf.scripts.finetune"
    assert args.num_processes == 2 and args.config_file == str(accelerate_config)
    assert args.training_script_args == ["--max_steps", "3", "--output_dir", str(tmp_path / "out"),
                                         "--eval_attacks", "fgsm,pgd"]


def test_a_bad_flag_stops_before_anything_is_launched(monkeypatch, capsys):
    launched = _capture_launch(monkeypatch)
    assert cli.main(["pretrain", "--learning_rate", "nan"]) == 2
    assert not launched
    assert capsys.readouterr().err.strip().startswith("nullspace-hf pretrain: error: Invalid NullspaceConfig")


def test_a_flag_neither_the_job_nor_accelerate_knows_is_one_line(monkeypatch, capsys):
    launched = _capture_launch(monkeypatch)
    assert cli.main(["pretrain", "--lerning_rate", "0.1"]) == 2
    assert not launched
    assert capsys.readouterr().err.strip().splitlines() == [
        "nullspace-hf pretrain: error: Unknown flags --lerning_rate: neither the job's "
        "(nullspace_hf.scripts.pretrain) nor `accelerate launch`'s; see --help of the command and `accelerate "
        "launch --help`."]


def test_the_exit_status_of_a_launched_job_is_the_commands(monkeypatch):
    import accelerate.commands.launch as accelerate_launch

    def failing(args):
        raise subprocess.CalledProcessError(returncode=2, cmd=["python", "-m", args.training_script])

    monkeypatch.setattr(accelerate_launch, "launch_command", failing)
    assert cli.main(["finetune", "--output_dir", "out"]) == 2


@pytest.mark.slow
def test_nullspace_hf_pretrain_runs_a_real_accelerate_launch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "nullspace_hf.cli", "pretrain", "--max_steps", "2",
                             "--hidden_size", "16", "--num_hidden_layers", "1", "--num_attention_heads", "2",
                             "--intermediate_size", "16", "--num_processes", "1", "--disable_tqdm", "true"],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "accelerate launch" in result.stderr  # accelerate's note on the launch settings it defaulted
    weights = load_file(tmp_path / "outputs" / "vit-pretrained" / "model.safetensors")
    assert weights["vit.embeddings.patch_embeddings.projection.weight"].shape[0] == 16


def test_a_job_runs_in_this_process_with_python_m(tiny_vit_dir):
    result = subprocess.run([sys.executable, "-m", "nullspace_hf.scripts.inspect", str(tiny_vit_dir), "--json"],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert '"nullity"' in result.stdout
