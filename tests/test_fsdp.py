"""FSDP version 2 under ``accelerate launch --use_fsdp`` really shards, on CPU processes too, and trains as DDP does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from transformers import ViTForImageClassification

from nullspace_hf.distributed import check_fsdp_on_cpu, requested_fsdp_version

from .helpers import free_port

SCRIPT = Path(__file__).parent / "scripts" / "sharded_training.py"
FSDP2 = ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
         "--fsdp_transformer_layer_cls_to_wrap", "ViTLayer"]
# accelerate runs `--cpu --num_processes 2` as ONE process; `--multi_gpu` without GPUs starts two gloo workers.
DDP = ["--multi_gpu"]


def _launch(mode: list[str], output: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", *mode, "--num_processes", "2", "--num_machines",
               "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               str(SCRIPT), str(output)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_fsdp2_on_two_cpu_processes_shards_and_saves_what_ddp_saves(tmp_path):
    sharded, replicated = tmp_path / "fsdp", tmp_path / "ddp"
    for mode, output in ((FSDP2, sharded), (DDP, replicated)):
        result = _launch(mode, output)
        assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(sharded / f"rank{r}.pt") for r in (0, 1)]
    assert [rank["distributed_type"] for rank in ranks] == [str(DistributedType.FSDP)] * 2
    assert ranks[0]["plain"] == ranks[1]["plain"] == []  # every parameter is a DTensor during training
    for name, share in ranks[0]["sharded"].items():  # the two ranks hold complementary shards
        assert share + ranks[1]["sharded"][name] == pytest.approx(1.0), name
    assert ranks[0]["sharded"]["vit.layers.0.mlp.fc1.weight"] == pytest.approx(0.5)
    assert torch.load(replicated / "rank0.pt")["distributed_type"] == str(DistributedType.MULTI_CPU)

    assert torch.equal(ranks[0]["noise"], ranks[1]["noise"]) and ranks[0]["history"] == ranks[1]["history"]
    assert len(ranks[0]["history"]) == 2 and any(record["steps"] > 0 for record in ranks[0]["history"])

    assert (sharded / "model.safetensors").is_file() and not list(sharded.glob("pytorch_model_fsdp*"))
    full = ViTForImageClassification.from_pretrained(sharded).state_dict()
    reference = ViTForImageClassification.from_pretrained(replicated).state_dict()
    assert full.keys() == reference.keys()
    for name, value in full.items():
        # reduce-scatter and all-reduce add the two ranks' gradients in another order: float32 rounding only
        # (6e-8 measured with noisy_forward="concat"); a weight that did not train would be 1e-2 away
        torch.testing.assert_close(value, reference[name], atol=1e-5, rtol=1e-5, msg=name)
    noise = torch.load(replicated / "rank0.pt")["noise"]
    torch.testing.assert_close(ranks[0]["noise"], noise, atol=1e-4, rtol=1e-5)


def test_fsdp1_on_the_cpu_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --use_fsdp --fsdp_version 1` sets
    monkeypatch.setenv("FSDP_VERSION", "1")
    args = SimpleNamespace(fsdp_plugin_args=None)
    assert requested_fsdp_version(args) == 1
    with pytest.raises(ValueError, match="FSDP version 1 cannot shard on the CPU.*--fsdp_version 2"):
        check_fsdp_on_cpu(requested_fsdp_version(args))
    monkeypatch.setenv("FSDP_VERSION", "2")
    check_fsdp_on_cpu(requested_fsdp_version(args))
    assert requested_fsdp_version(SimpleNamespace(fsdp_plugin_args={"fsdp_version": 2})) == 2
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    assert requested_fsdp_version(args) is None
