"""``MDLMTrainer``: ``transformers.Trainer`` with the masked-diffusion objective (MDLM, arXiv 2406.07524).

The trainer is a config (:class:`MDLMConfig`), a loss (:meth:`MDLMTrainer.compute_loss`, numbered steps over the
pure functions of :mod:`dllm.core.diffusion`) and one hook for model families
(:meth:`MDLMTrainer._preprocess_inputs`). Everything else — optimisers, schedulers, DDP/FSDP/DeepSpeed,
checkpointing, logging — is ``transformers.Trainer``'s.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

import torch
from transformers import Trainer, TrainingArguments

from dllm.core.diffusion import (
    IGNORE_INDEX,
    Normalization,
    count_loss_items,
    mask_tokens,
    masked_diffusion_loss,
    sample_document_t,
    sample_t,
)
from dllm.core.models.masked_lm import (
    annealed_attention_fraction,
    block_diffusion_size,
    check_mask_token_id,
    draw_relaxed_attention,
    find_mask_token_id,
    is_flash_attention,
)
from dllm.core.schedules import SCHEDULES, describe_schedules, make_schedule

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass
class MDLMConfig(TrainingArguments):
    """``TrainingArguments`` plus the diffusion options; every ``TrainingArguments`` flag keeps its name."""

    schedule: str = field(
        default="linear",
        metadata={"help": f"Masking schedule. {describe_schedules()}.", "choices": list(SCHEDULES)},
    )
    schedule_power: float | None = field(
        default=None,
        metadata={"help": "Exponent of the polynomial schedule alpha(t) = 1 - t^power (default 1); an error with "
                  "any other schedule."},
    )
    time_sampler: Literal["antithetic", "uniform"] = field(
        default="antithetic",
        metadata={"help": "How t is drawn per sequence: 'antithetic' is MDLM's low-discrepancy sampler "
                  "(t_i = (u + i/B) mod 1, lower variance), 'uniform' i.i.d. U(0, 1)."},
    )
    time_eps: float = field(
        default=1e-3, metadata={"help": "Smallest diffusion time: t is drawn in [time_eps, 1]."}
    )
    loss_weighting: Literal["elbo", "uniform"] = field(
        default="elbo",
        metadata={"help": "'elbo': weight each sequence's masked cross-entropy by -alpha'(t)/(1-alpha(t)) "
                  "(1/t for linear), the MDLM bound; 'uniform': weight 1, the plain masked-LM loss (not a "
                  "bound; lower variance, often faster on short answers). Evaluation always uses 'elbo'."},
    )
    loss_normalization: Normalization = field(
        default="token",
        metadata={"help": "'token': divide the weighted masked cross-entropy by the number of answer tokens "
                  "(unbiased per-token ELBO); 'sequence': by each example's answer length, then average "
                  "over examples (LLaDA SFT). Both are exact under gradient accumulation."},
    )
    attention_annealing_steps: int = field(
        default=0,
        metadata={"help": "AR-to-diffusion adaptation (DiffuLLaMA's attention mask annealing): attention starts "
                  "causal and becomes bidirectional over the first N optimizer steps; at step s each key-after-query "
                  "entry is opened with probability s/N (one draw per micro-batch, from --seed and the step, so a "
                  "resumed run draws the same). 0: bidirectional from the first step. Needs eager, sdpa or "
                  "flex_attention (flash-attention takes no such mask); not with --objective bd3lm."},
    )
    # Rows reach the collator untouched (messages, images); the collator tokenises them.
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Drop dataset columns the model's forward does not take before collation. Keep False "
                  "for dllm's collators, which read the raw columns (messages)."},
    )
    # Evaluation reports the ELBO, not logits: gathering [B, L, V] logits would only cost memory.
    prediction_loss_only: bool = field(
        default=True, metadata={"help": "Evaluate the loss (ELBO NLL per token) only."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.time_eps <= 1.0:
            raise ValueError(f"time_eps must be in [0, 1], got {self.time_eps}")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name, allowed in (("time_sampler", ("antithetic", "uniform")), ("loss_weighting", ("elbo", "uniform")),
                              ("loss_normalization", ("token", "sequence"))):
            if getattr(self, name) not in allowed:  # Literal hints are not checked outside the command line
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        make_schedule(self.schedule, self.schedule_power)  # raises on a power the schedule does not take
        if not (isinstance(self.attention_annealing_steps, int) and self.attention_annealing_steps >= 0):
            raise ValueError(f"attention_annealing_steps must be a non-negative integer, got "
                             f"{self.attention_annealing_steps!r}")
        if self.attention_annealing_steps and getattr(self, "block_size", None) is not None:  # BD3LMConfig's option
            raise ValueError("attention_annealing_steps is for the mdlm objective: bd3lm's blocks are bidirectional "
                             "from the first step (its block-causal mask is not annealed)")
        if self.remove_unused_columns:
            warnings.warn(
                "remove_unused_columns=True: Trainer will drop every dataset column the model's forward does not "
                "take (e.g. 'messages') before the collator sees it. dllm's SFTDataCollator reads those raw "
                "columns and then fails; set remove_unused_columns=False unless the dataset is already tokenized.",
                UserWarning,
                stacklevel=3,
            )


def noise_seed(*key: int | str) -> int:
    """A 63-bit seed from a key such as ``(seed, "train", step, micro_batch)``: SHA-256 of its ``repr``, so
    neighbouring keys give unrelated streams and the value is the same in every process and Python run."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def as_mdlm_config(args: TrainingArguments | None) -> MDLMConfig:
    """Accept plain ``TrainingArguments`` (diffusion options at their defaults) as well as ``MDLMConfig``."""
    if args is None:
        return MDLMConfig(output_dir="outputs/mdlm")
    if isinstance(args, MDLMConfig):
        return args
    # Every value is kept, remove_unused_columns too (TrainingArguments' default is True): MDLMConfig warns when
    # it is True, since Trainer then drops the raw columns dllm's collators read.
    values = {f.name: getattr(args, f.name) for f in fields(TrainingArguments) if f.init}
    return MDLMConfig(**values)


