"""Monte-Carlo ELBO of an answer given a prompt: the bound a masked diffusion LM reports as its likelihood.

A masked diffusion LM has no closed-form ``log p(answer | prompt)``; its continuous-time negative ELBO bounds it
(MDLM arXiv 2406.07524 Eq. 10, the bound behind MDLM's perplexities; LLaDA arXiv 2502.09992 Eq. 3 and, for an
answer ``a`` of ``L`` tokens after a clean prompt ``p``, its conditional form Eq. 6)::

    -log p(a | p) <= E_t E_{a_t} [ w(t) * sum_{l masked in a_t} -log p_theta(a^l | p, a_t) ],
    w(t) = -alpha'(t) / (1 - alpha(t))

where ``a_t`` masks each answer token with probability ``1 - alpha(t)`` and the prompt is never masked. Two
unbiased estimators of the right-hand side, each averaged over ``num_samples`` draws:

- ``"time"`` (MDLM): ``t`` in ``[eps, 1]``, antithetic over the samples (:func:`~dllm.core.diffusion.sample_t`),
  each token masked with probability ``1 - alpha(t)`` (:func:`~dllm.core.diffusion.mask_tokens`), weight
  ``w(t)`` of any :class:`~dllm.core.schedules.MaskingSchedule` (linear by default: ``w = 1/t``).
- ``"count"`` (LLaDA Eq. 6): ``l ~ U{1..L}`` (stratified over the samples), exactly ``l`` answer tokens masked,
  chosen uniformly, weight ``L / l``. Its expectation equals the linear-schedule bound; it has lower variance
  since the number of masked tokens no longer varies at a given weight (and never is zero).

Why the expectation is exact for the linear schedule: given ``t``, ``E[#masked] = L t`` and ``w = 1/t``, so a
model that pays the same ``c`` nats at every masked position has ``E[w * #masked * c] = L c`` for every ``t``;
for ``"count"``, ``(L / l) * l * c = L c`` for every draw.

Reproducible and independent of batching: each example draws its noise from its own CPU generator, seeded from
``seed`` and the example's token ids, so its estimate depends neither on which examples share its batch nor on
its position in the list nor on the padding side (up to float rounding of the model's forward; tested). As in the
sampler, the mask token's logit is removed before the cross-entropy (MDLM's SUBS parameterisation: a clean token
is never the mask token).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from dllm.core.diffusion import IGNORE_INDEX, mask_tokens, sample_t
from dllm.core.models.masked_lm import block_diffusion_forward, block_diffusion_size
from dllm.core.sampling.forward import model_logits, position_ids
from dllm.core.schedules import LinearSchedule, MaskingSchedule

Estimator = Literal["time", "count"]
PaddingSide = Literal["left", "right"]


@dataclass
class LikelihoodEstimate:
    """Per example: ``samples`` [N, K], the bound of each Monte-Carlo draw in nats (weight times the masked
    cross-entropy summed over the answer), and ``num_tokens`` [N], the answer lengths."""

    samples: torch.Tensor
    num_tokens: torch.Tensor
    forward_rows: int = 0
    """Sequences the model ran (draws that mask nothing cost nothing and are not counted)."""

    @property
    def nll(self) -> torch.Tensor:
        """ELBO bound on ``-log p(answer | prompt)`` in nats, summed over the answer [N]."""
        return self.samples.mean(dim=1)

    @property
    def stderr(self) -> torch.Tensor:
        """Monte-Carlo standard error of :attr:`nll` [N]: sample standard deviation / sqrt(K), NaN for K = 1.

        It treats the draws as independent; antithetic / stratified draws are negatively correlated, so for them
        this overstates the error (a conservative bound)."""
        k = self.samples.shape[1]
        if k < 2:
            return torch.full_like(self.nll, float("nan"))
        return self.samples.std(dim=1, correction=1) / math.sqrt(k)

    @property
    def nll_per_token(self) -> torch.Tensor:
        """:attr:`nll` divided by the answer length [N] (0 for an empty answer)."""
        return self.nll / self.num_tokens.clamp_min(1)

    @property
    def stderr_per_token(self) -> torch.Tensor:
        """:attr:`stderr` divided by the answer length [N]."""
        return self.stderr / self.num_tokens.clamp_min(1)


def example_seed(seed: int, prompt: Sequence[int], answer: Sequence[int]) -> int:
    """A 63-bit seed from ``seed`` and the example's tokens (blake2b: stable across processes and machines)."""
    text = f"{seed}|{','.join(map(str, prompt))}|{','.join(map(str, answer))}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def draw_noise(answer: torch.Tensor, num_samples: int, mask_token_id: int, *, estimator: Estimator = "time",
               schedule: MaskingSchedule | None = None, eps: float = 1e-3, antithetic: bool = True,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``num_samples`` noisy copies of ``answer`` [L] for the estimator (see the module docstring).

    Returns:
        ``(noisy, masked, weight)``: noisy answers [K, L], the masked positions [K, L] and each draw's weight [K].
    """
    length = answer.numel()
    clean = answer[None].expand(num_samples, length)  # [K, L]
    if estimator == "time":
        schedule = schedule if schedule is not None else LinearSchedule()
        t = sample_t(num_samples, eps=eps, antithetic=antithetic, generator=generator)  # [K]
        uniforms = torch.rand((num_samples, length), generator=generator)  # [K, L]
        noisy, masked = mask_tokens(clean, clean, schedule.mask_probability(t), mask_token_id, uniforms=uniforms)
        return noisy, masked, schedule.weight(t)
    # "count": l ~ U{1..L} from the same antithetic uniforms, then a uniform subset of l positions.
    u = sample_t(num_samples, eps=0.0, antithetic=antithetic, generator=generator)  # [K] in [0, 1)
    count = (u * length).floor().long().clamp(0, max(length - 1, 0)) + 1  # [K] in 1..L
    ranks = torch.rand((num_samples, length), generator=generator).argsort(dim=1).argsort(dim=1)  # [K, L]
    masked = ranks < count[:, None]  # [K, L]
    noisy = torch.where(masked, torch.full_like(clean, mask_token_id), clean)
    return noisy, masked, length / count.float()


def masked_cross_entropy(model: torch.nn.Module, rows: list[torch.Tensor], labels: list[torch.Tensor],
                         mask_token_id: int, *,
                         pad_token_id: int = 0, padding_side: PaddingSide = "left") -> torch.Tensor:
    """Summed cross-entropy of each row's labelled positions [R], rows padded into one batch.

    ``rows`` are token ids and ``labels`` the clean tokens at masked positions, -100 elsewhere (1-D, same length).
    ``position_ids`` count from each row's first real token, so the logits do not depend on the padding. The
    output head runs only on the columns where some row has a label.
    """
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)  # [R, T]
    targets = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)  # [R, T]
    attention = torch.zeros((len(rows), width), dtype=torch.long)  # [R, T]
    for i, (row, label) in enumerate(zip(rows, labels)):
        span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
        ids[i, span], targets[i, span], attention[i, span] = row, label, 1
    device = next(model.parameters()).device
    if block_diffusion_size(getattr(model, "config", None)) is not None:
        return _block_diffusion_cross_entropy(model, ids.to(device), targets.to(device), attention.to(device),
                                              mask_token_id)
    keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)  # [C]
    ids, attention = ids.to(device), attention.to(device)
    logits = model_logits(model, ids, attention, position_ids(attention), keep.to(device))  # [R, C, V]
    logits[..., mask_token_id] = float("-inf")  # SUBS: a clean token is never the mask token
    ce = F.cross_entropy(logits.transpose(1, 2), targets[:, keep].to(device), ignore_index=IGNORE_INDEX,
                         reduction="none")  # [R, C], 0 where ignored
    return ce.sum(dim=1).cpu()


def _block_diffusion_cross_entropy(model: torch.nn.Module, ids: torch.Tensor, targets: torch.Tensor,
                                   attention: torch.Tensor, mask_token_id: int) -> torch.Tensor:
    """:func:`masked_cross_entropy` for a block-diffusion model: its denoiser reads the noisy rows beside their clean
    copy (:func:`~dllm.core.models.masked_lm.block_diffusion_forward`, as it was trained), a noisy block seeing the
    clean blocks before it; a pass over the noisy rows alone would give it another context than the bound's."""
    masked = targets != IGNORE_INDEX  # [R, T]
    clean = torch.where(masked, targets, ids)  # [R, T]: x_0
    out = block_diffusion_forward(model, model, ids, clean, {"attention_mask": attention}, masked=masked)
    logits = out.logits.float()  # [N, V], row-major over masked
    logits[:, mask_token_id] = float("-inf")  # SUBS: a clean token is never the mask token
    ce = F.cross_entropy(logits, targets[masked], reduction="none")  # [N]
    rows = masked.nonzero()[:, 0]  # [N]
    return torch.zeros(ids.shape[0], device=ce.device).index_add_(0, rows, ce).cpu()


