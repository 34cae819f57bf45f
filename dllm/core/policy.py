"""Log-likelihood estimators and losses for post-training a masked diffusion LM with rewards or preferences.

A masked diffusion LM has no tractable ``log pi(y | x)`` of a completion ``y``, which every policy-gradient and
preference loss needs. Two estimators, each with noise drawn once and *shared* by the policy, the old policy and
the reference (the same masks, the same times), so their differences, which is what the losses use, cancel most
of the Monte-Carlo noise:

``elbo`` (:func:`sequence_elbo`, sequence level; GDPO arXiv 2510.08554, ESPO, LLaDA 1.5's VRPO arXiv 2505.19223)
    The MDLM bound (MDLM arXiv 2406.07524 Eq. 10; LLaDA arXiv 2502.09992 Eq. 6) of the whole completion,

        log pi(y | x) >= E_t E_{y_t} [ w(t) * sum_{l masked in y_t} log pi(y^l | x, y_t) ],
        w(t) = -alpha'(t) / (1 - alpha(t)),

    estimated with ``K`` time samples, antithetic over ``[eps, 1]`` (or LLaDA's masked-count form), see
    :func:`draw_elbo_noise`. *Bias*: it estimates the bound, not ``log pi``; the gap is the KL between the
    model's any-order factorisations and its sampler's, zero when the model's conditionals are consistent (exactly
    zero for one token: :func:`sequence_elbo` of a one-token completion is ``log pi`` itself; for two tokens it is
    the average over both decoding orders of that order's log-likelihood; both tested). Ratios of bounds are not
    ratios of likelihoods, so the importance ratio is biased too, but consistently across policy and reference.
    For the linear schedule and ``eps > 0`` the time form adds a bias of order ``eps`` (it skips ``t < eps``).
    *Variance*: ``O(1/K)``, much reduced by the shared noise (policy minus reference is a difference of two
    correlated estimates) and by antithetic times; the ``count`` form removes the variance in how many tokens are
    masked (VRPO's recipe: enough samples, antithetic draws, shared noise).

``diffu_grpo`` (:func:`diffu_grpo_token_logps`, per token; d1 arXiv 2504.12216)
    One forward with the completion fully masked and each prompt token masked with probability
    ``p_mask_prompt``; token ``l``'s log-probability is read off that single forward. *Bias*: large and
    systematic, it is the log-probability of each token given the prompt *alone* (a mean-field factorisation
    that ignores the other completion tokens), not its conditional in any decoding order; the prompt masking
    adds a further perturbation (d1 uses it as a regulariser across the inner iterations). *Variance*: low
    (one draw of prompt masks; with ``p_mask_prompt = 0`` deterministic), and one forward per completion.

As in the sampler, the mask token's logit is removed before the softmax (MDLM's SUBS parameterisation).
The losses (:func:`group_advantages`, :func:`clipped_policy_loss`, :func:`k3_kl`, :func:`dpo_loss`) follow trl's
``GRPOTrainer`` / ``DPOTrainer`` conventions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dllm.core.likelihood import Estimator, draw_noise
from dllm.core.models.masked_lm import block_diffusion_forward, block_diffusion_size
from dllm.core.sampling.forward import position_ids
from dllm.core.schedules import MaskingSchedule


@dataclass
class ElboNoise:
    """``K`` noise draws per completion, shared by every model it is applied to: ``masked`` [B, K, L] the masked
    completion positions, ``weight`` [B, K] each draw's ELBO weight."""

    masked: torch.Tensor
    weight: torch.Tensor

    @property
    def num_samples(self) -> int:
        return self.weight.shape[1]


