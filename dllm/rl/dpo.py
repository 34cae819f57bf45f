"""Diffusion DPO with ELBO log-likelihoods and VRPO's variance reduction (LLaDA 1.5, arXiv 2505.19223).

DPO (arXiv 2305.18290) needs ``log pi(y | x)`` of the chosen and the rejected answer under the policy and the
reference. Here each is the Monte-Carlo ELBO (:func:`dllm.core.policy.sequence_elbo`), and the loss uses only
differences of them, so the estimator's noise matters through the variance of ``(pi - ref)`` differences. VRPO's
three remedies, all applied: enough draws (``num_elbo_samples``, 8 by default), antithetic times (or stratified
masked counts, ``elbo_estimator="count"``), and the *same* draws for the policy and the reference, so the
reference's estimate cancels most of the policy's noise (identical models give a margin of exactly 0 and the loss
``log 2``; tested). The bias of the ELBO is discussed in :mod:`dllm.core.policy`.

Built on ``transformers.Trainer`` with trl's ``DPOTrainer`` names (``beta``, columns ``prompt``/``chosen``/
``rejected``, the logged ``rewards/*`` and ``logps/*``) for the reason given in :mod:`dllm.rl.grpo`: trl's trainer
computes autoregressive log-probabilities, everything this one does differently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase, Trainer, TrainingArguments

from dllm.core.policy import dpo_loss, draw_elbo_noise, sequence_elbo
from dllm.core.sampling import left_pad
from dllm.core.trainers.mdlm_trainer import noise_seed
from dllm.errors import UsageError
from dllm.rl.common import ElboOptions, MetricLog, ReferencePolicy, check_elbo_options
from dllm.rl.data import check_prompt, encode_pair


@dataclass
class DiffusionDPOConfig(ElboOptions, TrainingArguments):
    """``TrainingArguments`` plus DPO's options under trl's names and the ELBO estimator's."""

    output_dir: str = field(default="outputs/dpo", metadata={"help": "Checkpoints and the final model go here."})
    beta: float = field(default=0.1, metadata={"help": "DPO temperature: the implicit reward is beta * log ratio."})
    num_elbo_samples: int = field(
        default=8, metadata={"help": "ELBO draws per answer (VRPO used 8), antithetic, the same for policy and "
                             "reference; each costs one forward per answer and model."}
    )
    max_completion_length: int | None = field(
        default=None, metadata={"help": "Pad every answer with EOS to this many tokens: the fixed canvas the model "
                                "was trained to fill (the demo's, LLaDA's SFT). None: the answer and its "
                                "end-of-turn tokens only."}
    )
    rpo_alpha: float | None = field(
        default=None, metadata={"help": "RPO (arXiv 2404.19733, trl's rpo_alpha): add this times the chosen "
                                "answer's negative ELBO per token, an SFT term that keeps DPO from lowering the "
                                "chosen answer along with the rejected one. None: plain DPO."}
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Rows reach the collator as they are."})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_elbo_options(self)
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.rpo_alpha is not None and self.rpo_alpha < 0:
            raise ValueError(f"rpo_alpha must be >= 0, got {self.rpo_alpha}")


@dataclass
class PreferenceCollator:
    """Preference rows to ``prompt_ids``/``prompt_mask`` [2B, P] (left-padded, each prompt twice) and
    ``completion_ids``/``completion_mask`` [2B, L] (right-padded): the chosen answers, then the rejected ones."""

    tokenizer: PreTrainedTokenizerBase
    canvas_length: int | None = None

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        prompts, completions = [], []
        for key in ("chosen", "rejected"):
            for row in rows:
                missing = [c for c in ("prompt", "chosen", "rejected") if c not in row]
                if missing:
                    raise UsageError(f"a preference row has no {', '.join(missing)}; expected prompt, chosen, "
                                     f"rejected (trl's format), got {sorted(row)}")
                check_prompt(row["prompt"], where="a preference row")
                prompt, completion = encode_pair(self.tokenizer, row["prompt"], row[key], self.canvas_length)
                prompts.append(prompt)
                completions.append(completion)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        prompt_ids, prompt_mask = left_pad(prompts, pad)
        width = max(len(c) for c in completions)
        completion_ids = torch.full((len(completions), width), pad, dtype=torch.long)  # [2B, L]
        completion_mask = torch.zeros((len(completions), width), dtype=torch.long)  # [2B, L]
        for i, completion in enumerate(completions):
            completion_ids[i, :len(completion)] = torch.tensor(completion)
            completion_mask[i, :len(completion)] = 1
        return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
                "completion_mask": completion_mask}


