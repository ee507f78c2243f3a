"""LoRA through ``peft_config=`` (both trainers): only the adapters and the head train, the saved model is merged."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig
from transformers import ViTForImageClassification, ViTImageProcessor

from nullspace_hf import AdversarialConfig, AdversarialTrainer, NullspaceConfig, NullspaceTrainer
from nullspace_hf.data import TensorRows

from .helpers import make_tiny_model
from .test_trainer import _KillAt

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = {
    NullspaceTrainer: (NullspaceConfig, {"noise_max_steps": 5, "noise_refresh_steps": 2}),
    AdversarialTrainer: (AdversarialConfig, {"adversarial_steps": 2}),
}


def _lora() -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"])


def _trainer(trainer_class, output, max_steps: int = 4, **overrides):
    config_class, settings = SETTINGS[trainer_class]
    args = config_class(output_dir=str(output), max_steps=max_steps, save_steps=2, learning_rate=5e-2,
                        per_device_train_batch_size=4, use_cpu=True, report_to="none", seed=0,
                        **settings, **overrides)
    torch.manual_seed(0)
    data = TensorRows(torch.randn(16, 3, 32, 32), torch.randint(0, 3, (16,)))
    return trainer_class(model=make_tiny_model(), args=args, train_dataset=data, peft_config=_lora(),
                         processing_class=ViTImageProcessor(size={"height": 32, "width": 32}))


@pytest.mark.parametrize("trainer_class", list(SETTINGS), ids=lambda c: c.__name__)
def test_only_adapters_and_head_train_and_the_saved_model_is_merged(tmp_path, trainer_class, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    trainer = _trainer(trainer_class, tmp_path / "out")
    before = {name: value.detach().clone() for name, value in trainer.model.named_parameters()}
    trainer.train()
    if trainer_class is NullspaceTrainer:  # the noise hook sits on the patch embedding inside the peft model
        assert trainer.injector.module is trainer.model.get_base_model().vit.embeddings.patch_embeddings
        assert len(trainer.noise_history) == 2
    trainable = {name for name, value in trainer.model.named_parameters() if value.requires_grad}
    assert trainable and all("lora_" in name or "modules_to_save" in name for name in trainable)
    changed = {name for name, value in trainer.model.named_parameters() if not torch.equal(value, before[name])}
    assert changed and changed <= trainable  # nothing outside the adapters and the head moved
    assert any("lora_B" in name for name in changed) and any("modules_to_save" in name for name in changed)

    trainer.save_model()
    output = tmp_path / "out"
    assert not (output / "adapter_model.safetensors").exists() and (output / "model.safetensors").is_file()
    merged = ViTForImageClassification.from_pretrained(output).eval()
    images = torch.randn(8, 3, 32, 32)
    trainer.model.eval()
    with torch.no_grad():
        expected, got = trainer.model(pixel_values=images).logits, merged(pixel_values=images).logits
    # W + (alpha/r)·B·A folded into one matrix sums in another order: float32 rounding, far below 1e-4
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert "lora_" not in " ".join(merged.state_dict())
    # the trainer keeps its adapters after the merged save: later checkpoints still hold them
    assert trainer.model.__class__.__name__.startswith("Peft")
    assert (output / "checkpoint-4" / "adapter_model.safetensors").is_file()


def test_a_lora_checkpoint_resumes_with_its_adapters(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    whole = _trainer(NullspaceTrainer, tmp_path / "whole")
    whole.train()
    first = _trainer(NullspaceTrainer, tmp_path / "cut")
    first.add_callback(_KillAt(2))
    first.train()
    assert (tmp_path / "cut" / "checkpoint-2" / "adapter_model.safetensors").is_file()
    resumed = _trainer(NullspaceTrainer, tmp_path / "cut")
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 4
    torch.testing.assert_close(resumed.noise, whole.noise, atol=1e-5, rtol=1e-4)
    for (name, value), (_, reference) in zip(resumed.model.named_parameters(), whole.model.named_parameters(),
                                                    strict=True):
        if "lora_" in name or "modules_to_save" in name:
            # the same steps on the same batches from the restored adapters and optimizer: float32 rounding only
            torch.testing.assert_close(value, reference, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize(("peft_config", "message"), [
    ({"r": 4}, "must be a peft config"),
    (LoraConfig(r=4, target_modules=["no_such_module"]), "does not fit ViTForImageClassification"),
])
def test_a_wrong_peft_config_is_one_clear_error(tmp_path, peft_config, message):
    args = NullspaceConfig(output_dir=str(tmp_path / "out"), max_steps=1, use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match=message):
        NullspaceTrainer(model=make_tiny_model(), args=args, peft_config=peft_config,
                         train_dataset=TensorRows(torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long)))


def test_peft_config_under_fsdp_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    args = NullspaceConfig(output_dir=str(tmp_path / "out"), max_steps=1, use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="peft_config with FSDP"):
        NullspaceTrainer(model=make_tiny_model(), args=args, peft_config=_lora(),
                         train_dataset=TensorRows(torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long)))
