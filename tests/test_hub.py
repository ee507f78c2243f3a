"""Model cards: what they state, their metadata, and the trainers that write them."""

from __future__ import annotations

import json

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import ViTImageProcessor

from nullspace_hf import AdversarialConfig, AdversarialTrainer, NullspaceConfig, NullspaceTrainer
from nullspace_hf.data import TensorRows
from nullspace_hf.evaluation import RobustnessReport
from nullspace_hf.hub import RESULTS_FILE, build_model_card, noise_rounds_table
from nullspace_hf.model_card import RunCardData, method_setting_names

from .helpers import make_tiny_model


def _results() -> dict:
    def report(model: str, clean: float, fgsm: float, fog: float) -> dict:
        return RobustnessReport(model=model, dataset="digits", num_samples=40, clean_accuracy=clean,
                                attacks={"fgsm": {"column": "FGSM", "accuracy": fgsm, "config": {}}},
                                corruptions={"fog": {1: fog, 3: fog}}).to_dict()

    return {"before": report("base", 90.0, 50.0, 70.44), "after": report("out", 91.0, 49.5, 70.31)}


def test_the_card_states_what_its_table_shows(tmp_path):
    data = RunCardData(dataset_name="digits", license="apache-2.0", robustness=_results())
    card = build_model_card(model_name="run", repo_id=str(tmp_path / "run"), args=NullspaceConfig(output_dir="x"),
                            noise_history=[], data=data, base_model=str(tmp_path), tags=["nullspace"])
    text = card.text
    assert "clean accuracy 90.00 → 91.00 (+1.00)" in text and "fgsm accuracy 50.00 → 49.50 (-0.50)" in text
    assert "mean corruption accuracy 70.44 → 70.31 (-0.13)" in text
    assert text.count("makes the model more robust") == 1  # only as the paper's claim, beside what was found
    assert "The paper reports that this enlarges" in text and "found no robustness gain of more than about one" in text
    assert "## Intended use and limitations" in text and "## Framework versions" in text and "- transformers " in text
    assert f'from_pretrained("{tmp_path / "run"}")' in text  # no Hub id: the local directory, not its bare name
    assert card.data.license == "apache-2.0" and card.data.tags == ["nullspace"] and card.data.base_model is None
    metrics = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert metrics == {"Clean accuracy": 91.0, "FGSM accuracy": 49.5, "Mean corruption accuracy": pytest.approx(70.31)}


@pytest.mark.parametrize("trainer_class", [NullspaceTrainer, AdversarialTrainer])
def test_each_trainer_writes_its_card_with_its_tags_and_settings(tmp_path, trainer_class):
    config_class = NullspaceConfig if trainer_class is NullspaceTrainer else AdversarialConfig
    args = config_class(output_dir=str(tmp_path / "out"), max_steps=1, use_cpu=True, report_to="none",
                        hub_model_id="user/tiny")
    model = make_tiny_model(num_labels=3, image_size=32, patch_size=8)
    trainer = trainer_class(model=model, args=args, train_dataset=TensorRows(torch.rand(4, 3, 32, 32),
                                                                             torch.tensor([0, 1, 2, 0])),
                            processing_class=ViTImageProcessor(size={"height": 32, "width": 32}))
    for name, report in _results().items():
        trainer.add_robustness_report(name, report)
    trainer.create_model_card(dataset_name="digits")
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.tags == trainer_class._tag_names and set(trainer_class._tag_names) <= set(model.model_tags)
    assert 'from_pretrained("user/tiny")' in card.text
    for setting in method_setting_names(config_class):
        assert f"| `{setting}` |" in card.text, setting
    assert "| `max_steps` | 1 | -1 |" in card.text and "| `use_cpu` | True | False |" in card.text
    assert "`learning_rate`" not in card.text and "hub_token" not in card.text  # at its default; never listed
    assert {result.metric_name for result in card.data.eval_results} >= {"Clean accuracy", "FGSM accuracy"}
    assert ("## Noise statistics" in card.text) is (trainer_class is NullspaceTrainer)


