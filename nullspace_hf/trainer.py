"""``NullspaceTrainer``: fine-tuning augmented with approximate-nullspace noise (Algorithm 1, Eq. 6)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.data_loader import IterableDatasetShard
from accelerate.utils import DistributedType
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, Sampler
from transformers import PreTrainedModel, Trainer
from transformers.utils import logging

from .augment import BatchAugmentation, augmentation_requested
from .callbacks import EMACallback
from .checkpoint import (
    EMA_FILE,
    HISTORY_FILE,
    NOISE_FILE,
    NoiseState,
    load_noise_state,
    resolve_checkpoint,
    save_noise_state,
)
from .checks import NonFiniteError, check_finite_weights, check_writable
from .config import NullspaceConfig
from .data import check_label_range
from .distributed import FullyShardedMixin
from .errors import NullspaceError
from .faults import FaultTolerantMixin
from .hub import ModelCardMixin
from .lora import PeftSaveMixin, wrap_with_peft
from .noise import NoiseInjector, NoiseResult, random_noise, redrawn_start, synthesize_noise
from .objectives import NoiseBank, consistency_kl, noisy_term_weights, training_noise
from .pixels import PixelTransform

__all__ = ["EMA_FILE", "HISTORY_FILE", "LOSS_TERM", "NOISE_FILE", "NullspaceTrainer"]
LOSS_TERM = "nullspace_loss_term"  # key of the inputs that asks compute_loss for one term of Eq. 6
NORM_DROP_WARNING = 0.5
"""A round whose noise norm ends below this share of the previous round's is logged with a warning."""
DIVERGED = ("training diverged and this model is not saved; lower learning_rate, or resume from an earlier "
            "checkpoint.")

logger = logging.get_logger(__name__)

