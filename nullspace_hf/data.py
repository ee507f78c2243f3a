"""Image-classification data: loading by name or path, column checks, transforms, and the embedded digits.

One loader serves the main job, the evaluation and the CIFAR-10 reproduction: :func:`load_image_dataset`
(all splits) and :func:`load_split` (one split); :func:`find_columns` and
:func:`check_image_classification_columns` answer which columns hold the images and labels.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, load_from_disk

from .errors import NullspaceError

DATA_FILE_BUILDERS = {"parquet": "parquet", "csv": "csv", "json": "json", "jsonl": "json", "arrow": "arrow"}


def digits_dataset(test_fraction: float = 0.2, seed: int = 0) -> DatasetDict:
    """scikit-learn's 8×8 handwritten digits as an ordinary image-classification ``DatasetDict``.

    Each sample is an 8×8 RGB ``PIL`` image (grey levels 0–16 scaled to 0–255, repeated on three
    channels) with an integer label 0–9, in the columns ``image`` and ``label`` — the layout of Hub
    image datasets, so any image processor turns it into model input. The split is stratified and
    reproducible.

    Args:
        test_fraction: share of the 1,797 samples held out as the ``test`` split.
        seed: seed of the split.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    rgb = np.repeat(pixels[..., None], 3, axis=-1)
    features = Features({"image": Image(), "label": ClassLabel(names=[str(d) for d in range(10)])})
    train_idx, test_idx = train_test_split(
        np.arange(len(rgb)), test_size=test_fraction, random_state=seed, stratify=digits.target
    )

    def split(indices: np.ndarray) -> Dataset:
        return Dataset.from_dict(
            {"image": [rgb[i] for i in indices], "label": [int(digits.target[i]) for i in indices]},
            features=features,
        )

    return DatasetDict({"train": split(train_idx), "test": split(test_idx)})


def _builder(path: str) -> str | None:
    return DATA_FILE_BUILDERS.get(str(path).rsplit(".", 1)[-1].lower())


def _is_saved_dataset(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, marker)) for marker in ("dataset_info.json", "dataset_dict.json"))


def load_image_dataset(
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    data_files: str | dict[str, str] | None = None,
    train_dir: str | None = None,
) -> DatasetDict:
    """Load an image-classification dataset by Hub name, local files or a folder.

    Exactly one source is used: ``train_dir`` (an ``imagefolder`` tree, class per sub-folder),
    ``data_files`` (parquet/csv/json/arrow files, or a ``{"train": ..., "test": ...}`` mapping; the
    builder is inferred from the extension), ``dataset_name`` (``"digits"``, a Hub id, a directory
    written by ``save_to_disk``, an image folder, or a data file), or none of them: scikit-learn's
    digits (:func:`digits_dataset`).

    Raises:
        ValueError: the source cannot be loaded, with what to fix.
    """
    from datasets import load_dataset

    sources = [name for name, value in
               (("dataset_name", dataset_name), ("data_files", data_files), ("train_dir", train_dir)) if value]
    if len(sources) > 1:
        raise NullspaceError(f"Give one dataset source, not {' and '.join(sources)}.")
    if not sources or dataset_name == "digits":
        return digits_dataset()
    if dataset_name and os.path.isdir(dataset_name):
        dataset_name, train_dir = (dataset_name, None) if _is_saved_dataset(dataset_name) else (None, dataset_name)
    elif dataset_name and os.path.isfile(dataset_name) and _builder(dataset_name):
        dataset_name, data_files = None, dataset_name
    elif dataset_name and (os.path.exists(dataset_name) or dataset_name.startswith((os.sep, ".", "~"))):
        problem = "is a file of unknown format" if os.path.exists(dataset_name) else "does not exist"
        raise NullspaceError(f"Could not load the dataset {dataset_name!r}: it {problem}; give a dataset directory, an "
                             "image folder, a .parquet/.csv/.json/.arrow file or a Hub id.")
    try:
        if dataset_name and os.path.isdir(dataset_name):
            loaded = load_from_disk(dataset_name)
        elif train_dir:
            loaded = load_dataset("imagefolder", data_dir=train_dir)
        elif data_files:
            files = data_files if isinstance(data_files, dict) else {"train": data_files}
            first = next(iter(files.values()))
            first = first[0] if isinstance(first, list) else first
            builder = _builder(first)
            if builder is None:
                raise NullspaceError(f"cannot tell the format of {first!r}: use .parquet, .csv, .json(l) or .arrow "
                                     "files")
            loaded = load_dataset(builder, data_files=files)
        else:
            loaded = load_dataset(dataset_name, dataset_config)
    except Exception as error:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ...)
        source = train_dir or data_files or dataset_name
        raise NullspaceError(f"Could not load the dataset {source!r}: {type(error).__name__}: {error}") from error
    if not isinstance(loaded, DatasetDict):
        loaded = DatasetDict({"train": loaded})
    return loaded


