"""Packing: several tokenised conversations in one row of ``max_seq_length``, each attending only to itself.

Chat SFT rows are short next to ``max_seq_length`` (Alpaca's median is ~100 tokens), so right-padded batches are
mostly padding. :func:`pack_dataset` groups tokenised rows (``{"input_ids", "labels"}``, as
:func:`dllm.data.collator.tokenize_messages` gives them) into packs with best-fit decreasing, once, with
``datasets.map``; each pack keeps its documents' lengths in ``seq_lengths``. :func:`collate_packed` turns packs into
a batch with, beside ``input_ids`` and ``labels``:

- ``position_ids`` ``[B, L]`` that restart at 0 for every document (and for the padding after the last one);
- ``document_ids`` ``[B, L]``: the batch's documents numbered ``0 .. D-1`` in row-major order, ``-1`` on padding.

The masked-LM wrappers turn ``document_ids`` into block-diagonal bidirectional attention and the trainer draws one
diffusion time (and ELBO weight) per document, so a packed document is trained exactly as it would be alone.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from datasets import Dataset

from dllm.core.diffusion import IGNORE_INDEX

logger = logging.getLogger(__name__)

PACKED_COLUMNS = ("input_ids", "labels", "seq_lengths")


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of at most ``capacity`` tokens: indices into ``lengths``, longest first, each into the fullest bin that
    still has room (best-fit decreasing: within 11/9 of the fewest bins). Every length must be <= ``capacity``."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin index), sorted
    for i in order:
        slot = bisect.bisect_left(free, (lengths[i], -1))  # the tightest bin with room >= lengths[i]
        if slot == len(free):
            bins.append([i])
            room, index = capacity - lengths[i], len(bins) - 1
        else:
            room, index = free.pop(slot)
            bins[index].append(i)
            room -= lengths[i]
        bisect.insort(free, (room, index))
    return bins


def _pack_batch(rows: Mapping[str, list], capacity: int) -> dict[str, list]:
    """``datasets.map(batched=True)`` function: one batch of tokenised rows to packs."""
    bins = best_fit_decreasing([len(ids) for ids in rows["input_ids"]], capacity)
    packed: dict[str, list] = {name: [] for name in PACKED_COLUMNS}
    for members in bins:
        packed["input_ids"].append([t for i in members for t in rows["input_ids"][i]])
        packed["labels"].append([t for i in members for t in rows["labels"][i]])
        packed["seq_lengths"].append([len(rows["input_ids"][i]) for i in members])
    return packed


def _truncate(row: Mapping[str, list], max_seq_length: int) -> dict[str, list]:
    return {"input_ids": row["input_ids"][:max_seq_length], "labels": row["labels"][:max_seq_length]}


def _has_answer(row: Mapping[str, list]) -> bool:
    return any(label != IGNORE_INDEX for label in row["labels"])


def pack_dataset(dataset: Dataset, max_seq_length: int, *, num_proc: int | None = None,
                 rows_per_group: int = 1000, name: str = "train") -> Dataset:
    """Pack tokenised rows into rows of at most ``max_seq_length`` tokens.

    Rows are cut to their first ``max_seq_length`` tokens (as the collator cuts unpacked rows), rows left without
    an answer token are dropped (counted and logged), and every ``rows_per_group`` consecutive rows are packed
    together with :func:`best_fit_decreasing` (groups keep the dataset's order coarse and ``map`` parallel).
    """
    for column in ("input_ids", "labels"):
        if column not in dataset.column_names:
            raise ValueError(f"packing needs tokenised rows with {column!r}; got columns {dataset.column_names}")
    rows = dataset.select_columns(["input_ids", "labels"])
    rows = rows.map(_truncate, fn_kwargs={"max_seq_length": max_seq_length}, num_proc=num_proc,
                    desc=f"truncating {name} to {max_seq_length}")
    kept = rows.filter(_has_answer, num_proc=num_proc, desc=f"dropping {name} rows without an answer")
    if len(kept) < len(rows):
        logger.warning("packing %s: dropped %d of %d rows with no answer token within max_seq_length=%d",
                       name, len(rows) - len(kept), len(rows), max_seq_length)
    if not len(kept):
        raise ValueError(f"packing {name}: no row has an answer token within max_seq_length={max_seq_length}")
    packed = kept.map(_pack_batch, batched=True, batch_size=rows_per_group, fn_kwargs={"capacity": max_seq_length},
                      remove_columns=kept.column_names, num_proc=num_proc, desc=f"packing {name}")
    tokens = sum(sum(lengths) for lengths in packed["seq_lengths"])
    logger.info("packing %s: %d conversations in %d rows of %d tokens (%.1f%% filled)", name, len(kept),
                len(packed), max_seq_length, 100.0 * tokens / (len(packed) * max_seq_length))
    return packed


def collate_packed(rows: Sequence[Mapping[str, Any]], pad_id: int, length: int) -> dict[str, torch.Tensor]:
    """Packs (rows with ``seq_lengths``) to ``input_ids``, ``labels``, ``position_ids`` and ``document_ids``, each
    ``[B, length]`` (``length`` >= the longest pack; the rest is padding: ``pad_id``, label -100, document -1)."""
    batch = len(rows)
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)  # [B, L]
    labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)  # [B, L]
    position_ids = torch.zeros((batch, length), dtype=torch.long)  # [B, L]
    document_ids = torch.full((batch, length), -1, dtype=torch.long)  # [B, L]
    document = 0
    for b, row in enumerate(rows):
        n = len(row["input_ids"])
        if len(row["labels"]) != n or sum(row["seq_lengths"]) != n:
            raise ValueError(f"batch row {b}: packed row of {n} input_ids has {len(row['labels'])} labels and "
                             f"seq_lengths summing to {sum(row['seq_lengths'])}")
        input_ids[b, :n] = torch.tensor(row["input_ids"], dtype=torch.long)
        labels[b, :n] = torch.tensor(row["labels"], dtype=torch.long)
        start = 0
        for size in row["seq_lengths"]:
            position_ids[b, start:start + size] = torch.arange(size)
            document_ids[b, start:start + size] = document
            start, document = start + size, document + 1
        position_ids[b, n:] = torch.arange(length - n)  # padding restarts too: a document of its own
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "document_ids": document_ids}


# ---------------------------------------------------------------------------------------------------------
# Raw text (dllm pt): every token is trained, documents end with EOS


def split_document(ids: Sequence[int], capacity: int) -> list[list[int]]:
    """``ids`` in consecutive pieces of at most ``capacity`` tokens: an over-long document is split, never cut."""
    return [list(ids[start:start + capacity]) for start in range(0, len(ids), capacity)]


def pack_documents_batch(rows: Mapping[str, list], capacity: int) -> dict[str, list]:
    """``datasets.map(batched=True)`` function for document packing: tokenised documents (``input_ids``, every token
    trained) split into pieces of at most ``capacity`` tokens (:func:`split_document`), the pieces packed with
    :func:`best_fit_decreasing` into rows that keep each piece's length in ``seq_lengths`` (each attends only to
    itself: :func:`collate_packed`)."""
    pieces = [piece for ids in rows["input_ids"] for piece in split_document(ids, capacity)]
    packed: dict[str, list] = {name: [] for name in PACKED_COLUMNS}
    for members in best_fit_decreasing([len(piece) for piece in pieces], capacity):
        ids = [t for i in members for t in pieces[i]]
        packed["input_ids"].append(ids)
        packed["labels"].append(list(ids))
        packed["seq_lengths"].append([len(pieces[i]) for i in members])
    return packed


def concat_batch(rows: Mapping[str, list], capacity: int) -> dict[str, list]:
    """``datasets.map(batched=True)`` function for concatenation (MDLM's OpenWebText and LLaDA's data): the batch's
    documents (each ending with EOS) joined in order and wrapped into rows of ``capacity`` tokens, which attend
    across document boundaries; the batch's last, shorter row is kept (padded at collation), so no token is lost."""
    stream = [t for ids in rows["input_ids"] for t in ids]
    wrapped = split_document(stream, capacity)
    return {"input_ids": wrapped, "labels": [list(ids) for ids in wrapped]}


def split_lengths(lengths: Sequence[int], cut: int) -> tuple[list[int], list[int]]:
    """The document lengths of a pack cut after ``cut`` tokens: those of the first part and of the rest (the document
    the cut falls in is split between them)."""
    left: list[int] = []
    for index, size in enumerate(lengths):
        if cut <= 0:
            return left, list(lengths[index:])
        if size > cut:
            return left + [cut], [size - cut, *lengths[index + 1:]]
        left.append(size)
        cut -= size
    return left, []
