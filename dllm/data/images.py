"""Images, wherever they come from: training rows (the Qwen3-VL collator), ``dllm sample --image``, ``dllm chat``'s
``/image``, the playground's image box and ``dllm serve``'s ``image_url`` content parts. One function,
:func:`load_image`, turns each into an RGB ``PIL.Image`` or a one-line :class:`~dllm.errors.UsageError` that names
where the image came from.

Accepted: a PIL image; raw bytes and ``datasets``' undecoded image dicts (``{"bytes", "path"}``); a base64 data URL
(``data:image/png;base64,...``); a local file, as a path or a ``file://`` URL, where the caller allows local files
(the server does not unless told a folder; relative paths may resolve against a ``root``). Nothing is ever
fetched: ``http(s)://`` and every other URL scheme are refused.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from dllm.errors import UsageError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

INLINE_HINT = "send the image inline as a data URL (data:image/png;base64,...)"
# data:[<media type>][;param=value]*;base64,<data>
_DATA_URL = re.compile(r"^data:(?P<type>[^;,]*)(?P<params>(?:;[^;,]*)*?);base64,(?P<data>.*)$", re.DOTALL)
# A URL scheme of two letters or more ("C:" is a Windows drive, not a scheme).
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]+):")


class ImageNotFoundError(UsageError, FileNotFoundError):
    """A local image file that does not exist (a ``UsageError`` and a ``FileNotFoundError``)."""


def load_image(source: Any, where: str | None = None, files: bool | str | os.PathLike = True,
               root: str | os.PathLike | None = None) -> PILImage:
    """The RGB image of ``source``: a PIL image, bytes or a ``{"bytes", "path"}`` dict, a base64 data URL, or a
    local file (path or ``file://`` URL).

    Args:
        source: what the user (or a data row) gave.
        where: names the source in error messages (a flag, a request field, a row); default the source itself.
        files: which local files may be read: ``True`` any, ``False`` none, a folder only the files inside it
            (relative paths are taken inside it; checked after ``..`` and symbolic links are resolved).
        root: with ``files=True``, the folder relative paths resolve against (a data file's ``image_root``).

    Raises:
        UsageError: an http(s) or other URL (never fetched), a malformed data URL, a local file that is not
            allowed or does not exist (:class:`ImageNotFoundError`), or bytes PIL cannot read; the message starts
            with ``where``.
    """
    from PIL import Image

    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, dict):  # datasets' undecoded Image(): {"bytes": ..., "path": ...}
        if not (source.get("bytes") or source.get("path")):
            raise UsageError(f"{where}: image dict has neither bytes nor path")
        source = bytes(source["bytes"]) if source.get("bytes") else source["path"]
    if isinstance(source, (bytes, bytearray)):
        return _decode(io.BytesIO(source), where or "image bytes")
    if not isinstance(source, (str, os.PathLike)):
        raise UsageError(f"{where}: expected an image, a data URL or a file path, got {type(source).__name__}")
    text = str(source)
    where = where or text
    if text.startswith("data:"):
        return _decode(io.BytesIO(_data_url_bytes(text, where)), where)
    scheme = _SCHEME.match(text)
    if scheme and scheme["scheme"].lower() != "file":
        raise UsageError(f"{where}: {scheme['scheme']} URLs are not fetched; {INLINE_HINT}")
    return _decode(_local_file(text, where, files, root), where)


def _data_url_bytes(url: str, where: str) -> bytes:
    """The decoded payload of a base64 ``data:image/...`` URL."""
    found = _DATA_URL.match(url)
    if found is None:
        raise UsageError(f"{where}: expected a base64 data URL (data:image/png;base64,...)")
    if found["type"] and not found["type"].lower().startswith("image/"):
        raise UsageError(f"{where}: the data URL holds {found['type']!r}, not an image")
    try:
        return base64.b64decode(found["data"], validate=True)
    except (binascii.Error, ValueError) as err:
        raise UsageError(f"{where}: the data URL is not valid base64 ({err})") from err


def _local_file(text: str, where: str, files: bool | str | os.PathLike, root: str | os.PathLike | None) -> Path:
    """The path of a local image the caller allows (``files``), checked to exist."""
    if files is False:
        raise UsageError(f"{where}: local image files are not accepted here; {INLINE_HINT}")
    if text.startswith("file:"):
        url = urlparse(text)
        if url.netloc not in ("", "localhost"):
            raise UsageError(f"{where}: file URLs on another host ({url.netloc}) are not read")
        text = unquote(url.path)
    path = Path(text).expanduser()
    if files is True and root is not None and not path.is_absolute():
        path = Path(root) / path
    if files is not True:
        root = Path(files).resolve()
        path = root / path  # a relative path is taken inside the folder; an absolute one stays as it is
        if not path.resolve().is_relative_to(root):  # checked before existence: nothing is told about outside
            raise UsageError(f"{where}: only image files inside {root} are accepted")
    if not path.is_file():  # the path is told where any file may be read and the message does not name it yet
        detail = f": {path}" if files is True and where != text else ""
        raise ImageNotFoundError(f"{where}: no such image file{detail}")
    return path


def _decode(source: io.BytesIO | Path, where: str) -> PILImage:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise UsageError(f"{where}: cannot read the image ({' '.join(str(err).split())})") from err
