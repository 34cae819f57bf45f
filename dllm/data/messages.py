"""The OpenAI message format that every dllm dataset is converted to, and its row validation.

A row is ``{"messages": [{"role": ..., "content": ...}, ...]}`` with roles ``system``, ``user`` and
``assistant``, string contents and at least one assistant turn. Optional ``image`` / ``images`` keys are
carried through untouched (for multimodal pipelines); every other row key, and every message key other
than ``role`` and ``content``, is dropped, so that sources share one schema and can be mixed.

Validation never lets a bad row through silently: by default the first bad row raises a
:class:`DataValidationError` naming the source, the row index (0-based, in the source file or split) and
the problem; with ``skip_invalid=True`` bad rows are dropped, counted per problem and logged once per
source through ``logging.getLogger("dllm.data.messages")``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from datasets import Features, List, Value

from dllm.errors import UsageError

logger = logging.getLogger(__name__)

ALLOWED_ROLES: tuple[str, ...] = ("system", "user", "assistant")
# Keys copied from a source row to the output row as they are (multimodal inputs).
PASSTHROUGH_KEYS: tuple[str, ...] = ("image", "images")
# Arrow schema of the ``messages`` column: the same for every source, so sources can be concatenated.
MESSAGES_FEATURES = Features({"messages": List({"role": Value("string"), "content": Value("string")})})

Message = dict[str, str]


class DataValidationError(UsageError):
    """A malformed dataset row (a :class:`~dllm.errors.UsageError`, so a ``ValueError``).

    The message reads ``"<source> row <index>: <detail>"``, e.g.
    ``alpaca_en_demo.json row 17: messages[1].content must be a string, got int``.

    Attributes:
        source: file path or hub id the row came from.
        index: 0-based row index within that source (file or split).
        problem: short category used to count skipped rows, e.g. ``"unknown role"``.
        detail: the human-readable problem description.
    """

    def __init__(self, source: str, index: int, problem: str, detail: str) -> None:
        super().__init__(f"{source} row {index}: {detail}")
        self.source = source
        self.index = index
        self.problem = problem
        self.detail = detail


# A converter turns one raw row into a validated message list or raises DataValidationError.
RowConverter = Callable[[Mapping[str, Any], str, int], list[Message]]


@dataclass(frozen=True)
class RowFormat:
    """A known raw-row format and how to convert it to messages.

    Attributes:
        name: short name used in logs, e.g. ``"alpaca"``.
        columns: the keys the converter reads (other keys are ignored, except pass-through ones).
        required: the keys whose presence identifies this format in a row.
        convert: ``convert(row, source, index) -> messages``; raises :class:`DataValidationError`.
        prepare: optional ``prepare(rows, source) -> rows``, applied to a source's raw rows before conversion
            and pass-through (e.g. image paths made absolute against the data file, images left undecoded).
    """

    name: str
    columns: tuple[str, ...]
    required: frozenset[str]
    convert: RowConverter
    prepare: Callable[[Any, str], Any] | None = None


def _type_name(value: Any) -> str:
    return type(value).__name__


def not_an_object_error(row: Any, *, source: str, index: int) -> DataValidationError:
    """The error for a row that is not an object (a JSON list, string, number...)."""
    return DataValidationError(source, index, "not an object", f"expected an object, got {_type_name(row)}")


def validate_message(message: Any, position: int, *, source: str, index: int) -> Message:
    """Check one message and return it reduced to ``{"role", "content"}``.

    Raises:
        DataValidationError: not an object, unknown/missing role, non-string or empty content.
    """
    where = f"messages[{position}]"
    if not isinstance(message, Mapping):
        raise DataValidationError(
            source, index, "malformed message", f"{where} must be an object, got {_type_name(message)}"
        )
    role = message.get("role")
    if role not in ALLOWED_ROLES:
        raise DataValidationError(
            source, index, "unknown role", f"{where}.role must be one of {', '.join(ALLOWED_ROLES)}, got {role!r}"
        )
    content = message.get("content")
    if not isinstance(content, str):
        raise DataValidationError(
            source, index, "non-string content", f"{where}.content must be a string, got {_type_name(content)}"
        )
    if not content.strip():
        raise DataValidationError(source, index, "empty content", f"{where}.content is empty")
    return {"role": role, "content": content}


def validate_messages(messages: Any, *, source: str, index: int) -> list[Message]:
    """Check a conversation and return it with every message reduced to ``{"role", "content"}``.

    Raises:
        DataValidationError: not a list, empty, a bad message, or no assistant turn.
    """
    if not isinstance(messages, Sequence) or isinstance(messages, str):
        raise DataValidationError(
            source, index, "messages not a list", f"'messages' must be a list, got {_type_name(messages)}"
        )
    if len(messages) == 0:
        raise DataValidationError(source, index, "empty messages", "'messages' is empty")
    checked = [validate_message(m, i, source=source, index=index) for i, m in enumerate(messages)]
    if not any(m["role"] == "assistant" for m in checked):
        roles = ", ".join(m["role"] for m in checked)
        raise DataValidationError(source, index, "no assistant turn", f"no assistant turn (roles: {roles})")
    return checked


def messages_row_to_messages(row: Mapping[str, Any], source: str, index: int) -> list[Message]:
    """Converter for rows already in message format: validate ``row["messages"]``."""
    if "messages" not in row or row["messages"] is None:
        raise DataValidationError(source, index, "missing messages", "'messages' is missing")
    return validate_messages(row["messages"], source=source, index=index)


MESSAGES_FORMAT = RowFormat(
    name="messages",
    columns=("messages",),
    required=frozenset({"messages"}),
    convert=messages_row_to_messages,
)


@dataclass
class ConvertedRows:
    """Result of :func:`convert_rows`.

    Attributes:
        indices: source row index of every kept row, in order.
        messages: the converted conversation of every kept row (aligned with ``indices``).
        problems: number of dropped rows per problem category (empty unless skipping).
        total: number of rows read.
    """

    indices: list[int] = field(default_factory=list)
    messages: list[list[Message]] = field(default_factory=list)
    problems: Counter[str] = field(default_factory=Counter)
    total: int = 0

    @property
    def num_skipped(self) -> int:
        return sum(self.problems.values())


def convert_rows(
    rows: Iterable[Any], convert: RowConverter, *, source: str, skip_invalid: bool = False
) -> ConvertedRows:
    """Convert raw rows to conversations, raising on (or counting and skipping) malformed rows.

    Args:
        rows: raw rows in source order; their position is the index reported in errors.
        convert: the row format's converter.
        source: file path or hub id, used in error and log messages.
        skip_invalid: drop bad rows (counted per problem, logged once) instead of raising.

    Raises:
        DataValidationError: the first bad row when ``skip_invalid`` is False.
        ValueError: every row was invalid (nothing left to train on).
    """
    result = ConvertedRows()
    first_errors: dict[str, DataValidationError] = {}
    for index, row in enumerate(rows):
        result.total += 1
        try:
            if not isinstance(row, Mapping):
                raise not_an_object_error(row, source=source, index=index)
            messages = convert(row, source, index)
        except DataValidationError as err:
            if not skip_invalid:
                raise
            result.problems[err.problem] += 1
            first_errors.setdefault(err.problem, err)
            continue
        result.indices.append(index)
        result.messages.append(messages)
    if result.num_skipped:
        _log_skipped(source, result, first_errors)
    if result.total and not result.indices:
        first = next(iter(first_errors.values()))
        raise UsageError(f"{source}: all {result.total} rows are invalid; first problem: {first}")
    return result


def _log_skipped(source: str, result: ConvertedRows, first_errors: Mapping[str, DataValidationError]) -> None:
    """One warning per source: counts per problem and the first example of each."""
    counts = ", ".join(f"{problem}: {n}" for problem, n in result.problems.most_common())
    examples = "; ".join(str(err) for err in first_errors.values())
    logger.warning(
        "%s: skipped %d of %d rows as invalid (%s). First of each: %s",
        source,
        result.num_skipped,
        result.total,
        counts,
        examples,
    )
