"""``evaluate_robustness``: clean accuracy, attacks, corruptions and OOD sets of one model, in one report.

One pass over the evaluation set computes, batch by batch, the clean predictions, each attack's and
each corruption's (the corrupted batch is built once and shared with the reference model). Under
``accelerate launch`` every process takes a contiguous share of the samples (accelerate's
``split_between_processes``, no padding) and the correct/total counts are summed over processes, so
each sample is counted exactly once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from accelerate import PartialState
from accelerate.utils import reduce
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, PreTrainedModel

from ..checks import check_finite_weights
from ..data import find_columns
from ..modeling import frozen_eval, load_model
from ..pixels import PixelSpaceClassifier, PixelTransform, check_model_input, images_to_pixels
from .attacks import DEFAULT_ATTACKS, Attack, resolve_attacks
from .corruptions import SEVERITIES, CorruptedSets, check_corruptible, resolve_corruptions, resolve_severities
from .metrics import ALEXNET_ERRORS, is_official_mce, mean_corruption_error
from .ood import load_ood_dataset, ood_set
from .report import RobustnessReport


@dataclass(frozen=True)
class _Metric:
    """One accuracy counted in the pass over the evaluation set: which classifier, on which images.

    Attributes:
        reference: counted for the reference model (the baseline of the corruption errors), not the model.
        condition: what the images went through: nothing (``"clean"``), an attack, a corruption, or nothing
            but they come from an out-of-distribution set (``"ood"``).
        name: the attack's or corruption's name.
        severity: the corruption's severity.
    """

    condition: Literal["clean", "attack", "corruption", "ood"]
    name: str | None = None
    severity: int | None = None
    reference: bool = False


_CLEAN = _Metric("clean")


class _Tally:
    """Correct/total counts per metric, summed over processes at the end."""

    def __init__(self, metrics: Sequence[_Metric], device: torch.device):
        self.index = {metric: i for i, metric in enumerate(metrics)}
        self.counts = torch.zeros(len(metrics), 2, dtype=torch.long, device=device)

    def add(self, metric: _Metric, correct: torch.Tensor) -> None:
        self.counts[self.index[metric], 0] += int(correct.sum())
        self.counts[self.index[metric], 1] += correct.numel()

    def totals(self) -> dict[_Metric, tuple[int, int]]:
        summed = reduce(self.counts, reduction="sum") if PartialState().num_processes > 1 else self.counts
        return {metric: (int(summed[i, 0]), int(summed[i, 1])) for metric, i in self.index.items()}


def _fraction(counts: tuple[int, int]) -> float:
    """Share of correct predictions: ``correct / total`` (NaN for no samples)."""
    return counts[0] / counts[1] if counts[1] else float("nan")


def _accuracy(counts: tuple[int, int]) -> float:
    return 100.0 * _fraction(counts)


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run with the torch RNG seeded, restoring its state afterwards."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _load_classifier(model: PreTrainedModel | str, processor: Any, device: torch.device, role: str,
                     fallback_processor: Any = None) -> tuple[PreTrainedModel, Any, str]:
    """Load ``model`` (a name is loaded with :func:`~nullspace_hf.modeling.load_model`) and its image processor."""
    if isinstance(model, str):
        name = model
        model = load_model(model, for_classification=True).to(device)
    elif isinstance(model, PreTrainedModel):
        name = model.name_or_path or type(model).__name__
    else:
        raise ValueError(f"The {role} must be a transformers model or a model name/path, got {type(model).__name__}.")
    check_finite_weights(model, f"the {role} {name!r}", "its accuracies would be meaningless; evaluate another "
                         "checkpoint.")
    if processor is None:
        try:
            processor = AutoImageProcessor.from_pretrained(model.name_or_path)
        except (OSError, ValueError, TypeError) as error:
            if fallback_processor is None:
                raise ValueError(f"No image processor found for the {role} {name!r}: pass image_processor=.") from error
            processor = fallback_processor
    return model, processor, name


def _check_labels(labels: Iterable[int], num_labels: int, what: str) -> None:
    values = set(labels)
    bad = sorted(v for v in values if not 0 <= v < num_labels)
    if bad:
        raise ValueError(f"{what} has labels {bad[:5]} outside the model's {num_labels} classes: "
                         "its labels must be the model's class indices.")


def _shard(size: int) -> list[int]:
    """This process's contiguous share of ``range(size)``."""
    with PartialState().split_between_processes(list(range(size))) as indices:
        return list(indices)


