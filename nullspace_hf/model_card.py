"""What a run's model card states, collected while it runs (sentence-transformers' ``model_card_data`` pattern).

The trainers hold a :class:`RunCardData` (``trainer.model_card_data``) that a :class:`ModelCardCallback`
fills with every evaluation the Trainer runs, and that the caller fills with the robustness reports it
computed (``trainer.add_robustness_report("after", report)``) and the dataset and license to name; the
card (:func:`~nullspace_hf.hub.build_model_card`) is rendered from it, the trainer's ``noise_history``
and its config, never from files read back from ``output_dir``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from typing import Any

from transformers import TrainerCallback

from .errors import NullspaceError

# Settings a card never lists: where the run wrote, and secrets.
UNLISTED = ("output_dir", "logging_dir", "run_name", "hub_token")


@dataclass
class RunCardData:
    """The card's facts that the run collects.

    Attributes:
        dataset_name: the fine-tuning dataset's name, as the card shows it.
        dataset_id: its Hub id, for the card's ``datasets`` metadata (a local path is left out).
        license: an SPDX id (``apache-2.0``); none: the base model's terms apply.
        robustness: name (``before``, ``after``, ...) → a robustness report as a dict
            (:meth:`~nullspace_hf.evaluation.RobustnessReport.to_dict`), in the order given.
        evaluations: the metrics of every evaluation the Trainer ran, each with its ``step``.
    """

    dataset_name: str | None = None
    dataset_id: str | None = None
    license: str | None = None
    robustness: dict[str, dict[str, Any]] = field(default_factory=dict)
    evaluations: list[dict[str, Any]] = field(default_factory=list)

    def add_robustness_report(self, name: str, report: Any) -> None:
        """Keep ``report`` (a ``RobustnessReport`` or its dict, with a ``summary``) under ``name``."""
        data = report.to_dict() if hasattr(report, "to_dict") else dict(report)
        if "summary" not in data:
            raise NullspaceError(f"The robustness report {name!r} has no 'summary': pass what evaluate_robustness "
                                 "returns (or its to_dict()).")
        self.robustness[name] = data


class ModelCardCallback(TrainerCallback):
    """Records every evaluation's metrics (``on_evaluate``) into a :class:`RunCardData`."""

    def __init__(self, data: RunCardData) -> None:
        self.data = data

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                    **kwargs: Any) -> None:
        if metrics:
            self.data.evaluations.append({"step": state.global_step, **metrics})


def method_setting_names(config_class: type) -> tuple[str, ...]:
    """The settings of the method: the fields ``config_class`` adds to :class:`~nullspace_hf.config.BaseConfig`."""
    from .config import BaseConfig

    inherited = {f.name for f in fields(BaseConfig)}
    return tuple(f.name for f in fields(config_class) if f.name not in inherited)


def _shown(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


def default_config(args: Any) -> Any:
    """A config of ``args``'s class with every default: what ``__post_init__`` derives (enums, the device, the CPU
    multi-process fix) then compares like with like. Build it before the Trainer creates its ``Accelerator``:
    building a ``TrainingArguments`` resets accelerate's state, unless it is told to use the state already
    configured (``accelerator_config.use_configured_state``), which the reference then shares."""
    configured = getattr(args.accelerator_config, "use_configured_state", False)
    return type(args)(output_dir=args.output_dir, **({"accelerator_config": args.accelerator_config} if configured
                                                     else {}))


def changed_settings(args: Any, reference: Any) -> dict[str, tuple[Any, Any]]:
    """Every setting of ``args`` besides the method's own that differs from ``reference``
    (:func:`default_config`): name → (value, default)."""
    own = set(method_setting_names(type(args)))
    changed = {}
    for f in fields(args):
        if not f.init or f.name in own or f.name in UNLISTED or f.name.endswith("_token") or f.name.startswith("_"):
            continue
        value, default = _shown(getattr(args, f.name)), _shown(getattr(reference, f.name))
        if value != default:
            changed[f.name] = (value, default)
    return changed
