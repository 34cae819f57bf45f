"""Alpaca instruction data (``instruction``, ``input``, ``output``) to OpenAI messages.

Used for the hub id ``tatsu-lab/alpaca`` and for any file whose rows have ``instruction`` and ``output``
keys, e.g. ``alpaca_en_demo.json``. Each row becomes::

    [{"role": "user", "content": instruction + ("\\n\\n" + input if input else "")},
     {"role": "assistant", "content": output}]

Other keys (tatsu-lab/alpaca's pre-rendered ``text``) are ignored. Errors carry the row's index in the
source, since conversion runs before any split or subsampling.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dllm.data.messages import DataValidationError, Message, RowFormat, validate_messages

ALPACA_HUB_ID = "tatsu-lab/alpaca"


def _text_field(row: Mapping[str, Any], key: str, *, source: str, index: int, required: bool) -> str:
    """Return ``row[key]`` as a string; a missing optional field (or null) reads as ``""``."""
    if key not in row or row[key] is None:
        if required:
            raise DataValidationError(source, index, "missing field", f"'{key}' is missing")
        return ""
    value = row[key]
    if not isinstance(value, str):
        raise DataValidationError(
            source, index, "non-string field", f"'{key}' must be a string, got {type(value).__name__}"
        )
    if required and not value.strip():
        raise DataValidationError(source, index, "empty field", f"'{key}' is empty")
    return value


def alpaca_to_messages(row: Mapping[str, Any], source: str, index: int) -> list[Message]:
    """Convert one Alpaca row to a user/assistant conversation.

    Args:
        row: a mapping with ``instruction`` and ``output`` strings and an optional ``input`` string.
        source: file path or hub id, for error messages.
        index: the row's 0-based index in its source, for error messages.

    Raises:
        DataValidationError: a missing, non-string or empty ``instruction``/``output``, or a
            non-string ``input``.
    """
    instruction = _text_field(row, "instruction", source=source, index=index, required=True)
    extra_input = _text_field(row, "input", source=source, index=index, required=False)
    output = _text_field(row, "output", source=source, index=index, required=True)
    prompt = f"{instruction}\n\n{extra_input}" if extra_input.strip() else instruction
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return validate_messages(messages, source=source, index=index)


ALPACA_FORMAT = RowFormat(
    name="alpaca",
    columns=("instruction", "input", "output"),
    required=frozenset({"instruction", "output"}),
    convert=alpaca_to_messages,
)
