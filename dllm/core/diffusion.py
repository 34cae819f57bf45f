"""The masked-diffusion training objective as small pure functions (MDLM, arXiv 2406.07524).

``compute_loss`` in :class:`~dllm.core.trainers.mdlm_trainer.MDLMTrainer` is these three steps:

1. :func:`sample_t` draws one diffusion time per sequence, ``t in [eps, 1]``.
2. :func:`mask_tokens` replaces each maskable token (label != -100) by the mask token with probability
   ``1 - alpha(t)``.
3. :func:`masked_diffusion_loss` takes the cross-entropy on masked positions only, times the ELBO weight
   ``-alpha'(t) / (1 - alpha(t))``, normalised per token or per sequence. It takes logits at every position or,
   cheaper, at the masked positions only (the model's output head run there: ``logits_mask=masked``).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
Normalization = Literal["token", "sequence"]


def sample_t(
    batch_size: int,
    *,
    eps: float = 1e-3,
    antithetic: bool = True,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample one diffusion time per sequence in ``[eps, 1]``, shape ``[B]``.

    With ``antithetic`` (MDLM's low-discrepancy sampler, Sec. 3.5 / Kingma et al. 2021) a single uniform
    offset ``u`` is shared and ``t_i = (u + i / B) mod 1``: the batch covers ``[0, 1)`` evenly, which lowers
    the variance of the ELBO estimate without biasing it (each ``t_i`` is still marginally uniform).
    ``eps`` keeps ``t`` away from 0, where the ``1/t`` weight diverges.
    """
    if antithetic:
        u = torch.rand(1, device=device, generator=generator)
        offsets = torch.arange(batch_size, device=device, dtype=u.dtype) / batch_size
        u = (u + offsets) % 1.0  # [B]
    else:
        u = torch.rand(batch_size, device=device, generator=generator)  # [B]
    return eps + (1.0 - eps) * u


def sample_document_t(
    document_ids: torch.Tensor, u: torch.Tensor, *, eps: float = 1e-3, antithetic: bool = True
) -> torch.Tensor:
    """One diffusion time per document of packed rows, ``[B L]``: slot ``d`` holds document ``d``'s ``t``.

    ``document_ids`` ``[B, L]`` numbers the batch's documents ``0 .. D-1`` (``-1`` on padding); the noise level is
    per document, not per packed row. With ``antithetic``, ``u`` is one uniform offset and ``t_d = (u + d / D) mod 1``
    spreads the ``D`` documents evenly over ``[0, 1)`` as :func:`sample_t` does for rows, with ``D`` counted on the
    device (no host sync; the ``B L - D`` slots past it are never read). Without it, ``u`` holds ``B L`` uniforms.
    """
    if antithetic:
        count = (document_ids.max() + 1).clamp_min(1).to(u.dtype)  # D, on the device
        slots = torch.arange(document_ids.numel(), device=document_ids.device, dtype=u.dtype)
        u = (u.reshape(()) + slots / count) % 1.0  # [B L]
    elif u.shape != (document_ids.numel(),):
        raise ValueError(f"u must hold one uniform per slot, {document_ids.numel()}, got shape {tuple(u.shape)}")
    return eps + (1.0 - eps) * u  # [B L]


