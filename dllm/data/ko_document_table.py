"""``jp1924/KoDocumentTableVisualSFT``: Korean document-table images with question/answer conversations.

Columns: ``id``, ``image`` (one image), ``metadata``, ``conversations`` = ``[{"role", "content"}, ...]`` where
``content`` is a JSON string of parts, e.g. ``'[{"type": "image"}, {"type": "text", "text": "..."}]'``. Content
that is already a list of parts, or plain text, is accepted too. Each conversation becomes OpenAI messages whose
image parts are ``<image>`` placeholders (the format of :mod:`dllm.data.multimodal`); when the row has an image
but no image part, the placeholder is put at the start of the first user turn. The image is passed through
undecoded; the collator decodes it. Local parquet copies are recognised from their columns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from datasets import Dataset

from dllm.data.messages import DataValidationError, Message, RowFormat, validate_messages
from dllm.data.multimodal import IMAGE_PLACEHOLDER, count_placeholders, undecoded_images

KO_DOCUMENT_TABLE_HUB_ID = "jp1924/KoDocumentTableVisualSFT"
ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}


def _content_text(content: Any, where: str, source: str, index: int) -> Any:
    """One message's content as a string with ``<image>`` placeholders (non-convertible content returned as is,
    for :func:`validate_messages` to report)."""
    if isinstance(content, str):
        stripped = content.strip()
        if stripped.startswith("["):
            try:
                content = json.loads(stripped)
            except json.JSONDecodeError:
                return content  # plain text that happens to start with "["
        else:
            return content
    if isinstance(content, Sequence) and not isinstance(content, str):
        pieces = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == "image":
                pieces.append(IMAGE_PLACEHOLDER)
            elif kind == "text" and isinstance(part.get("text"), str):
                pieces.append(part["text"])
            else:
                raise DataValidationError(source, index, "malformed content",
                                          f"{where}.content[{j}] must be an image or text part, got {part!r}")
        return "".join(pieces)
    return content


def ko_document_table_to_messages(row: Mapping[str, Any], source: str, index: int) -> list[Message]:
    """Converter for KoDocumentTableVisualSFT rows (see the module docstring).

    Raises:
        DataValidationError: missing or malformed conversations, or more image parts than images.
    """
    conversations = row.get("conversations")
    if isinstance(conversations, str):
        try:
            conversations = json.loads(conversations)
        except json.JSONDecodeError as err:
            raise DataValidationError(source, index, "malformed conversations",
                                      f"'conversations' is not JSON ({err.msg})") from err
    if not isinstance(conversations, Sequence) or isinstance(conversations, str):
        raise DataValidationError(source, index, "missing messages",
                                  f"'conversations' must be a list, got {type(conversations).__name__}")
    messages = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, Mapping):
            messages.append(turn)  # validate_messages names the problem
            continue
        role = turn.get("role")
        content = _content_text(turn.get("content"), f"conversations[{i}]", source, index)
        messages.append({"role": ROLE_ALIASES.get(role, role), "content": content})
    messages = validate_messages(messages, source=source, index=index)
    images = 0 if row.get("image") is None else 1
    placeholders = count_placeholders(messages)
    if placeholders == 0 and images:
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if first_user is None:
            raise DataValidationError(source, index, "image count", "an image but no user turn to put it in")
        first_user["content"] = IMAGE_PLACEHOLDER + first_user["content"]
    elif placeholders != images:
        raise DataValidationError(source, index, "image count",
                                  f"{placeholders} image parts but {images} images")
    return messages


def _prepare(rows: Dataset, source: str) -> Dataset:
    return undecoded_images(rows, "image")


KO_DOCUMENT_TABLE_FORMAT = RowFormat(
    name="ko_document_table",
    columns=("conversations", "image"),
    required=frozenset({"conversations", "image"}),
    convert=ko_document_table_to_messages,
    prepare=_prepare,
)
