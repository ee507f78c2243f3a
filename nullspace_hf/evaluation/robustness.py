"""``evaluate_robustness``: clean accuracy, attacks, corruptions and OOD sets of one model, in one report.

One pass over the evaluation set computes, batch by batch, the clean predictions, each attack's and
each corruption's (the corrupted batch is made once, in DataLoader workers when asked, and shared with
the reference model); a released corruption set (ImageNet-C, CIFAR-10-C or a ``datasets`` copy) is read
instead of corrupting on the fly when one is given. Under ``accelerate launch`` every process takes a
contiguous share of the samples (accelerate's ``split_between_processes``, no padding) and the
predictions are gathered over processes, so each sample is counted exactly once. The numbers come from
the package's ``evaluate`` metric modules (:mod:`~nullspace_hf.evaluation.hf_metrics`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, PreTrainedModel

from ..checks import check_finite_weights
from ..data import find_columns
from ..errors import NullspaceError
from ..modeling import frozen_eval, load_model
from ..pixels import PixelSpaceClassifier, PixelTransform, check_model_input, from_8bit, images_to_pixels
from .attacks import DEFAULT_ATTACKS, Attack, resolve_attacks
from .corruption_stream import CorruptOnTheFly, LoadReleased, check_workers, prefetched
from .corruptions import (
    IMAGENET_C_CORRUPTIONS,
    SEVERITIES,
    CorruptedSets,
    check_corruptible,
    library_version,
    resolve_corruptions,
    resolve_severities,
)
from .hf_metrics import load_metric
from .ood import load_ood_dataset, ood_set
from .released import CorruptionSet, open_corruption_set
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


_NO_LABELS = np.zeros(0, dtype=np.int64)


class _Predictions:
    """Predicted and true labels per metric; :meth:`gathered` joins those of every process."""

    def __init__(self, metrics: Sequence[_Metric]):
        self.parts: dict[_Metric, list[tuple[np.ndarray, np.ndarray]]] = {metric: [] for metric in metrics}

    def add(self, metric: _Metric, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        self.parts[metric].append((predictions.cpu().numpy().astype(np.int64), labels.cpu().numpy().astype(np.int64)))

    def _local(self) -> dict[_Metric, tuple[np.ndarray, np.ndarray]]:
        return {metric: (np.concatenate([p for p, _ in parts]), np.concatenate([label for _, label in parts]))
                if parts else (_NO_LABELS, _NO_LABELS) for metric, parts in self.parts.items()}

    def gathered(self) -> dict[_Metric, tuple[np.ndarray, np.ndarray]]:
        """Per metric, (predictions, labels) of all processes, in process order (so paired metrics stay paired)."""
        local = self._local()
        if PartialState().num_processes == 1:
            return local
        shares = gather_object([local])
        return {metric: (np.concatenate([share[metric][0] for share in shares]),
                         np.concatenate([share[metric][1] for share in shares])) for metric in local}


def _accuracy(records: Mapping[_Metric, tuple[np.ndarray, np.ndarray]], metric: _Metric) -> float:
    """Top-1 accuracy in % (the ``accuracy`` module)."""
    predictions, labels = records[metric]
    return 100.0 * load_metric("accuracy").compute(predictions=predictions, references=labels)["accuracy"]


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
        raise NullspaceError(f"The {role} must be a transformers model or a model name/path, got "
                             f"{type(model).__name__}.")
    check_finite_weights(model, f"the {role} {name!r}", "its accuracies would be meaningless; evaluate another "
                         "checkpoint.")
    if processor is None:
        try:
            processor = AutoImageProcessor.from_pretrained(model.name_or_path)
        except (OSError, ValueError, TypeError) as error:
            if fallback_processor is None:
                raise NullspaceError(f"No image processor found for the {role} {name!r}: pass "
                                     "image_processor=.") from error
            processor = fallback_processor
    return model, processor, name


def _check_labels(labels: Iterable[int], num_labels: int, what: str) -> None:
    values = set(labels)
    bad = sorted(v for v in values if not 0 <= v < num_labels)
    if bad:
        raise NullspaceError(f"{what} has labels {bad[:5]} outside the model's {num_labels} classes: "
                             "its labels must be the model's class indices.")


def _shard(size: int) -> list[int]:
    """This process's contiguous share of ``range(size)``."""
    with PartialState().split_between_processes(list(range(size))) as indices:
        return list(indices)


