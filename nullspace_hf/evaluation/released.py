"""The released corruption benchmarks as evaluation input (Hendrycks and Dietterich, ICLR 2019).

Three layouts, read as their authors release them:

* **ImageNet-C**: ``<root>/<corruption>/<severity 1-5>/<wnid>/*.JPEG`` (224-px centre crops of the ImageNet
  validation images, JPEG-compressed); labels are the ImageNet-1k indices of the WordNet-id folders.
* **CIFAR-10-C**: ``<root>/<corruption>.npy``, ``(5·n, 32, 32, 3)`` uint8 holding severities 1–5 in order
  (n = 10,000 test images each), and ``<root>/labels.npy``, the labels in CIFAR-10's class order, for all
  ``5·n`` rows or for one severity's ``n``.
* **a ``datasets`` copy** of either (a ``Dataset``, a ``save_to_disk`` folder or a Hub id) with a
  ``corruption`` column (names such as ``gaussian_noise``) and a ``severity`` column (1–5) beside the image
  and label columns; its labels are the model's class indices.

:func:`open_corruption_set` tells the layouts apart; a layout that is incomplete or mislabelled raises one
``ValueError`` saying what is wrong and where.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset
from PIL import Image

from ..data import find_columns, load_split
from ..errors import NullspaceError
from .corruptions import CORRUPTIONS, SEVERITIES
from .imagenet_classes import WNID_TO_INDEX

CIFAR10_CLASSES: tuple[str, ...] = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                    "truck")
"""CIFAR-10's class order (Krizhevsky, 2009), the order of CIFAR-10-C's ``labels.npy``."""

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


class CorruptionSet(ABC):
    """A released corruption benchmark: for each corruption and severity, images and their labels.

    Attributes:
        kind: ``"imagenet-c"``, ``"cifar-10-c"`` or ``"datasets"``.
        name: the folder, Hub id or dataset it was read from.
    """

    kind: str
    name: str

    @abstractmethod
    def check(self, corruptions: Sequence[str], severities: Sequence[int]) -> None:
        """Raise one ``ValueError`` when a corruption or severity asked for is missing or badly laid out."""

    @abstractmethod
    def labels(self, corruption: str, severity: int) -> np.ndarray:
        """The labels of one corruption and severity, in the set's own class order (see :meth:`label_map`)."""

    @abstractmethod
    def images(self, corruption: str, severity: int, indices: Sequence[int]) -> list[Any]:
        """The images at ``indices`` of one corruption and severity, as an image processor takes them."""

    def label_map(self, id2label: Mapping[int, str], num_labels: int) -> np.ndarray | None:
        """The model's class index of each of the set's labels (``None``: the same indices).

        Raises:
            ValueError: the model's classes are not the set's.
        """
        return None

    def describe(self) -> str:
        """The source in words, as reports and model cards name it."""
        return f"released {self.kind} ({self.name})"


def _limit(count: int, max_samples: int | None) -> np.ndarray:
    """``max_samples`` indices spread evenly over ``range(count)`` (all of them without a limit)."""
    if max_samples is None or max_samples >= count:
        return np.arange(count)
    return np.unique(np.floor(np.arange(max_samples) * count / max_samples).astype(np.int64))


class ImageNetCFolder(CorruptionSet):
    """ImageNet-C as released: ``<root>/<corruption>/<severity>/<wnid>/*.JPEG``.

    With ``max_samples``, each corruption and severity keeps that many images spread evenly over its files
    sorted by (wnid, file name), so that every part of the class range is represented.
    """

    kind = "imagenet-c"

    def __init__(self, root: str | os.PathLike, max_samples: int | None = None):
        self.root = Path(root)
        self.name = str(root)
        self.max_samples = max_samples
        self._files: dict[tuple[str, int], list[tuple[Path, int]]] = {}

    def _scan(self, corruption: str, severity: int) -> list[tuple[Path, int]]:
        key = (corruption, severity)
        if key not in self._files:
            folder = self.root / corruption / str(severity)
            if not folder.is_dir():
                raise NullspaceError(f"The ImageNet-C folder {self.name} has no {corruption} at severity {severity}: "
                                     f"expected {folder}/<wnid>/*.JPEG (or ask only for the corruptions and "
                                     "severities it holds).")
            files = []
            for class_folder in sorted(p for p in folder.iterdir() if p.is_dir()):
                if class_folder.name not in WNID_TO_INDEX:
                    raise NullspaceError(f"{class_folder} is not named by an ImageNet-1k WordNet id (such as "
                                         "n01440764): "
                                         "ImageNet-C's class folders are the validation set's wnids.")
                files += [(path, WNID_TO_INDEX[class_folder.name]) for path in sorted(class_folder.iterdir())
                          if path.suffix.lower() in IMAGE_SUFFIXES]
            if not files:
                raise NullspaceError(f"{folder} holds no images: expected <wnid>/*.JPEG folders inside.")
            self._files[key] = [files[i] for i in _limit(len(files), self.max_samples)]
        return self._files[key]

    def check(self, corruptions: Sequence[str], severities: Sequence[int]) -> None:
        for corruption in corruptions:
            for severity in severities:
                self._scan(corruption, severity)

    def labels(self, corruption: str, severity: int) -> np.ndarray:
        return np.asarray([label for _, label in self._scan(corruption, severity)], dtype=np.int64)

    def images(self, corruption: str, severity: int, indices: Sequence[int]) -> list[Any]:
        files = self._scan(corruption, severity)
        return [Image.open(files[i][0]).convert("RGB") for i in indices]

    def label_map(self, id2label: Mapping[int, str], num_labels: int) -> np.ndarray | None:
        if num_labels != 1000:
            raise NullspaceError(f"ImageNet-C's labels are the 1,000 ImageNet classes, but the model has {num_labels}.")
        return None


