"""Multimodal SFT collation for Qwen3-VL: chat rows with images -> the processor's tensors plus labels.

A row is ``{"messages": [...], "images": [...]}`` (or ``"image": one``). A message's content is a string with
``<image>`` placeholders (the format :func:`dllm.data.load_sft_dataset` produces), or a list of parts
``[{"type": "image"}, {"type": "text", "text": ...}]``. The i-th placeholder of the conversation is the i-th
image; an image is a PIL image, a path (relative paths resolve against ``image_root``), raw bytes, or a
``datasets`` image dict ``{"bytes", "path"}``. Images are decoded here, in the DataLoader worker, not when the
dataset is loaded.

Labels come from tokens, never from character counts: the conversation is rendered with the processor's chat
template, every image placeholder expanded to the image's number of LM tokens, and cut at the assistant spans
by :func:`dllm.data.collator.tokenize_messages`, the text collator's own code (render prefixes, tokenize each
piece). So labels are -100 on every prompt token (system and user turns, template text), every vision token
(``<|vision_start|>``, ``<|image_pad|>``, ``<|vision_end|>``) and padding: only assistant answers train.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from dllm.core.diffusion import IGNORE_INDEX
from dllm.data import images
from dllm.data.collator import tokenize_messages
from dllm.data.multimodal import IMAGE_PLACEHOLDER  # the data layer's: one spelling of the placeholder

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, ProcessorMixin
    from PIL.Image import Image as PILImage

logger = logging.getLogger(__name__)

VISION_TOKENS = ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>")


class ImageTruncationError(ValueError):
    """A row longer than ``max_seq_length`` whose cut would fall inside or before an image's tokens."""


def content_parts(content: Any, where: str) -> list[dict[str, str]]:
    """A message's content as Qwen parts: ``<image>`` in a string becomes ``{"type": "image"}``.

    Raises:
        ValueError: content that is neither a string nor a list of image/text parts (naming ``where``).
    """
    if isinstance(content, str):
        parts: list[dict[str, str]] = []
        for i, text in enumerate(content.split(IMAGE_PLACEHOLDER)):
            if i:
                parts.append({"type": "image"})
            if text:
                parts.append({"type": "text", "text": text})
        return parts
    if isinstance(content, Sequence):
        parts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == "image" or (isinstance(part, Mapping) and kind is None and "image" in part):
                parts.append({"type": "image"})
            elif kind == "text" and isinstance(part.get("text"), str):
                parts.append({"type": "text", "text": part["text"]})
            else:
                raise ValueError(f"{where}: content part {j} must be {{'type': 'image'}} or "
                                 f"{{'type': 'text', 'text': str}}, got {part!r}")
        return parts
    raise ValueError(f"{where}: content must be a string or a list of parts, got {type(content).__name__}")


def load_image(image: Any, where: str, image_root: str | os.PathLike | None = None) -> PILImage:
    """Decode one row image to an RGB ``PIL.Image`` (:func:`dllm.data.images.load_image`, relative paths against
    ``image_root``).

    Raises:
        UsageError: a missing file (an :class:`~dllm.data.images.ImageNotFoundError`, also a FileNotFoundError), a
            file or bytes PIL cannot read, or an unsupported value; the message names ``where``.
    """
    return images.load_image(image, where, files=True, root=image_root)


def row_images(row: Mapping[str, Any]) -> list[Any]:
    """The row's images in placeholder order: ``images`` (a list) or ``image`` (one), else none."""
    images = row.get("images")
    if images is None:
        image = row.get("image")
        return [] if image is None else [image]
    return [images] if not isinstance(images, (list, tuple)) else list(images)