def load_split(name_or_path: str, split: str = "test") -> Dataset:
    """One split of a dataset named as :func:`load_image_dataset`'s ``dataset_name`` takes it.

    A source with a single split (a data file, an image folder without split folders) gives that split
    whatever ``split`` says.

    Raises:
        ValueError: nothing loadable there, or no such split (the message lists the splits).
    """
    loaded = load_image_dataset(dataset_name=name_or_path)
    if split in loaded:
        return loaded[split]
    if len(loaded) == 1:
        return next(iter(loaded.values()))
    raise NullspaceError(f"{name_or_path!r} has no split {split!r}: choose from {', '.join(loaded)}.")


def find_columns(dataset: Dataset, image_column: str | None = None, label_column: str | None = None) -> tuple[str, str]:
    """The image and label column names: the given ones, else ``image``/``img`` and ``label``/``labels``,
    else the first ``Image`` and the first ``ClassLabel`` feature.

    Raises:
        ValueError: a column is missing (the message lists the dataset's columns).
    """
    features = dataset.features

    def pick(given: str | None, names: tuple[str, ...], kind: type, what: str) -> str:
        if given is not None:
            if given not in features:
                raise NullspaceError(f"The dataset has no {what} column {given!r}; its columns are {list(features)}. "
                                     f"Pass --{what}_column with the right name.")
            return given
        for name in names:
            if name in features:
                return name
        for name, feature in features.items():
            if isinstance(feature, kind):
                return name
        raise NullspaceError(f"No {what} column found among {', '.join(features) or 'no columns'}: "
                             f"name it with {what}_column=.")

    return (pick(image_column, ("image", "img", "pixel_values"), Image, "image"),
            pick(label_column, ("label", "labels"), ClassLabel, "label"))


class TensorRows(torch.utils.data.Dataset):
    """``{"pixel_values", "labels"}`` rows over two tensors: images already processed for the model."""

    def __init__(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> None:
        self.pixel_values, self.labels = pixel_values, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.pixel_values[index], "labels": self.labels[index]}


def check_image_classification_columns(dataset: Dataset, image_column: str, label_column: str) -> list[str]:
    """Check that ``dataset`` has an image column and an integer label column; return the class names.

    Raises:
        ValueError: a column is missing, the image column does not hold images, or the labels are not
            class indices.
    """
    from datasets import Value

    image_column, label_column = find_columns(dataset, image_column, label_column)
    if not isinstance(dataset.features[image_column], Image):
        raise NullspaceError(
            f"Column {image_column!r} holds {dataset.features[image_column]}, not images: pass --image_column with "
            "the column of datasets.Image type."
        )
    label_feature = dataset.features[label_column]
    if isinstance(label_feature, ClassLabel):
        names = list(label_feature.names)
    elif isinstance(label_feature, Value) and label_feature.dtype.startswith("int"):
        names = [str(i) for i in range(int(max(dataset[label_column], default=-1)) + 1)]
    else:
        raise NullspaceError(
            f"Column {label_column!r} holds {label_feature}, not class indices: pass --label_column with an integer "
            "or ClassLabel column."
        )
    check_label_range(dataset, len(names), label_column)
    return names


