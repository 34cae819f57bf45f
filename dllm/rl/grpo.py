"""Diffusion GRPO: group-relative policy optimisation of a masked diffusion LM with reward functions.

Each optimizer step: every prompt of the batch is answered ``num_generations`` times by this library's sampler
(the checkpoint's saved settings, sampled at ``temperature``), the completions are scored by the reward
functions, rewards become group-relative advantages, and the clipped-ratio loss with a KL penalty to the reference
(DeepSeekMath arXiv 2402.03300 Eq. 3) is minimised, with the log-likelihoods estimated by ``--loss_type``:

- ``elbo``: the sequence-level ELBO of the whole completion (:func:`dllm.core.policy.sequence_elbo`), divided by
  its length (the ratio is the per-token geometric mean, as GSPO/ESPO do, so the clip range means the same for
  every length), with ``num_elbo_samples`` antithetic draws shared by policy, old policy and reference;
- ``diffu_grpo``: d1's per-token estimate (:func:`dllm.core.policy.diffu_grpo_token_logps`), one forward with the
  completion masked and the prompt masked with probability ``p_mask_prompt``, the token losses averaged per
  completion (trl's ``loss_type="grpo"``).

The bias and variance of both are in :mod:`dllm.core.policy`.

Built on ``transformers.Trainer`` with trl's names (``num_generations``, ``beta``, ``epsilon``,
``num_iterations``, ``reward_funcs``, ``reward_weights``, ``scale_rewards``, the logged metrics) rather than
subclassing trl's ``GRPOTrainer``: trl installs beside the pinned packages, but its trainer is built around
autoregressive generation (``generate``/vLLM, shifted per-token log-probabilities, ``max_prompt_length``
truncation), so a subclass would override its generation, scoring and loss, i.e. nearly all of it, against
private methods that change between trl releases, for a dependency that adds nothing else here.

Batches follow trl: ``per_device_train_batch_size`` counts completions, a multiple of ``num_generations``; a
group never spans processes or micro-batches, so advantages need no communication (DDP-safe). With
``num_iterations > 1`` the rollouts of an accumulation window are reused that many times; the old policy's
log-likelihoods (and the reference's) are computed at rollout time for the noise of every iteration (d1).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase, Trainer, TrainingArguments

from dllm.core.policy import (
    ElboNoise,
    clipped_policy_loss,
    diffu_grpo_token_logps,
    draw_elbo_noise,
    draw_prompt_masks,
    group_advantages,
    k3_kl,
    sequence_elbo,
)
from dllm.core.sampling import DiffusionGenerationConfig, answer_ids, generate, left_pad, with_tokenizer_ids
from dllm.core.trainers.mdlm_trainer import noise_seed
from dllm.rl.common import ElboOptions, LossType, MetricLog, ReferencePolicy, check_elbo_options, is_peft_model
from dllm.rl.data import as_completion, encode_prompt_ids
from dllm.rl.rewards import RewardFunc, call_reward

logger = logging.getLogger(__name__)


@dataclass
class DiffusionGRPOConfig(ElboOptions, TrainingArguments):
    """``TrainingArguments`` plus GRPO's options under trl's names, the estimator's, and the rollout sampler's."""

    output_dir: str = field(default="outputs/grpo", metadata={"help": "Checkpoints and the final model go here."})
    loss_type: LossType = field(
        default="elbo", metadata={"help": "Log-likelihood estimator: 'elbo' (sequence ELBO, shared antithetic noise) "
                                  "or 'diffu_grpo' (d1: per token, one forward, prompt randomly masked).",
                                  "choices": ["elbo", "diffu_grpo"]}
    )
    num_generations: int = field(default=8, metadata={"help": "Completions per prompt (a group)."})
    beta: float = field(
        default=0.04, metadata={"help": "KL coefficient to the reference (k3 estimate). 0: no KL term and no "
                                "reference kept."}
    )
    epsilon: float = field(default=0.2, metadata={"help": "Clip range of the ratio, lower (and upper by default)."})
    epsilon_high: float | None = field(default=None, metadata={"help": "Upper clip range (None: epsilon)."})
    num_iterations: int = field(default=1, metadata={"help": "Optimisation passes over each batch of rollouts."})
    scale_rewards: bool = field(
        default=True, metadata={"help": "Divide advantages by their group's reward std (False: Dr. GRPO)."}
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["exact_match"],
        metadata={"help": "Reward functions: built-in exact_match (the 'answer' column, whitespace-normalised), "
                  "format (--format_pattern), or module:function with trl's signature."},
    )
    reward_weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per reward function (default 1 each)."}
    )
    format_pattern: str = field(
        default=r"\S(.*\S)?", metadata={"help": "The format reward's regular expression, matched against the whole "
                                        "stripped completion."}
    )
    format_max_length: int | None = field(
        default=None, metadata={"help": "The format reward also needs at most this many characters."}
    )
    p_mask_prompt: float = field(default=0.3, metadata={"help": "diffu_grpo: probability of masking a prompt token."})
    loss_tokens: str = field(
        default="canvas", metadata={"help": "diffu_grpo: the token losses averaged: 'canvas' (each completion's whole "
                                    "EOS-padded canvas, then the completions) or 'first_eos' (d1: the tokens up to "
                                    "and including the first EOS, averaged over the micro-batch).",
                                    "choices": ["canvas", "first_eos"]}
    )
    # Rollout sampler: None keeps the checkpoint's saved setting (diffusion_generation_config.json).
    max_completion_length: int | None = field(default=None, metadata={"help": "Answer canvas (the sampler's "
                                                                      "gen_length)."})
    temperature: float = field(default=1.0, metadata={"help": "Rollout sampling temperature (> 0 for diverse groups)."})
    steps: int | None = field(default=None, metadata={"help": "Rollout denoising steps (None: the saved setting)."})
    block_size: int | None = field(default=None, metadata={"help": "Rollout block size (None: the saved setting)."})
    threshold: float | None = field(default=None, metadata={"help": "Rollout parallel-decoding threshold."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep every column: rewards read them."})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_elbo_options(self)
        if self.loss_type not in ("elbo", "diffu_grpo"):
            raise ValueError(f"loss_type must be 'elbo' or 'diffu_grpo', got {self.loss_type!r}")
        if self.num_generations < 2:
            raise ValueError(f"num_generations must be at least 2 (advantages compare a group), got {self.num_generations}")
        if self.per_device_train_batch_size % self.num_generations:
            raise ValueError(f"per_device_train_batch_size={self.per_device_train_batch_size} must be a multiple of "
                             f"num_generations={self.num_generations} (it counts completions, as in trl)")
        if self.beta < 0 or self.epsilon < 0 or self.num_iterations < 1 or self.temperature <= 0:
            raise ValueError("beta and epsilon must be >= 0, num_iterations >= 1 and temperature > 0")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_funcs):
            raise ValueError(f"got {len(self.reward_weights)} reward_weights for {len(self.reward_funcs)} reward_funcs")
        if not 0.0 <= self.p_mask_prompt < 1.0:
            raise ValueError(f"p_mask_prompt must be in [0, 1), got {self.p_mask_prompt}")
        if self.loss_tokens not in ("canvas", "first_eos"):
            raise ValueError(f"loss_tokens must be 'canvas' or 'first_eos', got {self.loss_tokens!r}")

    def sampler_overrides(self) -> dict[str, Any]:
        """The rollout sampler settings given here (the rest stays as the checkpoint saved it)."""
        values = {"gen_length": self.max_completion_length, "steps": self.steps, "block_size": self.block_size,
                  "threshold": self.threshold}
        return {"temperature": self.temperature, **{k: v for k, v in values.items() if v is not None}}


class GroupSampler(torch.utils.data.Sampler[int]):
    """Dataset indices for GRPO: each prompt ``num_generations`` times in a row, so a micro-batch holds whole
    groups; the micro-batches of one accumulation window on every process (``window`` of them, dealt out to the
    processes in turn by accelerate) repeated ``repeats`` (``num_iterations``) times. Seeded per epoch."""

    def __init__(self, size: int, num_generations: int, prompts_per_batch: int, window: int, repeats: int, seed: int):
        self.size, self.generations, self.per_batch = size, num_generations, prompts_per_batch
        self.window, self.repeats, self.seed, self.epoch = window, repeats, seed, 0
        self.window_prompts = prompts_per_batch * window
        if size < self.window_prompts:
            raise ValueError(f"the dataset has {size} prompts; one accumulation window needs {self.window_prompts}")

    def __len__(self) -> int:
        return (self.size // self.window_prompts) * self.window_prompts * self.generations * self.repeats

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        self.epoch += 1
        for start in range(0, len(order) - self.window_prompts + 1, self.window_prompts):
            window = [i for i in order[start:start + self.window_prompts] for _ in range(self.generations)]
            for _ in range(self.repeats):
                yield from window


@dataclass
class Rollouts:
    """One micro-batch of completions, ready for the loss: ids [B, P] / [B, L] with masks, advantages [B], the
    completion tokens the per-token loss counts [B, L], and per iteration the shared noise and the old policy's /
    reference's estimates (None where not needed)."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    advantages: torch.Tensor
    noise: list[Any]
    old_logps: list[torch.Tensor | None]
    ref_logps: list[torch.Tensor | None]
    loss_mask: torch.Tensor
    iteration: int = 0

    def rows(self, index: torch.Tensor) -> Rollouts:
        """The completions at ``index`` (a group may be split: advantages are already computed)."""
        def take(x: Any) -> Any:
            if x is None:
                return None
            if isinstance(x, ElboNoise):
                return ElboNoise(take(x.masked), take(x.weight))
            return x[index.to(x.device)]
        return Rollouts(take(self.prompt_ids), take(self.prompt_mask), take(self.completion_ids),
                        take(self.completion_mask), take(self.advantages), [take(n) for n in self.noise],
                        [take(o) for o in self.old_logps], [take(f) for f in self.ref_logps], take(self.loss_mask),
                        self.iteration)


