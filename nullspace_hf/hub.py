"""Model cards and pushes to the Hugging Face Hub."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .checkpoint import STAGING_PREFIX
from .errors import NullspaceError
from .lock import HOLDER_FILE, LOCK_FILE
from .model_card import ModelCardCallback, RunCardData, changed_settings, default_config, method_setting_names
from .objectives import is_variant, objective_text

TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"
RESULTS_FILE = "results.json"
FRAMEWORKS = ("nullspace-hf", "transformers", "torch", "accelerate", "datasets")


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


PAPER_CITATION = """@misc{liu2024approximate,
  title={Approximate Nullspace Augmented Finetuning for Robust Vision Transformers},
  author={Liu, Haoyang and Singh, Aditya and Li, Yijiang and Wang, Haohan},
  year={2024},
  eprint={2403.10476},
  archivePrefix={arXiv},
  primaryClass={cs.CV},
  url={https://arxiv.org/abs/2403.10476}
}"""
PUSH_EXCLUDE = ("checkpoint-*/*", f"{STAGING_PREFIX}checkpoint-*/*", "corruption_cache/*", LOCK_FILE, HOLDER_FILE)
SUMMARY_METRICS = {"clean": "Clean accuracy", "fgsm": "FGSM accuracy", "autoattack": "AutoAttack robust accuracy",
                   "corruption": "Mean corruption accuracy"}


def _number(record: dict[str, Any], key: str, spec: str) -> str:
    """``record[key]`` formatted, or ``–`` where an older record lacks it."""
    return "–" if record.get(key) is None else format(record[key], spec)


def noise_rounds_table(noise_history: list[dict[str, Any]]) -> str:
    """Markdown table of every round's synthesis: start and final mse_prob, gradient and forward steps, the
    noise's norm and RMS per element, and whether it used up its gradient budget."""
    lines = ["| round | step | start mse_prob | final mse_prob | gradient steps | forward-only passes | noise norm "
             "| RMS per element | budget used up |", "|---|---|---|---|---|---|---|---|---|"]
    for r in noise_history:
        lines.append(f"| {r['round']} | {r['step']} | {_number(r, 'start_mse_prob', '.3g')} | {r['mse_prob']:.4f} "
                     f"| {r['steps']} | {r.get('forward_steps', 0)} | {r['norm']:.3f} | {_number(r, 'rms', '.4g')} | "
                     f"{'yes' if r.get('budget_hit') else 'no'} |")
    return "\n".join(lines)


def evaluations_table(evaluations: list[dict[str, Any]]) -> str:
    """Markdown table of the evaluations during training: one row per evaluation, one column per metric (timings
    left out)."""
    metrics = list(dict.fromkeys(key for entry in evaluations for key in entry if key not in ("step", "epoch")
                                 and not key.endswith(("_runtime", "_per_second"))))
    lines = ["| step | " + " | ".join(f"`{metric}`" for metric in metrics) + " |", "|---|" + "---|" * len(metrics)]
    for entry in evaluations:
        lines.append(f"| {entry['step']} | " + " | ".join(_number(entry, metric, '.4g') for metric in metrics) + " |")
    return "\n".join(lines)


def results_table(results: dict[str, Any]) -> str:
    """Markdown table of the ``summary`` of every robustness report (``before``, ``after``, ...)."""
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
    data: RunCardData | None = None,
    base_model: str | None = None,
    citation: str = PAPER_CITATION,
    tags: tuple[str, ...] | list[str] = (),
    defaults: Any | None = None,
) -> ModelCard:
    """A model card from the package's template: card data with ``model-index``, results, settings, noise statistics.

    Args:
        model_name: title of the card (usually the repository name).
        repo_id: what ``from_pretrained`` takes in the loading snippet: the Hub id, or the local directory.
        args: the run's config (``NullspaceConfig`` or ``AdversarialConfig``): every setting the method adds is
            listed, and every other one that differs from its default.
        noise_history: one dict per round (``round, step, norm, rms, steps, forward_steps, start_mse_prob,
            mse_prob, reached, budget_hit``); empty without noise.
        data: what the run collected (:class:`~nullspace_hf.model_card.RunCardData`): the robustness reports
            (``after``, else the last one, becomes the ``model-index``), the evaluations during training, the
            dataset and the license.
        base_model: the checkpoint that was fine-tuned: a Hub id (linked, and the card's ``base_model``) or
            a local path (named only).
        citation: BibTeX of the paper.
        tags: the card's tags (the trainer's ``_tag_names``).
        defaults: the config with every default to compare ``args`` with
            (:func:`~nullspace_hf.model_card.default_config`; built here when not given, which resets accelerate's
            state: a trainer passes the one it built before its ``Accelerator``).
    """
    data = data or RunCardData()
    results = data.robustness
    eval_results = []
    after = results.get("after", results[next(reversed(results))] if results else None)
    dataset_name, license = data.dataset_name, data.license
    if after and "summary" in after:
        details = after.get("summary_details", {})
        for metric, value in after["summary"].items():
            conditions = details.get(metric)
            eval_results.append(EvalResult(
                task_type="image-classification",
                dataset_type=_hub_id(data.dataset_id) or dataset_name or after.get("dataset", "unknown"),
                dataset_name=dataset_name or after.get("dataset", "unknown"), dataset_split="test",
                metric_type="accuracy", metric_name=SUMMARY_METRICS.get(metric, f"{metric.upper()} accuracy"),
                metric_value=round(float(value), 4),
                metric_config=threat_text(conditions) if conditions else None,
                metric_args={key: item for key, item in conditions.items() if key != "value"} if conditions else None,
            ))
    hub_base, hub_dataset = _hub_id(base_model), _hub_id(data.dataset_id)
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
    method_settings = {name: getattr(args, name) for name in method_setting_names(type(args))}
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATE), model_name=model_name, repo_id=repo_id,
        base_model_text=base_model_text, dataset_name=dataset_name, method_name=METHODS.get(mode, "fine-tuning"),
        noise_method=mode in ("nullspace", "random"), refresh_steps=getattr(args, "noise_refresh_steps", 40),
        objective=objective_text(args), objective_variant=is_variant(args),
        results_table=results_table(results), method_settings=method_settings,
        changed_settings=changed_settings(args, defaults or default_config(args)),
        evaluations_table=evaluations_table(data.evaluations) if data.evaluations else "",
        noise_rounds=noise_history, noise_table=noise_rounds_table(noise_history) if noise_history else "",
        citation=citation, license=license, frameworks=framework_versions(),
    )


