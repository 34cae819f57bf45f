"""Prompt and preference datasets in trl's formats, and their tokenisation for a diffusion LM.

Formats (trl's "standard" and "conversational" forms):

* prompt rows (``dllm grpo``): ``prompt`` is a text or a list of messages ``[{"role", "content"}, ...]``;
  every other column (``answer``, ...) is passed to the reward functions.
* preference rows (``dllm dpo``): ``prompt`` as above, ``chosen`` and ``rejected`` a text each (or a list holding
  one assistant message).

A text prompt is asked as one user turn of the chat template, as ``dllm sample`` asks it (trl passes a standard
prompt to the model untemplated; a dllm checkpoint was trained through the chat template, so this library
renders it). A completion is the tokens SFT trained for an assistant turn with that text: its content and
the template's end-of-turn tokens (:func:`dllm.data.collator.tokenize_messages`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from dllm.data.collator import IGNORE_INDEX, tokenize_messages
from dllm.data.loading import read_data_file
from dllm.data.spec import parse_dataset_spec
from dllm.errors import UsageError

Prompt = str | list[dict[str, str]]


def load_rows(spec: str, required: Sequence[str], *, seed: int = 42) -> Dataset:
    """The ``train`` rows of a dataset spec (``path[train:N]+...``, local files or hub ids), checked to have the
    ``required`` columns with a text or message-list ``prompt``.

    Raises:
        UsageError: a bad spec, an unreadable file, a missing column or a malformed row (naming source and row).
    """
    parts = []
    for source in parse_dataset_spec(spec):
        path = Path(source.name).expanduser()
        rows = read_data_file(path) if path.exists() or path.suffix else _load_hub(source.name)
        missing = [c for c in required if c not in rows.column_names]
        if missing:
            raise UsageError(f"{source.name}: no column {', '.join(map(repr, missing))}; expected {list(required)} "
                             f"(trl's format), found {rows.column_names}")
        if source.train is not None:
            if source.train > len(rows):
                raise UsageError(f"{source.name} train: asked for {source.train} rows but only {len(rows)} exist")
            rows = rows.shuffle(seed=seed).select(range(source.train))
        for index, row in enumerate(rows):
            check_prompt(row["prompt"], where=f"{source.name} row {index}")
        parts.append(rows)
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _load_hub(name: str) -> Dataset:
    try:
        return datasets.load_dataset(name, split="train")
    except Exception as err:  # datasets raises many types for a missing or unreachable dataset
        raise UsageError(f"{name}: neither a local file nor a loadable dataset ({type(err).__name__}: {err})") from err


def check_prompt(prompt: Any, where: str) -> None:
    """A prompt is a non-empty text or a list of ``{"role", "content"}`` messages.

    Raises:
        UsageError: naming ``where`` and what was found.
    """
    if isinstance(prompt, str) and prompt:
        return
    if isinstance(prompt, list) and prompt and all(
            isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in prompt):
        return
    raise UsageError(f"{where}: 'prompt' must be a non-empty text or a list of {{'role', 'content'}} messages, "
                     f"got {prompt!r:.80}")


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    """A text prompt as one user turn; a message list as given."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]


def completion_text(completion: Any) -> str:
    """The text of a completion: a text, or the content of a list of (assistant) messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and all(isinstance(m, Mapping) and "content" in m for m in completion):
        return "".join(str(m["content"]) for m in completion)
    raise UsageError(f"a completion must be a text or a list of messages, got {completion!r:.80}")


def as_completion(prompt: Prompt, text: str) -> Prompt:
    """``text`` in the prompt's format (trl's convention for what reward functions receive)."""
    return text if isinstance(prompt, str) else [{"role": "assistant", "content": text}]


def encode_prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> list[int]:
    """The prompt's ids through the chat template, ending with the assistant header (the generation prompt)."""
    text = tokenizer.apply_chat_template(as_messages(prompt), tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_pair(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, answer: Any,
                canvas_length: int | None = None) -> tuple[list[int], list[int]]:
    """``(prompt_ids, completion_ids)`` of an answer, split where SFT's labels of its (last) turn begin; with
    ``canvas_length`` the completion is padded with EOS to that many tokens, as the demo and LLaDA's SFT train
    (longer completions are refused rather than cut)."""
    row = tokenize_messages(tokenizer, [*as_messages(prompt), {"role": "assistant", "content": completion_text(answer)}])
    labels = row["labels"]
    start = max(i for i in range(len(labels)) if labels[i] != IGNORE_INDEX and (i == 0 or labels[i - 1] == IGNORE_INDEX))
    end = start
    while end < len(labels) and labels[end] != IGNORE_INDEX:
        end += 1
    prompt_ids, completion = row["input_ids"][:start], row["input_ids"][start:end]
    if canvas_length is not None:
        if len(completion) > canvas_length:
            raise UsageError(f"completion {completion_text(answer)!r:.60} is {len(completion)} tokens, longer than "
                             f"max_completion_length={canvas_length}")
        completion = completion + [tokenizer.eos_token_id] * (canvas_length - len(completion))
    return prompt_ids, completion
