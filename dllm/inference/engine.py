"""Prompts to token ids, one sampler call per batch, and what each prompt gets back.

Shared by ``dllm sample`` (batches of a prompt file) and ``dllm serve`` (batches of concurrent requests): both
turn prompts into ids (:func:`encode_chats` through the chat template, :func:`encode_texts` as raw text), and
:meth:`Engine.run` answers one left-padded batch with one :func:`~dllm.core.sampling.generate` call. At
temperature 0 an answer does not depend on the batch it was run in (the sampler's batch invariance).

Conversations with images (:class:`VisionPrompt`, for a vision-language checkpoint) are turned into the sampler's
inputs when their batch runs (:func:`sampler_inputs`: the checkpoint's processor and its family's image inputs,
``dllm.auto.FAMILIES``); ``dllm chat`` and ``dllm playground`` use the same function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from dllm.errors import UsageError
from dllm.core.models.encoder import is_encoder_config, position_limit
from dllm.core.sampling import DiffusionGenerationConfig, answer_ids, block_bounds, generate, left_pad
from dllm.core.sampling.loop import BlockCallback

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class VisionPrompt:
    """A conversation with images for a vision-language checkpoint: chat messages whose content is a string or a
    list of parts, ``{"type": "image", "image": PIL image}`` and ``{"type": "text", "text": ...}`` (Qwen's chat
    format). The checkpoint's processor makes its token ids when its batch runs."""

    messages: list[dict[str, Any]]
    prepared: Any = field(default=None, repr=False, compare=False)
    """The conversation through the processor (the family's ``encode_images``), kept by :func:`prepare_vision` when
    :meth:`Engine.prompt_length` counts its tokens, so that no batch it joins, and none of its ``n`` answers,
    processes it again."""


Prompts = list[list[int]] | list[VisionPrompt]
"""A batch: token ids, or conversations with images (never both in one batch)."""


def sampler_inputs(model: Any, prompts: Prompts, gen_length: int, pad_token_id: int,
                   processor: Any = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any] | None]:
    """``(prompt_ids [B, P], attention_mask [B, P], model_kwargs)`` for :func:`generate`, on the model's device:
    token ids left-padded with ``pad_token_id`` (no ``model_kwargs``), or :class:`VisionPrompt` conversations
    through ``processor`` and the model family's image inputs (pixel values, multimodal positions).

    Raises:
        ValueError: a batch mixing the two kinds, vision prompts for a model whose family takes no images, or
            vision prompts without a processor.
    """
    vision = [isinstance(prompt, VisionPrompt) for prompt in prompts]
    if not any(vision):
        ids, mask = left_pad(prompts, pad_token_id)  # [B, P]
        device = next(model.parameters()).device
        return ids.to(device), mask.to(device), None
    if not all(vision):
        raise ValueError("a batch mixes conversations with images and token ids")
    family = _image_family(model)
    if processor is None:
        raise ValueError("conversations with images need the checkpoint's processor")
    rows = [prompt.messages if prompt.prepared is None else prompt.prepared for prompt in prompts]
    return family.image_inputs(model, processor, rows, gen_length)


def _image_family(model: Any) -> Any:
    """The family (``dllm.auto.FAMILIES``) of a model that answers questions about images.

    Raises:
        ValueError: its family takes no images.
    """
    from dllm.auto import family_for_model_type

    family = family_for_model_type(model.config.model_type)
    if family is None or family.image_inputs is None:
        raise ValueError(f"model_type {model.config.model_type!r} takes no images")
    return family


def prepare_vision(model: Any, processor: Any, prompt: VisionPrompt) -> VisionPrompt:
    """``prompt`` with its conversation through ``processor`` (once: a prepared prompt is returned as it is)."""
    if prompt.prepared is None:
        encode = _image_family(model).encode_images
        prompt.prepared = encode(processor, prompt.messages) if encode else None
    return prompt


def encode_chats(tokenizer: PreTrainedTokenizerBase, conversations: list[list[dict[str, str]]]) -> list[list[int]]:
    """Token ids of each conversation through the chat template, with the assistant header appended.

    Raises:
        ValueError: the tokenizer has no chat template.
    """
    if tokenizer.chat_template is None:
        raise ValueError("the checkpoint's tokenizer has no chat template (raw text: dllm serve's /v1/completions)")
    encoded = tokenizer.apply_chat_template(conversations, add_generation_prompt=True, return_dict=True)
    return [list(ids) for ids in encoded["input_ids"]]