class DiffusionDPOTrainer(Trainer):
    """DPO for masked diffusion LMs (module docstring).

    Args:
        model: the policy; a peft model's reference is the model with its adapters switched off, any other
            model's a frozen copy made here.
        args: :class:`DiffusionDPOConfig`.
        train_dataset: preference rows (``prompt``, ``chosen``, ``rejected``; :mod:`dllm.rl.data`).
        processing_class: the tokenizer (chat template, mask and EOS tokens).

    Logged (trl's names): ``rewards/chosen``, ``rewards/rejected`` (``beta`` times the log ratio to the reference),
    ``rewards/accuracies``, ``rewards/margins``, ``logps/chosen``, ``logps/rejected`` (the policy's ELBOs),
    ``nll_loss`` with ``rpo_alpha``.
    """

    # compute_loss returns a micro-batch mean; Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, model: torch.nn.Module, args: DiffusionDPOConfig, train_dataset: Dataset,
                 processing_class: PreTrainedTokenizerBase, mask_token_id: int | None = None, **kwargs: Any):
        self.reference = ReferencePolicy(model, needed=True)
        kwargs.setdefault("data_collator", PreferenceCollator(processing_class, args.max_completion_length))
        super().__init__(model=model, args=args, train_dataset=train_dataset, processing_class=processing_class,
                         **kwargs)
        self.mask_token_id = processing_class.mask_token_id if mask_token_id is None else mask_token_id
        if self.mask_token_id is None:
            raise UsageError("the tokenizer has no mask token; give mask_token_id")
        self.metrics = MetricLog()
        self._calls = 0

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> None:
        return None  # the loss is a mean over the micro-batch's pairs

    def _noise(self, completion_mask: torch.Tensor) -> Any:
        """This micro-batch's ELBO draws, seeded by (seed, step, micro-batch, process), shared by both models."""
        args: DiffusionDPOConfig = self.args
        key = noise_seed(args.seed, "dpo", self.state.global_step, self._calls, args.process_index)
        self._calls += 1
        return draw_elbo_noise(completion_mask, args.num_elbo_samples, estimator=args.elbo_estimator,
                               eps=args.elbo_time_eps, generator=torch.Generator().manual_seed(key))

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        """DPO loss of the micro-batch with ELBO log-likelihoods under shared noise."""
        batch = [inputs[k] for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")]
        noise = self._noise(inputs["completion_mask"])
        logps = sequence_elbo(model, *batch, noise, self.mask_token_id)  # [2B]: chosen, then rejected
        with self.reference.model(self.accelerator.unwrap_model(model)) as reference:
            ref_logps = sequence_elbo(reference, *batch, noise, self.mask_token_id)  # [2B]
        half = logps.shape[0] // 2
        losses, margin = dpo_loss(logps[:half], logps[half:], ref_logps[:half], ref_logps[half:], self.args.beta)
        beta = self.args.beta
        self.metrics.add("rewards/chosen", (beta * (logps[:half] - ref_logps[:half])).mean().detach())
        self.metrics.add("rewards/rejected", (beta * (logps[half:] - ref_logps[half:])).mean().detach())
        self.metrics.add("rewards/accuracies", (margin > 0).float().mean())
        self.metrics.add("rewards/margins", (beta * margin).mean().detach())
        self.metrics.add("logps/chosen", logps[:half].mean().detach())
        self.metrics.add("logps/rejected", logps[half:].mean().detach())
        loss = losses.mean()
        if self.args.rpo_alpha is not None:
            nll = -(logps[:half] / inputs["completion_mask"][:half].sum(dim=1)).mean()  # per token, as trl's
            self.metrics.add("nll_loss", nll.detach())
            loss = loss + self.args.rpo_alpha * nll
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Trainer's logs plus the DPO metrics averaged since the last log."""
        if "loss" in logs:
            logs.update(self.metrics.pop_means())
        super().log(logs, start_time)
