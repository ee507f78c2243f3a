"""Common corruptions (Hendrycks and Dietterich, ICLR 2019, "Benchmarking Neural Network Robustness to
Common Corruptions and Perturbations"), generated with the ``imagecorruptions`` API.

The 15 ImageNet-C corruptions and the 4 extra ones of that paper, each at severities 1–5, are applied to
the 8-bit image the model sees (after the processor's resize and crop), as ImageNet-C applied them to
224×224 centre crops. The library is ``imagecorruptions-imaug`` (the maintained fork of Michaelis et
al.'s ``imagecorruptions``, whose original release no longer installs beside numpy 2).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import NullspaceError
from ..pixels import from_8bit, to_8bit

IMAGENET_C_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
"""The 15 corruptions of ImageNet-C; mCE averages over these."""

EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
"""The 4 held-out corruptions of Hendrycks and Dietterich (2019); reported, not part of mCE."""

CORRUPTIONS: tuple[str, ...] = IMAGENET_C_CORRUPTIONS + EXTRA_CORRUPTIONS

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

MIN_IMAGE_SIZE = 32
"""``imagecorruptions`` refuses images smaller than 32×32 pixels."""

_OWN_SEED = ("impulse_noise", "glass_blur")
"""Corruptions that draw from their own generator, seeded through a ``seed`` argument, not ``np.random``."""

_GROUPS = {"all": CORRUPTIONS, "imagenet-c": IMAGENET_C_CORRUPTIONS, "extra": EXTRA_CORRUPTIONS, "none": ()}


def _imagecorruptions() -> Any:
    try:
        import imagecorruptions
    except ImportError as error:
        raise NullspaceError("Corruptions need imagecorruptions: pip install 'nullspace-hf[eval]'.") from error
    return imagecorruptions


def resolve_corruptions(corruptions: str | Iterable[str] | None) -> tuple[str, ...]:
    """Corruption names from a group name (``"all"``, ``"imagenet-c"``, ``"extra"``, ``"none"``) or a list.

    Raises:
        ValueError: an unknown name (the message lists the known ones) or a name given twice.
    """
    if corruptions is None:
        return ()
    if isinstance(corruptions, str):
        corruptions = [corruptions]
    names: list[str] = []
    for entry in corruptions:
        key = entry.lower()
        group = _GROUPS.get(key, (key,) if key in CORRUPTIONS else None)
        if group is None:
            raise NullspaceError(
                f"Unknown corruption {entry!r}: choose from {', '.join(CORRUPTIONS)} "
                f"or a group ({', '.join(_GROUPS)})."
            )
        for name in group:
            if name in names:
                raise NullspaceError(f"Corruption {name!r} is given twice.")
            names.append(name)
    return tuple(names)


def resolve_severities(severities: Iterable[int]) -> tuple[int, ...]:
    """Check severities: distinct integers from 1 to 5, at least one.

    Raises:
        ValueError: saying which value is wrong.
    """
    values = tuple(severities)
    if not values or any(not isinstance(s, (int, np.integer)) or s not in SEVERITIES for s in values):
        raise NullspaceError(f"Severities must be integers from 1 to 5, got {list(values)}.")
    if len(set(values)) != len(values):
        raise NullspaceError(f"Severities are given twice: {list(values)}.")
    return tuple(int(s) for s in values)


def check_corruptible(channels: int, height: int, width: int) -> None:
    """Raise a clear ``ValueError`` for images ``imagecorruptions`` cannot handle."""
    if channels not in (1, 3):
        raise NullspaceError(f"Corruptions need 1- or 3-channel images; the model takes {channels} channels.")
    if min(height, width) < MIN_IMAGE_SIZE:
        raise NullspaceError(
            f"Corruptions need images of at least {MIN_IMAGE_SIZE}×{MIN_IMAGE_SIZE} pixels (imagecorruptions); "
            f"the model takes {height}×{width}. Evaluate without corruptions (corruptions='none')."
        )


# imagecorruptions' spatter at severities 4-5 divides its mud mask by the mask's maximum, which is 0 when the random
# mask comes out empty on a small image: nan pixels, cast to 8 bits in a CPU-dependent way. Such an image is left
# unchanged (an empty mask adds no mud) instead.
_RAISE = {"divide": "raise", "invalid": "raise"}


def corrupt_pixels(pixels: torch.Tensor, corruption: str, severity: int, sample_ids: Sequence[int],
                   seed: int = 0) -> torch.Tensor:
    """Apply one corruption at one severity to a batch of pixels in [0, 1], as 8-bit images.

    Each image's random draws come from its own seed, made of ``seed``, the corruption, the severity and
    the image's ``sample_ids`` entry, so the result does not depend on batching or on the number of
    processes. One-channel images are corrupted as grey RGB and turned back to grey by averaging.
    """
    corrupt = _imagecorruptions().corrupt
    check_corruptible(*pixels.shape[1:])
    images = to_8bit(pixels).permute(0, 2, 3, 1).numpy()
    code = CORRUPTIONS.index(corruption)
    outputs = []
    state = np.random.get_state()
    try:
        for image, sample_id in zip(images, sample_ids, strict=True):
            sample_seed = int(np.random.SeedSequence([seed, code, severity, int(sample_id)]).generate_state(1)[0])
            np.random.seed(sample_seed)
            options = {"seed": sample_seed} if corruption in _OWN_SEED else {}
            rgb = image if image.shape[-1] == 3 else image[..., 0]
            try:
                with np.errstate(**(_RAISE if corruption == "spatter" else {})):
                    out = np.asarray(corrupt(rgb, corruption_name=corruption, severity=severity, **options),
                                     dtype=np.float64)
            except FloatingPointError:  # spatter's mud mask is empty (0/0 in the library): no mud to add
                out = np.asarray(rgb, dtype=np.float64)
                if out.ndim == 2:
                    out = np.repeat(out[..., None], 3, axis=-1)
            if image.shape[-1] == 1:
                out = out.mean(axis=-1, keepdims=True)
            outputs.append(np.clip(np.round(out), 0, 255).astype(np.uint8))
    finally:
        np.random.set_state(state)
    return from_8bit(np.stack(outputs)).permute(0, 3, 1, 2).to(pixels.device)


def library_version() -> str:
    """The installed corruption library and its version, e.g. ``imagecorruptions-imaug 1.1.5``."""
    for distribution in ("imagecorruptions-imaug", "imagecorruptions"):
        try:
            return f"{distribution} {version(distribution)}"
        except PackageNotFoundError:
            continue
    return "unknown"


class CorruptedSets:
    """Builds each corrupted batch once; with ``cache_dir``, keeps it on disk for later evaluations.

    Within one evaluation, a corrupted batch is built once and given to the model and to the reference
    model. With ``cache_dir``, it is also saved as an 8-bit ``.npy`` file whose name hashes the clean
    pixels, the sample ids, the seed, the corruption, the severity and the library version, so any later
    evaluation of the same images (another checkpoint, say) loads it instead of corrupting again.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None, seed: int = 0):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.seed = seed

    def _path(self, cache_dir: Path, pixels: torch.Tensor, corruption: str, severity: int,
              sample_ids: Sequence[int]) -> Path:
        digest = hashlib.sha1()
        digest.update(to_8bit(pixels).numpy().tobytes())
        digest.update(np.asarray(sample_ids, dtype=np.int64).tobytes())
        digest.update(f"{self.seed}|{library_version()}".encode())
        return cache_dir / corruption / str(severity) / f"{digest.hexdigest()}.npy"

    def get(self, pixels: torch.Tensor, corruption: str, severity: int, sample_ids: Sequence[int]) -> torch.Tensor:
        """The corrupted version of ``pixels`` (loaded from the cache when it is there)."""
        if self.cache_dir is None:
            return corrupt_pixels(pixels, corruption, severity, sample_ids, self.seed)
        path = self._path(self.cache_dir, pixels, corruption, severity, sample_ids)
        if path.exists():
            return from_8bit(np.load(path)).to(pixels.device)
        corrupted = corrupt_pixels(pixels, corruption, severity, sample_ids, self.seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(partial, to_8bit(corrupted).numpy())
        os.replace(partial, path)
        return corrupted