def _batches(dataset: Dataset, indices: list[int], batch_size: int, image_column: str, label_column: str,
             processor: Any, device: torch.device, description: str, progress: bool
             ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """(sample ids, pixels in [0, 1], labels) per batch of this process's samples, with a progress bar."""
    starts = range(0, len(indices), batch_size)
    bar = tqdm(starts, desc=description, unit="batch", disable=not (progress and PartialState().is_local_main_process))
    for start in bar:
        ids = indices[start:start + batch_size]
        rows = dataset[ids]
        yield (ids, images_to_pixels(processor, rows[image_column]).to(device),
               torch.as_tensor(rows[label_column], device=device))


def evaluate_robustness(
    model: PreTrainedModel | str,
    dataset: Dataset,
    *,
    image_processor: Any = None,
    attacks: Iterable[str | Attack] | str | None = DEFAULT_ATTACKS,
    corruptions: str | Iterable[str] | None = "all",
    severities: Iterable[int] = SEVERITIES,
    reference_model: PreTrainedModel | str | None = None,
    reference_processor: Any = None,
    ood_datasets: Mapping[str, Dataset | str] | None = None,
    batch_size: int = 32,
    seed: int = 0,
    image_column: str | None = None,
    label_column: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    dataset_name: str | None = None,
    progress: bool = True,
) -> RobustnessReport:
    """Evaluate an image classifier's robustness as in the paper's §5 and Table 2.

    Attacks and corruptions act on the images in [0, 1] pixel space, after the image processor's resize
    and crop; its rescale and normalisation run inside the attacked model
    (:class:`~nullspace_hf.pixels.PixelSpaceClassifier`).

    Args:
        model: a ``transformers`` image-classification model, or a name/path for ``load_model``.
        dataset: the evaluation images and labels (the model's class indices), e.g. ImageNet validation.
        image_processor: the model's image processor; loaded from the model's path when not given.
        attacks: names from :data:`~nullspace_hf.evaluation.attacks.ATTACKS` (paper defaults) and/or
            configured :class:`~nullspace_hf.evaluation.attacks.Attack` objects; ``None`` for none.
        corruptions: corruption names or a group (``"all"``: the 15 ImageNet-C corruptions and 4 extra;
            ``"imagenet-c"``; ``"extra"``; ``"none"``).
        severities: corruption severities, from 1 to 5.
        reference_model: the baseline of the corruption errors (e.g. the checkpoint before fine-tuning).
            Without one, a 1,000-class (ImageNet) model is normalised by AlexNet's errors; other models
            get corruption accuracies only.
        reference_processor: the reference's image processor; by default its saved one, else ``image_processor``.
        ood_datasets: out-of-distribution sets by name (``imagenet-a``, ``imagenet-r``, ``imagenet-v2``,
            ``imagenet-sketch``, ``stylized-imagenet``, ``damagenet``): a ``Dataset`` with ImageNet-1k
            labels, a Hub id or a local folder (see :func:`~nullspace_hf.evaluation.ood.load_ood_dataset`).
        batch_size: images per batch (per process).
        seed: seeds the attacks' random starts and the corruptions' random draws.
        image_column, label_column: column names, found automatically when not given.
        cache_dir: where corrupted images are kept and reused across evaluations (no cache when ``None``).
        dataset_name: the dataset's name in the report.
        progress: show progress bars (on the main process).

    Returns:
        A :class:`~nullspace_hf.evaluation.report.RobustnessReport`.

    Raises:
        ValueError: an unknown attack, corruption or OOD set name, an empty dataset, labels outside the
            model's classes, or an image processor that does not fit the model (channels, size).
    """
    attack_list = resolve_attacks(attacks)
    corruption_names = resolve_corruptions(corruptions)
    severity_list = resolve_severities(severities)
    ood_sources = dict(ood_datasets or {})
    for name in ood_sources:
        ood_set(name)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if len(dataset) == 0:
        raise ValueError("The evaluation dataset is empty: give a split with at least one image.")
    image_column, label_column = find_columns(dataset, image_column, label_column)

    state = PartialState()
    model, processor, model_name = _load_classifier(model, image_processor, state.device, "model")
    num_labels = model.config.num_labels
    probe = images_to_pixels(processor, [dataset[0][image_column]])
    classifier = PixelSpaceClassifier(model, PixelTransform.from_processor(processor, probe.shape[1]))
    check_model_input(model, probe, classifier.transform)
    _check_labels(dataset[label_column], num_labels, "The evaluation dataset")
    if corruption_names:
        check_corruptible(*probe.shape[1:])
    if ood_sources and num_labels != 1000:
        raise ValueError(f"The out-of-distribution sets are ImageNet sets, but the model has {num_labels} classes.")
    reference = None
    if reference_model is not None:
        ref_model, ref_processor, reference_name = _load_classifier(
            reference_model, reference_processor, state.device, "reference model", fallback_processor=processor)
        reference = PixelSpaceClassifier(ref_model, PixelTransform.from_processor(ref_processor, probe.shape[1]))
        check_model_input(ref_model, probe, reference.transform)
        if ref_model.config.num_labels != num_labels:
            raise ValueError(f"The reference model has {ref_model.config.num_labels} classes, the model {num_labels}.")

    with frozen_eval(*(judge.model for judge in (classifier, reference) if judge is not None)):
        counts = _count_correct(classifier, reference, dataset, processor, attack_list, corruption_names,
                                severity_list, batch_size=batch_size, seed=seed, image_column=image_column,
                                label_column=label_column, cache_dir=cache_dir,
                                description=f"Robustness of {model_name}", progress=progress)
        ood_results = {name: _evaluate_ood(classifier, processor, name, source, batch_size, progress)
                       for name, source in ood_sources.items()}

    errors = _errors(counts, corruption_names, severity_list)
    reference_report = None
    if reference is not None:
        baseline: Mapping[str, Any] = _errors(counts, corruption_names, severity_list, reference=True)
        baseline_name: str | None = "reference"
        reference_report = {"model": reference_name,
                            "clean_accuracy": _accuracy(counts[_Metric("clean", reference=True)]),
                            "corruptions": _accuracies(counts, corruption_names, severity_list, reference=True)}
    elif num_labels == 1000:
        baseline, baseline_name = ALEXNET_ERRORS, "alexnet"
    else:
        baseline, baseline_name = {}, None
    corruption_errors, mce = mean_corruption_error(errors, baseline)
    return RobustnessReport(
        model=model_name,
        dataset=dataset_name or dataset.info.dataset_name or "dataset",
        num_samples=counts[_CLEAN][1],
        clean_accuracy=_accuracy(counts[_CLEAN]),
        attacks={a.name: {"column": a.column, "accuracy": _accuracy(counts[_Metric("attack", a.name)]),
                          "config": a.config()} for a in attack_list},
        corruptions=_accuracies(counts, corruption_names, severity_list),
        corruption_errors=corruption_errors,
        mce=mce,
        mce_baseline=baseline_name if mce is not None else None,
        mce_official=mce is not None and is_official_mce(errors),
        reference=reference_report,
        ood=ood_results,
        settings={"seed": seed, "batch_size": batch_size, "severities": list(severity_list),
                  "num_processes": state.num_processes},
    )


def _count_correct(classifier: PixelSpaceClassifier, reference: PixelSpaceClassifier | None, dataset: Dataset,
                   processor: Any, attacks: Sequence[Attack], corruptions: Sequence[str], severities: Sequence[int], *,
                   batch_size: int, seed: int, image_column: str, label_column: str,
                   cache_dir: str | os.PathLike | None, description: str,
                   progress: bool) -> dict[_Metric, tuple[int, int]]:
    """One pass over this process's share of ``dataset``: (correct, total) per metric, summed over processes."""
    classifiers = {False: classifier, **({True: reference} if reference is not None else {})}
    corrupted = [_Metric("corruption", c, s) for c in corruptions for s in severities]
    metrics = [_CLEAN, *(_Metric("attack", a.name) for a in attacks), *corrupted]
    if reference is not None:
        metrics += [replace(metric, reference=True) for metric in (_CLEAN, *corrupted)]
    tally = _Tally(metrics, PartialState().device)
    corrupted_sets = CorruptedSets(cache_dir, seed)
    device = classifier.device
    for ids, pixels, labels in _batches(dataset, _shard(len(dataset)), batch_size, image_column, label_column,
                                        processor, device, description, progress):
        for is_reference, judge in classifiers.items():
            tally.add(_Metric("clean", reference=is_reference), judge.predict(pixels) == labels)
        for attack in attacks:
            with _seeded(seed * 1_000_003 + ids[0], device):
                adversarial = attack.perturb(classifier, pixels, labels)
            tally.add(_Metric("attack", attack.name), classifier.predict(adversarial) == labels)
        for corruption in corruptions:
            for severity in severities:
                images = corrupted_sets.get(pixels, corruption, severity, ids)
                for is_reference, judge in classifiers.items():
                    tally.add(_Metric("corruption", corruption, severity, is_reference),
                              judge.predict(images) == labels)
    return tally.totals()


def _accuracies(counts: Mapping[_Metric, tuple[int, int]], corruptions: Sequence[str], severities: Sequence[int],
                *, reference: bool = False) -> dict[str, dict[int, float]]:
    """Accuracy (in %) per corruption and severity, of the model or of the reference."""
    return {c: {s: _accuracy(counts[_Metric("corruption", c, s, reference)]) for s in severities}
            for c in corruptions}


def _errors(counts: Mapping[_Metric, tuple[int, int]], corruptions: Sequence[str], severities: Sequence[int],
            *, reference: bool = False) -> dict[str, dict[int, float]]:
    """Top-1 error (a fraction) per corruption and severity, of the model or of the reference."""
    return {c: {s: 1 - _fraction(counts[_Metric("corruption", c, s, reference)]) for s in severities}
            for c in corruptions}


def _evaluate_ood(classifier: PixelSpaceClassifier, processor: Any, name: str, source: Dataset | str,
                  batch_size: int, progress: bool) -> dict[str, Any]:
    """Accuracy on one out-of-distribution set, predictions restricted to its classes."""
    spec = ood_set(name)
    dataset = load_ood_dataset(name, source)
    if len(dataset) == 0:
        raise ValueError(f"The out-of-distribution set {name!r} is empty.")
    image_column, _ = find_columns(dataset, label_column="label")
    metric = _Metric("ood", name)
    tally = _Tally([metric], PartialState().device)
    for _, pixels, labels in _batches(dataset, _shard(len(dataset)), batch_size, image_column, "label", processor,
                                      classifier.device, name, progress):
        tally.add(metric, classifier.predict(pixels, spec.class_indices) == labels)
    counts = tally.totals()[metric]
    return {"column": spec.column, "accuracy": _accuracy(counts), "num_samples": counts[1]}