class MDLMTrainer(Trainer):
    """Supervised fine-tuning with the masked-diffusion ELBO.

    Batches carry ``input_ids``, ``labels`` (-100 where no loss is taken: prompt, padding, image tokens) and
    any model inputs (``attention_mask``, ``pixel_values``, ...). Only positions with a label are ever masked.

    Args:
        mask_token_id: id written at masked positions. Defaults to the processing class's mask token, then to
            ``model.config.mask_token_id`` (set by :func:`dllm.core.models.add_mask_token`).
        Everything else is ``transformers.Trainer``'s.

    Logged: ``loss`` (the weighted objective), ``masked_fraction`` (masked / maskable tokens). Evaluation
    reports ``eval_loss`` = the ELBO negative log-likelihood per answer token in nats (an upper bound), always
    token-normalised whatever ``loss_normalization`` is.
    """

    # compute_loss normalises by the count over the whole accumulation window, so Trainer must not divide by the
    # number of accumulation steps again. Read in Trainer.training_step (transformers 5.24, trainer.py):
    #     if self.loss_is_scaled_for_ga is not None:
    #         loss_is_scaled_for_ga = self.loss_is_scaled_for_ga
    # Trainer's own model_accepts_loss_kwargs and _loss_shifts_labels are left as Trainer sets them: they are read
    # only in Trainer.compute_loss, Trainer._get_num_items_in_batch (both overridden here) and in the fallback of
    # that same training_step test, which this flag bypasses.
    loss_is_scaled_for_ga = True

    def __init__(self, model: PreTrainedModel | torch.nn.Module | None = None, args: TrainingArguments | None = None,
                 *, mask_token_id: int | None = None,
                 **kwargs):
        args = as_mdlm_config(args)
        super().__init__(model=model, args=args, **kwargs)
        self.schedule = make_schedule(args.schedule, args.schedule_power)
        self.mask_token_id = self._resolve_mask_token_id(mask_token_id)
        self._check_objective()
        # Per mode: the sum over micro-batches of each diffusion metric, kept on the device, and how many were
        # added. log() reads them (one host sync per log, not per step).
        self._metric_sums: dict[str, dict[str, torch.Tensor]] = {"train": {}, "eval": {}}
        self._metric_counts: dict[str, int] = {"train": 0, "eval": 0}
        # Where the diffusion noise stands: training (optimizer step, micro-batches drawn at that step), and the
        # batches drawn in the current evaluation loop. One generator per device, re-seeded per micro-batch.
        self._train_noise_position: tuple[int, int] = (-1, 0)
        self._eval_noise_batches = 0
        self._noise_generators: dict[torch.device, torch.Generator] = {}

    # ---- the family hook -------------------------------------------------------------------------
    def _preprocess_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Model-family hook, called first in :meth:`compute_loss`: move or derive extra model inputs.

        The default returns ``inputs`` unchanged (Trainer already placed tensors on the device). Multimodal
        families override it (e.g. to place ``pixel_values`` / ``image_grid_thw``).
        """
        return inputs

    # ---- the loss --------------------------------------------------------------------------------
    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """MDLM negative ELBO of one micro-batch (see :mod:`dllm.core.diffusion`)."""
        args: MDLMConfig = self.args
        training = model.training
        # 0. Family-specific preparation.
        inputs = self._preprocess_inputs(dict(inputs))
        input_ids, labels = inputs.pop("input_ids"), inputs.pop("labels")  # [B, L], [B, L]

        # 1. One diffusion time per sequence, t in [eps, 1]. The noise comes from its own generator, seeded by
        #    (seed, optimizer step, micro-batch) alike on every process (see _noise_generator), so the draws are
        #    made for the global batch and each process keeps its slice: processes never share t or masks,
        #    and the low-discrepancy grid spans the global batch.
        #    Packed rows (document_ids) get one t per document instead (see _sample_document_t).
        documents = inputs.get("document_ids")  # [B, L] packed rows, else None; the model reads it too
        generator = self._noise_generator(training, input_ids.device)
        t = self._sample_t(input_ids, documents, generator)  # [B], or [B L] document slots

        # 2. Forward process: mask answer tokens with probability 1 - alpha(t) (their document's t when packed).
        world, rank = args.world_size, args.process_index
        uniforms = torch.rand((world, *input_ids.shape), device=input_ids.device,
                              generator=generator)[rank]  # [B, L]
        mask_prob = self.schedule.mask_probability(t)  # [B] or [B L]
        if documents is not None:
            mask_prob = mask_prob.index_select(0, documents.clamp_min(0).flatten()).view_as(input_ids)  # [B, L]
        noisy_ids, masked = mask_tokens(input_ids, labels, mask_prob, self.mask_token_id,
                                        uniforms=uniforms)  # [B, L], [B, L]
        #    Attention annealing: until step N part of the causal mask is kept (drawn last, from the same generator,
        #    so t and the masks are those of a run without annealing).
        relaxed = self._relaxed_attention(input_ids.shape[1], input_ids.device, generator)  # [L, L] or None
        if relaxed is not None:
            inputs["relaxed_attention"] = relaxed

        # 3. Denoise x_t (the objective's own forward, see _denoise). Only masked positions enter the loss, so the
        #    output head runs there alone: the logits are [N, V], not [B, L, V] (N = masked tokens). An evaluation
        #    that returns predictions (prediction_loss_only=False) keeps the full [B, L, V] logits Trainer gathers.
        outputs = self._denoise(model, input_ids, noisy_ids, masked, inputs,
                                select=training or args.prediction_loss_only)

        # 4. ELBO-weighted cross-entropy on masked positions. Training normalises over the accumulation
        #    window (num_items_in_batch); evaluation always reports the per-token ELBO of its own batch.
        normalization = args.loss_normalization if training else "token"
        num_items = num_items_in_batch if training else None
        weight = torch.ones_like(t) if training and args.loss_weighting == "uniform" else self.schedule.weight(t)
        loss = masked_diffusion_loss(outputs.logits, labels, masked, weight,  # [N, V] logits, chunked cross-entropy
                                     normalization=normalization, num_items=num_items, document_ids=documents)
        if num_items is not None and args.average_tokens_across_devices and args.world_size > 1:
            # num_items counts every process's tokens; DDP averages gradients over processes, so undo it.
            loss = loss * self.accelerator.num_processes

        self._record_metrics(training, masked, labels)
        return (loss, outputs) if return_outputs else loss

    def _denoise(self, model: torch.nn.Module, input_ids: torch.Tensor, noisy_ids: torch.Tensor,
                 masked: torch.Tensor, inputs: dict[str, Any], *, select: bool) -> Any:
        """Step 3 of :meth:`compute_loss`, the one an objective overrides: the model's predictions of the clean
        tokens from ``noisy_ids`` [B, L], ``outputs.logits`` [N, V] at the ``masked`` positions [B, L] when
        ``select``, else [B, L, V]. ``input_ids`` (the clean tokens) are unused by MDLM's single bidirectional pass;
        ``inputs`` are the other model inputs (``attention_mask``, ``document_ids``, ...)."""
        if select:
            inputs["logits_mask"] = masked  # [B, L]
        return model(input_ids=noisy_ids, **inputs)

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        """Normaliser of the loss over a gradient-accumulation window (and all processes).

        Replaces Trainer's count, which counts only when the model's forward takes ``**kwargs`` and skips label
        position 0 for causal-LM losses; the diffusion loss uses every label and may count sequences.

        Tokens with a label for ``loss_normalization="token"``, sequences with at least one for ``"sequence"``.
        """
        counts = [count_loss_items(batch["labels"], self.args.loss_normalization, batch.get("document_ids"))
                  for batch in batch_samples if "labels" in batch]
        if not counts:
            return None
        total = torch.stack(counts).sum().to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            total = self.accelerator.gather(total).sum()
        return total

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        """Trainer's ``train``; ``resume_from_checkpoint`` defaults to ``--resume_from_checkpoint``.

        ``TrainingArguments.resume_from_checkpoint`` is only read by scripts in plain Trainer; reading it here makes
        the flag work in every dllm entry point (``dllm sft``, ``examples/*/sft.py``) without each script passing
        it on. An explicit argument wins.
        """
        if resume_from_checkpoint is None:
            resume_from_checkpoint = self.args.resume_from_checkpoint
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
        """Trainer's loop, with the evaluation noise restarted: batch ``i`` of every evaluation sees the same
        ``t`` and masks, so checkpoints are compared on common noise (``load_best_model_at_end``)."""
        self._eval_noise_batches = 0
        return super().evaluation_loop(*args, **kwargs)

    # ---- helpers ---------------------------------------------------------------------------------
    def _sample_t(self, input_ids: torch.Tensor, documents: torch.Tensor | None,
                  generator: torch.Generator) -> torch.Tensor:
        """This process's diffusion times: ``[B]`` for one conversation per row, sliced from one draw for the global
        batch; for packed rows ``[B L]`` document slots (:func:`~dllm.core.diffusion.sample_document_t`), whose
        documents differ in number between processes, so each process takes its own offset of one global draw."""
        args: MDLMConfig = self.args
        world, rank, batch = args.world_size, args.process_index, input_ids.shape[0]
        antithetic = args.time_sampler == "antithetic"
        if documents is None:
            return sample_t(world * batch, eps=args.time_eps, antithetic=antithetic, device=input_ids.device,
                            generator=generator)[rank * batch : (rank + 1) * batch]  # [B]
        shape = (world,) if antithetic else (world, documents.numel())  # an offset, or a uniform per slot
        u = torch.rand(shape, device=input_ids.device, generator=generator)[rank]
        return sample_document_t(documents, u, eps=args.time_eps, antithetic=antithetic)

    def _relaxed_attention(self, length: int, device: torch.device,
                           generator: torch.Generator) -> torch.Tensor | None:
        """The key-after-query entries attention sees in this micro-batch, bool [L, L], while attention is annealed
        (:func:`~dllm.core.models.masked_lm.annealed_attention_fraction` of ``global_step``: resumed runs continue
        the schedule); None when annealing is off or over (the model's own bidirectional attention). Evaluation
        uses the fraction of the step it runs at."""
        steps = self.args.attention_annealing_steps
        if not steps:
            return None
        fraction = annealed_attention_fraction(self.state.global_step, steps)
        if fraction >= 1.0:
            return None
        return draw_relaxed_attention(length, fraction, generator=generator, device=device)

    def _noise_generator(self, training: bool, device: torch.device) -> torch.Generator:
        """The generator of one micro-batch's ``t`` and masks, seeded by where the micro-batch stands.

        Training: ``(seed, global_step, k)`` for the ``k``-th micro-batch of the accumulation window that ends in
        optimizer step ``global_step + 1``; evaluation: ``(seed, "eval", i)`` for batch ``i`` of the loop. The
        noise is thus a function of the position alone: it does not depend on what else drew from the global
        RNG (dropout, data loading, evaluation between steps), and a run resumed from a checkpoint (which always
        ends an accumulation window) draws exactly what the uninterrupted run drew. Every process derives the
        same generator and slices one global draw (see :meth:`compute_loss`).
        """
        if training:
            step, drawn = self._train_noise_position
            if step != self.state.global_step:
                step, drawn = self.state.global_step, 0
            self._train_noise_position = (step, drawn + 1)
            key: tuple[int | str, ...] = (self.args.seed, "train", step, drawn)
        else:
            key = (self.args.seed, "eval", self._eval_noise_batches)
            self._eval_noise_batches += 1
        device = torch.device(device)
        generator = self._noise_generators.get(device)
        if generator is None:
            generator = self._noise_generators[device] = torch.Generator(device=device)
        return generator.manual_seed(noise_seed(*key))

    # The objective this trainer optimises; a model already marked block-diffusion needs BD3LMTrainer.
    objective = "mdlm"

    def _check_objective(self) -> None:
        unwrapped = self.accelerator.unwrap_model(self.model)
        base = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
        if self.objective == "mdlm" and block_diffusion_size(base.config) is not None:
            raise ValueError("the model is block-diffusion (config.json dllm_objective 'bd3lm'), so its forward is "
                             "block-causal: train it with BD3LMTrainer (dllm sft --objective bd3lm)")
        if self.args.attention_annealing_steps and self.objective != "mdlm":
            raise ValueError(f"attention_annealing_steps is for the mdlm objective, not {self.objective}")
        if self.args.attention_annealing_steps and is_flash_attention(base.config):
            raise ValueError(f"attention_annealing_steps needs a partly causal attention mask, which "
                             f"{base.config._attn_implementation} does not take: load the model with "
                             "--attn_implementation sdpa, eager or flex_attention")

    def _resolve_mask_token_id(self, explicit: int | None) -> int:
        unwrapped = self.accelerator.unwrap_model(self.model)
        base = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
        return check_mask_token_id(base, find_mask_token_id(explicit, self.processing_class, base.config))

    def _record_metrics(self, training: bool, masked: torch.Tensor, labels: torch.Tensor) -> None:
        """Add this micro-batch's masked fraction (masked / maskable tokens) to the running sum, on the device."""
        mode = "train" if training else "eval"
        maskable = (labels != IGNORE_INDEX).sum().clamp_min(1)
        fraction = (masked.sum() / maskable).detach()
        sums = self._metric_sums[mode]
        sums["masked_fraction"] = sums["masked_fraction"] + fraction if "masked_fraction" in sums else fraction
        self._metric_counts[mode] += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the averaged diffusion metrics recorded since the last log to Trainer's logs."""
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        count = self._metric_counts[mode]
        for key, total in self._metric_sums[mode].items():
            logs[prefix + key] = (total / count).item()  # the only host sync for these metrics
        self._metric_sums[mode], self._metric_counts[mode] = {}, 0
        if "eval_loss" in logs:  # the per-token ELBO bounds the NLL, so its exp bounds the perplexity (MDLM Table 1)
            logs["eval_perplexity_bound"] = math.exp(min(logs["eval_loss"], 700.0))
        super().log(logs, start_time)