def draw_elbo_noise(completion_mask: torch.Tensor, num_samples: int, *, estimator: Estimator = "time",
                    schedule: MaskingSchedule | None = None, eps: float = 1e-3, antithetic: bool = True,
                    generator: torch.Generator | None = None) -> ElboNoise:
    """``num_samples`` draws of :func:`~dllm.core.likelihood.draw_noise` for each completion.

    ``completion_mask`` [B, L] marks each completion's real tokens (only those are ever masked; the draws are
    antithetic within a completion). ``estimator``: ``"time"`` (MDLM, any ``schedule``) or ``"count"`` (LLaDA
    Eq. 6: exactly ``l ~ U{1..n}`` tokens masked, weight ``n / l``). Drawn on the CPU from ``generator``.
    """
    batch, length = completion_mask.shape
    masked = torch.zeros((batch, num_samples, length), dtype=torch.bool)  # [B, K, L]
    weight = torch.zeros((batch, num_samples))  # [B, K]
    for b, row in enumerate(completion_mask.bool().cpu()):
        columns = row.nonzero().squeeze(-1)  # [n]
        if columns.numel() == 0:
            continue
        placeholder = torch.zeros(columns.numel(), dtype=torch.long)  # draw_noise needs tokens; only masks matter
        _, row_masked, row_weight = draw_noise(placeholder, num_samples, 1, estimator=estimator, schedule=schedule,
                                               eps=eps, antithetic=antithetic, generator=generator)
        masked[b][:, columns] = row_masked
        weight[b] = row_weight.float()
    return ElboNoise(masked, weight)


def completion_logps(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     targets: torch.Tensor, mask_token_id: int) -> torch.Tensor:
    """``log pi(targets | input_ids)`` [R, L] at the last ``L`` columns (the completion) of ``input_ids`` [R, T],
    the mask token's logit removed; the output head runs on those columns only."""
    length = targets.shape[1]
    base = _unwrapped(model)
    if block_diffusion_size(base.config) is not None:  # its training forward: x_t beside the clean x_0
        clean = torch.cat([input_ids[:, :-length], targets], dim=1)  # [R, T]
        out = block_diffusion_forward(model, base, input_ids, clean, {"attention_mask": attention_mask})
        logits = out.logits[:, -length:].float()  # [R, L, V]
        logits[..., mask_token_id] = float("-inf")
        return logits.log_softmax(dim=-1).gather(-1, targets[..., None]).squeeze(-1)  # [R, L]
    keep = torch.arange(input_ids.shape[1] - length, input_ids.shape[1], device=input_ids.device)  # [L]
    # Called without the sampler's cache argument (model_logits): the model may be wrapped (DDP, peft), whose
    # forward names no cache, and a training forward needs none.
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                logits_to_keep=keep)
    logits = out.logits if out.logits.shape[1] == length else out.logits[:, keep]  # [R, L, V]
    logits = logits.float()
    logits[..., mask_token_id] = float("-inf")  # SUBS: a clean token is never the mask token
    return logits.log_softmax(dim=-1).gather(-1, targets[..., None]).squeeze(-1)  # [R, L]


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The model under DDP (``module``) and peft (``get_base_model``) wrappers: its config and dtype build masks."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def sequence_elbo(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                  completion_ids: torch.Tensor, completion_mask: torch.Tensor, noise: ElboNoise,
                  mask_token_id: int) -> torch.Tensor:
    """Monte-Carlo ELBO of each completion given its prompt, ``<= log pi(y | x)`` in nats [B], differentiable.

    ``(1 / K) sum_k w_k * sum_{l in masked_k} log pi(y^l | x, y masked at masked_k)`` (module docstring), one row
    per draw: the prompt (left-padded ``prompt_ids`` / ``prompt_mask`` [B, P]) is clean, the completion
    (``completion_ids`` / ``completion_mask`` [B, L], right-padded) is masked at ``noise.masked``.
    """
    batch, k = noise.weight.shape
    device = completion_ids.device
    masked = noise.masked.to(device).flatten(0, 1)  # [B K, L]
    completion = completion_ids.repeat_interleave(k, dim=0)  # [B K, L]
    noisy = torch.where(masked, torch.full_like(completion, mask_token_id), completion)
    ids = torch.cat([prompt_ids.repeat_interleave(k, dim=0), noisy], dim=1)  # [B K, P + L]
    attention = torch.cat([prompt_mask, completion_mask], dim=1).repeat_interleave(k, dim=0)  # [B K, P + L]
    logps = completion_logps(model, ids, attention, completion, mask_token_id)  # [B K, L]
    per_draw = (logps * masked).sum(dim=1).view(batch, k)  # [B, K]
    return (per_draw * noise.weight.to(device)).mean(dim=1)  # [B]


