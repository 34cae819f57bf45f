"""Chat tokenization with prompt masking, and the text SFT collator.

``tokenize_messages`` renders a conversation with the tokenizer's chat template and marks which tokens are
trained: each assistant turn's content plus its end-of-turn tokens (e.g. eos). Everything else (system and
user turns, role headers, bos) gets label -100 when ``mask_prompt_loss`` is on.
``SFTDataCollator`` batches message rows or rows pre-tokenized by ``tokenize_messages`` (e.g. with
``dataset.map``) into right-padded LongTensors.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from dllm.core.diffusion import IGNORE_INDEX
from dllm.data.packing import collate_packed
from dllm.errors import UsageError

logger = logging.getLogger(__name__)


class ChatTemplateError(UsageError):
    """The tokenizer has no chat template, or it cannot be used for prompt masking (it is not prefix-consistent)."""


def _render(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]], generation_prompt: bool) -> str:
    """The chat template's text for ``messages`` (no tokenization)."""
    if tokenizer.chat_template is None:
        raise ChatTemplateError(f"{tokenizer.name_or_path or type(tokenizer).__name__}: the tokenizer has no chat "
                                "template to render conversations with; use a chat checkpoint or set chat_template")
    text = tokenizer.apply_chat_template(
        [dict(m) for m in messages], tokenize=False, add_generation_prompt=generation_prompt
    )
    if not isinstance(text, str):
        raise ChatTemplateError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, not str")
    return text


