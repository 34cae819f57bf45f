"""The generic multimodal chat format: ``{"messages": [...], "images": [...]}`` with ``<image>`` placeholders.

This is the layout of LLaMA-Factory's ``mllm_demo.json``: string contents where each ``<image>`` marks where the
next image of ``images`` goes (the i-th placeholder of the conversation is ``images[i]``). Images are paths
(relative paths resolve against the data file's folder, made absolute here), or ``datasets`` images, which are
kept undecoded (``{"bytes", "path"}``); the collator decodes them, so loading never decodes an image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, Image, List, Value

from dllm.data.messages import DataValidationError, Message, RowFormat, messages_row_to_messages

IMAGE_PLACEHOLDER = "<image>"


def undecoded_images(rows: Dataset, column: str) -> Dataset:
    """``rows`` with an ``Image`` (or list of ``Image``) column cast to ``Image(decode=False)``: rows then hold
    ``{"bytes", "path"}`` dicts and no image is decoded until the collator needs it."""
    feature = rows.features.get(column)
    if isinstance(feature, Image) and feature.decode:
        return rows.cast_column(column, Image(decode=False))
    inner = getattr(feature, "feature", None)
    if isinstance(feature, List) and isinstance(inner, Image) and inner.decode:
        return rows.cast_column(column, List(Image(decode=False)))
    return rows


def _absolute(image: Any, folder: Path) -> Any:
    if isinstance(image, str) and image and not Path(image).expanduser().is_absolute():
        return str(folder / image)
    return image


def resolve_image_paths(rows: Dataset, source: str) -> Dataset:
    """Leave images undecoded and make relative image paths absolute against the data file's folder."""
    rows = undecoded_images(rows, "images")
    path = Path(source)
    if not path.is_file() or rows.features.get("images") != List(Value("string")):
        return rows
    folder = path.resolve().parent

    def resolve(batch: dict[str, list]) -> dict[str, list]:
        return {"images": [None if images is None else [_absolute(i, folder) for i in images]
                           for images in batch["images"]]}

    return rows.map(resolve, batched=True, keep_in_memory=True)


def count_placeholders(messages: Sequence[Message]) -> int:
    return sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)


def multimodal_row_to_messages(row: Mapping[str, Any], source: str, index: int) -> list[Message]:
    """Converter for ``{messages, images}`` rows: validate the messages and the image count.

    Raises:
        DataValidationError: a bad conversation, ``images`` not a list, or placeholders != images.
    """
    messages = messages_row_to_messages(row, source, index)
    images = row.get("images")
    images = [] if images is None else images
    if not isinstance(images, Sequence) or isinstance(images, (str, bytes)):
        raise DataValidationError(source, index, "images not a list",
                                  f"'images' must be a list, got {type(images).__name__}")
    placeholders = count_placeholders(messages)
    if placeholders != len(images):
        raise DataValidationError(source, index, "image count",
                                  f"{placeholders} {IMAGE_PLACEHOLDER} placeholders but {len(images)} images")
    return messages


MULTIMODAL_FORMAT = RowFormat(
    name="multimodal",
    columns=("messages", "images"),
    required=frozenset({"messages", "images"}),
    convert=multimodal_row_to_messages,
    prepare=resolve_image_paths,
)