def draw_prompt_masks(prompt_mask: torch.Tensor, p_mask_prompt: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """d1's prompt noise: each real prompt token (``prompt_mask`` [B, P]) masked with probability
    ``p_mask_prompt``; [B, P] bool, drawn on the CPU, to be shared by the policy, old policy and reference."""
    uniforms = torch.rand(prompt_mask.shape, generator=generator)  # [B, P]
    return (uniforms < p_mask_prompt) & prompt_mask.bool().cpu()


def diffu_grpo_token_logps(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                           completion_ids: torch.Tensor, completion_mask: torch.Tensor, prompt_masked: torch.Tensor,
                           mask_token_id: int) -> torch.Tensor:
    """d1's per-token estimate [B, L]: ``log pi(y^l | x~, all of y masked)`` from one forward, where ``x~`` is the
    prompt masked at ``prompt_masked`` [B, P] (:func:`draw_prompt_masks`); see the module docstring for its bias."""
    device = completion_ids.device
    prompt = torch.where(prompt_masked.to(device), torch.full_like(prompt_ids, mask_token_id), prompt_ids)
    ids = torch.cat([prompt, torch.full_like(completion_ids, mask_token_id)], dim=1)  # [B, P + L]
    attention = torch.cat([prompt_mask, completion_mask], dim=1)  # [B, P + L]
    return completion_logps(model, ids, attention, completion_ids, mask_token_id)  # [B, L]


def group_advantages(rewards: torch.Tensor, num_generations: int, scale: bool = True) -> torch.Tensor:
    """GRPO's group-relative advantages (DeepSeekMath arXiv 2402.03300 Sec. 4.1.2), trl's ``scale_rewards="group"``:
    ``A_i = (r_i - mean_g r) / (std_g r + 1e-4)`` over each group of ``num_generations`` consecutive rewards [B]
    (``std`` with Bessel's correction; without ``scale`` only the mean is removed, Dr. GRPO)."""
    groups = rewards.view(-1, num_generations)  # [B / G, G]
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (groups.std(dim=1, keepdim=True) + 1e-4)
    return centred.flatten()  # [B]


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                        epsilon_low: float, epsilon_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (arXiv 1707.06347 Eq. 7) as a loss, elementwise:
    ``-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)`` with ``r = exp(logp - old_logp)``.

    ``logp``/``old_logp`` are [B] (a sequence) or [B, L] (tokens), ``advantages`` [B]. Returns the loss and
    where the clipped term was the smaller (no gradient flows there), same shape."""
    advantages = advantages.view(-1, *([1] * (logp.dim() - 1)))  # [B] or [B, 1]
    ratio = torch.exp(logp - old_logp)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    loss = -torch.minimum(ratio * advantages, clipped * advantages)
    return loss, (clipped * advantages < ratio * advantages)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's ``k3`` estimate of ``KL(pi || pi_ref)`` from a sample of ``pi``: ``exp(d) - d - 1`` with
    ``d = ref_logp - logp`` (unbiased, always >= 0; what trl's GRPO uses), elementwise."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def dpo_loss(chosen_logp: torch.Tensor, rejected_logp: torch.Tensor, ref_chosen_logp: torch.Tensor,
             ref_rejected_logp: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO (arXiv 2305.18290 Eq. 7), trl's ``loss_type="sigmoid"``: ``-log sigmoid(beta * margin)`` with
    ``margin = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))`` [B]. Returns the loss [B] and the
    margin [B]; identical policy and reference give ``log 2`` exactly."""
    margin = (chosen_logp - ref_chosen_logp) - (rejected_logp - ref_rejected_logp)
    return -F.logsigmoid(beta * margin), margin