def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Token ids of raw texts (no chat template; the tokenizer's own special tokens, such as BOS, are added)."""
    return [list(ids) for ids in tokenizer(texts)["input_ids"]]


class ContextLengthError(UsageError):
    """A prompt and answer that do not fit the model's positions (``max_position_embeddings``); ``where`` names the
    prompt (a request field)."""

    def __init__(self, prompt_tokens: int, gen_length: int, limit: int, where: str = "the prompt"):
        what = (f"{where}: at least {prompt_tokens} tokens (judged by its characters)" if not gen_length
                else f"{where}: {prompt_tokens} tokens plus gen_length {gen_length}")
        super().__init__(f"{what} exceed the model's {limit} positions (max_position_embeddings)")
        self.prompt_tokens, self.gen_length, self.limit, self.where = prompt_tokens, gen_length, limit, where


def model_positions(model_config: Any) -> int | None:
    """How many positions the model has (``max_position_embeddings``, in the text config of a vision-language
    model; less RoBERTa's padding offset for an encoder, :func:`~dllm.core.models.encoder.position_limit`), or
    ``None`` when its config does not say."""
    if model_config is not None and is_encoder_config(model_config):
        return position_limit(model_config)
    limit = getattr(model_config, "max_position_embeddings", None)
    if limit is None:
        limit = getattr(getattr(model_config, "text_config", None), "max_position_embeddings", None)
    return limit


def check_fits(model_config: Any, prompt_tokens: int, gen_length: int, where: str = "the prompt") -> None:
    """Refuse a prompt of ``prompt_tokens`` plus ``gen_length`` answer positions beyond the model's positions,
    before any work: past them a model's answers are garbage, and the work grows with the square of the length.

    Raises:
        ContextLengthError: they do not fit.
    """
    limit = model_positions(model_config)
    if limit is not None and prompt_tokens + gen_length > limit:
        raise ContextLengthError(prompt_tokens, gen_length, limit, where)


def longest_token_chars(tokenizer: PreTrainedTokenizerBase) -> int:
    """The most characters of text one token can stand for: its longest vocabulary entry (a byte-level BPE entry
    has one character per byte, a SentencePiece one per character; added tokens are their text)."""
    return max(len(token) for token in tokenizer.get_vocab())


def check_prompt_chars(chars: int, most_per_token: int, positions: int | None, where: str) -> None:
    """Refuse, before tokenising it, a prompt of ``chars`` characters that cannot fit ``positions`` tokens of at most
    ``most_per_token`` characters each (twice that, for normalizers that compose characters): tokenising megabytes
    takes seconds that a bound on the answer does not save.

    Raises:
        ContextLengthError: more characters than ``positions`` such tokens can hold.
    """
    if positions is not None and chars > 2 * most_per_token * positions:
        raise ContextLengthError(chars // (2 * most_per_token), 0, positions, where)


def check_text(text: str, where: str) -> str:
    """``text``, if it is valid Unicode: JSON's ``"\\ud800"`` decodes to a lone surrogate, which no tokenizer takes.

    Raises:
        UsageError: naming ``where`` and the first lone surrogate.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise UsageError(f"{where}: not valid Unicode (a lone surrogate {text[err.start]!r} at character "
                         f"{err.start}); send UTF-8 text") from err
    return text


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string (excluded), and whether one occurred."""
    cuts = [text.find(s) for s in stop if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


@dataclass
class Completion:
    """One prompt's answer: ``ids`` before the first EOS, whether EOS ended it (else the answer filled
    ``gen_length``), the forward passes of the sampler call it came from (shared by its batch), and with
    history, ``blocks``: the answer ids (cut at EOS) as they stood after each finished block."""

    ids: list[int]
    finished: bool
    forward_passes: int
    blocks: list[list[int]] | None = None


def _block_snapshots(history: list, rows: int, prompt_length: int,
                     config: DiffusionGenerationConfig) -> list[list[list[int]]]:
    """Per row, the answer ids after each block whose steps ran (a block's last step finishes it)."""
    ends = {index: b for index, (_, b) in enumerate(block_bounds(prompt_length, prompt_length + config.gen_length,
                                                                 config.block_size))}
    last_step = {record.block: record for record in history}  # later steps of a block overwrite earlier ones
    per_block = [answer_ids(record.tokens[:, :ends[block]], prompt_length, config.eos_token_id)
                 for block, record in sorted(last_step.items())]  # [blocks][B][ids]
    return [[snapshot[row] for snapshot in per_block] for row in range(rows)]


BlockIds = Callable[[int, list[list[int]]], None]
"""``on_block(index, rows)`` of :meth:`Engine.run`: after block ``index``, each row's answer ids so far (up to the
block's end, cut before EOS). Each is a prefix of that row's final answer (committed tokens never change)."""


def _answers_after_block(on_block: BlockIds, prompt_length: int, config: DiffusionGenerationConfig) -> BlockCallback:
    """The sampler's ``on_block`` that hands ``on_block`` the answers' ids after each block."""
    ends = [b for _, b in block_bounds(prompt_length, prompt_length + config.gen_length, config.block_size)]

    def after_block(index: int, x: torch.Tensor, _steps: list) -> None:
        on_block(index, answer_ids(x[:, :ends[index]].cpu(), prompt_length, config.eos_token_id))

    return after_block


class Engine:
    """A model and tokenizer with the checkpoint's sampler settings (and, for a vision-language checkpoint, its
    processor, which :class:`VisionPrompt` batches need); counts its sampler calls."""

    def __init__(self, model: Any, tokenizer: Any, config: DiffusionGenerationConfig, processor: Any = None):
        self.model, self.tokenizer, self.config, self.processor = model, tokenizer, config, processor
        self.device = next(model.parameters()).device
        self.sampler_calls = 0

    def prompt_length(self, prompt: list[int] | VisionPrompt) -> int:
        """Tokens in a prompt (a vision prompt's image placeholders included: it is processed here, once, and keeps
        what it was processed into for the batch it joins, see :attr:`VisionPrompt.prepared`)."""
        if not isinstance(prompt, VisionPrompt):
            return len(prompt)
        if self.processor is None:
            raise ValueError("conversations with images need the checkpoint's processor")
        return len(prepare_vision(self.model, self.processor, prompt).prepared)

    def run(self, prompts: Prompts, config: DiffusionGenerationConfig | None = None,
            history: bool = False, on_block: BlockIds | None = None, seed: int | None = None) -> list[Completion]:
        """Answer the prompts (token ids, or :class:`VisionPrompt` conversations) in one sampler call (``history``:
        also keep per-block snapshots; ``on_block(index, rows)``: called from the sampler's thread after each
        finished block, see :data:`BlockIds`; ``seed``: the sampler's random draws come from a generator seeded
        so)."""
        config = config or self.config
        if (config.record_history, config.progress) != (history, False):  # a replace checks every field again
            config = replace(config, record_history=history, progress=False)
        ids, mask, kwargs = sampler_inputs(self.model, prompts, config.gen_length, config.pad_token_id,
                                           self.processor)  # [B, P]
        callback = None if on_block is None else _answers_after_block(on_block, ids.shape[1], config)
        generator = None if seed is None else torch.Generator(self.device).manual_seed(seed)
        out = generate(self.model, ids, config, attention_mask=mask, generator=generator, on_block=callback,
                       model_kwargs=kwargs)
        self.sampler_calls += 1
        sequences = out.sequences.cpu()  # [B, P + G]
        answers = answer_ids(sequences, ids.shape[1], config.eos_token_id)
        finished = [config.eos_token_id is not None and bool((row == config.eos_token_id).any())
                    for row in sequences[:, ids.shape[1]:]]
        blocks = (_block_snapshots(out.history, len(prompts), ids.shape[1], config) if history
                  else [None] * len(prompts))
        return [Completion(answer, done, out.forward_passes, snapshots)
                for answer, done, snapshots in zip(answers, finished, blocks)]

    def decode(self, ids: list[int]) -> str:
        """Text of answer ids, special tokens dropped."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class TextStream:
    """The text of one answer sent as it grows: :meth:`update` after each finished block, :meth:`finish` with
    the final text. Nothing sent is ever taken back: text is held back while a stop string could still begin in
    it (the last ``len(longest stop) - 1`` characters) or while it ends in an unfinished character (U+FFFD)."""

    def __init__(self, decode: Callable[[list[int]], str], stop: list[str]):
        self.decode, self.stop, self.sent = decode, stop, ""
        self.hold = max((len(s) for s in stop if s), default=1) - 1

    def update(self, ids: list[int]) -> str:
        """The new text to send, given the answer's ids so far (a prefix of the final answer)."""
        text = self.decode(ids)
        cut, _ = cut_at_stop(text, self.stop)
        safe = cut[: max(0, len(text) - self.hold)].rstrip("\ufffd")  # a stop found here is whole: positions
        return self._advance(safe)  # before len - hold are only cut by stops starting there, which fit in text

    def finish(self, text: str) -> str:
        """The rest of the final ``text`` (already cut at a stop string)."""
        return self._advance(text)

    def _advance(self, text: str) -> str:
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        piece, self.sent = text[len(self.sent):], text
        return piece