def _chunks(indices: list[int], batch_size: int) -> list[list[int]]:
    return [indices[start:start + batch_size] for start in range(0, len(indices), batch_size)]


def _progress(items: Iterable[Any], total: int, description: str, progress: bool) -> Iterable[Any]:
    return tqdm(items, total=total, desc=description, unit="batch",
                disable=not (progress and PartialState().is_local_main_process))


def _plain(value: Any) -> Any:
    """A processor setting as plain JSON values (size dicts without their unset entries, enums by name)."""
    if hasattr(value, "items"):
        return {key: item for key, item in value.items() if item is not None}
    return getattr(value, "name", value)


def _preprocessing(processor: Any, transform: PixelTransform, size: Sequence[int]) -> dict[str, Any]:
    """What the images go through before the model, as reports state it beside every number."""
    return {
        "processor": type(processor).__name__,
        "input_size": list(size),
        "resize": _plain(getattr(processor, "size", None)) if getattr(processor, "do_resize", False) else None,
        "resample": _plain(getattr(processor, "resample", None)),
        "center_crop": _plain(getattr(processor, "crop_size", None)) if getattr(processor, "do_center_crop", False)
        else None,
        "rescale": transform.scale / 255.0,
        "mean": list(transform.mean),
        "std": list(transform.std),
        "pixel_space": "attacks and corruptions act on [0, 1] pixels after resize and crop; the rescale and "
                       "normalisation run inside the attacked model",
    }


