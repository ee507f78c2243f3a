"""The authors' training augmentation on batches of model inputs, built from kornia.

The authors fine-tune with timm's ImageNet stack: RandomResizedCrop, horizontal flip, RandAugment
``rand-m9-mstd0.5-inc1``, random erasing (p = 0.25), then mixup (α = 0.8) or cutmix (α = 1.0) with
soft, label-smoothed targets (0.1) on every batch, and the *same* mixed batch and targets in both
cross-entropy terms of Eq. 6. timm needs torchvision, which has no CPU build matched to every torch
release, so the stack here comes from kornia (pure PyTorch, on the batch's device). The differences
are documented in ``docs/trainer.md``: kornia draws RandAugment's operations per batch (timm: per
image, with a magnitude noise of std 0.5), fills erased boxes with 0 (timm's ``pixel`` mode: normal
noise) and draws mixup's λ uniformly (Beta(1, 1); the authors: Beta(0.8, 0.8)). Cutmix's Beta(1, 1)
is the authors'.

Per-image operations act in [0, 1] pixel space, between the image processor's resizing and its
normalisation (:class:`~nullspace_hf.pixels.PixelTransform`), as timm's do.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .pixels import PixelTransform


def soft_targets(labels: torch.Tensor, num_labels: int, smoothing: float) -> torch.Tensor:
    """One-hot targets with label smoothing: ``1 − s + s/C`` on the label and ``s/C`` elsewhere (timm's convention)."""
    off = smoothing / num_labels
    return F.one_hot(labels.long(), num_labels).float() * (1.0 - smoothing) + off


def augmentation_requested(args: Any) -> bool:
    """Whether a :class:`~nullspace_hf.NullspaceConfig` turns on any part of the training augmentation."""
    return (args.crop_min_scale < 1 or args.horizontal_flip_prob > 0 or args.rand_augment_ops > 0
            or args.random_erasing_prob > 0 or args.mixup_prob > 0)


class BatchAugmentation(nn.Module):
    """Per-image augmentation, then mixup or cutmix with soft targets, on a batch of normalised model inputs.

    Args:
        pixel_transform: the image processor's rescale and normalisation (pixels ↔ model input).
        num_labels: classes of the model (soft targets have this many columns).
        crop_min_scale: lower bound of RandomResizedCrop's area scale (aspect ratio 3/4–4/3); 1 turns it off.
        horizontal_flip_prob: probability of a horizontal flip.
        rand_augment_ops: RandAugment's number of operations n (0 turns it off).
        rand_augment_magnitude: RandAugment's magnitude on timm's 0–10 scale (kornia's 0–30 scale is ×3).
        random_erasing_prob: probability of erasing one random box of each image.
        mixup_prob: probability that a batch is mixed (by mixup or cutmix); 0 turns mixing off.
        mixup_switch_prob: share of the mixed batches that use cutmix instead of mixup.
        label_smoothing: smoothing folded into the soft targets of a mixed batch.
    """

    def __init__(self, pixel_transform: PixelTransform, num_labels: int, *, crop_min_scale: float = 1.0,
                 horizontal_flip_prob: float = 0.0, rand_augment_ops: int = 0, rand_augment_magnitude: float = 9.0,
                 random_erasing_prob: float = 0.0, mixup_prob: float = 0.0, mixup_switch_prob: float = 0.5,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        import kornia.augmentation as K
        from kornia.augmentation.auto import RandAugment

        self.num_labels, self.mixup_prob, self.mixup_switch_prob = num_labels, mixup_prob, mixup_switch_prob
        self.label_smoothing = label_smoothing
        self.pixel_transform = pixel_transform
        self.crop_min_scale = crop_min_scale
        self.crop: tuple[tuple[int, int], nn.Module] | None = None  # (image size, its crop), built on first use
        self.flip = K.RandomHorizontalFlip(p=horizontal_flip_prob) if horizontal_flip_prob > 0 else None
        self.rand_augment = RandAugment(n=rand_augment_ops, m=round(3 * rand_augment_magnitude)) \
            if rand_augment_ops > 0 else None
        self.erase = K.RandomErasing(p=random_erasing_prob) if random_erasing_prob > 0 else None
        self.mixup = K.RandomMixUpV2(data_keys=["input", "class"])
        self.cutmix = K.RandomCutMixV2(beta=1.0, use_correct_lambda=True, data_keys=["input", "class"])

    @classmethod
    def from_config(cls, args: Any, pixel_transform: PixelTransform, num_labels: int) -> BatchAugmentation | None:
        """The augmentation a :class:`~nullspace_hf.NullspaceConfig` asks for, or ``None`` when every part is off."""
        if not augmentation_requested(args):
            return None
        return cls(pixel_transform, num_labels, crop_min_scale=args.crop_min_scale,
                   horizontal_flip_prob=args.horizontal_flip_prob, rand_augment_ops=args.rand_augment_ops,
                   rand_augment_magnitude=args.rand_augment_magnitude,
                   random_erasing_prob=args.random_erasing_prob, mixup_prob=args.mixup_prob,
                   mixup_switch_prob=args.mixup_switch_prob, label_smoothing=args.label_smoothing_factor)

    def images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The per-image part (crop, flip, RandAugment, random erasing) on normalised model inputs."""
        dtype = pixel_values.dtype
        pixels = self.pixel_transform.to_pixels(pixel_values.float()).clamp(0, 1)
        if self.crop_min_scale < 1:
            pixels = self._crop_for(tuple(pixels.shape[-2:]))(pixels).clamp(0, 1)
        for part in (self.flip, self.rand_augment, self.erase):
            if part is not None:
                pixels = part(pixels)
        return self.pixel_transform.to_model_input(pixels.clamp(0, 1)).to(dtype)

    def _crop_for(self, size: tuple[int, int]) -> nn.Module:
        """RandomResizedCrop back to ``size`` (built once per image size)."""
        import kornia.augmentation as K

        if self.crop is None or self.crop[0] != size:
            self.crop = (size, K.RandomResizedCrop(size, scale=(self.crop_min_scale, 1.0), resample="BICUBIC"))
        return self.crop[1]

    def mix(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup or cutmix of a batch with its soft targets ``(1 − w)·t(y_i) + w·t(y_j)``, ``w`` the share of image j.

        Returns the batch unchanged with its integer labels when the batch is not mixed.
        """
        if self.mixup_prob <= 0 or float(torch.rand(())) >= self.mixup_prob:
            return pixel_values, labels
        use_cutmix = float(torch.rand(())) < self.mixup_switch_prob
        mixed, info = (self.cutmix if use_cutmix else self.mixup)(pixel_values, labels)
        info = info.reshape(-1, labels.shape[0], 3)[0]
        first, second, lam = info[:, 0].long(), info[:, 1].long(), info[:, 2:].float()
        share_second = 1.0 - lam if use_cutmix else lam  # kornia: cutmix's λ is image i's share, mixup's image j's
        targets = ((1.0 - share_second) * soft_targets(first, self.num_labels, self.label_smoothing)
                   + share_second * soft_targets(second, self.num_labels, self.label_smoothing))
        return mixed.to(pixel_values.dtype), targets.to(pixel_values.device)

    def forward(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """A training batch (``pixel_values``, ``labels``) augmented: images first, then mixed."""
        augmented = dict(inputs)
        augmented["pixel_values"] = self.images(inputs["pixel_values"])
        augmented["pixel_values"], augmented["labels"] = self.mix(augmented["pixel_values"], inputs["labels"])
        return augmented