def through_first_eos(completion_ids: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """1 at every position up to and including each row's first EOS, 0 after it (all 1 without one) [B, L]:
    the tokens d1's loss counts."""
    if eos_token_id is None:
        return torch.ones_like(completion_ids)
    is_eos = (completion_ids == eos_token_id).long()
    return ((is_eos.cumsum(dim=1) - is_eos) == 0).long()


def keep_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The collator: rows reach the trainer as they are (the trainer tokenises prompts and runs the sampler)."""
    return rows


class DiffusionGRPOTrainer(Trainer):
    """GRPO for masked diffusion LMs (module docstring); ``transformers.Trainer`` does the rest.

    Args:
        model: the policy (a masked diffusion LM, or a peft model around one: its reference is the model with
            the adapters switched off).
        reward_funcs: functions with trl's signature, or ``(name, function)`` pairs (see :mod:`dllm.rl.rewards`).
        args: :class:`DiffusionGRPOConfig`.
        train_dataset: prompt rows (:mod:`dllm.rl.data`).
        processing_class: the tokenizer (chat template, mask and EOS tokens).
        generation_config: the rollout sampler's base settings (default: those saved with the model's
            checkpoint); ``args`` overrides ``temperature`` and whatever else it sets.

    Logged (trl's names): ``reward``, ``reward_std``, ``rewards/<name>/mean`` and ``/std``,
    ``frac_reward_zero_std``, ``kl``, ``clip_ratio/region_mean``, ``completions/mean_length`` (``min``, ``max``,
    ``clipped_ratio``: completions with no EOS), and ``sampler/forward_passes`` per rollout batch.
    """

    # compute_loss returns a micro-batch mean; Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, model: torch.nn.Module, reward_funcs: Sequence[RewardFunc | tuple[str, RewardFunc]],
                 args: DiffusionGRPOConfig, train_dataset: Dataset, processing_class: PreTrainedTokenizerBase,
                 generation_config: DiffusionGenerationConfig | None = None, **kwargs: Any):
        self.reference = ReferencePolicy(model, needed=args.beta > 0)
        super().__init__(model=model, args=args, train_dataset=train_dataset, processing_class=processing_class,
                         data_collator=keep_rows, **kwargs)
        self.reward_funcs = [f if isinstance(f, tuple) else (getattr(f, "__name__", f"reward_{i}"), f)
                             for i, f in enumerate(reward_funcs)]
        weights = args.reward_weights or [1.0] * len(self.reward_funcs)
        if len(weights) != len(self.reward_funcs):
            raise ValueError(f"got {len(weights)} reward_weights for {len(self.reward_funcs)} reward functions")
        self.reward_weights = torch.tensor(weights)
        base = generation_config or DiffusionGenerationConfig.from_pretrained(model.name_or_path)
        self.generation_config = with_tokenizer_ids(replace(base, **args.sampler_overrides()), processing_class)
        self.mask_token_id = self.generation_config.mask_token_id
        self.metrics = MetricLog()
        self._buffer: list[Rollouts] = []
        self._calls = 0

    def _get_train_sampler(self, train_dataset: Dataset | None = None) -> torch.utils.data.Sampler:
        args: DiffusionGRPOConfig = self.args
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return GroupSampler(len(dataset), args.num_generations, args.per_device_train_batch_size // args.num_generations,
                            args.gradient_accumulation_steps * args.world_size, args.num_iterations, args.seed)

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> None:
        return None  # the loss is a mean per micro-batch (rows are raw prompts, there is nothing to count)

    def _prepare_inputs(self, inputs: list[dict[str, Any]]) -> Rollouts:
        """Rollouts for this micro-batch: generated and scored at the first of its ``num_iterations`` passes,
        reused (same slot of the accumulation window) at the others."""
        accumulation = self.args.gradient_accumulation_steps
        position = self._calls % (accumulation * self.args.num_iterations)
        slot, iteration = position % accumulation, position // accumulation
        if iteration == 0:
            rollouts = self._rollout(inputs)
            self._buffer[slot:slot + 1] = [rollouts]
        self._calls += 1
        return replace(self._buffer[slot], iteration=iteration)

    def _generator(self, purpose: str, device: torch.device | str = "cpu") -> torch.Generator:
        """A generator seeded by (seed, purpose, step, call, process): reproducible, distinct per process."""
        key = noise_seed(self.args.seed, purpose, self.state.global_step, self._calls, self.args.process_index)
        return torch.Generator(device=device).manual_seed(key)

    @torch.no_grad()
    def _rollout(self, rows: list[dict[str, Any]]) -> Rollouts:
        """Generate ``B`` completions in one sampler call, score them, draw the noise of every iteration."""
        args: DiffusionGRPOConfig = self.args
        tokenizer, device = self.processing_class, self.accelerator.device
        prompts = [row["prompt"] for row in rows]
        columns = {key: [row[key] for row in rows] for key in rows[0] if key != "prompt"}
        prompt_ids, prompt_mask = left_pad([encode_prompt_ids(tokenizer, p) for p in prompts],
                                           self.generation_config.pad_token_id)  # [B, P]
        prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
        policy = self.accelerator.unwrap_model(self.model)
        was_training = policy.training
        policy.eval()
        # A peft model's base holds the adapted layers, with the forward signature the sampler reads.
        sampler_model = policy.get_base_model() if is_peft_model(policy) else policy
        out = generate(sampler_model, prompt_ids, self.generation_config, attention_mask=prompt_mask,
                       generator=self._generator("rollout", device))
        policy.train(was_training)
        completion_ids = out.sequences[:, prompt_ids.shape[1]:]  # [B, L], the whole canvas the sampler filled
        completion_mask = torch.ones_like(completion_ids)
        answers = answer_ids(out.sequences.cpu(), prompt_ids.shape[1], self.generation_config.eos_token_id)
        texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in answers]
        completions = [as_completion(p, t) for p, t in zip(prompts, texts)]
        rewards = self._score(prompts, completions, {**columns, "completion_ids": answers})  # [B]
        advantages = group_advantages(rewards, args.num_generations, args.scale_rewards).to(device)
        loss_mask = (through_first_eos(completion_ids, self.generation_config.eos_token_id)
                     if args.loss_tokens == "first_eos" else completion_mask)
        rollouts = Rollouts(prompt_ids, prompt_mask, completion_ids, completion_mask, advantages, [], [], [],
                            loss_mask)
        self._estimate_fixed_terms(rollouts, policy)
        self._log_rollouts(answers, completion_ids.shape[1], out.forward_passes, rewards)
        return rollouts

    def _estimate_fixed_terms(self, rollouts: Rollouts, policy: torch.nn.Module) -> None:
        """Per iteration: the shared noise, and the old policy's (``num_iterations > 1``) and the reference's
        (``beta > 0``) estimates under it."""
        args: DiffusionGRPOConfig = self.args
        for _ in range(args.num_iterations):
            generator = self._generator(f"noise-{len(rollouts.noise)}")
            if args.loss_type == "elbo":
                noise = draw_elbo_noise(rollouts.completion_mask, args.num_elbo_samples,
                                        estimator=args.elbo_estimator, eps=args.elbo_time_eps, generator=generator)
            else:
                noise = draw_prompt_masks(rollouts.prompt_mask, args.p_mask_prompt, generator)
            rollouts.noise.append(noise)
            rollouts.old_logps.append(self._logps(policy, rollouts, noise) if args.num_iterations > 1 else None)
            if self.reference.needed:
                with self.reference.model(policy) as reference:
                    rollouts.ref_logps.append(self._logps(reference, rollouts, noise))
            else:
                rollouts.ref_logps.append(None)

    def _logps(self, model: torch.nn.Module, r: Rollouts, noise: Any) -> torch.Tensor:
        """The estimator: per-token ELBO of each completion [B] (``elbo``) or d1's token log-probabilities [B, L]."""
        if self.args.loss_type == "elbo":
            elbo = sequence_elbo(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask, noise,
                                 self.mask_token_id)  # [B]
            return elbo / r.completion_mask.sum(dim=1)
        return diffu_grpo_token_logps(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                      noise, self.mask_token_id)  # [B, L]

    def _score(self, prompts: list[Any], completions: list[Any], columns: dict[str, list[Any]]) -> torch.Tensor:
        """The weighted sum of the reward functions [B] (NaN, a reward that does not apply, counts 0)."""
        per_func = torch.tensor([call_reward(name, func, prompts, completions, columns)
                                 for name, func in self.reward_funcs]).T  # [B, F]
        gathered = self.accelerator.gather(per_func.to(self.accelerator.device)).cpu()  # [world B, F]
        for (name, _), values in zip(self.reward_funcs, gathered.T):
            kept = values[~values.isnan()]
            self.metrics.add(f"rewards/{name}/mean", kept.mean() if len(kept) else float("nan"))
            self.metrics.add(f"rewards/{name}/std", kept.std() if len(kept) > 1 else float("nan"))
        total = (per_func.nan_to_num(0.0) * self.reward_weights).sum(dim=1)  # [B]
        all_total = (gathered.nan_to_num(0.0) * self.reward_weights).sum(dim=1)
        self.metrics.add("reward", all_total.mean())
        self.metrics.add("reward_std", all_total.std() if len(all_total) > 1 else 0.0)
        groups = all_total.view(-1, self.args.num_generations)
        self.metrics.add("frac_reward_zero_std", (groups.std(dim=1) < 1e-6).float().mean())
        return total

    def _log_rollouts(self, answers: list[list[int]], canvas: int, forward_passes: int, rewards: torch.Tensor) -> None:
        lengths = torch.tensor([len(a) for a in answers], dtype=torch.float)
        self.metrics.add("completions/mean_length", lengths.mean())
        self.metrics.add("completions/min_length", lengths.min())
        self.metrics.add("completions/max_length", lengths.max())
        self.metrics.add("completions/clipped_ratio", (lengths >= canvas).float().mean())
        self.metrics.add("sampler/forward_passes", forward_passes)

    def compute_loss(self, model: torch.nn.Module, inputs: Rollouts, return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        """Clipped-ratio loss with the KL penalty, averaged over the micro-batch (per token first for d1).

        Without a KL term, a completion whose advantage is 0 (every completion of a group with one reward)
        adds exactly 0 to the loss and to its gradient (``-min(r 0, clip(r) 0)``), whatever its ratio: only
        the others are run through the model, and the sum is still divided by the whole micro-batch. On the
        demo a third of the groups have one reward, so this saves about a fifth of a step."""
        args: DiffusionGRPOConfig = self.args
        full = inputs
        r = full
        if full.ref_logps[full.iteration] is None:
            keep = full.advantages != 0
            if not keep.any():
                keep[0] = True  # one row (adding 0) keeps a graph for backward
            if not keep.all():
                r = full.rows(keep.nonzero().squeeze(1))
        logp = self._logps(model, r, r.noise[r.iteration])  # [B'] or [B', L]
        old = r.old_logps[r.iteration]
        old = logp.detach() if old is None else old
        high = args.epsilon if args.epsilon_high is None else args.epsilon_high
        per, clipped = clipped_policy_loss(logp, old, r.advantages, args.epsilon, high)
        reference = r.ref_logps[r.iteration]
        if reference is not None:
            kl = k3_kl(logp, reference)
            per = per + args.beta * kl
            self.metrics.add("kl", self._reduce(kl.detach(), r, full).item())
        self.metrics.add("clip_ratio/region_mean", self._reduce(clipped.float(), r, full).item())
        loss = self._reduce(per, r, full)
        return (loss, None) if return_outputs else loss

    def _reduce(self, values: torch.Tensor, r: Rollouts, full: Rollouts | None = None) -> torch.Tensor:
        """Mean over the completions of ``full`` (default ``r``), where those not in ``r`` count 0; per-token
        values [B, L] are first averaged over each completion's tokens (``loss_tokens="canvas"``), or summed
        over the counted tokens and divided by all counted tokens of ``full`` (``"first_eos"``)."""
        full = r if full is None else full
        if values.dim() == 2:
            mask = r.loss_mask.to(values.dtype)
            if self.args.loss_tokens == "first_eos":
                return (values * mask).sum() / full.loss_mask.sum().clamp_min(1)
            values = (values * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1)
        return values.sum() / len(full.advantages)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Trainer's logs plus the GRPO metrics averaged since the last log."""
        if "loss" in logs:
            logs.update(self.metrics.pop_means())
        super().log(logs, start_time)