def evaluate_robustness(
    model: PreTrainedModel | str,
    dataset: Dataset,
    *,
    image_processor: Any = None,
    attacks: Iterable[str | Attack] | str | None = DEFAULT_ATTACKS,
    corruptions: str | Iterable[str] | None = "all",
    severities: Iterable[int] = SEVERITIES,
    corruption_source: str | os.PathLike | Dataset | CorruptionSet | None = None,
    max_corruption_samples: int | None = None,
    corruption_workers: int = 0,
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
        corruption_source: ``None`` to corrupt ``dataset`` on the fly at the processor's resolution, or a
            released benchmark to read (:func:`~nullspace_hf.evaluation.released.open_corruption_set`): an
            ImageNet-C folder, a CIFAR-10-C folder, or a ``datasets`` copy (folder, Hub id or ``Dataset``)
            with ``corruption`` and ``severity`` columns.
        max_corruption_samples: images read per corruption and severity of a released set (all: ``None``).
        corruption_workers: DataLoader worker processes that corrupt (or read) images while the model runs;
            0 does it in this process. The images are the same whatever the number.
        reference_model: the baseline of the corruption errors (e.g. the checkpoint before fine-tuning).
            The mCE is normalised by AlexNet's errors when the source is the released ImageNet-C with all 15
            corruptions × 5 severities; otherwise by the reference model, when one is given; otherwise the
            report has corruption accuracies only.
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
            model's classes, an image processor that does not fit the model (channels, size), or a released
            corruption set that is incomplete, mislabelled or made for other classes.
    """
    attack_list = resolve_attacks(attacks)
    corruption_names = resolve_corruptions(corruptions)
    severity_list = resolve_severities(severities)
    check_workers(corruption_workers)
    ood_sources = dict(ood_datasets or {})
    for name in ood_sources:
        ood_set(name)
    if batch_size < 1:
        raise NullspaceError(f"batch_size must be >= 1, got {batch_size}.")
    if len(dataset) == 0:
        raise NullspaceError("The evaluation dataset is empty: give a split with at least one image.")
    image_column, label_column = find_columns(dataset, image_column, label_column)

    state = PartialState()
    model, processor, model_name = _load_classifier(model, image_processor, state.device, "model")
    num_labels = model.config.num_labels
    probe = images_to_pixels(processor, [dataset[0][image_column]])
    classifier = PixelSpaceClassifier(model, PixelTransform.from_processor(processor, probe.shape[1]))
    check_model_input(model, probe, classifier.transform)
    _check_labels(dataset[label_column], num_labels, "The evaluation dataset")
    released, label_map = None, None
    if corruption_names and corruption_source is not None:
        released = (corruption_source if isinstance(corruption_source, CorruptionSet)
                    else open_corruption_set(corruption_source, max_samples=max_corruption_samples))
        released.check(corruption_names, severity_list)
        label_map = released.label_map(model.config.id2label, num_labels)
    elif corruption_names:
        check_corruptible(*probe.shape[1:])
    if ood_sources and num_labels != 1000:
        raise NullspaceError(f"The out-of-distribution sets are ImageNet sets, but the model has {num_labels} classes.")
    reference = None
    if reference_model is not None:
        ref_model, ref_processor, reference_name = _load_classifier(
            reference_model, reference_processor, state.device, "reference model", fallback_processor=processor)
        reference = PixelSpaceClassifier(ref_model, PixelTransform.from_processor(ref_processor, probe.shape[1]))
        check_model_input(ref_model, probe, reference.transform)
        if ref_model.config.num_labels != num_labels:
            raise NullspaceError(f"The reference model has {ref_model.config.num_labels} classes, the model "
                                 f"{num_labels}.")

    judges = {False: classifier, **({True: reference} if reference is not None else {})}
    with frozen_eval(*(judge.model for judge in judges.values())):
        records = _predict(judges, dataset, processor, attack_list, () if released else corruption_names,
                           severity_list, batch_size=batch_size, seed=seed, image_column=image_column,
                           label_column=label_column, cache_dir=cache_dir, workers=corruption_workers,
                           description=f"Robustness of {model_name}", progress=progress)
        if released is not None:
            records.update(_predict_released(judges, released, label_map, processor, corruption_names, severity_list,
                                             batch_size=batch_size, workers=corruption_workers, num_labels=num_labels,
                                             progress=progress))
        ood_results = {name: _evaluate_ood(classifier, processor, name, source, batch_size, progress)
                       for name, source in ood_sources.items()}

    clean_predictions = records[_CLEAN][0]
    attack_results = {}
    for attack in attack_list:
        predictions, labels = records[_Metric("attack", attack.name)]
        robust = load_metric("robust_accuracy").compute(predictions=predictions, references=labels,
                                                       clean_predictions=clean_predictions)
        attack_results[attack.name] = {"column": attack.column, "accuracy": 100.0 * robust["robust_accuracy"],
                                       "attack_success_rate": 100.0 * robust["attack_success_rate"],
                                       **attack.threat_model(), "config": attack.config()}
    corruption = _corruption_summary(records, corruption_names, severity_list, released, num_labels,
                                     reference is not None)
    return RobustnessReport(
        model=model_name,
        dataset=dataset_name or dataset.info.dataset_name or "dataset",
        num_samples=len(clean_predictions),
        clean_accuracy=_accuracy(records, _CLEAN),
        attacks=attack_results,
        corruptions=corruption["accuracies"],
        corruption_errors=corruption["corruption_errors"],
        mce=corruption["mce"],
        mce_baseline=corruption["baseline"],
        mce_official=corruption["official"],
        relative_mce=corruption["relative_mce"],
        corruption_source=_source(released, corruption_names, records, severity_list, probe.shape[-2:]),
        preprocessing=_preprocessing(processor, classifier.transform, probe.shape[-2:]),
        reference=None if reference is None else {
            "model": reference_name, "clean_accuracy": _accuracy(records, _Metric("clean", reference=True)),
            "corruptions": corruption["reference_accuracies"]},
        ood=ood_results,
        settings={"seed": seed, "batch_size": batch_size, "severities": list(severity_list),
                  "num_processes": state.num_processes, "corruption_workers": corruption_workers},
    )


def _predict(judges: Mapping[bool, PixelSpaceClassifier], dataset: Dataset, processor: Any, attacks: Sequence[Attack],
             corruptions: Sequence[str], severities: Sequence[int], *, batch_size: int, seed: int, image_column: str,
             label_column: str, cache_dir: str | os.PathLike | None, workers: int, description: str,
             progress: bool) -> dict[_Metric, tuple[np.ndarray, np.ndarray]]:
    """One pass over this process's share of ``dataset``: clean, attacked and corrupted-on-the-fly predictions of
    the model (``judges[False]``) and of the reference (``judges[True]``), gathered over processes."""
    classifier = judges[False]
    corrupted = [_Metric("corruption", c, s) for c in corruptions for s in severities]
    metrics = [_CLEAN, *(_Metric("attack", a.name) for a in attacks), *corrupted]
    if True in judges:
        metrics += [replace(metric, reference=True) for metric in (_CLEAN, *corrupted)]
    records = _Predictions(metrics)
    device = classifier.device
    batches = _chunks(_shard(len(dataset)), batch_size)
    jobs = [(ids, corruption) for ids in batches for corruption in corruptions]
    stream = prefetched(CorruptOnTheFly(dataset, processor, image_column, tuple(severities),
                                        CorruptedSets(cache_dir, seed)), jobs, workers)
    for ids in _progress(batches, len(batches), description, progress):
        rows = dataset[ids]
        pixels = images_to_pixels(processor, rows[image_column]).to(device)
        labels = torch.as_tensor(rows[label_column], device=device)
        for is_reference, judge in judges.items():
            records.add(_Metric("clean", reference=is_reference), judge.predict(pixels), labels)
        for attack in attacks:
            with _seeded(seed * 1_000_003 + ids[0], device):
                adversarial = attack.perturb(classifier, pixels, labels)
            records.add(_Metric("attack", attack.name), classifier.predict(adversarial), labels)
        for corruption in corruptions:
            for severity, images in zip(severities, next(stream), strict=True):
                images = from_8bit(images).to(device)
                for is_reference, judge in judges.items():
                    records.add(_Metric("corruption", corruption, severity, is_reference), judge.predict(images),
                                labels)
    return records.gathered()


def _predict_released(judges: Mapping[bool, PixelSpaceClassifier], corruption_set: CorruptionSet,
                      label_map: np.ndarray | None, processor: Any, corruptions: Sequence[str],
                      severities: Sequence[int], *, batch_size: int, workers: int, num_labels: int,
                      progress: bool) -> dict[_Metric, tuple[np.ndarray, np.ndarray]]:
    """Predictions of the model and the reference on a released set's images, gathered over processes."""
    records = _Predictions([_Metric("corruption", c, s, r) for c in corruptions for s in severities for r in judges])
    jobs, job_labels = [], []
    for corruption in corruptions:
        for severity in severities:
            labels = corruption_set.labels(corruption, severity)
            labels = labels if label_map is None else label_map[labels]
            _check_labels(labels.tolist(), num_labels,
                          f"{corruption_set.describe()} ({corruption}, severity {severity})")
            for chunk in _chunks(_shard(len(labels)), batch_size):
                jobs.append((corruption, severity, chunk))
                job_labels.append(torch.as_tensor(labels[chunk]))
    device = judges[False].device
    stream = prefetched(LoadReleased(corruption_set, processor), jobs, workers)
    for (corruption, severity, _), labels, images in _progress(zip(jobs, job_labels, stream, strict=True), len(jobs),
                                                              corruption_set.describe(), progress):
        images, labels = from_8bit(images).to(device), labels.to(device)
        for is_reference, judge in judges.items():
            records.add(_Metric("corruption", corruption, severity, is_reference), judge.predict(images), labels)
    return records.gathered()


def _corruption_result(records: Mapping[_Metric, tuple[np.ndarray, np.ndarray]], corruptions: Sequence[str],
                       severities: Sequence[int], reference: bool, baseline: Any) -> dict[str, Any]:
    """The ``corruption_error`` module on the model's (or the reference's) corrupted predictions."""
    metrics = [_Metric("corruption", c, s, reference) for c in corruptions for s in severities]
    return load_metric("corruption_error").compute(
        predictions=np.concatenate([records[m][0] for m in metrics]),
        references=np.concatenate([records[m][1] for m in metrics]),
        corruptions=[m.name for m in metrics for _ in records[m][0]],
        severities=np.concatenate([np.full(len(records[m][0]), m.severity) for m in metrics]),
        baseline=baseline)


def _percent(accuracy: Mapping[str, Mapping[int, float]]) -> dict[str, dict[int, float]]:
    return {name: {int(s): 100.0 * value for s, value in by_severity.items()} for name, by_severity in accuracy.items()}


def _corruption_summary(records: Mapping[_Metric, tuple[np.ndarray, np.ndarray]], corruptions: Sequence[str],
                        severities: Sequence[int], released: CorruptionSet | None, num_labels: int,
                        with_reference: bool) -> dict[str, Any]:
    """Accuracies, CE_c, mCE (and its baseline) and relative mCE of the corrupted predictions.

    AlexNet normalises the mCE when the source is the released ImageNet-C (its folder, or a ``datasets`` copy
    read by a 1,000-class model) with all 15 corruptions at all 5 severities; otherwise the reference model
    does, when there is one. The CE relative to the reference is reported in either case.
    """
    empty = {"accuracies": {}, "corruption_errors": {}, "mce": None, "baseline": None, "official": False,
             "relative_mce": None, "reference_accuracies": {}}
    if not corruptions:
        return empty
    reference = _corruption_result(records, corruptions, severities, True, None) if with_reference else None
    imagenet_c = released is not None and (released.kind == "imagenet-c"
                                           or (released.kind == "datasets" and num_labels == 1000))
    full = set(IMAGENET_C_CORRUPTIONS) <= set(corruptions) and set(severities) == set(SEVERITIES)
    if imagenet_c and full:
        baseline, name = "alexnet", "alexnet"
    elif reference is not None:
        baseline, name = reference["errors"], "reference"
    else:
        baseline, name = None, None
    result = _corruption_result(records, corruptions, severities, False, baseline)
    relative = result["relative_mce"]
    if name == "alexnet" and reference is not None:
        relative = _corruption_result(records, corruptions, severities, False, reference["errors"])["relative_mce"]
    return {"accuracies": _percent(result["accuracy"]), "corruption_errors": result["corruption_errors"],
            "mce": result["mce"], "baseline": name if result["mce"] is not None else None,
            "official": result["mce"] is not None and result["official"], "relative_mce": relative,
            "reference_accuracies": _percent(reference["accuracy"]) if reference is not None else {}}


def _source(released: CorruptionSet | None, corruptions: Sequence[str],
            records: Mapping[_Metric, tuple[np.ndarray, np.ndarray]], severities: Sequence[int],
            size: Sequence[int]) -> dict[str, Any] | None:
    """Where the corrupted images came from, as the report and the model card name it."""
    if not corruptions:
        return None
    counts = sorted({len(records[_Metric("corruption", c, s)][0]) for c in corruptions for s in severities})
    if released is not None:
        return {"kind": released.kind, "name": released.name, "description": released.describe(),
                "images_per_set": counts}
    height, width = size
    return {"kind": "on-the-fly", "name": library_version(), "resolution": [int(height), int(width)],
            "description": f"on the fly at {height}×{width} px ({library_version()})", "images_per_set": counts}


def _evaluate_ood(classifier: PixelSpaceClassifier, processor: Any, name: str, source: Dataset | str,
                  batch_size: int, progress: bool) -> dict[str, Any]:
    """Accuracy on one out-of-distribution set, predictions restricted to its classes."""
    spec = ood_set(name)
    dataset = load_ood_dataset(name, source)
    if len(dataset) == 0:
        raise NullspaceError(f"The out-of-distribution set {name!r} is empty.")
    image_column, _ = find_columns(dataset, label_column="label")
    metric = _Metric("ood", name)
    records = _Predictions([metric])
    batches = _chunks(_shard(len(dataset)), batch_size)
    for ids in _progress(batches, len(batches), name, progress):
        rows = dataset[ids]
        pixels = images_to_pixels(processor, rows[image_column]).to(classifier.device)
        records.add(metric, classifier.predict(pixels, spec.class_indices), torch.as_tensor(rows["label"]))
    gathered = records.gathered()
    return {"column": spec.column, "accuracy": _accuracy(gathered, metric), "num_samples": len(gathered[metric][0])}