class _RoundSampler(Sampler[int]):
    """A reproducible shuffle of this rank's share of the dataset for round ``k``, pass ``p``.

    The order depends only on ``(seed, round, pass)``, so a resumed run synthesises exactly the
    noise an uninterrupted run would, and all ranks split one permutation between them.
    """

    def __init__(self, num_samples: int, seed: int, rank: int, world_size: int) -> None:
        self.num_samples, self.seed, self.rank, self.world_size = num_samples, seed, rank, world_size
        self.round = 0
        self.pass_index = 0

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + 1_000_003 * self.round + 7_919 * self.pass_index)
        order = torch.randperm(self.num_samples, generator=generator)
        return iter(order[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return len(range(self.rank, self.num_samples, self.world_size))


class _StreamLoader(DataLoader):
    """A DataLoader over an iterable train set that never ends: each iteration reads on where the last one stopped.

    An iterable train set (``datasets`` streaming, a torch ``IterableDataset``) has no length to
    shuffle, so there is no per-round order as :class:`_RoundSampler` gives: each round's synthesis
    reads the stream from where the previous round stopped, and a pass that ends starts the next one.
    The rounds thus see minibatches the earlier rounds did not, as long as the stream lasts; a
    resumed run starts the stream again from its beginning.
    """

    _batches: Iterator[Any] | None = None

    def __iter__(self) -> Iterator[Any]:
        while True:
            batch = next(self._batches, None) if self._batches is not None else None
            if batch is None:
                self._batches = super().__iter__()
                batch = next(self._batches, None)
            if batch is None:
                raise NullspaceError("The train_dataset yields no batch: the noise synthesis needs at least one.")
            yield batch


class NullspaceTrainer(FaultTolerantMixin, ModelCardMixin, PeftSaveMixin, FullyShardedMixin, Trainer):
    """A ``transformers.Trainer`` that fine-tunes a ViT on CE(clean) + w·CE(clean + ṽ) (Eq. 6, Algorithm 1).

    At step 0 and every ``noise_refresh_steps`` optimizer steps, a new encoder-level noise ṽ of shape
    ``(num_patches, hidden)`` is synthesised on training minibatches (:func:`synthesize_noise`, or
    :func:`random_noise` for the Table 4 baseline) and added to the patch-embedding output of every
    training sample. ``noise_mode="none"`` is vanilla fine-tuning through the same code path.

    The authors' training augmentation (crop, flip, RandAugment, random erasing, mixup/cutmix with soft
    targets; :class:`~nullspace_hf.augment.BatchAugmentation`) is applied once per batch when the config
    turns it on, and both terms of Eq. 6 see the same augmented batch and targets; it needs the image
    processor as ``processing_class``.

    Each round's statistics go to the Trainer's logs (``noise/norm``, ``noise/steps`` (gradient steps),
    ``noise/forward_steps``, ``noise/start_mse_prob``, ``noise/mse_prob``, ``noise/reached``,
    ``noise/budget_hit``) and to :attr:`noise_history`; a round that uses up its gradient budget is
    also logged as a warning. Checkpoints and the saved
    model hold ``nullspace_noise.safetensors`` and ``noise_history.json`` beside plain
    ``save_pretrained`` weights, which load without this package.

    Args:
        model: a ViT-family ``PreTrainedModel`` with a patch ``Conv2d`` (``modeling.patch_embedding`` finds it: ViT,
            DeiT, BEiT, Dinov2, CLIP, SigLIP, timm, ...).
        args: a :class:`NullspaceConfig`.
        peft_config: a peft config (``peft.LoraConfig(target_modules=["q_proj", "v_proj"],
            modules_to_save=["classifier"])``): only its adapters and ``modules_to_save`` train, and the saved
            model is a plain checkpoint with the adapters merged (:mod:`~nullspace_hf.lora`).
        **kwargs: any other ``transformers.Trainer`` argument.
    """

    _tag_names = ["nullspace", "robustness", "vision-transformer", "image-classification"]
    # compute_loss returns a per-batch mean: the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, model: PreTrainedModel | None = None, args: NullspaceConfig | None = None,
                 peft_config: Any | None = None, **kwargs: Any):
        if args is None:
            args = NullspaceConfig(output_dir="tmp_trainer")
        if not isinstance(args, NullspaceConfig):
            raise NullspaceError(
                f"NullspaceTrainer needs a NullspaceConfig as `args`, got {type(args).__name__}: build it with "
                "NullspaceConfig(output_dir=..., noise_mode=...) instead of TrainingArguments."
            )
        if model is None or not isinstance(model, nn.Module):
            raise NullspaceError("NullspaceTrainer needs `model`: a ViT-family model instance (e.g. from_pretrained).")
        model = wrap_with_peft(model, peft_config, args)
        self.injector = NoiseInjector(model) if args.noise_mode != "none" else None
        check_writable(args.output_dir, "output_dir")
        super().__init__(model=model, args=args, **kwargs)
        self.noise: torch.Tensor | None = None
        self.noise_bank = NoiseBank(args.noise_bank_size - 1)  # the earlier rounds' noises beside self.noise
        self.noise_history: list[dict[str, Any]] = []
        self._noise_round = -1
        self._synthesis_loader: DataLoader | None = None
        self.ema = EMACallback(args.ema_decay) if args.ema_decay is not None else None
        if self.ema is not None:
            self.add_callback(self.ema)
        self.augmentation = self._build_augmentation(model, kwargs.get("processing_class"))
        if args.train_ratio is not None:
            self._set_round_length()

    def _build_augmentation(self, model: nn.Module, processor: Any) -> BatchAugmentation | None:
        """The training augmentation of the config (``None`` when all of it is off); it works in pixel space."""
        if not augmentation_requested(self.args):
            return None
        num_labels = getattr(getattr(model, "config", None), "num_labels", None)
        if processor is None or not hasattr(processor, "image_mean"):
            raise NullspaceError(
                "The training augmentation (crop_min_scale, horizontal_flip_prob, rand_augment_ops, "
                "random_erasing_prob, mixup_prob) works on pixels: pass the model's image processor as "
                "`processing_class` so that NullspaceTrainer can undo and redo its normalisation."
            )
        if not num_labels:
            raise NullspaceError("mixup/cutmix soft targets need `model.config.num_labels`.")
        channels = getattr(model.config, "num_channels", 3)
        return BatchAugmentation.from_config(self.args, PixelTransform.from_processor(processor, channels),
                                             num_labels).to(self.args.device)

    def _set_round_length(self) -> None:
        """``train_ratio``: a round is one pass over that share of the training set (the authors' "epoch")."""
        if self.train_dataset is None or not hasattr(self.train_dataset, "__len__"):
            raise NullspaceError("train_ratio needs a train_dataset with a length (not an IterableDataset): set "
                                 "noise_refresh_steps instead.")
        args = self.args
        global_batch = args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
        args.noise_refresh_steps = max(1, math.ceil(args.train_ratio * len(self.train_dataset) / global_batch))
        if args.max_steps <= 0:
            args.max_steps = math.ceil(args.num_train_epochs) * args.noise_refresh_steps
        logger.info(f"train_ratio={args.train_ratio}: {args.noise_refresh_steps} steps per round, "
                    f"{args.max_steps} steps in all.")

    def _dataset_and_collator(self, description: str) -> tuple[Any, Any]:
        """The training set and collator as the training loader sees them (unused columns removed)."""
        dataset, collator = self.train_dataset, self.data_collator
        if hasattr(dataset, "column_names") and not isinstance(dataset, IterableDataset):
            return self._remove_unused_columns(dataset, description=description), collator
        return dataset, self._get_collator_with_removed_columns(collator, description=description)

    # ---- checks before any work ----

    def _resolve_checkpoint(self, resume_from_checkpoint: str | bool | None) -> str | None:
        """The checkpoint to resume from, with its noise state (and EMA) checked before any work."""
        return resolve_checkpoint(resume_from_checkpoint, self.args.output_dir, self.args.noise_mode,
                                  with_ema=self.ema is not None)

    def _check_before_training(self) -> None:
        self._check_train_data()

    def _check_train_data(self) -> None:
        """One clear error for a training set that cannot work: empty, labels out of range, a sample that does
        not become a batch of ``pixel_values`` with the model's channels and ``labels``."""
        dataset = self.train_dataset
        if dataset is None or isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
            return
        if len(dataset) == 0:
            raise NullspaceError("train_dataset is empty: it needs at least one sample.")
        num_labels = getattr(getattr(self.model, "config", None), "num_labels", None)
        if num_labels and hasattr(dataset, "column_names"):
            check_label_range(dataset, num_labels)
        dataset, collator = self._dataset_and_collator("training")
        try:
            batch = collator([dataset[0]])
        except Exception as error:  # whatever the user's transform or collator raises
            removed = sorted(set(getattr(self.train_dataset, "column_names", []))
                             - set(getattr(dataset, "column_names", [])))
            hint = (f" The Trainer removed the columns {removed}, which the model's forward does not take "
                    "(remove_unused_columns=True); if the dataset's transform needs them (the image column), set "
                    "remove_unused_columns=False." if removed else "")
            raise NullspaceError(f"Could not build a training batch from train_dataset[0] ({type(error).__name__}: "
                                 f"{error}).{hint}") from error
        pixels = batch.get("pixel_values") if isinstance(batch, dict) else None
        if not torch.is_tensor(pixels) or pixels.dim() != 4 or "labels" not in batch:
            raise NullspaceError("A training batch must hold `pixel_values` (batch, channels, height, width) and "
                                 "`labels`; train_dataset[0] gives "
                                 f"{sorted(batch) if isinstance(batch, dict) else type(batch).__name__}.")
        channels = getattr(getattr(self.model, "config", None), "num_channels", pixels.shape[1])
        if pixels.shape[1] != channels:
            raise NullspaceError(f"The model takes {channels}-channel images but the training batches have "
                                 f"{pixels.shape[1]} channels: convert the images ({'RGB' if channels == 3 else 'L'}) "
                                 "in the dataset's transform, or use a model made for them.")

    # ---- Algorithm 1: one noise per round ----

    def _synthesis_batches(self, round_index: int) -> Iterator[dict[str, Any]]:
        """Endless training minibatches for round ``round_index``: a new one each synthesis step.

        A map-style train set is read in a reproducible shuffle of its own per round and pass
        (:class:`_RoundSampler`); an iterable one (``datasets`` streaming, a torch ``IterableDataset``) is
        read on from where the previous round stopped (:class:`_StreamLoader`), each rank taking its share.
        """
        if self._synthesis_loader is None:
            dataset, collator = self._dataset_and_collator("noise synthesis")
            options = {"batch_size": self.args.noise_batch_size or self.args.per_device_train_batch_size,
                       "collate_fn": collator,
                       "num_workers": self.args.dataloader_num_workers}
            if isinstance(dataset, IterableDataset):
                if self.args.world_size > 1:
                    dataset = IterableDatasetShard(dataset, options["batch_size"],
                                                   num_processes=self.args.world_size,
                                                   process_index=self.args.process_index)
                self._synthesis_loader = _StreamLoader(dataset, **options)
            else:
                sampler = _RoundSampler(len(dataset), self.args.seed, self.args.process_index, self.args.world_size)
                self._synthesis_loader = DataLoader(dataset, sampler=sampler, **options)
        sampler = self._synthesis_loader.sampler
        if isinstance(sampler, _RoundSampler):
            sampler.round = round_index
            sampler.pass_index = 0
        while True:
            for batch in self._synthesis_loader:  # a _StreamLoader never ends
                batch = self._prepare_inputs(batch)
                if self.augmentation is not None:  # the authors' synthesis batches: augmented images, never mixed
                    batch["pixel_values"] = self.augmentation.images(batch["pixel_values"])
                yield batch
            sampler.pass_index += 1

    def _make_noise(self, round_index: int) -> NoiseResult:
        args = self.args
        generator = torch.Generator().manual_seed(args.seed + 2 * round_index)
        batches = self._synthesis_batches(round_index)
        if args.noise_mode == "random":
            return self._finite(round_index, random_noise(self.model, batches, eps=args.noise_eps, generator=generator))
        warm = None
        if args.noise_warm_start and self.noise is not None:
            warm = redrawn_start(self.noise, args.noise_init_limit, args.noise_warm_start_scale, generator)
        budget = args.noise_max_steps if warm is None else args.noise_warm_max_steps
        result = synthesize_noise(
            self.model, batches, eps=args.noise_eps, lr=args.noise_lr if warm is None else args.noise_warm_lr,
            init_limit=args.noise_init_limit,
            max_steps=budget, loss=args.noise_loss, log_norm_weight=args.noise_log_norm_weight, init=warm,
            generator=generator, reuse_batches=args.noise_reuse_batches, band=args.noise_boundary_band or None,
            keep_inside_start=warm is not None, token_lr=args.noise_token_lr, fallback=self.noise,
            stop_batches=args.noise_stop_batches,
        )
        setting = "noise_max_steps" if warm is None else "noise_warm_max_steps"
        self._warn_about_round(round_index, self._finite(round_index, result), budget, setting)
        return result

    def _finite(self, round_index: int, result: NoiseResult) -> NoiseResult:
        """``result``, or one clear error when the noise or its mse_prob is nan or inf."""
        if math.isfinite(result.mse_prob) and torch.isfinite(result.noise).all():
            return result
        raise NonFiniteError(
            f"Noise round {round_index} (step {self.state.global_step}): the synthesised noise is not finite "
            f"(mse_prob {result.mse_prob}): lower noise_init_limit (now {self.args.noise_init_limit}) or noise_lr "
            f"(now {self.args.noise_lr})."
        )

    def _warn_about_round(self, round_index: int, result: NoiseResult, budget: int, setting: str) -> None:
        """Say when a round's noise is not a searched noise just inside ε, and which setting to change."""
        eps, band = self.args.noise_eps, self.args.noise_boundary_band
        if result.budget_hit:
            logger.warning(
                f"Noise round {round_index}: the synthesis used its whole budget of {budget} gradient steps "
                f"({setting}) without entering eps = {eps}; "
                + (f"the noise was scaled into eps (final mse_prob {result.mse_prob:.3g}, norm {result.norm:.3g})."
                   if result.reached else f"the noise is outside eps (mse_prob {result.mse_prob:.3g}).")
                + f" Raise {setting} for a fully searched noise."
            )
        if self.noise_history and result.norm < NORM_DROP_WARNING * self.noise_history[-1]["norm"]:
            previous = self.noise_history[-1]
            logger.warning(
                f"Noise round {round_index}: the noise norm fell to {result.norm:.3g} (RMS {result.rms:.3g}) from "
                f"{previous['norm']:.3g} in round {previous['round']}: "
                + ("the search used up its budget and the scale into eps along its direction shrank it; raise "
                   f"{setting}." if result.budget_hit else
                   "the model no longer tolerates the previous noise (the weights changed) and the search found a "
                   "smaller one.")
            )
        if not result.budget_hit and band and result.mse_prob < band * eps:
            logger.warning(
                f"Noise round {round_index}: the noise ends at mse_prob {result.mse_prob:.3g}, below "
                f"noise_boundary_band * eps = {band * eps:.3g}: the model's predictions stay within eps along its "
                "direction even at 10^6 times its size (near-uniform predictions?), so there is no boundary to stop "
                "at. A smaller noise_eps gives the search one."
            )

    def refresh_noise(self) -> None:
        """Synthesise the noise of the current round if it is not there yet (Algorithm 1, line 3)."""
        round_index = self.state.global_step // self.args.noise_refresh_steps
        if self.args.noise_mode == "none" or round_index == self._noise_round:
            return
        check_finite_weights(self.model, f"the model at step {self.state.global_step}", DIVERGED)
        result = self._make_noise(round_index)
        if self.noise is not None:
            self.noise_bank.add(self.noise)
        self.noise, self._noise_round = result.noise, round_index
        record = {"round": round_index, "step": self.state.global_step, **result.as_dict()}
        self.noise_history.append(record)
        self.log({f"noise/{key}": float(value) for key, value in result.as_dict().items()})

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        """Refresh the noise when a round starts, then one step on Eq. 6.

        With ``noisy_forward="separate"`` the clean term is backpropagated before the noisy forward runs
        (gradients add up, so the step is the same), so only one set of activations is alive at a time;
        under DDP the first backward skips the gradient all-reduce (``no_sync``) and the second one syncs
        the sum. DeepSpeed, whose backward also steps the optimizer, gets both terms in one backward.
        """
        self.refresh_noise()
        if self.augmentation is not None:  # one augmented, mixed batch for both terms of Eq. 6
            inputs = self.augmentation(self._prepare_inputs(inputs))
        sequential = (self._noisy_training() and self.args.noisy_forward == "separate" and self.args.noisy_loss == "ce"
                      and self.accelerator.distributed_type != DistributedType.DEEPSPEED)
        if not sequential:
            return self._checked(super().training_step(model, inputs, num_items_in_batch), "training")
        losses = []
        for term in ("clean", "noisy"):
            sync = self.accelerator.no_sync(model) if term == "clean" else contextlib.nullcontext()
            with sync:
                loss = super().training_step(model, {**inputs, LOSS_TERM: term}, num_items_in_batch)
            losses.append(self._checked(loss, term))
        return losses[0] + losses[1]

    def _checked(self, loss: torch.Tensor, term: str) -> torch.Tensor:
        """Stop, before the optimizer step, at a nan or inf loss (fp16 runs excepted: the grad scaler skips those
        steps). The Trainer already reads every step's loss on the host, so this adds no device sync."""
        if self.args.fp16 or torch.isfinite(loss).all():
            return loss
        noise = "no noise" if self.noise is None else f"noise norm {float(self.noise.norm()):.3g}"
        raise NonFiniteError(
            f"Step {self.state.global_step + 1} (noise round {self._noise_round}, {noise}): the {term} loss is "
            f"{float(loss)}. Lower learning_rate (now {self.args.learning_rate}), noise_init_limit or "
            "noisy_loss_weight; when resuming, the checkpoint's noise may be corrupt. Nothing of this step was saved."
        )

    def _noisy_training(self) -> bool:
        return self.noise is not None and any(weight > 0 for weight in noisy_term_weights(self.args))

    def _branch_noise(self, batch: int) -> torch.Tensor:
        """What the noisy branch adds to a batch: α·ṽ, drawn per sample from the bank or randomly scaled when the
        config asks for it (:func:`~nullspace_hf.objectives.training_noise`)."""
        return training_noise(self.noise, self.noise_bank, batch, self.args.noise_train_scale,
                              self.args.noise_random_scale)

    def _noisy_term(self, clean_logits: torch.Tensor, noisy_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The noisy term of Eq. 6 as ``noisy_loss`` asks: w·CE(f(u + v), y), β·KL(f(u) ‖ f(u + v)), or both."""
        ce_weight, kl_weight = noisy_term_weights(self.args)
        loss = noisy_logits.new_zeros((), dtype=torch.float32)
        if ce_weight:
            loss = loss + ce_weight * self._cross_entropy(noisy_logits, labels)
        if kl_weight:
            loss = loss + kl_weight * consistency_kl(clean_logits, noisy_logits)
        return loss

    # ---- Eq. 6: CE(clean) + w·CE(noisy) ----

    def _cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """CE with integer labels (smoothed by ``label_smoothing_factor``) or with soft targets (already smoothed)."""
        if labels.is_floating_point():
            return F.cross_entropy(logits.float(), labels.float())
        try:
            return F.cross_entropy(logits.float(), labels, label_smoothing=self.args.label_smoothing_factor)
        except IndexError as error:  # on the CPU; CUDA stops with a device assert instead
            raise NullspaceError(f"A training label is outside 0..{logits.shape[-1] - 1}, the model's classes: "
                                 f"labels {labels.tolist()} ({error}).") from error

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """CE(f(u), y) + w·CE(f(u + ṽ), y) in training (Eq. 6); the clean loss alone in evaluation.

        The noisy branch adds :meth:`_branch_noise` (ṽ itself unless a variant of issue 26 is set) and pays
        :meth:`_noisy_term` (the CE of Eq. 6, or the KL invariance term). ``inputs[LOSS_TERM]`` (``"clean"`` or
        ``"noisy"``; absent: both) asks for one term only: a sequential step (see :meth:`training_step`)
        backpropagates the clean term, then the noisy one (CE only: the KL term needs both in one graph).
        """
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        term = inputs.pop(LOSS_TERM, "both")
        noisy = model.training and self._noisy_training()
        batch = labels.shape[0]
        if noisy and term == "noisy":
            with self.injector.applied(self._branch_noise(batch)):
                outputs = model(**inputs)
            loss = self.args.noisy_loss_weight * self._cross_entropy(outputs.logits, labels)
            return (loss, outputs) if return_outputs else loss
        noisy = noisy and term == "both"
        if noisy and self.args.noisy_forward == "concat":
            doubled = {k: torch.cat([v, v]) if torch.is_tensor(v) and v.shape[:1] == (batch,) else v
                       for k, v in inputs.items()}
            noise = self._branch_noise(batch)
            if noise.ndim == 3:  # one noise per sample: none for the clean half
                noise, mask = torch.cat([torch.zeros_like(noise), noise]), None
            else:
                mask = torch.cat([torch.zeros(batch), torch.ones(batch)]).to(labels.device)
            with self.injector.applied(noise, sample_mask=mask):
                outputs = model(**doubled)
            clean_logits, noisy_logits = outputs.logits.chunk(2)
            outputs.logits = clean_logits
        else:
            outputs = model(**inputs)
            clean_logits = outputs.logits
            if noisy:
                with self.injector.applied(self._branch_noise(batch)):
                    noisy_logits = model(**inputs).logits
        loss = self._cross_entropy(clean_logits, labels)
        if noisy:
            loss = loss + self._noisy_term(clean_logits, noisy_logits, labels)
        return (loss, outputs) if return_outputs else loss

    # ---- EMA for evaluation and the final model ----

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        if self.ema is None:
            return super().evaluate(*args, **kwargs)
        with self.ema.swapped_into(self.model):
            return super().evaluate(*args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model (the EMA weights when on) with the noise files beside it; never a non-finite one."""
        target = output_dir if output_dir is not None else self.args.output_dir
        if self.ema is not None and not _internal_call:
            with self.ema.swapped_into(self.model):
                check_finite_weights(self.model, f"the EMA model to save into {target}", DIVERGED)
                super().save_model(output_dir, _internal_call)
        else:
            check_finite_weights(self.model, f"the model to save into {target}", DIVERGED)
            super().save_model(output_dir, _internal_call)

    # ---- checkpoint state ----

    def _save_extra_state(self, directory: str, checkpoint: bool) -> None:
        """The noise state (with the EMA weights in a checkpoint) beside the weights."""
        ema = self.ema.shadow if checkpoint and self.ema is not None else None
        save_noise_state(directory, NoiseState(self._noise_round, self.noise, self.noise_history, ema,
                                               self.noise_bank.noises),
                         self.args.noise_mode)

    def _load_noise_state(self, checkpoint: str) -> None:
        state = load_noise_state(checkpoint, self.args.noise_mode, with_ema=self.ema is not None)
        self._noise_round, self.noise_history = state.round, state.history
        self.noise = None if state.noise is None else state.noise.to(self.args.device)
        self.noise_bank = NoiseBank(self.args.noise_bank_size - 1)
        self.noise_bank.restore(None if state.bank is None else state.bank.to(self.args.device))
        if state.ema is not None:
            self.ema.shadow = {k: v.to(self.args.device) for k, v in state.ema.items()}

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Restore the weights (:class:`~nullspace_hf.faults.FaultTolerantMixin`) and the noise state."""
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._load_noise_state(resume_from_checkpoint)