@dataclass
class _Row:
    example: int
    sample: int
    ids: torch.Tensor  # [P + L]
    labels: torch.Tensor  # [P + L]
    weight: float


def _noisy_rows(prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], num_samples: int,
                mask_token_id: int, seed: int, **noise) -> list[_Row]:
    """Every draw that masks at least one token, as a model input (draws that mask nothing contribute 0)."""
    rows = []
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        if len(answer) == 0:
            continue
        generator = torch.Generator().manual_seed(example_seed(seed, prompt, answer))
        clean = torch.as_tensor(list(answer), dtype=torch.long)  # [L]
        noisy, masked, weight = draw_noise(clean, num_samples, mask_token_id, generator=generator, **noise)
        prompt_ids = torch.as_tensor(list(prompt), dtype=torch.long)  # [P]
        ignored = torch.full_like(prompt_ids, IGNORE_INDEX)
        for k in masked.any(dim=1).nonzero().squeeze(-1).tolist():
            labels = torch.where(masked[k], clean, IGNORE_INDEX)  # [L]
            rows.append(_Row(i, k, torch.cat([prompt_ids, noisy[k]]), torch.cat([ignored, labels]),
                             float(weight[k])))
    return rows


@torch.no_grad()
def elbo_nll(model: torch.nn.Module, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]],
             mask_token_id: int, *,
             num_samples: int = 32, estimator: Estimator = "time", schedule: MaskingSchedule | None = None,
             eps: float = 1e-3, antithetic: bool = True, seed: int = 0, batch_size: int = 64,
             pad_token_id: int = 0, padding_side: PaddingSide = "left") -> LikelihoodEstimate:
    """Monte-Carlo ELBO bound on ``-log p(answer | prompt)`` for each (prompt, answer) pair of token ids.

    Args:
        prompts, answers: token-id lists; the prompt is kept clean (it may be empty), the answer is noised.
        num_samples: Monte-Carlo draws per example (a fixed number: the cost is ``N * num_samples`` rows).
        estimator: ``"time"`` (MDLM, any ``schedule``) or ``"count"`` (LLaDA Eq. 6; ignores ``schedule``).
        eps, antithetic: the time sampler's options (:func:`~dllm.core.diffusion.sample_t`).
        seed: with the example's tokens, seeds its draws; the same seed gives the same numbers.
        batch_size: noisy sequences per forward pass; does not change the result.
        padding_side: how rows of different lengths are padded; does not change the result.

    Raises:
        ValueError: ``prompts`` and ``answers`` differ in length, or an option is out of range.
    """
    _check_options(len(prompts), len(answers), num_samples, estimator, padding_side, batch_size)
    rows = _noisy_rows(prompts, answers, num_samples, mask_token_id, seed, estimator=estimator,
                       schedule=schedule, eps=eps, antithetic=antithetic)
    rows.sort(key=lambda row: len(row.ids))  # similar lengths share a batch: less padding
    samples = torch.zeros((len(answers), num_samples), dtype=torch.float64)  # [N, K]
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        ce = masked_cross_entropy(model, [r.ids for r in chunk], [r.labels for r in chunk], mask_token_id,
                                  pad_token_id=pad_token_id, padding_side=padding_side)  # [R]
        for row, value in zip(chunk, ce.tolist()):
            samples[row.example, row.sample] = row.weight * value
    num_tokens = torch.tensor([len(a) for a in answers], dtype=torch.long)
    return LikelihoodEstimate(samples, num_tokens, forward_rows=len(rows))


def _check_options(num_prompts: int, num_answers: int, num_samples: int, estimator: str, padding_side: str,
                   batch_size: int) -> None:
    if num_prompts != num_answers:
        raise ValueError(f"got {num_prompts} prompts and {num_answers} answers; they must pair up")
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be at least 1, got {num_samples} and {batch_size}")
    if estimator not in get_args(Estimator):
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {get_args(Estimator)}")
    if padding_side not in get_args(PaddingSide):
        raise ValueError(f"padding_side must be one of {get_args(PaddingSide)}, got {padding_side!r}")
