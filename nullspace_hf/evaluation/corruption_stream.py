"""Corrupted images for the evaluation, made in DataLoader worker processes while the model runs.

On-the-fly corruption costs about 0.13 s of one core per 224×224 image for the 19 corruptions at one
severity, far more than a model's forward pass on a GPU. The evaluation therefore asks torch's
``DataLoader`` for them: each job is one batch of images under one corruption (all severities), or one batch
of a released set's images, and ``workers`` processes make the next jobs while the main process evaluates.
Every image's random draws are seeded from (seed, corruption, severity, image id)
(:func:`~nullspace_hf.evaluation.corruptions.corrupt_pixels`), so the images are identical whatever the
number of workers, and the main process receives them in job order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import DataLoader

from ..errors import NullspaceError
from ..pixels import images_to_pixels, to_8bit
from .corruptions import CorruptedSets
from .released import CorruptionSet


class _Jobs(torch.utils.data.Dataset):
    """Item ``i`` is ``make(*jobs[i])``."""

    def __init__(self, jobs: Sequence[tuple[Any, ...]], make: Callable[..., Any]):
        self.jobs, self.make = list(jobs), make

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> Any:
        return self.make(*self.jobs[index])


def _as_is(item: Any) -> Any:
    return item


def check_workers(workers: int) -> None:
    """Raise a clear ``ValueError`` for a number of workers that is not an integer >= 0."""
    if not isinstance(workers, int) or workers < 0:
        raise NullspaceError(f"corruption_workers must be an integer >= 0 (0: corrupt in the main process), "
                             f"got {workers!r}.")


def prefetched(make: Callable[..., Any], jobs: Sequence[tuple[Any, ...]], workers: int) -> Iterator[Any]:
    """``make(*job)`` for each job, in order, computed by ``workers`` DataLoader processes (0: here, lazily)."""
    check_workers(workers)
    if not jobs:
        return iter(())
    loader = DataLoader(_Jobs(jobs, make), batch_size=None, num_workers=workers, collate_fn=_as_is,
                        generator=torch.Generator())  # leaves the global torch generator alone
    return iter(loader)


@dataclass(frozen=True)
class CorruptOnTheFly:
    """Job ``(ids, corruption)``: the dataset rows ``ids``, resized by the processor, under ``corruption`` at every
    severity, as 8-bit ``(severities, batch, channels, height, width)`` (loaded from the cache when there)."""

    dataset: Dataset
    processor: Any
    image_column: str
    severities: tuple[int, ...]
    sets: CorruptedSets

    def __call__(self, ids: list[int], corruption: str) -> torch.Tensor:
        pixels = images_to_pixels(self.processor, self.dataset[ids][self.image_column])
        return torch.stack([to_8bit(self.sets.get(pixels, corruption, severity, ids)) for severity in self.severities])


@dataclass(frozen=True)
class LoadReleased:
    """Job ``(corruption, severity, indices)``: those images of a released set, resized by the processor, 8-bit."""

    corruption_set: CorruptionSet
    processor: Any

    def __call__(self, corruption: str, severity: int, indices: list[int]) -> torch.Tensor:
        return to_8bit(images_to_pixels(self.processor, self.corruption_set.images(corruption, severity, indices)))


def corrupt_dataset(dataset: Dataset, processor: Any, corruptions: Sequence[str], severities: Sequence[int], *,
                    image_column: str = "image", batch_size: int = 32, workers: int = 0, seed: int = 0
                    ) -> dict[tuple[str, int], np.ndarray]:
    """Every image of ``dataset`` under every corruption and severity, as the evaluation makes them.

    Returns:
        Per ``(corruption, severity)``, the 8-bit images ``(N, height, width, channels)`` in dataset order.
    """
    batches = [list(range(start, min(start + batch_size, len(dataset))))
               for start in range(0, len(dataset), batch_size)]
    jobs = [(ids, corruption) for ids in batches for corruption in corruptions]
    make = CorruptOnTheFly(dataset, processor, image_column, tuple(severities), CorruptedSets(seed=seed))
    parts: dict[tuple[str, int], list[np.ndarray]] = {(c, s): [] for c in corruptions for s in severities}
    for (_, corruption), stacked in zip(jobs, prefetched(make, jobs, workers), strict=True):
        for severity, images in zip(severities, stacked, strict=True):
            parts[(corruption, severity)].append(images.permute(0, 2, 3, 1).numpy())
    return {key: np.concatenate(arrays) for key, arrays in parts.items()}
