"""Model plumbing: where a Hugging Face vision model embeds its patches, how it is run, and loading it.

* :func:`patch_embedding`, :func:`patch_projection`, :func:`patch_grid`: the patch ``Conv2d``, where the
  noise goes, and the grid of patch tokens an image becomes;
* :func:`frozen_eval`, :func:`eager_attention`: run a model in eval mode without weight gradients, or
  with attention maps;
* :func:`float_logits`: a forward pass to float32 logits;
* :func:`check_model_source`, :func:`load_model`: load a model by path or Hub id.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, PreTrainedModel

from .errors import NullspaceError

_PATCH_EMBEDDING_NAMES = ("embeddings", "patch_embed")


@dataclass(frozen=True)
class PatchEmbedding:
    """Where a ViT-family model maps image patches to tokens, and where the noise is added.

    Attributes:
        projection: the ``Conv2d`` (stride equal to kernel, no padding) that maps every patch to a token;
            its weight is the linear map of the exact nullspace (:mod:`nullspace_hf.nullspace`).
        module: the module whose output receives the noise (a forward hook): the patch tokens before the
            CLS token is prepended and the position embeddings are added.
        layout: ``"tokens"``: ``module`` returns ``(batch, num_patches, hidden)``, alone or first in a tuple;
            ``"channels_first"``: ``module`` is ``projection`` itself and returns ``(batch, hidden, rows, cols)``,
            which the model flattens row by row into the ``num_patches = rows·cols`` tokens.
    """

    projection: nn.Conv2d
    module: nn.Module
    layout: Literal["tokens", "channels_first"]


def _is_patch_conv(module: nn.Module) -> bool:
    """A ``Conv2d`` that maps non-overlapping patches linearly: stride = kernel, no padding or dilation, one group."""
    return (
        isinstance(module, nn.Conv2d)
        and tuple(module.stride) == tuple(module.kernel_size)
        and module.padding in ("valid", (0, 0))
        and tuple(module.dilation) == (1, 1)
        and module.groups == 1
    )


def _first_patch_conv(module: nn.Module) -> nn.Conv2d | None:
    return next((child for child in module.modules() if _is_patch_conv(child)), None)


def _input_embeddings(model: nn.Module) -> nn.Module | None:
    """``model.get_input_embeddings()``, or None where the model has none (timm) or does not say (CLIP)."""
    getter = getattr(model, "get_input_embeddings", None)
    try:
        module = getter() if getter is not None else None
    except (NotImplementedError, AttributeError):
        return None
    return module if isinstance(module, nn.Module) else None


def patch_embedding(model: nn.Module) -> PatchEmbedding:
    """Locate the patch embedding of a ViT-family model: its patch ``Conv2d`` and where the noise goes.

    Searched in this order:

    1. ``model.get_input_embeddings()``, when it holds a patch ``Conv2d``: transformers' ViT, DeiT, BEiT,
       Dinov2, ViT-MSN and Data2VecVision return their patch-embedding module, whose output is the patch
       tokens (``"tokens"``); SigLIP returns the conv itself (``"channels_first"``).
    2. The first submodule named ``embeddings`` (transformers) or ``patch_embed`` (timm) that holds a patch
       ``Conv2d``: ``vision_model.embeddings`` of ``CLIPForImageClassification``, ``timm_model.patch_embed``
       of ``TimmWrapperForImageClassification``. CLIP's module also prepends the CLS token and adds the
       position embeddings, so the noise is added to the conv's own output (``"channels_first"``): the
       same patch tokens, before they are flattened. For timm too: its ``patch_embed`` flattens them and
       applies ``patch_embed.norm`` (an ``Identity`` in timm's ViTs; AIMv2's RMSNorm would come after the
       noise).

    Raises:
        ValueError: naming the model class when it has no patch embedding (a text model, a CNN, ...).
    """
    embeddings = _input_embeddings(model)
    projection = _first_patch_conv(embeddings) if embeddings is not None else None
    if projection is not None:
        return PatchEmbedding(projection, embeddings, "channels_first" if embeddings is projection else "tokens")
    for name, module in model.named_modules():
        projection = _first_patch_conv(module) if name.rsplit(".", 1)[-1] in _PATCH_EMBEDDING_NAMES else None
        if projection is not None:
            return PatchEmbedding(projection, projection, "channels_first")
    raise NullspaceError(
        f"{type(model).__name__} has no patch embedding: neither `get_input_embeddings()` nor a submodule named "
        f"{' or '.join(_PATCH_EMBEDDING_NAMES)} holds a Conv2d whose stride equals its kernel size (without padding). "
        "nullspace_hf works with ViT-family image models: ViT, DeiT, BEiT, Dinov2, ViT-MSN, Data2VecVision, "
        "CLIP and SigLIP image classifiers, and timm ViTs loaded through TimmWrapperForImageClassification."
    )


def patch_projection(model: nn.Module) -> nn.Conv2d:
    """Return the ``Conv2d`` (stride equal to kernel) that maps image patches to tokens (see :func:`patch_embedding`).

    Raises:
        ValueError: naming the model class when no such layer exists (a text model, a CNN, ...).
    """
    return patch_embedding(model).projection


def check_model_source(name_or_path: str) -> None:
    """Check, without loading anything, that ``name_or_path`` can name a model: an existing directory with a
    ``config.json``, or something shaped like a Hub id (``name`` or ``user/name``).

    Raises:
        ValueError: a path that does not exist, or a directory that holds no saved model.
    """
    looks_like_path = name_or_path.startswith((os.sep, ".", "~")) or name_or_path.count("/") > 1
    if looks_like_path and not os.path.exists(name_or_path):
        raise NullspaceError(f"{name_or_path!r} does not exist: give a model directory or a Hub id such as "
                             "'user/name'.")
    if os.path.isdir(name_or_path) and not os.path.isfile(os.path.join(name_or_path, "config.json")):
        raise NullspaceError(f"{name_or_path!r} is a directory without a config.json: it holds no saved model.")


def load_model(name_or_path: str, *, for_classification: bool = False) -> PreTrainedModel:
    """Load a model from a local directory or a Hub id, with one clear error when that fails.

    Args:
        name_or_path: a directory written by ``save_pretrained`` or a Hub model id.
        for_classification: load with ``AutoModelForImageClassification`` (to get predictions); otherwise the
            class the checkpoint was saved from (its ``config.architectures``), so that every stored weight has
            its place and transformers reports no unused weights, else ``AutoModel``.

    Raises:
        ValueError: the path or id holds no loadable model.
    """
    import transformers

    check_model_source(name_or_path)
    try:
        config = AutoConfig.from_pretrained(name_or_path)
        saved_as = getattr(transformers, (config.architectures or [""])[0], None)
        auto = AutoModelForImageClassification if for_classification else saved_as or AutoModel
        return auto.from_pretrained(name_or_path, config=config)
    except (OSError, ValueError, KeyError) as error:
        raise NullspaceError(f"Could not load a model from {name_or_path!r}: {error}") from error


@dataclass(frozen=True)
class PatchGrid:
    """The grid of patch tokens a model makes of an image.

    Attributes:
        patch_size: ``(r_h, r_w)``, the kernel of the patch ``Conv2d``.
        rows, cols: patches per column and per row; the model's ``rows·cols`` patch tokens are the last
            tokens of its sequence (after the CLS and any distillation or register tokens), row by row.
    """

    patch_size: tuple[int, int]
    rows: int
    cols: int

    @classmethod
    def for_image(cls, patch_size: tuple[int, int], height: int, width: int) -> PatchGrid:
        """The grid of ``patch_size`` patches on a ``height × width`` image, as a stride-equals-kernel ``Conv2d``
        lays it: pixels left over at the right and bottom are dropped."""
        return cls(patch_size, height // patch_size[0], width // patch_size[1])

    @property
    def num_patches(self) -> int:
        """Number of patch tokens, ``rows·cols``."""
        return self.rows * self.cols

    def tiles(self, height: int, width: int) -> bool:
        """Whether the patches cover a ``height × width`` image exactly (no pixels left over)."""
        return (self.rows * self.patch_size[0], self.cols * self.patch_size[1]) == (height, width)


def patch_grid(model: nn.Module, pixel_values: torch.Tensor) -> PatchGrid:
    """The patch grid of ``model`` for a ``(batch, channels, height, width)`` batch: the output grid of its
    patch ``Conv2d`` (:func:`patch_projection`), which drops pixels left over at the right and bottom.

    Raises:
        ValueError: ``pixel_values`` is not a 4-d batch, or the model has no patch embedding.
    """
    if pixel_values.ndim != 4:
        raise NullspaceError("pixel_values must be a (batch, channels, height, width) tensor, got "
                             f"{tuple(pixel_values.shape)}.")
    patch_h, patch_w = patch_projection(model).kernel_size
    return PatchGrid.for_image((patch_h, patch_w), *pixel_values.shape[-2:])


@contextmanager
def frozen_eval(*models: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and no weight gradients for ``models`` inside the block; both restored afterwards.

    Noise synthesis, adversarial example search, attacks and saliency maps need gradients with respect to
    their input only; with the weights frozen, their backward passes leave every ``.grad`` untouched, also
    when they run in the middle of training. The flags are restored on the parameter objects frozen and on
    those the model holds at the end, by name: FSDP2 swaps its sharded parameters for unsharded ones in a
    forward and may leave them so (its root unit), and those must train again too.
    """
    states = [(model, model.training, [(parameter, parameter.requires_grad) for parameter in model.parameters()],
               {name: parameter.requires_grad for name, parameter in model.named_parameters()}) for model in models]
    for model, _, flags, _ in states:
        model.eval()
        for parameter, _ in flags:
            parameter.requires_grad_(False)
    try:
        yield
    finally:
        for model, was_training, flags, by_name in reversed(states):
            for parameter, flag in flags:
                parameter.requires_grad_(flag)
            for name, parameter in model.named_parameters():
                parameter.requires_grad_(by_name.get(name, parameter.requires_grad))
            model.train(was_training)


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Switch ``model`` to eager attention (SDPA and flash kernels return no attention maps), then back."""
    previous = model.config._attn_implementation
    if previous != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if previous != "eager":
            model.set_attn_implementation(previous)


def float_logits(model: nn.Module, inputs: dict[str, Any] | torch.Tensor) -> torch.Tensor:
    """The logits of one forward pass, in float32.

    Args:
        model: an image classifier; a model whose output has no ``logits`` gives its first output.
        inputs: the model's keyword inputs, or a ``pixel_values`` tensor.
    """
    output = model(pixel_values=inputs) if isinstance(inputs, torch.Tensor) else model(**inputs)
    return (output.logits if hasattr(output, "logits") else output[0]).float()
