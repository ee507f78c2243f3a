"""Out-of-distribution evaluation sets of the paper's Table 2, with their labels mapped to ImageNet-1k.

Each set is given as a ``datasets.Dataset``, a Hub dataset id or a local folder of images in class
sub-folders. Labels end up as ImageNet-1k class indices (the order of a 1,000-class ImageNet model):

* class names that are WordNet ids (``n01443537``; the folder names of ImageNet-A, -R, -Sketch and
  Stylized-ImageNet) map through :data:`~nullspace_hf.evaluation.imagenet_classes.WNID_TO_INDEX`;
* class names that are integers (the folder names ``0`` … ``999`` of ImageNet-V2) are the index itself;
* 1,000 class names that are neither (human-readable names) are taken in ImageNet order;
* anything else needs an explicit ``label_mapping``.

ImageNet-A and ImageNet-R cover 200 classes each; as their authors do, predictions are restricted to
those 200 classes by taking the arg-max over their logits only (:data:`OOD_SETS`' ``class_indices``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from datasets import ClassLabel, Dataset, Value

from ..data import find_columns, load_split
from ..errors import NullspaceError
from .imagenet_classes import IMAGENET_A_INDICES, IMAGENET_R_INDICES, WNID_TO_INDEX


@dataclass(frozen=True)
class OODSet:
    """An out-of-distribution set: its Table-2 column, reference, and the classes it covers (``None``: all 1,000)."""

    column: str
    citation: str
    class_indices: tuple[int, ...] | None = None


OOD_SETS: dict[str, OODSet] = {
    "imagenet-a": OODSet("A", "Hendrycks et al., CVPR 2021", IMAGENET_A_INDICES),
    "imagenet-r": OODSet("R", "Hendrycks et al., ICCV 2021", IMAGENET_R_INDICES),
    "imagenet-v2": OODSet("V2", "Recht et al., ICML 2019"),
    "imagenet-sketch": OODSet("Sketch", "Wang et al., NeurIPS 2019"),
    "stylized-imagenet": OODSet("Stylized", "Geirhos et al., ICLR 2019"),
    "damagenet": OODSet("DamageNet", "Chen et al., TPAMI 2022"),
}
"""The sets by name. DamageNet is a fixed set of pre-computed adversarial images, so it is evaluated like these."""


def ood_set(name: str) -> OODSet:
    """The :class:`OODSet` called ``name``.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if name.lower() not in OOD_SETS:
        raise NullspaceError(f"Unknown out-of-distribution set {name!r}: choose from {', '.join(OOD_SETS)}.")
    return OOD_SETS[name.lower()]


def imagenet_indices(class_names: list[str]) -> list[int]:
    """ImageNet-1k indices for a dataset's class names (wnids, integers, or 1,000 names in ImageNet order).

    Raises:
        ValueError: the names are none of these; pass a ``label_mapping`` instead.
    """
    if all(name in WNID_TO_INDEX for name in class_names):
        return [WNID_TO_INDEX[name] for name in class_names]
    if all(name.isdigit() and int(name) < 1000 for name in class_names):
        return [int(name) for name in class_names]
    if len(class_names) == 1000:
        return list(range(1000))
    raise NullspaceError(
        f"Cannot map the dataset's {len(class_names)} class names (e.g. {class_names[:3]}) to ImageNet-1k: "
        "they are neither WordNet ids nor class indices. Give label_mapping={dataset label: ImageNet index}."
    )


def load_ood_dataset(name: str, source: Dataset | str, split: str = "test", *, label_column: str | None = None,
                     label_mapping: Mapping[int, int] | None = None) -> Dataset:
    """Load the out-of-distribution set ``name`` from ``source`` with ImageNet-1k labels in column ``label``.

    Args:
        name: a key of :data:`OOD_SETS`.
        source: a ``Dataset``, a Hub id or a local folder
            (see :func:`~nullspace_hf.data.load_split`).
        split: the split to use when ``source`` has several.
        label_column: the label column, found automatically if not given.
        label_mapping: dataset label → ImageNet-1k index, for labels the rules above cannot map.

    Raises:
        ValueError: unknown set, unmappable labels, or labels outside the set's classes.
    """
    spec = ood_set(name)
    dataset = source if isinstance(source, Dataset) else load_split(source, split)
    _, column = find_columns(dataset, label_column=label_column)
    feature = dataset.features[column]
    if label_mapping is not None:
        unmapped = sorted(set(dataset[column]) - set(label_mapping))
        if unmapped:
            raise NullspaceError(f"{name}: label_mapping has no entry for the labels {unmapped[:5]}.")
        mapping: list[int] | Mapping[int, int] | None = label_mapping
    elif isinstance(feature, ClassLabel):
        mapping = imagenet_indices(feature.names)
    else:
        mapping = None
    if mapping is not None:
        table = mapping
        dataset = dataset.cast_column(column, Value("int64")).map(
            lambda batch: {"label": [table[label] for label in batch[column]]}, batched=True,
            remove_columns=[column] if column != "label" else None, desc=f"ImageNet labels for {name}")
    elif column != "label":
        dataset = dataset.rename_column(column, "label")
    labels = set(dataset["label"])
    allowed = set(spec.class_indices) if spec.class_indices else set(range(1000))
    if not labels <= allowed:
        raise NullspaceError(
            f"{name}: labels {sorted(labels - allowed)[:5]} are not among its {len(allowed)} ImageNet-1k classes; "
            "check the source or give label_mapping."
        )
    return dataset
