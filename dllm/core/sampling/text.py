"""Text in, text out: chat-template and left-pad prompts, run the sampler, decode answers."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from dllm.core.sampling.config import DiffusionGenerationConfig
from dllm.core.sampling.loop import GenerationOutput, generate, infill

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def left_pad(sequences: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists into ``input_ids`` and ``attention_mask`` tensors [B, max_len]."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if seq:
            ids[i, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[i, width - len(seq):] = 1
    return ids, mask


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Chat-template a single user turn (with the assistant header) into ids, without double specials."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                   pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Chat-template user turns in one batched call, left-padded: ``input_ids``, ``attention_mask`` [B, P].

    Gives the same ids as ``encode_prompt`` then ``left_pad`` (tested). ``padding_side`` must go through
    ``tokenizer_kwargs``: as a plain keyword it only reaches the chat template and the tokenizer's own side is used.
    A tokenizer without a pad token (LLaMA 3's) cannot pad, so its ids are padded here with ``pad_token_id``.
    """
    conversations = [[{"role": "user", "content": prompt}] for prompt in prompts]
    if tokenizer.pad_token_id is None:
        ids = tokenizer.apply_chat_template(conversations, add_generation_prompt=True, return_dict=True)
        return left_pad(ids["input_ids"], pad_token_id)
    batch = tokenizer.apply_chat_template(conversations, add_generation_prompt=True, padding=True,
                                          tokenizer_kwargs={"padding_side": "left"}, return_dict=True,
                                          return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def answer_ids(output: torch.Tensor, prompt_length: int, eos_token_id: int | None) -> list[list[int]]:
    """The generated ids of each row of ``output`` [B, P + G], cut before the first EOS."""
    rows = []
    for row in output[:, prompt_length:].tolist():
        if eos_token_id is not None and eos_token_id in row:
            row = row[: row.index(eos_token_id)]
        rows.append(row)
    return rows


def with_tokenizer_ids(config: DiffusionGenerationConfig,
                       tokenizer: PreTrainedTokenizerBase) -> DiffusionGenerationConfig:
    """Fill the config's unset mask and EOS ids from the tokenizer, and pad with the tokenizer's pad token."""
    mask_id = config.mask_token_id if config.mask_token_id is not None else tokenizer.mask_token_id
    eos_id = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else config.pad_token_id
    return replace(config, mask_token_id=mask_id, eos_token_id=eos_id, pad_token_id=pad_id)


@dataclass
class TextGenerationOutput:
    """The decoded answers and the sampler's output for each batch of prompts."""

    texts: list[str]
    outputs: list[GenerationOutput]

    @property
    def forward_passes(self) -> int:
        return sum(out.forward_passes for out in self.outputs)


@torch.no_grad()
def generate_text_output(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                         config: DiffusionGenerationConfig, batch_size: int = 256,
                         generator: torch.Generator | None = None) -> TextGenerationOutput:
    """Answer each user prompt (chat template, left padding, :func:`generate`, decode up to the first EOS),
    keeping each batch's :class:`GenerationOutput` (forward passes, history)."""
    config = with_tokenizer_ids(config, tokenizer)
    device = next(model.parameters()).device
    texts, outputs = [], []
    with tqdm(total=len(prompts), unit="prompt", disable=not config.progress) as bar:
        for start in range(0, len(prompts), batch_size):
            ids, mask = encode_prompts(tokenizer, prompts[start:start + batch_size], config.pad_token_id)
            out = generate(model, ids.to(device), config, attention_mask=mask.to(device), generator=generator)
            for row in answer_ids(out.sequences.cpu(), ids.shape[1], config.eos_token_id):
                texts.append(tokenizer.decode(row, skip_special_tokens=True))
            outputs.append(out)
            bar.update(len(ids))
    return TextGenerationOutput(texts, outputs)


def generate_text(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                  config: DiffusionGenerationConfig, batch_size: int = 256,
                  generator: torch.Generator | None = None) -> list[str]:
    """Answer each user prompt; see :func:`generate_text_output` for forward counts and history."""
    return generate_text_output(model, tokenizer, prompts, config, batch_size, generator).texts


@torch.no_grad()
def infill_text(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, texts: list[str],
                config: DiffusionGenerationConfig, batch_size: int = 256,
                generator: torch.Generator | None = None) -> list[str]:
    """Fill the runs of the tokenizer's mask token in each text (no chat template); the rest is kept as given.

    Each mask token is one position to fill. Returns the decoded texts, special tokens included.
    """
    config = with_tokenizer_ids(config, tokenizer)
    device = next(model.parameters()).device
    filled = []
    for start in tqdm(range(0, len(texts), batch_size), unit="batch", disable=not config.progress):
        encoded = tokenizer(texts[start:start + batch_size], add_special_tokens=False)["input_ids"]
        ids, mask = left_pad(encoded, config.pad_token_id)
        out = infill(model, ids.to(device), config, attention_mask=mask.to(device), generator=generator)
        for row, attended in zip(out.sequences.cpu(), mask.bool()):
            filled.append(tokenizer.decode(row[attended].tolist(), skip_special_tokens=False))
    return filled