def assistant_spans(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]]
) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation and find the character spans of its assistant turns.

    For assistant message ``i`` the span starts where ``render(messages[:i], add_generation_prompt=True)``
    ends and stops where ``render(messages[:i + 1])`` ends, so it covers the answer and whatever the
    template closes the turn with (eos, ``<|im_end|>\\n``, ...).

    Returns:
        The full rendered text and the ``(start, end)`` character span of every assistant turn.

    Raises:
        ChatTemplateError: the template is not prefix-consistent (rendering a longer conversation
            changes the text of a shorter one, as templates that rewrite past turns do).
    """
    full = _render(tokenizer, messages, generation_prompt=False)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], generation_prompt=True)
        upto = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        previous_end = spans[-1][1] if spans else 0
        if not (full.startswith(upto) and upto.startswith(prompt) and len(prompt) >= previous_end):
            raise ChatTemplateError(
                f"chat template is not prefix-consistent at messages[{i}]: rendering messages[:{i}] with a "
                f"generation prompt ({prompt[-60:]!r}) or messages[:{i + 1}] ({upto[-60:]!r}) is not a prefix of "
                "the full conversation, so the assistant tokens cannot be located"
            )
        spans.append((len(prompt), len(upto)))
    return full, spans


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def tokenize_messages(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]], mask_prompt_loss: bool = True
) -> dict[str, list[int]]:
    """Tokenize a conversation with the chat template; labels are -100 outside assistant turns.

    With ``mask_prompt_loss`` the rendered text is cut at the assistant spans (see
    :func:`assistant_spans`) and each piece is tokenized on its own (``add_special_tokens=False``; the
    template supplies bos/eos), so prompt tokens are exactly those of the prompt alone, as at inference.
    Every assistant turn (content and end-of-turn tokens) is trained; everything else is -100. Without it
    the whole text is tokenized at once and every token is trained.

    Returns:
        ``{"input_ids": [...], "labels": [...]}``, lists of equal length. Suitable for ``dataset.map``.
    """
    if not mask_prompt_loss:
        input_ids = _encode(tokenizer, _render(tokenizer, messages, generation_prompt=False))
        return {"input_ids": input_ids, "labels": list(input_ids)}
    full, spans = assistant_spans(tokenizer, messages)
    input_ids: list[int] = []
    labels: list[int] = []
    cursor = 0
    for start, end in spans:
        prompt_ids, answer_ids = _encode(tokenizer, full[cursor:start]), _encode(tokenizer, full[start:end])
        input_ids += prompt_ids + answer_ids
        labels += [IGNORE_INDEX] * len(prompt_ids) + answer_ids
        cursor = end
    tail_ids = _encode(tokenizer, full[cursor:])
    return {"input_ids": input_ids + tail_ids, "labels": labels + [IGNORE_INDEX] * len(tail_ids)}


@dataclass
class SFTDataCollator:
    """Batch chat rows into ``input_ids``, ``attention_mask`` and ``labels`` LongTensors of shape [B, L].

    Rows are either message rows (``{"messages": [...]}``, tokenized here with :func:`tokenize_messages`)
    or pre-tokenized rows (``{"input_ids": [...], "labels": [...]}``, e.g. from
    ``dataset.map(lambda r: tokenize_messages(tok, r["messages"]))``), whose labels are used as given.
    Both give identical batches. With ``transformers.Trainer`` and message rows, set
    ``remove_unused_columns=False`` (else the Trainer drops the ``messages`` column before collation),
    or pre-tokenize.

    Over-length policy: a row longer than ``max_seq_length`` keeps its first ``max_seq_length`` tokens,
    i.e. the prompt is kept and the answer is cut from its end. A row with no trained token left (the
    prompt alone fills ``max_seq_length``, or no label at all) is dropped, counted in ``num_dropped`` and
    logged; a batch whose rows are all dropped raises ``ValueError``. ``num_dropped`` counts per process
    (each DataLoader worker has its own copy).

    Padding is on the right up to the longest row, rounded up to ``pad_to_multiple_of`` (which may exceed
    ``max_seq_length`` when that is not a multiple of it):

    * default: ``pad_token_id`` (eos when the tokenizer has no pad token), attention_mask 0, label -100;
    * ``train_on_eos_padding=True`` (LLaDA's SFT recipe): eos tokens with attention_mask 1 and label eos,
      so the model learns to fill the rest of a fixed-length canvas with eos after the answer, which is
      how fixed-length diffusion generation marks where an answer ends. Rows truncated mid-answer still
      get eos with attention 1 but label -100 there, so the model is not taught a false end.

    Attributes:
        tokenizer: tokenizer with a chat template (message rows) and eos/pad tokens.
        max_seq_length: longest row kept, in tokens (None: no limit).
        mask_prompt_loss: train only on assistant turns (message rows only).
        train_on_eos_padding: pad with trained eos tokens instead of ignored pad tokens.
        pad_to_multiple_of: round the batch length up to a multiple of this.
        num_dropped: rows dropped so far for having no trained token within ``max_seq_length``.
    """

    tokenizer: PreTrainedTokenizerBase
    max_seq_length: int | None = None
    mask_prompt_loss: bool = True
    train_on_eos_padding: bool = False
    pad_to_multiple_of: int | None = None
    num_dropped: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        for name in ("max_seq_length", "pad_to_multiple_of"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UsageError(f"{name} must be a positive integer or None, got {value!r}")

    def _tokenize_row(self, row: Mapping[str, Any], position: int) -> dict[str, list[int]]:
        if "input_ids" in row:
            if "labels" not in row:
                raise ValueError(f"batch row {position}: pre-tokenized row has 'input_ids' but no 'labels'")
            input_ids, labels = [int(t) for t in row["input_ids"]], [int(t) for t in row["labels"]]
            if len(input_ids) != len(labels):
                raise ValueError(
                    f"batch row {position}: {len(input_ids)} input_ids but {len(labels)} labels"
                )
            return {"input_ids": input_ids, "labels": labels}
        if "messages" in row:
            return tokenize_messages(self.tokenizer, row["messages"], self.mask_prompt_loss)
        hint = ("; Trainer dropped the dataset's columns: set remove_unused_columns=False so they reach the collator"
                if not row else "")
        raise ValueError(f"batch row {position}: expected 'messages' or 'input_ids'+'labels', got keys {sorted(row)}"
                         + hint)

    def _truncate(self, tokens: dict[str, list[int]]) -> tuple[dict[str, list[int]], bool]:
        """Keep the first ``max_seq_length`` tokens; returns the row and whether it was cut."""
        if self.max_seq_length is None or len(tokens["input_ids"]) <= self.max_seq_length:
            return tokens, False
        return {k: v[: self.max_seq_length] for k, v in tokens.items()}, True

    def _token_id(self, name: str) -> int | None:
        value = getattr(self.tokenizer, name)
        return int(value) if value is not None else None

    def _padding(self) -> tuple[int, int, int]:
        """``(token id, attention value, label)`` of padding positions."""
        eos_id = self._token_id("eos_token_id")
        if self.train_on_eos_padding:
            if eos_id is None:
                raise UsageError("train_on_eos_padding needs a tokenizer with an eos token")
            return eos_id, 1, eos_id
        pad_id = self._token_id("pad_token_id")
        pad_id = eos_id if pad_id is None else pad_id
        if pad_id is None:
            raise UsageError("the tokenizer has neither a pad token nor an eos token to pad with")
        return pad_id, 0, IGNORE_INDEX

    def _batch_length(self, longest: int) -> int:
        multiple = self.pad_to_multiple_of
        return longest if not multiple else -(-longest // multiple) * multiple

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Collate rows into ``{"input_ids", "attention_mask", "labels"}``, each a LongTensor [B, L]; packed rows
        (from :func:`dllm.data.packing.pack_dataset`) into ``{"input_ids", "labels", "position_ids",
        "document_ids"}`` (see :func:`dllm.data.packing.collate_packed`)."""
        if rows and "seq_lengths" in rows[0]:
            if self.train_on_eos_padding:
                raise UsageError("packed rows cannot be padded with trained eos (train_on_eos_padding): a pack "
                                 "holds several answers, not one fixed-length canvas")
            return collate_packed(rows, self._padding()[0],
                                  self._batch_length(max(len(row["input_ids"]) for row in rows)))
        kept: list[tuple[dict[str, list[int]], bool]] = []
        dropped = 0
        for position, row in enumerate(rows):
            tokens, truncated = self._truncate(self._tokenize_row(row, position))
            if all(label == IGNORE_INDEX for label in tokens["labels"]):
                dropped += 1
                continue
            kept.append((tokens, truncated))
        if dropped:
            self.num_dropped += dropped
            logger.warning(
                "dropped %d of %d rows with no answer token within max_seq_length=%s (%d dropped so far)",
                dropped, len(rows), self.max_seq_length, self.num_dropped,
            )
        if not kept:
            raise UsageError(
                f"all {len(rows)} rows of the batch have no answer token within max_seq_length="
                f"{self.max_seq_length}; raise max_seq_length or filter long prompts"
            )
        pad_id, pad_attention, pad_label = self._padding()
        length = self._batch_length(max(len(tokens["input_ids"]) for tokens, _ in kept))
        input_ids = torch.full((len(kept), length), pad_id, dtype=torch.long)  # [B, L]
        attention_mask = torch.full((len(kept), length), pad_attention, dtype=torch.long)  # [B, L]
        labels = torch.full((len(kept), length), pad_label, dtype=torch.long)  # [B, L]
        for b, (tokens, truncated) in enumerate(kept):
            n = len(tokens["input_ids"])
            input_ids[b, :n] = torch.tensor(tokens["input_ids"], dtype=torch.long)
            attention_mask[b, :n] = 1
            labels[b, :n] = torch.tensor(tokens["labels"], dtype=torch.long)
            if truncated:
                labels[b, n:] = IGNORE_INDEX  # no false end-of-answer for a cut answer
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
