"""Model cards and pushes to the Hugging Face Hub."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .checkpoint import STAGING_PREFIX
from .errors import NullspaceError
from .lock import HOLDER_FILE, LOCK_FILE

TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"
RESULTS_FILE = "results.json"
# The card lists every field its config class adds to TrainingArguments, and these of TrainingArguments.
TRAINING_HYPERPARAMETERS = ("learning_rate", "max_steps", "per_device_train_batch_size", "seed",
                            "label_smoothing_factor")
FRAMEWORKS = ("nullspace-hf", "transformers", "torch", "accelerate", "datasets")


def hyperparameter_names(config_class: type | None = None) -> tuple[str, ...]:
    """The settings a model card lists: the fields ``config_class`` (default ``NullspaceConfig``) adds to
    :class:`~nullspace_hf.config.BaseConfig`, then :data:`TRAINING_HYPERPARAMETERS`."""
    from dataclasses import fields

    from .config import BaseConfig, NullspaceConfig

    inherited = {f.name for f in fields(BaseConfig)}
    added = tuple(f.name for f in fields(config_class or NullspaceConfig) if f.name not in inherited)
    return added + TRAINING_HYPERPARAMETERS


def framework_versions() -> dict[str, str]:
    """The installed versions of the libraries a card names."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in FRAMEWORKS:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


PAPER_CITATION = """@article{liu2024approximate,
  title={Approximate Nullspace Augmented Finetuning for Robust Vision Transformers},
  author={Liu, Haoyang and Singh, Aditya and Li, Yijiang and Wang, Haohan},
  journal={arXiv preprint},
  year={2024}
}"""
PUSH_EXCLUDE = ("checkpoint-*/*", f"{STAGING_PREFIX}checkpoint-*/*", "corruption_cache/*", LOCK_FILE, HOLDER_FILE)
SUMMARY_METRICS = {"clean": "Clean accuracy", "fgsm": "FGSM accuracy", "autoattack": "AutoAttack robust accuracy",
                   "corruption": "Mean corruption accuracy"}


def noise_rounds_table(noise_history: list[dict[str, Any]]) -> str:
    """Markdown table of every round's synthesis: start and final mse_prob, gradient and forward steps, norm."""
    lines = ["| round | step | start mse_prob | final mse_prob | gradient steps | forward-only passes | noise norm "
             "| budget used up |", "|---|---|---|---|---|---|---|---|"]
    for r in noise_history:
        lines.append(f"| {r['round']} | {r['step']} | {r.get('start_mse_prob', float('nan')):.3g} | "
                     f"{r['mse_prob']:.4f} "
                     f"| {r['steps']} | {r.get('forward_steps', 0)} | {r['norm']:.3f} | "
                     f"{'yes' if r.get('budget_hit') else 'no'} |")
    return "\n".join(lines)


def results_table(results: dict[str, Any]) -> str:
    """Markdown table of the ``summary`` of every report in ``results.json`` (``before``, ``after``, ...)."""
    runs = {name: report["summary"] for name, report in results.items() if isinstance(report, dict)
            and "summary" in report}
    if not runs:
        return ""
    metrics = list(dict.fromkeys(metric for summary in runs.values() for metric in summary))
    header = "| model | " + " | ".join(SUMMARY_METRICS.get(m, f"{m.upper()} accuracy") for m in metrics) + " |"
    lines = [header, "|---|" + "---|" * len(metrics)]
    for name, summary in runs.items():
        lines.append(f"| {name} | " + " | ".join("–" if summary.get(m) is None else f"{summary[m]:.2f}"
                                               for m in metrics) + " |")
    last = results.get("after", results.get(next(iter(runs)), {}))
    samples = last.get("num_samples")
    note = f"Accuracies in % on {samples} held-out images." if samples else "Accuracies in %."
    details = last.get("summary_details", {})
    conditions = [f"{SUMMARY_METRICS.get(m, m.upper() + ' accuracy')}: {threat_text(details[m])}" for m in metrics
                  if m in details and m != "clean"]
    if conditions:
        note += " " + "; ".join(conditions) + "."
    if details.get("clean"):
        note += f" Preprocessing: {details['clean']['preprocessing']}."
    return "\n".join(lines) + "\n\n" + note + _change_sentence(runs)


def threat_text(details: dict[str, Any]) -> str:
    """One number's conditions in words (a ``summary_details`` entry): ``Linf, ε = 1/255 ([0, 1] pixels), fgsm``."""
    if details.get("threat_model") == "corruptions":
        return f"common corruptions, {details.get('corruption_source') or 'unknown source'}"
    if details.get("threat_model") is None:
        return "clean images"
    epsilon = details.get("epsilon")
    budget = "unbounded" if epsilon is None else f"ε = {_fraction_of_255(epsilon)} ([0, 1] pixels)"
    return f"{details['threat_model']}, {budget}, {(details.get('attack') or {}).get('name', 'attack')}"