def mask_tokens(
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    mask_prob: torch.Tensor,
    mask_token_id: int,
    *,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward process ``q(x_t | x_0)``: mask each maskable token with probability ``1 - alpha(t)``.

    Args:
        input_ids: clean tokens ``x_0``, ``[B, L]``.
        labels: ``[B, L]``; positions with ``-100`` (prompt, padding, image tokens) are never masked.
        mask_prob: ``1 - alpha(t)`` per sequence, ``[B]``, or per position, ``[B, L]`` (packed rows: each
            position gets its document's).
        mask_token_id: id written at masked positions.
        uniforms: optional pre-drawn ``U(0, 1)`` values ``[B, L]`` (drawn here when absent).

    Returns:
        ``(noisy_ids, masked)``: ``x_t`` ``[B, L]`` and the boolean mask of replaced positions ``[B, L]``.
    """
    if uniforms is None:
        uniforms = torch.rand(input_ids.shape, device=input_ids.device, generator=generator)  # [B, L]
    prob = mask_prob[:, None] if mask_prob.dim() == 1 else mask_prob  # [B, 1] or [B, L]
    masked = (uniforms < prob) & (labels != IGNORE_INDEX)  # [B, L]
    noisy_ids = torch.where(masked, torch.full_like(input_ids, mask_token_id), input_ids)
    return noisy_ids, masked


# Elements of logits upcast to float32 at once by the cross-entropy: 2^26 floats = 256 MiB per buffer, and a chunk
# needs about three (the upcast, the log-softmax, its gradient), so under 1 GiB whatever N is. That is 262 rows at
# Gemma 2's V = 256000 and 523 at LLaMA 3's 128256: enough rows per chunk that the per-chunk launches cost little.
CROSS_ENTROPY_CHUNK_ELEMENTS = 2**26


def chunked_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, *, chunk_elements: int = CROSS_ENTROPY_CHUNK_ELEMENTS
) -> torch.Tensor:
    """Per-row float32 cross-entropy of ``logits`` ``[N, V]`` against ``targets`` ``[N]``, returned as ``[N]``.

    Rows are taken ``chunk_elements // V`` at a time. Each chunk is checkpointed, so backward recomputes its
    float32 upcast and log-softmax instead of keeping them: beyond the logits themselves (and their gradient) the
    loss holds one chunk of float32 temporaries, not ``N V`` of them. One chunk (``N V <= chunk_elements``) is
    plain ``F.cross_entropy``.
    """
    rows = max(1, chunk_elements // logits.shape[-1])
    if logits.shape[0] <= rows:
        return F.cross_entropy(logits.float(), targets, reduction="none")  # [N]
    recompute = torch.is_grad_enabled() and logits.requires_grad
    pieces = [
        checkpoint(_float_cross_entropy, chunk, chunk_targets, use_reentrant=False) if recompute
        else _float_cross_entropy(chunk, chunk_targets)
        for chunk, chunk_targets in zip(logits.split(rows), targets.split(rows))  # [rows, V], [rows]
    ]
    return torch.cat(pieces)  # [N]


def _float_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets, reduction="none")


def masked_diffusion_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    masked: torch.Tensor,
    weight: torch.Tensor,
    *,
    normalization: Normalization = "token",
    num_items: torch.Tensor | int | None = None,
    document_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted cross-entropy on masked positions: the MDLM negative ELBO estimate (MDLM Eq. 10).

    ``loss = sum_b w(t_b) * sum_{l masked} CE(logits[b, l], labels[b, l]) / Z`` where

    - ``normalization="token"`` (default): ``Z`` = number of maskable tokens (labels != -100). This is an
      unbiased estimate of the per-token negative ELBO, and matches trl/HF token averaging.
    - ``normalization="sequence"`` (LLaDA SFT): each sequence's sum is divided by its own answer length, then
      averaged over sequences (``Z`` = number of sequences with at least one maskable token).

    ``num_items`` overrides ``Z`` with a count taken over the whole gradient-accumulation window (and devices),
    which makes ``k`` micro-batches of size ``B`` give the same gradient as one batch of size ``k B``.

    Args:
        logits: model outputs on ``x_t`` (no shift: position ``l`` predicts token ``l``), either at every position,
            ``[B, L, V]``, or at the ``N`` masked positions only, ``[N, V]`` in the row-major order of
            ``masked.nonzero()`` (what ``logits[masked]`` and the masked-LM wrappers' ``logits_mask=masked`` give).
        labels: ``[B, L]`` clean targets, ``-100`` where no loss is taken.
        masked: ``[B, L]`` bool, positions that were masked in ``x_t`` (a subset of labels != -100).
        weight: ``[B]`` ELBO weight ``-alpha'(t) / (1 - alpha(t))`` per sequence, or per document of packed rows.
        document_ids: packed rows only, ``[B, L]``: the document of each position (``0 .. D-1``, ``-1`` on padding);
            ``weight`` is then indexed by document, and ``"sequence"`` normalisation divides by each document's
            answer length, so a packed batch gives the loss of the same documents one per row.
    """
    _check_normalization(normalization)
    # Flat indices b * L + l of the masked positions. N depends on the data, so this is a host sync; everything
    # below indexes with it (index_select, not boolean masks), adding none.
    positions = masked.flatten().nonzero().squeeze(1)  # [N]
    if logits.dim() == 3:
        logits = logits.flatten(0, 1).index_select(0, positions.to(logits.device))  # [N, V]
    elif logits.dim() != 2 or logits.shape[0] != positions.shape[0]:
        raise ValueError(
            f"logits must be [B, L, V] or [N, V] with N = {positions.shape[0]} masked positions, "
            f"got shape {tuple(logits.shape)}"
        )
    document = _document_of(positions, masked.shape[1], document_ids)  # [N]
    targets = labels.flatten().index_select(0, positions)  # [N]
    ce = chunked_cross_entropy(logits, targets.to(logits.device))  # [N]
    per_token = ce * weight.float().to(ce.device).index_select(0, document.to(ce.device))  # [N]

    if normalization == "token":
        total = per_token.sum()
    else:
        # Sum over sequences of (sum of the sequence's terms) / (its answer length); a masked position lies in a
        # sequence with at least one label, so the division is safe.
        lengths = _answer_lengths(labels, document_ids, weight.shape[0])  # [B] or [D]
        total = (per_token / lengths.index_select(0, document).to(per_token.device)).sum()
    denom = count_loss_items(labels, normalization, document_ids) if num_items is None else num_items
    # A batch with nothing to predict contributes zero loss (and zero gradient), never NaN.
    denom = torch.as_tensor(denom, device=total.device, dtype=total.dtype).clamp_min(1.0)
    return total / denom


def count_loss_items(labels: torch.Tensor, normalization: Normalization,
                     document_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The normaliser ``Z`` of :func:`masked_diffusion_loss` for one batch (summed over a window by the trainer):
    tokens with a label for ``"token"``, sequences (documents, in packed rows) with at least one for ``"sequence"``."""
    _check_normalization(normalization)
    maskable = labels != IGNORE_INDEX  # [B, L]
    if normalization == "token":
        return maskable.sum()
    if document_ids is None:
        return (maskable.sum(dim=1) > 0).sum()
    return (_answer_lengths(labels, document_ids, labels.numel()) > 0).sum()


def _document_of(positions: torch.Tensor, length: int, document_ids: torch.Tensor | None) -> torch.Tensor:
    """The document of each flat position ``b * L + l``: its row ``b``, or its packed document."""
    if document_ids is None:
        return positions // length
    return document_ids.flatten().index_select(0, positions.to(document_ids.device))


def _answer_lengths(labels: torch.Tensor, document_ids: torch.Tensor | None, num_documents: int) -> torch.Tensor:
    """Tokens with a label per row ``[B]``, or per document ``[num_documents]`` of packed rows (by scatter: no
    host sync)."""
    maskable = labels != IGNORE_INDEX  # [B, L]
    if document_ids is None:
        return maskable.sum(dim=1)
    documents = document_ids.clamp_min(0).flatten()  # padding (-1) has no label, so adds 0 to document 0
    return torch.zeros(num_documents, dtype=torch.long, device=labels.device).index_add_(
        0, documents.to(labels.device), maskable.flatten().long())


def _check_normalization(normalization: str) -> None:
    if normalization not in get_args(Normalization):
        raise ValueError(f"unknown loss normalization {normalization!r}; choose one of {get_args(Normalization)}")
