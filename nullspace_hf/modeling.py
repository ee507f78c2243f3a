"""Locating the patch embedding of a Hugging Face vision model, and loading models by name or path."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, PreTrainedModel


def input_embedding_module(model: nn.Module) -> nn.Module:
    """Return ``model.get_input_embeddings()``, the patch embedding of a ViT-family model.

    Raises:
        ValueError: naming the model class when it has no input embedding module.
    """
    getter = getattr(model, "get_input_embeddings", None)
    try:
        module = getter() if getter is not None else None
    except (NotImplementedError, AttributeError):
        module = None
    if not isinstance(module, nn.Module):
        raise ValueError(
            f"{type(model).__name__} has no input embedding module (`get_input_embeddings()`); "
            "nullspace_hf needs a vision model with a patch embedding such as ViT, DeiT, BEiT or Dinov2."
        )
    return module


def patch_projection(model: nn.Module) -> nn.Conv2d:
    """Return the ``Conv2d`` (stride equal to kernel) that maps image patches to tokens.

    The layer is searched inside ``model.get_input_embeddings()``, as ViT, DeiT, BEiT, Dinov2 and
    ViT-MSN define it in transformers.

    Raises:
        ValueError: naming the model class when no such layer exists (a text model, a CNN, ...).
    """
    embeddings = input_embedding_module(model)
    for module in embeddings.modules():
        if (
            isinstance(module, nn.Conv2d)
            and tuple(module.stride) == tuple(module.kernel_size)
            and tuple(module.padding) == (0, 0)
            and tuple(module.dilation) == (1, 1)
            and module.groups == 1
        ):
            return module
    raise ValueError(
        f"{type(model).__name__} has no patch embedding: its input embeddings "
        f"({type(embeddings).__name__}) contain no Conv2d whose stride equals its kernel size. "
        "nullspace_hf works with ViT-family image models (ViT, DeiT, BEiT, Dinov2, ViT-MSN, ...)."
    )


def check_model_source(name_or_path: str) -> None:
    """Check, without loading anything, that ``name_or_path`` can name a model: an existing directory with a
    ``config.json``, or something shaped like a Hub id (``name`` or ``user/name``).

    Raises:
        ValueError: a path that does not exist, or a directory that holds no saved model.
    """
    looks_like_path = name_or_path.startswith((os.sep, ".", "~")) or name_or_path.count("/") > 1
    if looks_like_path and not os.path.exists(name_or_path):
        raise ValueError(f"{name_or_path!r} does not exist: give a model directory or a Hub id such as 'user/name'.")
    if os.path.isdir(name_or_path) and not os.path.isfile(os.path.join(name_or_path, "config.json")):
        raise ValueError(f"{name_or_path!r} is a directory without a config.json: it holds no saved model.")


def load_model(name_or_path: str, *, for_classification: bool = False) -> PreTrainedModel:
    """Load a model from a local directory or a Hub id, with one clear error when that fails.

    Args:
        name_or_path: a directory written by ``save_pretrained`` or a Hub model id.
        for_classification: load with ``AutoModelForImageClassification`` (to get predictions)
            instead of ``AutoModel``.

    Raises:
        ValueError: the path or id holds no loadable model.
    """
    check_model_source(name_or_path)
    try:
        config = AutoConfig.from_pretrained(name_or_path)
        auto = AutoModelForImageClassification if for_classification else AutoModel
        return auto.from_pretrained(name_or_path, config=config)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"Could not load a model from {name_or_path!r}: {error}") from error


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[None]:
    """Eval mode and no weight gradients inside the block; both restored afterwards.

    Noise synthesis and adversarial example search only need gradients with respect to their input.
    """
    was_training = model.training
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    model.eval()
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        model.train(was_training)