class _ExpandedTemplate:
    """The tokenizer as :func:`tokenize_messages` sees it: renders with the processor's chat template, the i-th
    image's single pad token expanded to its ``counts[i]`` LM tokens (a prefix of the conversation holds the
    first images, so every rendered prefix expands alike and the spans stay prefix-consistent)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, chat_template: str | None, image_token: str,
                 counts: Sequence[int]):
        self.tokenizer, self.image_token, self.counts = tokenizer, image_token, counts
        self.chat_template = chat_template if chat_template is not None else tokenizer.chat_template
        self.name_or_path = tokenizer.name_or_path

    def apply_chat_template(self, messages: list[dict[str, Any]], tokenize: bool = False,
                            add_generation_prompt: bool = False) -> str:
        text = self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)
        pieces = text.split(self.image_token)
        if len(pieces) - 1 > len(self.counts):
            raise ValueError(f"the chat template rendered {len(pieces) - 1} image tokens for {len(self.counts)} images")
        return "".join(p + (self.image_token * self.counts[i] if i < len(pieces) - 1 else "")
                       for i, p in enumerate(pieces))

    def __call__(self, text: str, add_special_tokens: bool = False):
        return self.tokenizer(text, add_special_tokens=add_special_tokens)


@dataclass
class Qwen3VLDataCollator:
    """Collate multimodal chat rows into ``input_ids``, ``attention_mask``, ``mm_token_type_ids``, ``labels``
    ([B, L], right-padded) and, when the batch has images, ``pixel_values`` [patches, C*T*P*P] and
    ``image_grid_thw`` [images, 3].

    Over-length rows keep their first ``max_seq_length`` tokens (the answer is cut from its end). A cut that
    would fall inside or before an image's tokens never happens: the row is dropped and counted in
    ``num_dropped`` with a warning (``on_image_truncation="drop"``) or :class:`ImageTruncationError` is raised
    (``"raise"``). Rows left without an answer token are dropped and counted too; a batch with no row left
    raises. Errors name the batch row (and its ``id`` when it has one).

    Attributes:
        processor: a Qwen3-VL processor (tokenizer with a chat template, image processor).
        max_seq_length: longest row kept, in tokens including image tokens (None: no limit).
        mask_prompt_loss: train only on assistant turns (vision tokens are never trained either way).
        on_image_truncation: ``"drop"`` or ``"raise"`` for rows whose cut would split an image.
        image_root: folder that relative image paths resolve against (None: the working directory).
        pad_to_multiple_of: round the batch length up to a multiple of this.
        num_dropped: rows dropped so far (per process and DataLoader worker).
    """

    processor: Any
    max_seq_length: int | None = None
    mask_prompt_loss: bool = True
    on_image_truncation: Literal["drop", "raise"] = "drop"
    image_root: str | None = None
    pad_to_multiple_of: int | None = None
    num_dropped: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.on_image_truncation not in ("drop", "raise"):
            raise ValueError(f"on_image_truncation must be 'drop' or 'raise', got {self.on_image_truncation!r}")
        tokenizer = self.processor.tokenizer
        self.image_token: str = getattr(self.processor, "image_token", "<|image_pad|>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        video_token = getattr(self.processor, "video_token", "<|video_pad|>")
        self.video_token_id = tokenizer.convert_tokens_to_ids(video_token)
        vision = [tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS]
        self.vision_token_ids = torch.tensor([i for i in vision if i is not None and i != tokenizer.unk_token_id])
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad_id is None:
            raise ValueError("the processor's tokenizer has neither a pad token nor an eos token to pad with")
        self.pad_token_id = int(pad_id)

    # ---- one row ---------------------------------------------------------------------------------
    def _encode_row(self, row: Mapping[str, Any], where: str) -> dict[str, Any]:
        messages = row.get("messages")
        if not messages:
            raise ValueError(f"{where}: empty conversation (no 'messages')"
                             + ("; set remove_unused_columns=False so the columns reach the collator" if not row else ""))
        chat, placeholders = [], 0
        for i, message in enumerate(messages):
            parts = content_parts(message.get("content"), f"{where} messages[{i}]")
            n = sum(part["type"] == "image" for part in parts)
            placeholders += n
            # Text-only turns stay strings, which every chat template renders.
            content = parts if n else "".join(part["text"] for part in parts)
            chat.append({"role": message.get("role"), "content": content})
        images = row_images(row)
        if placeholders != len(images):
            raise ValueError(f"{where}: {placeholders} image placeholders ({IMAGE_PLACEHOLDER}) in the messages but "
                             f"{len(images)} images")
        vision: dict[str, torch.Tensor] = {}
        counts: list[int] = []
        if images:
            pil = [load_image(image, f"{where} image {k}", self.image_root) for k, image in enumerate(images)]
            vision = dict(self.processor.image_processor(images=pil, return_tensors="pt"))
            merge = self.processor.image_processor.merge_size
            counts = (vision["image_grid_thw"].prod(-1) // merge**2).tolist()
        renderer = _ExpandedTemplate(self.processor.tokenizer, getattr(self.processor, "chat_template", None),
                                     self.image_token, counts)
        tokens = tokenize_messages(renderer, chat, self.mask_prompt_loss)
        input_ids = torch.tensor(tokens["input_ids"], dtype=torch.long)  # [L]
        labels = torch.tensor(tokens["labels"], dtype=torch.long)  # [L]
        if int((input_ids == self.image_token_id).sum()) != sum(counts):
            raise ValueError(f"{where}: {int((input_ids == self.image_token_id).sum())} image tokens after "
                             f"tokenization, expected {sum(counts)} (does a message contain {self.image_token!r}?)")
        labels[torch.isin(input_ids, self.vision_token_ids)] = IGNORE_INDEX
        return {"input_ids": input_ids, "labels": labels, **vision}

    def _truncate(self, encoded: dict[str, Any], where: str) -> dict[str, Any] | None:
        """Cut to ``max_seq_length``; None when the cut would reach an image (and the policy is drop)."""
        n = encoded["input_ids"].shape[0]
        if self.max_seq_length is None or n <= self.max_seq_length:
            return encoded
        if torch.isin(encoded["input_ids"][self.max_seq_length:], self.vision_token_ids).any():
            if self.on_image_truncation == "raise":
                raise ImageTruncationError(f"{where}: {n} tokens; cutting to max_seq_length={self.max_seq_length} "
                                           "would cut through an image's tokens")
            return None
        return {**encoded, "input_ids": encoded["input_ids"][: self.max_seq_length],
                "labels": encoded["labels"][: self.max_seq_length]}

    # ---- the batch -------------------------------------------------------------------------------
    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Collate rows into the processor's tensors plus ``labels``."""
        kept, cut_image, no_answer = [], 0, 0
        for position, row in enumerate(rows):
            where = f"batch row {position}" + (f" (id={row['id']!r})" if row.get("id") is not None else "")
            encoded = self._truncate(self._encode_row(row, where), where)
            if encoded is None:
                cut_image += 1
            elif bool((encoded["labels"] == IGNORE_INDEX).all()):
                no_answer += 1
            else:
                kept.append(encoded)
        if cut_image or no_answer:
            self.num_dropped += cut_image + no_answer
            logger.warning("dropped %d of %d rows: %d would be cut through an image, %d have no answer token within "
                           "max_seq_length=%s (%d dropped so far)", cut_image + no_answer, len(rows), cut_image,
                           no_answer, self.max_seq_length, self.num_dropped)
        if not kept:
            raise ValueError(f"all {len(rows)} rows of the batch were dropped (max_seq_length="
                             f"{self.max_seq_length}); raise max_seq_length or filter long rows")
        longest = max(e["input_ids"].shape[0] for e in kept)
        length = longest if not self.pad_to_multiple_of else -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = len(kept)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)  # [B, L]
        attention_mask = torch.zeros((batch, length), dtype=torch.long)  # [B, L]
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)  # [B, L]
        for b, encoded in enumerate(kept):
            n = encoded["input_ids"].shape[0]
            input_ids[b, :n], attention_mask[b, :n], labels[b, :n] = encoded["input_ids"], 1, encoded["labels"]
        # Token types as the processor writes them: 0 text, 1 image, 2 video (read by the multimodal RoPE).
        mm_token_type_ids = (input_ids == self.image_token_id).long() + 2 * (input_ids == self.video_token_id).long()
        out = {"input_ids": input_ids, "attention_mask": attention_mask, "mm_token_type_ids": mm_token_type_ids,
               "labels": labels}
        with_images = [e for e in kept if "pixel_values" in e]
        if with_images:
            out["pixel_values"] = torch.cat([e["pixel_values"] for e in with_images])  # [patches, C*T*P*P]
            out["image_grid_thw"] = torch.cat([e["image_grid_thw"] for e in with_images])  # [images, 3]
        return out


def create_qwen3_vl_collator(processor: ProcessorMixin, mask_prompt_loss: bool = True,
                             max_seq_length: int | None = None, **kwargs) -> Qwen3VLDataCollator:
    """A :class:`Qwen3VLDataCollator`; ``kwargs``: ``on_image_truncation``, ``image_root``, ``pad_to_multiple_of``."""
    return Qwen3VLDataCollator(processor, max_seq_length=max_seq_length, mask_prompt_loss=mask_prompt_loss, **kwargs)