LABEL_COLUMNS = ("labels", "label", "label_ids")


def check_label_range(dataset: Dataset, num_classes: int, label_column: str | None = None) -> None:
    """Check that every label of ``dataset`` is a class index in ``0 .. num_classes - 1``.

    The column is ``label_column``, else the first of :data:`LABEL_COLUMNS` the dataset has (none: nothing
    to check). Values are read from the stored column, without the dataset's transform.

    Raises:
        ValueError: naming the first row with a label out of range and how to fix it.
    """
    column = label_column or next((name for name in LABEL_COLUMNS if name in dataset.column_names), None)
    if column is None:
        return
    values = np.asarray(dataset.with_format(None)[column])
    if values.size == 0 or not np.issubdtype(values.dtype, np.integer):
        return
    bad = np.flatnonzero((values < 0) | (values >= num_classes))
    if bad.size:
        row = int(bad[0])
        raise NullspaceError(
            f"Column {column!r} has {bad.size} labels outside 0..{num_classes - 1} (row {row}: {values[row]}"
            + ("; -1 marks an unlabelled sample" if values[row] == -1 else "")
            + "): drop those rows (dataset.filter) or give a model with as many classes."
        )


def _image_name(value: dict, row: int) -> str:
    return repr(value["path"]) if value.get("path") else f"row {row}"


def check_images(dataset: Dataset, image_column: str) -> None:
    """Check that every image of ``dataset`` opens (its header is read; the pixels are decoded later, lazily).

    Raises:
        ValueError: naming the files (or rows) that are not images.
    """
    import io

    import PIL.Image

    raw = dataset.cast_column(image_column, Image(decode=False)).with_format(None)
    bad = []
    for row, value in enumerate(raw[image_column]):
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
        try:
            with PIL.Image.open(source):
                pass
        except (OSError, ValueError, TypeError):
            bad.append(_image_name(value, row))
    if bad:
        raise NullspaceError(f"{len(bad)} images of column {image_column!r} cannot be read: {', '.join(bad[:5])}"
                             + (", ..." if len(bad) > 5 else "") + ". Remove or replace them.")


class ImageClassificationTransform:
    """``datasets.Dataset.set_transform`` function: images → ``pixel_values`` by an image processor.

    Args:
        processor: the checkpoint's image processor (resizing and normalisation come from it).
        image_column: column of ``PIL`` images.
        label_column: column of class indices, returned as ``labels``.
        num_channels: channels the model expects (images are converted to RGB or L accordingly).
    """

    def __init__(self, processor, image_column: str = "image", label_column: str = "label",
                 num_channels: int = 3) -> None:
        self.processor, self.image_column, self.label_column = processor, image_column, label_column
        self.mode = "RGB" if num_channels == 3 else "L"

    def __call__(self, batch: dict) -> dict:
        if self.image_column not in batch:
            raise NullspaceError(f"The batch has no image column {self.image_column!r} (it has {sorted(batch)}); with "
                                 "a Trainer, set remove_unused_columns=False so that it keeps the image column.")
        images = [self._decode(image).convert(self.mode) for image in batch[self.image_column]]
        pixel_values = self.processor(images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values, "labels": batch[self.label_column]}

    @staticmethod
    def _decode(image):
        """A ``PIL`` image, decoded here when the column was cast to ``Image(decode=False)``, naming a bad file."""
        if not isinstance(image, dict):
            return image
        try:
            decoded = Image().decode_example(image)
            decoded.load()
        except (OSError, ValueError) as error:
            name = image.get("path") or "(in-memory bytes)"
            raise NullspaceError(f"Image {name} cannot be decoded: {error}") from error
        return decoded


def collate_image_classification(rows: list[dict]) -> dict:
    """Stack ``pixel_values`` and ``labels`` of transformed rows into a batch."""
    return {
        "pixel_values": torch.stack([row["pixel_values"] for row in rows]),
        "labels": torch.tensor([int(row["labels"]) for row in rows]),
    }