def _fraction_of_255(value: float) -> str:
    """``value`` as ``k/255`` when it is a whole number of grey levels, else as a decimal."""
    levels = value * 255
    return f"{round(levels)}/255" if abs(levels - round(levels)) < 1e-6 else f"{value:.6g}"


def _change_sentence(runs: dict[str, dict[str, float]]) -> str:
    """What the table shows, in words: each metric's change from ``before`` to ``after`` (no claim beyond it)."""
    before, after = runs.get("before"), runs.get("after")
    if not before or not after:
        return ""
    changes = [f"{SUMMARY_METRICS.get(m, m.upper() + ' accuracy').lower()} {before[m]:.2f} → {after[m]:.2f} "
               f"({after[m] - before[m]:+.2f})" for m in after if m in before]
    return " From before to after fine-tuning: " + "; ".join(changes) + ". One run, one seed: a change of a point " \
        "or two is within what another seed gives."


def _hub_id(name: str | None) -> str | None:
    """``name`` when it can be a Hub id; ``None`` for nothing or a local path (card metadata takes Hub ids only)."""
    return name if name and not os.path.exists(name) else None


METHODS = {
    "nullspace": "approximate nullspace augmented fine-tuning",
    "random": "random ε-noise fine-tuning (the paper's Table 4 baseline)",
    "none": "plain fine-tuning (the paper's vanilla baseline)",
    "madry": "PGD adversarial fine-tuning (Madry et al.; the paper's Table 3 baseline)",
    "trades": "TRADES adversarial fine-tuning (the paper's Table 3 baseline)",
}


def build_model_card(
    *,
    model_name: str,
    repo_id: str,
    args: Any,
    noise_history: list[dict[str, Any]],
    results: dict[str, Any] | None = None,
    base_model: str | None = None,
    dataset_name: str | None = None,
    dataset_id: str | None = None,
    citation: str = "",
    tags: tuple[str, ...] | list[str] = (),
    license: str | None = None,
) -> ModelCard:
    """A model card from the package's template: card data with ``model-index``, results, settings, noise statistics.

    Args:
        model_name: title of the card (usually the repository name).
        repo_id: what ``from_pretrained`` takes in the loading snippet: the Hub id, or the local directory.
        args: the run's config (``NullspaceConfig`` or ``AdversarialConfig``); the fields it adds to
            ``TrainingArguments`` are listed.
        noise_history: one dict per round (``round, step, norm, steps, forward_steps, start_mse_prob, mse_prob,
            reached, budget_hit``); empty without noise.
        results: the contents of ``results.json`` (``{"before": report, "after": report}``, each with a
            ``summary``), if any.
        base_model: the checkpoint that was fine-tuned: a Hub id (linked, and the card's ``base_model``) or
            a local path (named only).
        dataset_name: the fine-tuning dataset's name, as shown in the card.
        dataset_id: the dataset's Hub id, for the card's ``datasets`` metadata (a local path is left out).
        citation: BibTeX of the paper.
        tags: the card's tags (the trainer's ``_tag_names``).
        license: the card's license (an SPDX id such as ``apache-2.0``); none: the base model's applies.
    """
    eval_results = []
    after = (results or {}).get("after")
    if after and "summary" in after:
        details = after.get("summary_details", {})
        for metric, value in after["summary"].items():
            conditions = details.get(metric)
            eval_results.append(EvalResult(
                task_type="image-classification",
                dataset_type=_hub_id(dataset_id) or dataset_name or after.get("dataset", "unknown"),
                dataset_name=dataset_name or after.get("dataset", "unknown"), dataset_split="test",
                metric_type="accuracy", metric_name=SUMMARY_METRICS.get(metric, f"{metric.upper()} accuracy"),
                metric_value=round(float(value), 4),
                metric_config=threat_text(conditions) if conditions else None,
                metric_args={key: item for key, item in conditions.items() if key != "value"} if conditions else None,
            ))
    hub_base, hub_dataset = _hub_id(base_model), _hub_id(dataset_id)
    if hub_base:
        base_model_text = f"[{hub_base}](https://huggingface.co/{hub_base})"
    else:
        base_model_text = (f"the local checkpoint `{os.path.basename(os.path.normpath(base_model))}`" if base_model
                           else "a Vision Transformer")
    card_data = ModelCardData(
        model_name=model_name, base_model=hub_base, datasets=[hub_dataset] if hub_dataset else None,
        tags=list(tags), library_name="transformers", pipeline_tag="image-classification", license=license,
        eval_results=eval_results or None,
    )
    mode = getattr(args, "adversarial_method", None) or getattr(args, "noise_mode", "nullspace")
    hyperparameters = {key: getattr(args, key) for key in hyperparameter_names(type(args)) if hasattr(args, key)}
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATE), model_name=model_name, repo_id=repo_id,
        base_model_text=base_model_text, dataset_name=dataset_name, method_name=METHODS.get(mode, "fine-tuning"),
        noise_method=mode in ("nullspace", "random"), refresh_steps=getattr(args, "noise_refresh_steps", 40),
        results_table=results_table(results or {}), hyperparameters=hyperparameters, noise_rounds=noise_history,
        noise_table=noise_rounds_table(noise_history) if noise_history else "", citation=citation,
        license=license, frameworks=framework_versions(),
    )


