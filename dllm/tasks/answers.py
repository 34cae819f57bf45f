"""Taking the answer out of a completion: the content of its last ``<answer>...</answer>`` tag when it has one
(the format of d1 and of R1-style post-training prompts), else the whole completion."""

from __future__ import annotations

import re
from typing import Any

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def extract_answer(completion: str) -> str:
    """The last ``<answer>`` tag's content, or ``completion`` itself, stripped."""
    tags = _ANSWER_TAG.findall(completion)
    return (tags[-1] if tags else completion).strip()


def completion_text(completion: Any) -> str:
    """A trl completion as text: a string as is, a conversation (list of ``{"role", "content"}``) as its last
    message's content."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise TypeError(f"a completion is a string or a list of chat messages, got {type(completion).__name__}")