def _is_generic(names: Sequence[str]) -> bool:
    """Whether class names are placeholders (``LABEL_3``, ``3``), as in a config without ``id2label``."""
    return all(name.upper() in (f"LABEL_{i}", str(i)) for i, name in enumerate(names))


class Cifar10CFolder(CorruptionSet):
    """CIFAR-10-C as released: ``<root>/<corruption>.npy`` (severities 1–5 in order) and ``<root>/labels.npy``.

    The arrays are memory-mapped; with ``max_samples``, each severity keeps its first ``max_samples``
    images (the first CIFAR-10 test images, as a clean subset of the first images is).
    """

    kind = "cifar-10-c"

    def __init__(self, root: str | os.PathLike, max_samples: int | None = None):
        self.root = Path(root)
        self.name = str(root)
        self.max_samples = max_samples
        labels = np.load(self.root / "labels.npy")
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise NullspaceError(f"{self.root / 'labels.npy'} must be a 1-d integer array, got {labels.dtype} of shape "
                                 f"{labels.shape}.")
        if labels.size and (labels.min() < 0 or labels.max() >= len(CIFAR10_CLASSES)):
            raise NullspaceError(f"{self.root / 'labels.npy'} has labels outside 0..9: CIFAR-10-C's labels are "
                                 "CIFAR-10's "
                                 "class indices.")
        self._labels = labels.astype(np.int64)
        self._arrays: dict[str, np.ndarray] = {}

    def _array(self, corruption: str) -> np.ndarray:
        if corruption not in self._arrays:
            path = self.root / f"{corruption}.npy"
            if not path.is_file():
                raise NullspaceError(f"The CIFAR-10-C folder {self.name} has no {corruption}.npy (or ask only for the "
                                     "corruptions it holds).")
            array = np.load(path, mmap_mode="r")
            if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3 or len(array) % len(SEVERITIES):
                raise NullspaceError(f"{path} must hold (5·n, height, width, 3) uint8 images, severities 1–5 in order; "
                                     f"got {array.dtype} of shape {array.shape}.")
            if len(self._labels) not in (len(array), len(array) // len(SEVERITIES)):
                raise NullspaceError(f"labels.npy has {len(self._labels)} labels, but {path.name} holds {len(array)} "
                                     f"images ({len(array) // len(SEVERITIES)} per severity): they must match.")
            self._arrays[corruption] = array
        return self._arrays[corruption]

    def _rows(self, corruption: str, severity: int) -> np.ndarray:
        per_severity = len(self._array(corruption)) // len(SEVERITIES)
        return (severity - 1) * per_severity + _limit(per_severity, self.max_samples)

    def check(self, corruptions: Sequence[str], severities: Sequence[int]) -> None:
        for corruption in corruptions:
            self._array(corruption)

    def labels(self, corruption: str, severity: int) -> np.ndarray:
        rows = self._rows(corruption, severity)
        return self._labels[rows % len(self._labels)]

    def images(self, corruption: str, severity: int, indices: Sequence[int]) -> list[Any]:
        rows = self._rows(corruption, severity)[np.asarray(indices, dtype=np.int64)]
        return list(np.asarray(self._array(corruption)[rows]))

    def label_map(self, id2label: Mapping[int, str], num_labels: int) -> np.ndarray | None:
        if num_labels != len(CIFAR10_CLASSES):
            raise NullspaceError(f"CIFAR-10-C's labels are the 10 CIFAR-10 classes, but the model has {num_labels}.")
        names = [str(id2label.get(i, i)).lower() for i in range(num_labels)]
        if _is_generic(names):
            return None
        if sorted(names) != sorted(CIFAR10_CLASSES):
            raise NullspaceError(f"The model's classes are {names}, not CIFAR-10's ({', '.join(CIFAR10_CLASSES)}): "
                                 "CIFAR-10-C's labels cannot be mapped to them.")
        return np.asarray([names.index(name) for name in CIFAR10_CLASSES], dtype=np.int64)


class DatasetCorruptions(CorruptionSet):
    """A ``datasets`` copy of a released benchmark: ``corruption`` and ``severity`` columns beside images and labels.

    The labels are the model's class indices; with ``max_samples``, each corruption and severity keeps its
    first ``max_samples`` rows.
    """

    kind = "datasets"

    def __init__(self, dataset: Dataset, name: str, max_samples: int | None = None,
                 image_column: str | None = None, label_column: str | None = None):
        missing = [column for column in ("corruption", "severity") if column not in dataset.column_names]
        if missing:
            raise NullspaceError(f"The corruption dataset {name} has no {' or '.join(missing)} column (its columns are "
                                 f"{dataset.column_names}): a datasets copy of a corruption benchmark needs "
                                 "'corruption' "
                                 "and 'severity' columns.")
        self.dataset, self.name = dataset, name
        self.image_column, self.label_column = find_columns(dataset, image_column, label_column)
        table = dataset.with_format(None).select_columns(["corruption", "severity"])[:]
        corruptions = table["corruption"]
        feature = dataset.features["corruption"]
        if isinstance(feature, ClassLabel):
            corruptions = [feature.names[value] for value in corruptions]
        unknown = sorted(set(corruptions) - set(CORRUPTIONS))
        if unknown:
            raise NullspaceError(f"The corruption column of {name} holds {unknown[:3]}, which are not corruption names "
                                 f"({', '.join(CORRUPTIONS)}).")
        severities = np.asarray(table["severity"])
        if not np.issubdtype(severities.dtype, np.integer) or not set(severities.tolist()) <= set(SEVERITIES):
            raise NullspaceError(f"The severity column of {name} must hold integers from 1 to 5, got "
                                 f"{sorted(set(severities.tolist()))[:5]}.")
        names = np.asarray(corruptions, dtype=object)
        self._rows = {}
        for corruption in dict.fromkeys(corruptions):
            for severity in sorted(set(severities[names == corruption].tolist())):
                rows = np.flatnonzero((names == corruption) & (severities == severity))
                self._rows[(corruption, int(severity))] = rows[:max_samples]

    def check(self, corruptions: Sequence[str], severities: Sequence[int]) -> None:
        for corruption in corruptions:
            for severity in severities:
                if (corruption, severity) not in self._rows:
                    held = sorted({c for c, _ in self._rows})
                    raise NullspaceError(f"The corruption dataset {self.name} has no rows for {corruption} at severity "
                                         f"{severity} (it holds {', '.join(held)}): ask only for what it holds.")

    def labels(self, corruption: str, severity: int) -> np.ndarray:
        rows = self._rows[(corruption, severity)]
        return np.asarray(self.dataset.with_format(None).select_columns([self.label_column])[rows][self.label_column],
                          dtype=np.int64)

    def images(self, corruption: str, severity: int, indices: Sequence[int]) -> list[Any]:
        rows = self._rows[(corruption, severity)][np.asarray(indices, dtype=np.int64)]
        return self.dataset[rows.tolist()][self.image_column]


def _is_imagenet_c(root: Path) -> bool:
    return any((root / name).is_dir() for name in CORRUPTIONS)


def open_corruption_set(source: str | os.PathLike | Dataset, *, max_samples: int | None = None,
                        split: str = "test") -> CorruptionSet:
    """The released corruption set at ``source``: an ImageNet-C or CIFAR-10-C folder, or a ``datasets`` copy.

    Args:
        source: a folder in the ImageNet-C layout (corruption folders) or the CIFAR-10-C layout (``labels.npy``),
            a ``save_to_disk`` folder or Hub id of a ``datasets`` copy, or a ``Dataset``.
        max_samples: images kept per corruption and severity (all: ``None``).
        split: the split of a ``datasets`` copy given by folder or Hub id.

    Raises:
        ValueError: ``source`` is none of the layouts, or its ``labels.npy`` or columns are wrong.
    """
    if max_samples is not None and max_samples < 1:
        raise NullspaceError(f"max_samples must be >= 1, got {max_samples}.")
    if isinstance(source, Dataset):
        return DatasetCorruptions(source, "a datasets.Dataset", max_samples)
    root = Path(source)
    if root.is_dir():
        if (root / "labels.npy").is_file():
            return Cifar10CFolder(root, max_samples)
        if _is_imagenet_c(root):
            return ImageNetCFolder(root, max_samples)
        if not any((root / marker).is_file() for marker in ("dataset_info.json", "dataset_dict.json")):
            raise NullspaceError(f"{root} is not a released corruption set: expected ImageNet-C's "
                                 "<corruption>/<severity>/<wnid>/*.JPEG, CIFAR-10-C's <corruption>.npy and labels.npy, "
                                 "or a save_to_disk dataset with corruption and severity columns.")
    elif root.exists():
        raise NullspaceError(f"The corruption source {root} is a file: give the folder that holds the benchmark.")
    return DatasetCorruptions(load_split(str(source), split), str(source), max_samples)