def read_results(output_dir: str) -> dict[str, Any] | None:
    """The ``results.json`` of an output directory, if there is one."""
    path = Path(output_dir) / RESULTS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


class ModelCardMixin:
    """``create_model_card`` for this package's trainers (TRL's pattern): the class's ``_tag_names`` are the
    card's tags and the model's ``model_tags``, the paper is cited, and the card is written from
    :func:`build_model_card`. Mix in before ``transformers.Trainer``."""

    _tag_names: list[str] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None,
                          dataset_id: str | None = None, license: str | None = None, **kwargs: Any) -> None:
        """Write ``README.md`` in ``output_dir``: settings, every noise round, the results of
        ``output_dir/results.json`` (as a ``model-index``) when present, and a loading snippet with the Hub id
        (``hub_model_id``) or, without one, the local directory. ``Trainer.push_to_hub`` calls it before uploading.
        """
        if not self.is_world_process_zero():
            return
        output_dir = self.args.output_dir
        repo_id = self.args.hub_model_id or output_dir
        card = build_model_card(
            model_name=model_name or os.path.basename(os.path.normpath(repo_id)), repo_id=repo_id, args=self.args,
            noise_history=getattr(self, "noise_history", []), results=read_results(output_dir),
            base_model=getattr(self.model.config, "_name_or_path", None) or None,
            dataset_name=dataset_name or kwargs.get("dataset"), dataset_id=dataset_id, citation=PAPER_CITATION,
            tags=self._tag_names, license=license,
        )
        card.save(os.path.join(output_dir, "README.md"))


class HubPushError(NullspaceError):
    """The Hub could not be reached or refused a push; the local output is complete."""


def check_push_settings(repo_id: str, token: str | None) -> None:
    """Before any work: a push to ``repo_id`` can happen (a valid Hub id, a token, the Hub not switched off).

    Raises:
        ValueError: what to change (``--hub_model_id``, the login, ``HF_HUB_OFFLINE``).
    """
    from huggingface_hub import constants, get_token

    from .config import HUB_ID_RULE, valid_hub_id

    if not valid_hub_id(repo_id):
        raise NullspaceError(f"The model would be pushed to {repo_id!r}, which is not a valid Hub repository id: pass "
                             f"--hub_model_id (hub_model_id=...) with {HUB_ID_RULE}.")
    if constants.is_offline_mode():
        raise NullspaceError("push_to_hub is set but HF_HUB_OFFLINE=1 switches the Hub off: unset HF_HUB_OFFLINE, or "
                             "push later with `hf upload`.")
    if not (token or get_token()):
        raise NullspaceError("push_to_hub is set but no Hub token is found: run `hf auth login`, set HF_TOKEN, or pass "
                             "--hub_token (a token with write access).")


def retry_command(output_dir: str, repo_id: str, *, private: bool | None = None, revision: str | None = None) -> str:
    """The ``hf upload`` command that pushes an already written ``output_dir`` as :func:`push_output_dir` does."""
    import shlex

    words = ["hf", "upload", repo_id, output_dir, "."]
    for pattern in PUSH_EXCLUDE:
        words += ["--exclude", pattern]
    if revision:
        words += ["--revision", revision]
    if private:
        words.append("--private")
    return shlex.join(words)


def push_output_dir(output_dir: str, repo_id: str, *, token: str | None = None, private: bool | None = None,
                    revision: str | None = None, commit_message: str = "Upload nullspace fine-tuned model") -> str:
    """Upload a finished ``output_dir`` (weights, processor, card, results, noise files) to the Hub.

    Checkpoint folders and the corruption cache stay local. Returns the commit URL.

    Raises:
        HubPushError: the Hub could not be reached or refused the push; the message gives the
            command that retries the upload, since ``output_dir`` is complete on disk.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=output_dir, repo_id=repo_id, revision=revision,
                                   commit_message=commit_message, ignore_patterns=list(PUSH_EXCLUDE))
    except Exception as error:  # HTTP, connection and validation errors of huggingface_hub alike
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise HubPushError(
            f"Could not push {output_dir} to the Hub repository {repo_id!r} ({type(error).__name__}: {reason}). "
            f"Everything is saved in {output_dir}; retry with: "
            f"{retry_command(output_dir, repo_id, private=private, revision=revision)}"
        ) from error
    return str(commit.commit_url if hasattr(commit, "commit_url") else commit)