class ModelCardMixin:
    """The model card of this package's trainers (TRL's pattern, sentence-transformers' card data): the class's
    ``_tag_names`` are the card's tags and the model's ``model_tags``, the paper is cited, and the card is rendered
    by :func:`build_model_card` from what the run collected (``model_card_data``), the noise history and the
    config; ``output_dir`` and every checkpoint get it as ``README.md``. Mix in before ``transformers.Trainer``."""

    _tag_names: list[str] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        config = kwargs.get("args")
        self._default_args = None if config is None else default_config(config)  # before the Accelerator exists
        super().__init__(*args, **kwargs)
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)
        self.model_card_data = RunCardData()
        self.add_callback(ModelCardCallback(self.model_card_data))

    def add_robustness_report(self, name: str, report: Any) -> None:
        """Put a robustness report (``evaluate_robustness``'s, or its dict) on the card under ``name``
        (``"before"``, ``"after"``: the ``after`` report becomes the card's ``model-index``)."""
        self.model_card_data.add_robustness_report(name, report)

    def model_card(self, model_name: str | None = None) -> ModelCard:
        """The card of the run so far, with the Hub id (``hub_model_id``) or, without one, ``output_dir`` to load."""
        repo_id = self.args.hub_model_id or self.args.output_dir
        base = getattr(getattr(self.model, "config", None), "_name_or_path", None) or None
        return build_model_card(
            model_name=model_name or os.path.basename(os.path.normpath(repo_id)), repo_id=repo_id, args=self.args,
            noise_history=getattr(self, "noise_history", []), data=self.model_card_data, base_model=base,
            tags=self._tag_names, defaults=self._default_args,
        )

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None,
                          dataset_id: str | None = None, license: str | None = None, **kwargs: Any) -> None:
        """Write the card (:meth:`model_card`) as ``output_dir/README.md``; the dataset and license given are kept
        for the later cards too. ``Trainer.push_to_hub`` calls it before uploading."""
        data = self.model_card_data
        data.dataset_name = dataset_name or kwargs.get("dataset") or data.dataset_name
        data.dataset_id = dataset_id or data.dataset_id
        data.license = license or data.license
        if self.is_world_process_zero():
            self.model_card(model_name).save(os.path.join(self.args.output_dir, "README.md"))

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """``Trainer._save_checkpoint``, then the card of the run so far into the checkpoint (a pushed checkpoint
        has one)."""
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            self.model_card().save(os.path.join(folder, "README.md"))


class HubPushError(NullspaceError):
    """The Hub could not be reached or refused a push; the local output is complete."""


def check_push_settings(repo_id: str, token: str | None) -> None:
    """Before any work: a push to ``repo_id`` can happen (a valid Hub id, a token, the Hub not switched off).

    Raises:
        NullspaceError: what to change (``--hub_model_id``, the login, ``HF_HUB_OFFLINE``).
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
