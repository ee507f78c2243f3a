"""Datasets that need no download: the embedded default (scikit-learn's digits)."""

from __future__ import annotations

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image


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
