"""Nothing lost when runs collide, saves are cut short, disks fill or a job is preempted; no secret in any file.

One test (or a parametrized family) per case of issue 24, through the Python API and the recipe where both apply.
docs/faults.md lists every case with its test.
"""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback, ViTImageProcessor

from nullspace_hf import AdversarialConfig, AdversarialTrainer, NullspaceConfig, NullspaceTrainer
from nullspace_hf.checkpoint import NOISE_FILE, resolve_checkpoint
from nullspace_hf.checks import SaveError
from nullspace_hf.data import TensorRows
from nullspace_hf.lock import HOLDER_FILE, LOCK_FILE, OutputDirBusyError, hold_output_dir
from nullspace_hf.preemption import Interrupted

from .helpers import RECIPE, digits_tensors, free_port, hub_env, make_tiny_model, recipe_args
from .hub_server import LoopbackHub

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
MODEL = dict(num_labels=10, image_size=16, patch_size=4, initializer_range=0.2)
SECRET = "hf_SECRET_token_24"
ATOL = 1e-6  # resumed and uninterrupted runs do the same float32 operations on one thread: only summation order
FORK = multiprocessing.get_context("fork")


@pytest.fixture(scope="module")
def rows():
    pixels, labels = digits_tensors("train")
    return TensorRows(pixels[:64], labels[:64])


def _config(output_dir: Path, **overrides) -> NullspaceConfig:
    values = dict(output_dir=str(output_dir), max_steps=8, per_device_train_batch_size=16, learning_rate=2e-3,
                  noise_refresh_steps=3, noise_max_steps=20, save_strategy="steps", save_steps=2, report_to="none",
                  seed=0, use_cpu=True, disable_tqdm=True)
    return NullspaceConfig(**{**values, **overrides})


def _trainer(output_dir: Path, dataset, **overrides) -> NullspaceTrainer:
    return NullspaceTrainer(model=make_tiny_model(**MODEL), args=_config(output_dir, **overrides),
                            train_dataset=dataset)


def _weights(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _assert_same_run(expected: NullspaceTrainer, resumed: NullspaceTrainer) -> None:
    """Same final weights (every tensor, encoder included) and noise as the uninterrupted run, within ATOL."""
    first, second = _weights(expected.model), _weights(resumed.model)
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], atol=ATOL, rtol=0, msg=name)
    torch.testing.assert_close(expected.noise, resumed.noise, atol=ATOL, rtol=0)
    assert [r["step"] for r in resumed.noise_history] == [r["step"] for r in expected.noise_history]


@pytest.fixture(scope="module")
def straight(rows, tmp_path_factory) -> NullspaceTrainer:
    """The uninterrupted 8-step run every interrupted one must reproduce."""
    trainer = _trainer(tmp_path_factory.mktemp("straight") / "out", rows)
    trainer.train()
    return trainer


def _one_line_error(recipe, argv: list[str], capsys, status: int = 2) -> str:
    assert recipe.cli(argv) == status
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("finetune: ")]
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err[-2000:]
    return lines[0]


def _no_work_done(output: Path) -> bool:
    return not (output / "corruption_cache").exists() and not (output / "model.safetensors").exists()


def _in_child(job, *args) -> int:
    """Run ``job(*args)`` in a forked process; its exit code (negative: the signal that ended it)."""
    process = FORK.Process(target=job, args=args)
    process.start()
    process.join(300)
    return process.exitcode


# ---- 1. a run holds its output_dir; a second one stops before any work, naming the holder ----

def _hold_until_released(output: str, ready, release) -> None:
    with hold_output_dir(output):
        ready.set()
        release.wait(120)