def test_the_model_index_states_each_numbers_threat_model_and_source(tmp_path, digits_report):
    results = {"before": digits_report, "after": digits_report}
    card = build_model_card(model_name="run", repo_id="user/run", args=NullspaceConfig(output_dir="x"),
                            noise_history=[], data=RunCardData(dataset_name="digits", robustness=results))
    by_name = {result.metric_name: result for result in card.data.eval_results}
    fgsm, corruption = by_name["FGSM accuracy"], by_name["Mean corruption accuracy"]
    assert fgsm.metric_args["threat_model"] == "Linf" and fgsm.metric_args["epsilon"] == pytest.approx(1 / 255)
    assert fgsm.metric_args["attack"] == {"name": "fgsm", "epsilon": pytest.approx(1 / 255)}
    assert fgsm.metric_config == "Linf, ε = 1/255 ([0, 1] pixels), fgsm"
    assert corruption.metric_args["threat_model"] == "corruptions"
    assert corruption.metric_args["corruption_source"].startswith("on the fly at 32×32 px")
    assert "32×32 input, rescale ×1/255, normalise mean [0.5, 0.5, 0.5] std [0.5, 0.5, 0.5]" in by_name[
        "Clean accuracy"].metric_args["preprocessing"]
    assert by_name["Clean accuracy"].metric_config == "clean images"
    assert "FGSM accuracy: Linf, ε = 1/255 ([0, 1] pixels), fgsm" in card.text
    assert "Mean corruption accuracy: common corruptions, on the fly at 32×32 px" in card.text
    loaded = ModelCard(str(card))  # the metadata survives the YAML round trip
    assert loaded.data.eval_results[1].metric_args["threat_model"] == "Linf"


@pytest.fixture(scope="module")
def digits_report() -> dict:
    """A real report (FGSM and one corruption) of a tiny model on 8 digits."""
    from nullspace_hf.data import digits_dataset
    from nullspace_hf.evaluation import evaluate_robustness

    return evaluate_robustness(make_tiny_model(num_labels=10), digits_dataset()["test"].select(range(8)),
                               image_processor=ViTImageProcessor(size={"height": 32, "width": 32}), attacks=["fgsm"],
                               corruptions=["fog"], severities=(1,), progress=False).to_dict()


def _short_run(tmp_path, **overrides) -> NullspaceTrainer:
    settings = dict(max_steps=4, save_steps=2, noise_refresh_steps=2, noise_max_steps=3, learning_rate=2e-3,
                    noise_eps=0.05, eval_strategy="steps", eval_steps=2, use_cpu=True, report_to="none",
                    per_device_train_batch_size=4)
    args = NullspaceConfig(output_dir=str(tmp_path / "out"), **{**settings, **overrides})
    data = TensorRows(torch.rand(8, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    trainer = NullspaceTrainer(model=make_tiny_model(), args=args, train_dataset=data, eval_dataset=data,
                               processing_class=ViTImageProcessor(size={"height": 32, "width": 32}))
    trainer.train()
    return trainer


def test_the_card_is_built_from_the_run_and_written_into_every_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    trainer = _short_run(tmp_path)
    output = tmp_path / "out"
    for step in (2, 4):  # each checkpoint has the card of the run up to it
        card = ModelCard.load(output / f"checkpoint-{step}" / "README.md")
        assert card.text.count("| 0 | 0 |") == 1 and ("| 1 | 2 |" in card.text) is (step == 4)
    trainer.add_robustness_report("after", _results()["after"])
    trainer.create_model_card(dataset_name="digits")
    text = (output / "README.md").read_text()
    # the non-default settings of the run, with their defaults, and the method's own
    for row in ("| `learning_rate` | 0.002 | 5e-05 |", "| `max_steps` | 4 | -1 |", "| `eval_strategy` | steps | no |",
                "| `noise_eps` | 0.05 |", "| `noise_refresh_steps` | 2 |", "| `noise_token_lr` | 0.4 |"):
        assert row in text, row
    # every round with its norm, RMS per element and whether the budget was used up
    assert "| noise norm | RMS per element | budget used up |" in text
    for record in trainer.noise_history:
        assert (f"| {record['norm']:.3f} | {record['rms']:.4g} | {'yes' if record['budget_hit'] else 'no'} |"
                in text), record
    # the evaluations the Trainer ran, and the robustness report it was given
    assert "## Evaluation during training\n\n| step | `eval_loss` |\n" in text and "eval_runtime" not in text
    assert [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| 2 | 1.") or line.startswith(
        "| 4 | 1.")] == ["| 2", "| 4"]
    assert "Clean accuracy" in text and "91.00" in text
    assert "eprint={2403.10476}" in text and "archivePrefix={arXiv}" in text


def test_the_card_does_not_read_results_json(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    trainer = _short_run(tmp_path, eval_strategy="no")
    output = tmp_path / "out"
    trainer.create_model_card()
    first = (output / "README.md").read_text()
    (output / RESULTS_FILE).write_text(json.dumps(_results()))
    trainer.create_model_card()
    assert (output / "README.md").read_text() == first and "No evaluation was run" in first


def test_a_round_recorded_before_rms_existed_shows_a_dash():
    old = {"round": 0, "step": 0, "norm": 2.5, "steps": 3, "forward_steps": 1, "mse_prob": 0.02, "budget_hit": True}
    assert noise_rounds_table([old]).splitlines()[-1] == "| 0 | 0 | – | 0.0200 | 3 | 1 | 2.500 | – | yes |"
