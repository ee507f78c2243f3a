"""Loading an evaluation set by name or path, and finding its image and label columns."""

from __future__ import annotations

import os

from datasets import ClassLabel, Dataset, DatasetDict, Image, load_from_disk

from ..data import load_image_dataset


def load_eval_dataset(name_or_path: str, split: str = "test") -> Dataset:
    """Load one split of an image-classification set.

    ``name_or_path`` is ``"digits"`` (the embedded default, :func:`nullspace_hf.data.digits_dataset`),
    a directory written by ``save_to_disk``, a folder of images in class sub-folders
    (``datasets``' ``imagefolder``: ``root/<class>/<image>``, optionally under split folders), or a
    Hub dataset id.

    Raises:
        ValueError: nothing loadable there, or no such split (the message lists the splits).
    """
    if os.path.isdir(name_or_path) and any(os.path.isfile(os.path.join(name_or_path, marker))
                                           for marker in ("dataset_info.json", "dataset_dict.json")):
        try:
            loaded: Dataset | DatasetDict = load_from_disk(name_or_path)
        except OSError as error:
            raise ValueError(f"Could not load a dataset from {name_or_path!r}: {error}") from error
    elif os.path.isdir(name_or_path):
        loaded = load_image_dataset(train_dir=name_or_path)
    elif os.path.exists(name_or_path):
        raise ValueError(f"{name_or_path!r} is a file: give a dataset directory, an image folder or a Hub id.")
    elif name_or_path.startswith((os.sep, ".", "~")):
        raise ValueError(f"{name_or_path!r} does not exist: give a dataset directory, an image folder or a Hub id.")
    else:
        loaded = load_image_dataset(dataset_name=name_or_path)
    if isinstance(loaded, Dataset):
        return loaded
    if split in loaded:
        return loaded[split]
    if len(loaded) == 1:
        return next(iter(loaded.values()))
    raise ValueError(f"{name_or_path!r} has no split {split!r}: choose from {', '.join(loaded)}.")


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
                raise ValueError(f"The dataset has no {what} column {given!r}; its columns: {', '.join(features)}.")
            return given
        for name in names:
            if name in features:
                return name
        for name, feature in features.items():
            if isinstance(feature, kind):
                return name
        raise ValueError(f"No {what} column found among {', '.join(features) or 'no columns'}: "
                         f"name it with {what}_column=.")

    return (pick(image_column, ("image", "img", "pixel_values"), Image, "image"),
            pick(label_column, ("label", "labels"), ClassLabel, "label"))
