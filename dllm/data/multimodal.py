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

from dllm.data.messages import PASSTHROUGH_KEYS, DataValidationError, Message, RowFormat, messages_row_to_messages
from dllm.errors import UsageError

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


def _missing_image_file(image: Any) -> str | None:
    """The path of an image that names a file that does not exist, else None. Only absolute paths are checked:
    a file source's are made absolute when loading; a hub dataset's relative paths resolve against the collator's
    ``image_root``, unknown here. Images given as bytes need no file."""
    path = image.get("path") if isinstance(image, Mapping) and not image.get("bytes") else image
    if not isinstance(path, str):
        return None
    if not path:
        return "'' (an empty path)"
    file = Path(path).expanduser()
    return str(file) if file.is_absolute() and not file.is_file() else None


def multimodal_row_to_messages(row: Mapping[str, Any], source: str, index: int) -> list[Message]:
    """Converter for ``{messages, images}`` rows: validate the messages, the image count and that image files
    exist (found here, not as a ``FileNotFoundError`` in the collator halfway through training).

    Raises:
        DataValidationError: a bad conversation, ``images`` not a list, placeholders != images, or an image file
            that does not exist.
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
    for position, image in enumerate(images):
        missing = _missing_image_file(image)
        if missing is not None:
            raise DataValidationError(source, index, "missing image file",
                                      f"images[{position}]: image file not found: {missing}")
    return messages


def refuse_images(rows: Dataset, source: str) -> None:
    """Refuse a source whose rows carry images when the model reads text only: it would train on the
    ``<image>`` placeholders as text and never see the images.

    Raises:
        UsageError: naming the source, the first row with images, and the column.
    """
    for column in PASSTHROUGH_KEYS:
        if column not in rows.column_names:
            continue
        for index, value in enumerate(undecoded_images(rows, column)[column]):
            if value is not None and value != []:
                raise UsageError(f"{source} row {index}: {column!r} holds images, but the model reads text only "
                                 f"(it would train on the {IMAGE_PLACEHOLDER} placeholders as text and never see "
                                 "the images); use a vision-language checkpoint (dllm sft qwen3_vl) or remove the "
                                 "images")


MULTIMODAL_FORMAT = RowFormat(
    name="multimodal",
    columns=("messages", "images"),
    required=frozenset({"messages", "images"}),
    convert=multimodal_row_to_messages,
    prepare=resolve_image_paths,
)
