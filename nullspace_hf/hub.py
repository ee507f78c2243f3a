"""Model cards and pushes to the Hugging Face Hub."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"
RESULTS_FILE = "results.json"
CARD_TAGS = ["nullspace", "robustness", "vision-transformer", "image-classification"]
# The card lists every field NullspaceConfig adds to TrainingArguments, and these of TrainingArguments.
TRAINING_HYPERPARAMETERS = ("learning_rate", "max_steps", "per_device_train_batch_size", "seed",
                            "label_smoothing_factor")


def hyperparameter_names() -> tuple[str, ...]:
    """The settings a model card lists: the fields of ``NullspaceConfig`` not in ``TrainingArguments``, then
    :data:`TRAINING_HYPERPARAMETERS`."""
    from dataclasses import fields

    from transformers import TrainingArguments

    from .config import NullspaceConfig

    inherited = {f.name for f in fields(TrainingArguments)}
    return tuple(f.name for f in fields(NullspaceConfig) if f.name not in inherited) + TRAINING_HYPERPARAMETERS
PUSH_EXCLUDE = ("checkpoint-*/*", "corruption_cache/*")
SUMMARY_METRICS = {"clean": "Clean accuracy", "fgsm": "FGSM accuracy", "corruption": "Mean corruption accuracy"}


def summarize_report(report: dict[str, Any]) -> dict[str, float]:
    """Headline numbers of a ``RobustnessReport.to_dict()``: clean, each attack, mean corruption accuracy."""
    summary = {"clean": report["clean_accuracy"]}
    for name, attack in report.get("attacks", {}).items():
        summary[name] = attack["accuracy"]
    accuracies = [value for by_severity in report.get("corruptions", {}).values() for value in by_severity.values()]
    if accuracies:
        summary["corruption"] = sum(accuracies) / len(accuracies)
    return summary


def noise_rounds_table(noise_history: list[dict[str, Any]]) -> str:
    """Markdown table of every round's synthesis: start and final mse_prob, gradient and forward steps, norm."""
    lines = ["| round | step | start mse_prob | final mse_prob | gradient steps | forward-only passes | noise norm "
             "| budget used up |", "|---|---|---|---|---|---|---|---|"]
    for r in noise_history:
        lines.append(f"| {r['round']} | {r['step']} | {r.get('start_mse_prob', float('nan')):.3g} | {r['mse_prob']:.4f} "
                     f"| {r['steps']} | {r.get('forward_steps', 0)} | {r['norm']:.3f} | "
                     f"{'yes' if r.get('budget_hit') else 'no'} |")
    return "\n".join(lines)


def results_table(results: dict[str, Any]) -> str:
    """Markdown table of the ``before``/``after`` summaries in ``results.json``."""
    runs = {name: summarize_report(report) for name, report in results.items() if isinstance(report, dict)
            and "clean_accuracy" in report}
    if not runs:
        return ""
    metrics = list(dict.fromkeys(metric for summary in runs.values() for metric in summary))
    header = "| model | " + " | ".join(SUMMARY_METRICS.get(m, f"{m.upper()} accuracy") for m in metrics) + " |"
    lines = [header, "|---|" + "---|" * len(metrics)]
    for name, summary in runs.items():
        lines.append(f"| {name} | " + " | ".join("–" if summary.get(m) is None else f"{summary[m]:.2f}"
                                               for m in metrics) + " |")
    first = next(iter(runs.values()))
    samples = results.get("after", results.get(next(iter(runs)), {})).get("num_samples")
    note = f"Accuracies in % on {samples} held-out images." if samples else "Accuracies in %."
    return "\n".join(lines) + "\n\n" + note + (" FGSM uses ε = 1/255 in [0, 1] pixel space." if "fgsm" in first else "")


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
) -> ModelCard:
    """A model card from the package's template: card data with ``model-index``, results, noise statistics.

    Args:
        model_name: title of the card (usually the repository name).
        repo_id: ``user/name`` used in the loading snippet.
        args: the ``NullspaceConfig`` of the run (its noise settings are listed).
        noise_history: one dict per round (``round, step, norm, steps, forward_steps, start_mse_prob, mse_prob,
            reached, budget_hit``).
        results: the contents of ``results.json`` (``{"before": report, "after": report}``), if any.
        base_model: the checkpoint that was fine-tuned: a Hub id (linked, and the card's ``base_model``) or
            a local path (named only).
        dataset_name: the fine-tuning dataset's name, as shown in the card.
        dataset_id: the dataset's Hub id, for the card's ``datasets`` metadata (none for local data).
        citation: BibTeX of the paper.
    """
    eval_results = []
    after = (results or {}).get("after")
    if after:
        for metric, value in summarize_report(after).items():
            eval_results.append(EvalResult(
                task_type="image-classification", dataset_type=dataset_id or dataset_name or after.get("dataset", "unknown"),
                dataset_name=dataset_name or after.get("dataset", "unknown"), dataset_split="test",
                metric_type="accuracy", metric_name=SUMMARY_METRICS.get(metric, f"{metric.upper()} accuracy"),
                metric_value=round(float(value), 4),
            ))
    hub_base = base_model if base_model and not os.path.exists(base_model) else None
    if hub_base:
        base_model_text = f"[{hub_base}](https://huggingface.co/{hub_base})"
    else:
        base_model_text = f"`{os.path.basename(os.path.normpath(base_model))}`" if base_model else "a Vision Transformer"
    card_data = ModelCardData(
        model_name=model_name, base_model=hub_base, datasets=[dataset_id] if dataset_id else None,
        tags=CARD_TAGS, library_name="transformers", pipeline_tag="image-classification",
        eval_results=eval_results or None,
    )
    hyperparameters = {key: getattr(args, key) for key in hyperparameter_names() if hasattr(args, key)}
    method = {"nullspace": "approximate nullspace augmented fine-tuning", "random": "random ε-noise fine-tuning "
              "(the paper's Table 4 baseline)", "none": "plain fine-tuning (the paper's vanilla baseline)"}
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATE), model_name=model_name, repo_id=repo_id,
        base_model_text=base_model_text, dataset_name=dataset_name, method_name=method.get(getattr(args, "noise_mode", "nullspace"), "fine-tuning"),
        refresh_steps=getattr(args, "noise_refresh_steps", 40), results_table=results_table(results or {}),
        hyperparameters=hyperparameters, noise_rounds=noise_history,
        noise_table=noise_rounds_table(noise_history) if noise_history else "", citation=citation,
    )


def read_results(output_dir: str) -> dict[str, Any] | None:
    """The ``results.json`` of an output directory, if there is one."""
    path = Path(output_dir) / RESULTS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


class HubPushError(RuntimeError):
    """The Hub could not be reached or refused a push; the local output is complete."""


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
