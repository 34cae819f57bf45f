"""The decisions of one denoising step, one function each: guide, filter, sample, score, select.

Every function works on the ``C`` columns of the canvas that the step may commit (the still-masked columns of
the current block): logits are ``[B, C, V]``, tokens and scores ``[B, C]``.
"""

from __future__ import annotations

import torch


def guide(cond: torch.Tensor, uncond: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """Classifier-free guidance as in LLaDA (arXiv 2502.09992; unconditional input = prompt masked out).

    ``logits = uncond + (w + 1) * (cond - uncond)`` with ``w = cfg_scale``; ``w = 0`` returns ``cond``.
    """
    return uncond + (cfg_scale + 1) * (cond - uncond)


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to ``-inf`` every token outside the ``top_k`` most likely and outside the ``top_p`` nucleus.

    The nucleus (Holtzman et al., arXiv 1904.09751) is the smallest set of most likely tokens whose
    probability sums to at least ``top_p``; the most likely token is always kept.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]  # [B, C, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # [B, C, V]
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_tokens(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                  top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """A token for every column of ``logits`` [B, C, V]: the argmax at temperature 0, else a draw from
    ``softmax(filter_logits(logits) / temperature)`` with ``generator`` (on the logits' device)."""
    if temperature == 0:
        return logits.argmax(dim=-1)  # [B, C]
    probs = (filter_logits(logits, top_k, top_p) / temperature).softmax(dim=-1)  # [B, C, V]
    draws = torch.multinomial(probs.flatten(0, 1), 1, generator=generator)  # [B*C, 1]
    return draws.view(logits.shape[:-1])  # [B, C]


def confidence(logits: torch.Tensor, tokens: torch.Tensor, remasking: str,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """How sure the model is at each column (higher commits first), from the untempered ``softmax(logits)``.

    - ``low_confidence`` (LLaDA): ``p(x)`` of the chosen token ``x``.
    - ``random`` (LLaDA): ``u ~ U[0, 1)``, independent of the model.
    - ``margin`` (top-probability margin, Kim et al. arXiv 2502.06768; Dream's ``topk_margin``):
      ``p_(1) - p_(2)``, the two largest probabilities.
    - ``entropy`` (Dream 7B's ``entropy``): ``-H(p) = sum_v p_v log p_v``, so lower entropy ranks higher.
    """
    if remasking == "random":
        return torch.rand(tokens.shape, generator=generator, device=tokens.device)  # [B, C]
    probs = logits.softmax(dim=-1)  # [B, C, V]
    if remasking == "low_confidence":
        return probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # [B, C]
    if remasking == "margin":
        top2 = probs.topk(2, dim=-1).values  # [B, C, 2]
        return top2[..., 0] - top2[..., 1]
    if remasking == "entropy":
        return (probs * logits.log_softmax(dim=-1)).nan_to_num().sum(dim=-1)  # [B, C]; 0 log 0 = 0
    raise ValueError(f"unknown remasking {remasking!r}")


def select_commits(score: torch.Tensor, masked: torch.Tensor, k: torch.Tensor,
                   threshold: float | None = None) -> torch.Tensor:
    """Which columns to commit: per row the ``k`` [B] best-scoring masked columns, plus (with ``threshold``)
    every masked column whose score is at least ``threshold`` (Fast-dLLM, arXiv 2505.22618, section 3.3).

    ``score`` and ``masked`` are [B, C]; unmasked columns are never selected. Returns a bool [B, C].
    """
    score = score.masked_fill(~masked, float("-inf"))  # [B, C]
    rank = score.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)  # [B, C], 0 = best
    commit = (rank < k.unsqueeze(-1)) & masked
    if threshold is not None:
        commit |= (score >= threshold) & masked
    return commit