def test_a_second_run_into_a_held_output_dir_stops_before_any_work(recipe, small_data, rows, tmp_path, capsys):
    output = tmp_path / "out"
    ready, release = FORK.Event(), FORK.Event()
    holder = FORK.Process(target=_hold_until_released, args=(str(output), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        text = _one_line_error(recipe, recipe_args(small_data, output), capsys)
        assert "is in use by another run" in text and f"pid {holder.pid} on host {os.uname().nodename}" in text
        assert "started 20" in text and _no_work_done(output)
        started = []
        trainer = _trainer(output, rows)
        trainer.add_callback(_Recorder(started))
        with pytest.raises(OutputDirBusyError, match=f"pid {holder.pid}"):
            trainer.train()
        assert not started and not list(output.glob("checkpoint-*"))
    finally:
        release.set()
        holder.join(60)
    assert not (output / LOCK_FILE).exists() and not (output / HOLDER_FILE).exists()  # released and removed


def _hold_and_die(output: str) -> None:
    with hold_output_dir(output):
        os.kill(os.getpid(), signal.SIGKILL)


def test_the_lock_of_a_killed_run_is_taken_over_and_reported(rows, tmp_path, caplog):
    output = tmp_path / "out"
    killed = FORK.Process(target=_hold_and_die, args=(str(output),))
    killed.start()
    killed.join(60)
    assert killed.exitcode == -signal.SIGKILL and (output / HOLDER_FILE).is_file()
    with caplog.at_level(logging.WARNING, logger="nullspace_hf.lock"):
        _trainer(output, rows, max_steps=2, save_strategy="no").train()
    assert f"pid {killed.pid}" in caplog.text and "ended without releasing it" in caplog.text
    assert not (output / HOLDER_FILE).exists()


@pytest.mark.slow
def test_two_runs_started_together_into_one_output_dir_keep_one_complete_run(small_data, tmp_path):
    """The issue's collision: before, both exited 0 and the first run was silently gone."""
    output = tmp_path / "out"
    env = {**hub_env("http://127.0.0.1:9", tmp_path), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    argv = recipe_args(small_data, output, "--eval_attacks", "none", "--eval_corruptions", "none", "--save_strategy",
                       "steps", "--save_steps", "2", "--save_total_limit", "1")
    runs = [subprocess.Popen([sys.executable, str(RECIPE), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=tmp_path, env=env) for _ in range(2)]
    results = [(run.wait(600), *run.communicate()) for run in runs]
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [0, 2], [err[-2000:] for _, _, err in results]
    loser = next(err for status, _, err in results if status == 2)
    assert "is in use by another run (pid " in loser and "Traceback" not in loser
    assert (output / "model.safetensors").is_file() and (output / "checkpoint-4" / "trainer_state.json").is_file()
    assert resolve_checkpoint(True, str(output), "nullspace") == str(output / "checkpoint-4")


# ---- 2. checkpoints are visible only when complete; a kill at any moment leaves the previous one ----

class _Recorder(TrainerCallback):
    def __init__(self, started: list) -> None:
        self.started = started

    def on_step_begin(self, args, state, control, **kwargs):
        self.started.append(state.global_step)


def _die(*args, **kwargs) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _train_and_die_in_save(output: str, rows, where: str, overrides: dict) -> None:
    """Train, and SIGKILL this process inside the save of checkpoint-4 at ``where``."""
    import shutil

    import transformers.modeling_utils as modeling_utils
    import transformers.trainer_utils as trainer_utils
    from transformers.trainer_callback import TrainerState

    trainer = _trainer(Path(output), rows, **overrides)

    def at_step_4(original, path_test=lambda *a: True):
        def patched(*args, **kwargs):
            if trainer.state.global_step == 4 and path_test(*args):
                if where == "optimizer":  # half a file, as a kill during the write leaves it
                    with open(args[1], "wb") as handle:
                        handle.write(b"PK\x03\x04" + b"\x00" * 100)
                _die()
            return original(*args, **kwargs)
        return patched

    if where == "weights":
        modeling_utils.safe_save_file = at_step_4(modeling_utils.safe_save_file)
    elif where == "optimizer":
        torch.save = at_step_4(torch.save, lambda obj, path, *a: str(path).endswith("optimizer.pt"))
    elif where == "trainer_state":
        TrainerState.save_to_json = at_step_4(TrainerState.save_to_json)
    elif where == "rename":
        os.replace = at_step_4(os.replace)
    else:  # rotation: checkpoint-4 is complete, checkpoint-2 is being deleted
        trainer_utils.shutil = type("Shutil", (), {"rmtree": staticmethod(at_step_4(shutil.rmtree))})
    trainer.train()


KILLS = {"weights": "checkpoint-2", "optimizer": "checkpoint-2", "trainer_state": "checkpoint-2",
         "rename": "checkpoint-2", "rotation": "checkpoint-4"}


@pytest.mark.slow
@pytest.mark.parametrize("where", list(KILLS))
def test_a_run_killed_during_a_save_resumes_to_the_uninterrupted_result(rows, straight, tmp_path, caplog, where):
    output = tmp_path / "out"
    overrides = {"save_total_limit": 1}
    assert _in_child(_train_and_die_in_save, str(output), rows, where, overrides) == -signal.SIGKILL
    complete = output / KILLS[where]
    assert (complete / "trainer_state.json").is_file() and (complete / NOISE_FILE).is_file()
    assert not (output / "checkpoint-4").exists() or where == "rotation"  # never a half-written checkpoint-4
    assert (output / "checkpoint-2").exists() or where == "rotation"  # rotation waited for checkpoint-4
    resumed = _trainer(output, rows, **overrides)
    with caplog.at_level(logging.WARNING, logger="nullspace_hf.checkpoint"):
        resumed.train(resume_from_checkpoint=True)
    assert f"Resuming from {complete}, the newest complete checkpoint" in caplog.text
    if where != "rotation":
        assert "skipped the incomplete tmp-checkpoint-4 (a save cut short)" in caplog.text
    assert not list(output.glob("tmp-checkpoint-*"))  # the cut-short save is cleaned up
    _assert_same_run(straight, resumed)


def test_resume_true_takes_the_newest_complete_checkpoint_and_names_the_skipped_ones(rows, tmp_path, caplog):
    output = tmp_path / "out"
    _trainer(output, rows, max_steps=2).train()
    (output / "checkpoint-6").mkdir()  # what a save cut short left before issue 24: only the config
    (output / "checkpoint-6" / "config.json").write_text("{}")
    (output / "checkpoint-8").mkdir()
    (output / "checkpoint-8" / "model.safetensors").write_bytes(b"")
    (output / "tmp-checkpoint-10" / "checkpoint-10").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="nullspace_hf.checkpoint"):
        assert resolve_checkpoint(True, str(output), "nullspace") == str(output / "checkpoint-2")
    assert "tmp-checkpoint-10 (a save cut short)" in caplog.text
    assert "checkpoint-8 (no trainer_state.json)" in caplog.text and "checkpoint-6 (no model weights" in caplog.text
    with pytest.raises(ValueError, match=r"checkpoint-6 is an incomplete checkpoint .* resume from .*checkpoint-2"):
        resolve_checkpoint(str(output / "checkpoint-6"), str(output), "nullspace")


def test_the_recipe_names_an_incomplete_checkpoint_and_the_complete_one(recipe, small_data, rows, tmp_path, capsys):
    output = tmp_path / "run"
    _trainer(output, rows, max_steps=2).train()
    (output / "checkpoint-4").mkdir()
    (output / "checkpoint-4" / "config.json").write_text("{}")
    text = _one_line_error(recipe, recipe_args(small_data, tmp_path / "out", "--resume_from_checkpoint",
                                               str(output / "checkpoint-4")), capsys)
    assert "is an incomplete checkpoint" in text and str(output / "checkpoint-2") in text
    assert "fine-tune from it" not in text and _no_work_done(tmp_path / "out")


# ---- 3. a failed save is one clear error; nothing earlier is removed ----

def _fail_at_step(trainer, step: int, monkeypatch) -> None:
    import transformers.modeling_utils as modeling_utils

    original = modeling_utils.safe_save_file

    def full_disk(*args, **kwargs):
        if trainer.state.global_step == step:
            raise OSError(errno.ENOSPC, "No space left on device", args[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(modeling_utils, "safe_save_file", full_disk)


def test_a_full_disk_during_a_save_is_one_error_and_keeps_the_last_checkpoint(rows, tmp_path, monkeypatch):
    output = tmp_path / "out"
    trainer = _trainer(output, rows, save_total_limit=1)
    _fail_at_step(trainer, 4, monkeypatch)
    with pytest.raises(SaveError) as error:
        trainer.train()
    message = str(error.value)
    assert f"Could not save {output / 'checkpoint-4'} at step 4: no space left on the device" in message
    assert f"The last complete checkpoint is {output / 'checkpoint-2'}; nothing earlier was removed" in message
    assert "--resume_from_checkpoint true" in message and "\n" not in message
    assert not (output / "tmp-checkpoint-4").exists() and not (output / "checkpoint-4").exists()
    assert resolve_checkpoint(True, str(output), "nullspace") == str(output / "checkpoint-2")


def test_a_full_disk_in_the_recipe_is_one_line(recipe, small_data, tmp_path, capsys, monkeypatch):
    import transformers.modeling_utils as modeling_utils

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", args[1])

    monkeypatch.setattr(modeling_utils, "safe_save_file", full_disk)
    output = tmp_path / "out"
    text = _one_line_error(recipe, recipe_args(small_data, output, "--save_strategy", "steps", "--save_steps", "2",
                                               "--eval_attacks", "none", "--eval_corruptions", "none"), capsys)
    assert "checkpoint-2 at step 2: no space left on the device" in text and "no complete checkpoint yet" in text


@pytest.fixture
def small_filesystem(tmp_path):
    """A 1.2 MiB tmpfs (root only; skipped elsewhere): room for one tiny checkpoint, not for two."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the simulated ENOSPC tests cover the error")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_really_full_filesystem_is_one_error_naming_the_space(rows, small_filesystem):
    output = small_filesystem / "out"
    trainer = _trainer(output, rows, max_steps=200, save_steps=2)
    with pytest.raises(SaveError, match=r"Could not save .*checkpoint-\d+ at step \d+: no space left on the device "
                                         r"\(\d+\.\d MiB free there\)\. The last complete checkpoint is .*checkpoint-"):
        trainer.train()
    assert not list(output.glob("tmp-checkpoint-*"))
    last = resolve_checkpoint(True, str(output), "nullspace")
    assert all(torch.isfinite(t).all() for t in load_file(Path(last) / "model.safetensors").values())


# ---- 4. SIGTERM / SIGINT: finish the step, save a complete checkpoint, stop with one line ----

class _SignalAt(TrainerCallback):
    """Send a signal to this process while step ``step + 1`` runs (its noise synthesis included)."""

    def __init__(self, step: int, number: int) -> None:
        self.step, self.number = step, number

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), self.number)


@pytest.mark.parametrize("step, number", [(2, signal.SIGTERM), (3, signal.SIGINT), (7, signal.SIGTERM)],
                         ids=["sigterm-mid-round", "sigint-at-a-noise-synthesis", "sigterm-in-the-last-step"])
def test_a_stop_signal_saves_the_step_and_resuming_reproduces_the_run(rows, straight, tmp_path, step, number):
    output = tmp_path / "out"
    handler = signal.getsignal(number)
    first = _trainer(output, rows, save_strategy="no")
    first.add_callback(_SignalAt(step, number))
    with pytest.raises(Interrupted) as stop:
        first.train()
    checkpoint = output / f"checkpoint-{step + 1}"
    assert stop.value.exit_code == 128 + number
    assert f"stopped by {signal.Signals(number).name}: training stopped after step {step + 1} of 8" in str(stop.value)
    assert str(checkpoint) in str(stop.value) and "\n" not in str(stop.value)
    assert (checkpoint / "trainer_state.json").is_file() and (checkpoint / NOISE_FILE).is_file()
    assert signal.getsignal(number) is handler  # the handlers are put back
    resumed = _trainer(output, rows, save_strategy="no")
    resumed.train(resume_from_checkpoint=True)
    _assert_same_run(straight, resumed)


def _adversarial(output: Path, rows) -> AdversarialTrainer:
    args = AdversarialConfig(output_dir=str(output), max_steps=6, per_device_train_batch_size=16, report_to="none",
                             use_cpu=True, adversarial_steps=2, learning_rate=2e-3, save_strategy="no", seed=0,
                             disable_tqdm=True)
    return AdversarialTrainer(model=make_tiny_model(**MODEL), args=args, train_dataset=rows,
                              processing_class=ViTImageProcessor(size={"height": 16, "width": 16}))


def test_the_adversarial_trainer_stops_at_sigterm_and_resumes_to_the_same_weights(rows, tmp_path):
    straight_run = _adversarial(tmp_path / "straight", rows)
    straight_run.train()
    first = _adversarial(tmp_path / "adv", rows)
    first.add_callback(_SignalAt(2, signal.SIGTERM))
    with pytest.raises(Interrupted, match="after step 3 of 6"):
        first.train()
    assert (tmp_path / "adv" / "checkpoint-3" / "trainer_state.json").is_file()
    resumed = _adversarial(tmp_path / "adv", rows)
    resumed.train(resume_from_checkpoint=True)  # the PGD starts are random: the RNG state is restored too
    expected, found = _weights(straight_run.model), _weights(resumed.model)
    for name in expected:
        torch.testing.assert_close(expected[name], found[name], atol=ATOL, rtol=0, msg=name)


def test_a_sigterm_in_the_recipe_is_one_line_and_the_job_resumes(recipe, small_data, tmp_path, capsys, monkeypatch):
    output = tmp_path / "out"
    argv = recipe_args(small_data, output, "--eval_attacks", "none", "--eval_corruptions", "none")
    evaluate = recipe.evaluate

    def preempted_during_the_first_evaluation(*args, **kwargs):
        if not (output / "checkpoint-1").exists() and "before" not in preempted_during_the_first_evaluation.seen:
            preempted_during_the_first_evaluation.seen.add("before")
            os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(*args, **kwargs)

    preempted_during_the_first_evaluation.seen = set()
    monkeypatch.setattr(recipe, "evaluate", preempted_during_the_first_evaluation)
    text = _one_line_error(recipe, argv, capsys, status=128 + signal.SIGTERM)
    assert text.startswith("finetune: stopped by SIGTERM: training stopped after step 1 of 4")
    assert str(output / "checkpoint-1") in text and "--resume_from_checkpoint true" in text
    assert recipe.cli([*argv, "--resume_from_checkpoint", "true"]) == 0
    assert (output / "model.safetensors").is_file() and (output / "results.json").is_file()


def _launch(launch: list[str], argv: list[str], cwd: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch, "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               str(RECIPE), *argv]
    env = {**hub_env("http://127.0.0.1:9", cwd), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)


def _workers_of(launcher: subprocess.Popen) -> list:
    import psutil

    return psutil.Process(launcher.pid).children(recursive=True)


@pytest.mark.slow
@pytest.mark.parametrize("launch", [["--multi_gpu", "--num_processes", "2"], ["--num_processes", "1"]],
                         ids=["two-processes", "one-process"])
def test_a_sigterm_to_accelerate_launch_reaches_the_workers(small_data, tmp_path, launch):
    """Also the documented `--multi_gpu --num_processes 2` CPU command's world size of 2 (each worker prints its
    rank; test_faults.py::test_documented_two_process_cpu_command_gives_world_size_2 runs the config file's)."""
    import psutil

    output = tmp_path / "out"
    argv = recipe_args(small_data, output, "--eval_attacks", "none", "--eval_corruptions", "none", "--max_steps",
                       "100000", "--noise_mode", "none", "--save_strategy", "no")
    world_size = int(launch[launch.index("--num_processes") + 1])
    launcher = _launch(launch, argv, tmp_path)
    deadline = time.time() + 300
    while not (output / HOLDER_FILE).exists() and time.time() < deadline:  # the job has started
        time.sleep(0.5)
    time.sleep(5)  # into the training loop
    workers = _workers_of(launcher)
    assert workers and launcher.poll() is None
    launcher.send_signal(signal.SIGTERM)
    try:
        stdout, stderr = launcher.communicate(timeout=120)  # returns when every pipe writer (the workers) is gone
        psutil.wait_procs(workers, timeout=60)
        assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
    finally:  # a worker that missed the signal would train on alone
        for worker in workers:
            if worker.is_running():
                worker.kill()
        launcher.kill()
    assert launcher.returncode != 0
    assert "finetune: stopped by SIGTERM: training stopped after step" in stderr, stderr[-3000:]
    printed = sorted(line.split(" (")[0] for line in stdout.splitlines() if line.startswith("Process "))
    assert printed == [f"Process {rank} of {world_size}" for rank in range(world_size)], stdout[-2000:]
    checkpoint = resolve_checkpoint(True, str(output), "none")
    step = json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"]
    assert 0 < step < 100000 and not (output / "model.safetensors").exists()


# ---- 5. settings that could only fail at the end are checked before the first step ----

def test_an_invalid_hub_id_is_refused_before_any_work(recipe, small_data, tmp_path, capsys):
    output = tmp_path / "out"
    text = _one_line_error(recipe, recipe_args(small_data, output, "--push_to_hub", "true", "--hub_model_id",
                                               "bad id with spaces"), capsys)
    assert "hub_model_id='bad id with spaces' is not a valid Hub repository id" in text
    assert "hf upload" not in text and _no_work_done(output)
    with pytest.raises(ValueError, match="Invalid AdversarialConfig: hub_model_id"):
        AdversarialConfig(output_dir=str(output), hub_model_id="bad id with spaces")


def test_an_output_dir_that_is_no_hub_id_is_refused_before_any_work(recipe, small_data, tmp_path, capsys):
    output = tmp_path / "out dir"
    text = _one_line_error(recipe, recipe_args(small_data, output, "--push_to_hub", "true"), capsys)
    assert "pushed to 'out dir', which is not a valid Hub repository id" in text and _no_work_done(output)


@pytest.mark.parametrize("offline", [False, True], ids=["no-token", "offline"])
def test_a_push_without_token_or_hub_is_refused_before_any_work(recipe, small_data, tmp_path, capsys, monkeypatch,
                                                                offline):
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.setattr(constants, "is_offline_mode", lambda: offline)
    output = tmp_path / "out"
    text = _one_line_error(recipe, recipe_args(small_data, output, "--push_to_hub", "true", "--hub_model_id",
                                               "user/model"), capsys)
    assert ("HF_HUB_OFFLINE=1" if offline else "no Hub token is found") in text and _no_work_done(output)
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE" if offline else "no Hub token"):
        _trainer(output, TensorRows(torch.zeros(2, 3, 16, 16), torch.zeros(2, dtype=torch.long)), push_to_hub=True,
                 hub_model_id="user/model")


# ---- 6. no file written locally or pushed holds the token ----

def _files_holding(root: Path, secret: bytes) -> list[str]:
    return [str(path.relative_to(root)) for path in root.rglob("*") if path.is_file() and secret in path.read_bytes()]


@pytest.mark.parametrize("trainer_class", [NullspaceTrainer, AdversarialTrainer])
def test_no_file_of_either_trainer_holds_the_token(rows, tmp_path, trainer_class):
    output = tmp_path / "out"
    values = dict(output_dir=str(output), max_steps=2, per_device_train_batch_size=16, report_to="none", use_cpu=True,
                  save_strategy="steps", save_steps=1, hub_token=SECRET, disable_tqdm=True)
    if trainer_class is NullspaceTrainer:
        trainer = NullspaceTrainer(model=make_tiny_model(**MODEL), args=NullspaceConfig(**values, noise_max_steps=5),
                                   train_dataset=rows)
    else:
        trainer = AdversarialTrainer(model=make_tiny_model(**MODEL),
                                     args=AdversarialConfig(**values, adversarial_steps=1), train_dataset=rows,
                                     processing_class=ViTImageProcessor(size={"height": 16, "width": 16}))
    trainer.train()
    trainer.save_model()
    trainer.save_state()
    bins = sorted(output.rglob("training_args.bin"))
    assert len(bins) == 3  # the model and both checkpoints
    for path in bins:
        assert torch.load(path, weights_only=False).hub_token is None
    assert _files_holding(output, SECRET.encode()) == []
    assert trainer.args.hub_token == SECRET


@pytest.mark.slow
def test_a_push_of_either_trainer_holds_no_token(tmp_path):
    """Trainer.push_to_hub of the model and every checkpoint (hub_strategy all_checkpoints) to the loopback Hub,
    for both trainers, one after the other in one process (each into its own output_dir and repository)."""
    names = ["nullspace", "adversarial"]
    outputs = {name: tmp_path / f"out-{name}" for name in names}
    with LoopbackHub() as hub:
        result = subprocess.run([sys.executable, str(ROOT / "tests" / "scripts" / "push_with_token.py"),
                                 ",".join(names), str(tmp_path / "out-{}"), SECRET], capture_output=True, text=True,
                                cwd=tmp_path, timeout=600,
                                env={**hub_env(hub.endpoint, tmp_path / "hf_home"), "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-3000:]
        repos = {name: hub.state.repos[f"user/{name}"]["files"] for name in names}
    for name, pushed in repos.items():
        assert "training_args.bin" in pushed and any(file.startswith("checkpoint-") for file in pushed), name
        assert not [file for file, content in pushed.items() if SECRET.encode() in content], name
        assert _files_holding(outputs[name], SECRET.encode()) == [], name
        checkpoints = {file.split("/")[0] for file in pushed if file.startswith("checkpoint-")}
        for checkpoint in checkpoints:  # every pushed checkpoint carries the card of the run up to it
            card = pushed[f"{checkpoint}/README.md"].decode()
            assert 'from_pretrained("user/' in card and "2403.10476" in card and "| `max_steps` | 2 | -1 |" in card


@pytest.mark.slow
def test_no_file_of_the_recipe_holds_the_token_locally_or_pushed(small_data, tmp_path):
    from .helpers import run_recipe

    output = tmp_path / "out"
    with LoopbackHub() as hub:
        result = run_recipe(recipe_args(small_data, output, "--push_to_hub", "true", "--hub_model_id", "user/recipe",
                                        "--hub_token", SECRET, "--save_strategy", "steps", "--save_steps", "2"),
                            hub.endpoint, tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        pushed = hub.state.repos["user/recipe"]["files"]
    assert "training_args.bin" in pushed  # the file that held the token before issue 15 is pushed, without it
    assert not [name for name, content in pushed.items() if SECRET.encode() in content]
    assert list(output.glob("checkpoint-*")) and _files_holding(output, SECRET.encode()) == []
