"""Reward functions with trl's signature, ``(prompts, completions, **columns) -> list[float | None]``.

``prompts`` and ``completions`` are lists (one entry per completion, a prompt repeated ``num_generations``
times); a completion is a text for a text prompt and ``[{"role": "assistant", "content": text}]`` for a
conversational one; every other dataset column arrives as a keyword list aligned with them, with
``completion_ids`` (the generated ids up to the first EOS). ``None`` means "does not apply" (ignored for that
completion, as trl does). Given by name: a built-in (:data:`BUILTIN_REWARDS`) or ``module:function``.
"""

from __future__ import annotations

import importlib
import numbers
import re
from collections.abc import Callable
from functools import partial
from typing import Any

from dllm.errors import UsageError
from dllm.rl.data import completion_text

RewardFunc = Callable[..., list[float | None]]


def normalize_whitespace(text: str) -> str:
    """Collapse runs of whitespace to one space and strip the ends."""
    return " ".join(text.split())


def exact_match(prompts: list[Any], completions: list[Any], answer: list[Any] | None = None,
                **columns: Any) -> list[float]:
    """1.0 when the completion equals the row's ``answer`` after whitespace normalisation, else 0.0."""
    if answer is None:
        raise UsageError("the exact_match reward needs an 'answer' column in the dataset")
    return [float(normalize_whitespace(completion_text(c)) == normalize_whitespace(str(a)))
            for c, a in zip(completions, answer)]


def format_reward(prompts: list[Any], completions: list[Any], *, pattern: str, max_length: int | None = None,
                  **columns: Any) -> list[float]:
    """1.0 when the whole completion (whitespace-stripped) matches the regular expression ``pattern`` and, with
    ``max_length``, has at most that many characters; else 0.0 (d1's format reward, with a length cap)."""
    compiled = re.compile(pattern, re.DOTALL)
    scores = []
    for completion in completions:
        text = completion_text(completion).strip()
        fits = max_length is None or len(text) <= max_length
        scores.append(float(fits and compiled.fullmatch(text) is not None))
    return scores


BUILTIN_REWARDS = ("exact_match", "format")


def resolve_reward(name: str, format_pattern: str, format_max_length: int | None) -> tuple[str, RewardFunc]:
    """``(display name, function)`` for a built-in name or a ``module:function`` path.

    Raises:
        UsageError: an unknown name, a module that does not import, or a missing / non-callable attribute.
    """
    if name == "exact_match":
        return name, exact_match
    if name == "format":
        try:
            re.compile(format_pattern)
        except re.error as err:
            raise UsageError(f"--format_pattern {format_pattern!r} is not a regular expression: {err}") from err
        return name, partial(format_reward, pattern=format_pattern, max_length=format_max_length)
    module_name, sep, attribute = name.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"--reward_funcs {name!r}: expected a built-in ({', '.join(BUILTIN_REWARDS)}) or "
                         "module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UsageError(f"--reward_funcs {name!r}: cannot import {module_name!r} ({err})") from err
    function = getattr(module, attribute, None)
    if not callable(function):
        raise UsageError(f"--reward_funcs {name!r}: {module_name} has no function {attribute!r}")
    return attribute, function


def call_reward(name: str, function: RewardFunc, prompts: list[Any], completions: list[Any],
                columns: dict[str, list[Any]]) -> list[float]:
    """Call one reward function; ``None`` becomes NaN (ignored in the sums).

    Raises:
        UsageError: the function returned something other than one number (or None) per completion.
    """
    values = function(prompts=prompts, completions=completions, **columns)
    if not isinstance(values, (list, tuple)) or len(values) != len(completions):
        raise UsageError(f"reward function {name!r} must return a list of {len(completions)} floats (one per "
                         f"completion), got {type(values).__name__} of length {len(values) if hasattr(values, '__len__') else '?'}")
    out = []
    for value in values:
        if value is not None and not isinstance(value, numbers.Real):
            raise UsageError(f"reward function {name!r} returned {value!r}; expected a float or None")
        out.append(float("nan") if value is None else float(value))
    return out
