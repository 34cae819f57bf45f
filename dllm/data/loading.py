"""The SFT dataset loader: a dataset spec in, a ``DatasetDict`` of message rows out.

A spec names one or more sources, mixed with ``+`` (grammar in :mod:`dllm.data.spec`)::

    load_sft_dataset("examples/data/alpaca_example.json[train:30,test:5]")
    load_sft_dataset("tatsu-lab/alpaca[train:1000,test:100]+chat.jsonl")

A source is one of:

* a local ``.json`` (a JSON array of objects, or JSON lines), ``.jsonl`` or ``.parquet`` file, read with
  ``datasets.load_dataset("json" | "parquet", data_files=...)``. A key missing from a row reads as null;
  a key whose values have different JSON types across rows is kept as JSON by ``datasets``, so each row
  still holds its own values for validation. A ``.json`` file holding one object (rather than an array
  or JSON lines) is an error; name a one-row JSON-lines file ``.jsonl``;
* a local folder of such files, split by file name with ``datasets``' own split patterns
  (``datasets.data_files.get_data_patterns``): ``train.jsonl``, ``data/train-00000-of-00002.parquet``,
  ``train/part-0.json`` are train; ``test``, ``testing``, ``eval`` and ``evaluation`` name test files.
  Files that no train or test pattern names (``validation.jsonl``, ``notes.jsonl``) are ignored with a
  warning when some files are named train or test; when none are, every data file is train; test files
  without train files are an error;
* anything else: a Hugging Face hub id, loaded with ``datasets.load_dataset(name)``.

Local files are loaded into memory through a throwaway cache directory: ``datasets`` keys its cache of a
local file on path and modification time only, so a file rewritten within the same clock tick would be
served stale from a shared cache; nothing is left in the Hugging Face cache either. Any error ``datasets``
or Arrow raises while reading a file is re-raised as a one-line ``UsageError`` (a ``ValueError``) that names
the file; every input error here is a :class:`~dllm.errors.UsageError`, which ``dllm`` prints as one line; when
``datasets`` cannot read a JSON file, the file is parsed once more with :mod:`json` only to say where:
the line of invalid JSON, or the index of a row that is not an object (an error even with
``skip_invalid``, since no row of such a file can be read).

Every row is converted to the OpenAI message format (see :mod:`dllm.data.messages`) by a row format:
the one registered for the source name in :data:`NAMED_FORMATS` (``tatsu-lab/alpaca``), else the one
detected from the columns (``messages`` -> validated as is; ``instruction`` + ``output`` -> Alpaca).
Validation runs on each whole file (or hub split) before any split or subsampling, so row indices in
errors are 0-based positions in that file or split.
"""

from __future__ import annotations

import codecs
import json
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict, IterableDatasetDict, concatenate_datasets
from datasets.data_files import get_data_patterns, resolve_pattern
from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

from dllm.data.alpaca import ALPACA_FORMAT, ALPACA_HUB_ID
from dllm.data.ko_document_table import KO_DOCUMENT_TABLE_FORMAT, KO_DOCUMENT_TABLE_HUB_ID
from dllm.data.messages import (
    MESSAGES_FEATURES,
    MESSAGES_FORMAT,
    PASSTHROUGH_KEYS,
    RowFormat,
    convert_rows,
    not_an_object_error,
)
from dllm.data.multimodal import MULTIMODAL_FORMAT, refuse_images
from dllm.data.spec import SPLITS, DatasetSource, parse_dataset_spec
from dllm.errors import UsageError

logger = logging.getLogger(__name__)

DATA_FILE_SUFFIXES: tuple[str, ...] = (".json", ".jsonl", ".parquet")
# Formats chosen by source name (hub id); checked before detection from the columns. Register a
# dataset whose columns need their own conversion here: ``NAMED_FORMATS["org/name"] = RowFormat(...)``.
NAMED_FORMATS: dict[str, RowFormat] = {ALPACA_HUB_ID: ALPACA_FORMAT,
                                       KO_DOCUMENT_TABLE_HUB_ID: KO_DOCUMENT_TABLE_FORMAT}
# Formats detected from the columns, in order: the first whose required columns a source has wins.
DETECTED_FORMATS: tuple[RowFormat, ...] = (MULTIMODAL_FORMAT, MESSAGES_FORMAT, ALPACA_FORMAT,
                                           KO_DOCUMENT_TABLE_FORMAT)


class DataFileNotFoundError(UsageError, FileNotFoundError):
    """A local dataset file or folder that does not exist (both a UsageError and a FileNotFoundError)."""


_JSON_SHAPE = "expected a JSON array of rows or JSON lines (one object per line)"

# ---------------------------------------------------------------------------------------------------------
# Reading local files and folders


def _root_cause(err: BaseException) -> BaseException:
    """The exception at the end of the ``raise ... from`` chain (datasets wraps the reader's error)."""
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def _locate_json_problem(path: Path) -> ValueError | None:
    """Why ``datasets`` could not read a JSON file, pinpointed: the line of invalid JSON, or the index of
    the first row that is not an object; None when the file parses and every row is an object.

    Only called after ``datasets`` failed: Arrow counts positions within a parse block, not the file, so
    its own message cannot say where the problem is.

    Raises:
        UnicodeDecodeError: the file is not UTF-8.
    """
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            return UsageError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}; {_JSON_SHAPE}")
    else:
        rows = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                return UsageError(f"{path}: invalid JSON at line {lineno}: {err.msg}; {_JSON_SHAPE}")
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            return not_an_object_error(row, source=str(path), index=index)
    return None


def _read_error(path: Path, err: Exception) -> ValueError:
    """A one-line error naming ``path`` for whatever ``datasets``/Arrow raised while reading it."""
    if isinstance(err, StopIteration) or "corresponds to no data" in str(err):
        return UsageError(f"{path}: no rows")
    if path.suffix == ".txt":
        cause = _root_cause(err)
        if isinstance(cause, UnicodeDecodeError):
            return UsageError(f"{path}: not UTF-8 text ({cause})")
        return UsageError(f"{path}: cannot read text ({type(cause).__name__}: {' '.join(str(cause).split())})")
    if path.suffix != ".parquet":
        try:
            located = _locate_json_problem(path)
        except UnicodeDecodeError as bad:
            return UsageError(f"{path}: not UTF-8 text ({bad})")
        if located is not None:
            return located
    cause = _root_cause(err)
    detail = " ".join(f"{type(cause).__name__}: {cause}".split())
    if path.suffix == ".parquet":
        return UsageError(f"{path}: not a readable parquet file ({detail})")
    return UsageError(f"{path}: cannot read JSON rows ({detail}); {_JSON_SHAPE}")


def _starts_with_object(path: Path) -> bool:
    """Whether the file's first non-blank character is ``{`` (after a UTF-8 byte order mark)."""
    with path.open("rb") as f:
        head = f.read(4096)
    return head.removeprefix(codecs.BOM_UTF8).lstrip().startswith(b"{")


def read_data_file(path: Path) -> Dataset:
    """All rows of one local data file (``.json``, ``.jsonl`` or ``.parquet``), in file order, in memory.

    Raises:
        FileNotFoundError: the path is not a file (the message names it).
        DataValidationError: a row that is not a JSON object (path and row index).
        ValueError: unsupported suffix, an empty file or no rows, invalid JSON (with its line), a
            ``.json`` file holding one object instead of rows, text that is not UTF-8, or an unreadable
            parquet file; one line that starts with the path.
    """
    rows = load_local_file(path, "parquet" if path.suffix == ".parquet" else "json", DATA_FILE_SUFFIXES)
    # datasets reads a file holding one JSON object as a single row; a .json file of rows never looks so.
    if path.suffix == ".json" and len(rows) == 1 and _starts_with_object(path):
        raise UsageError(f"{path}: one JSON object instead of rows; {_JSON_SHAPE} (name a one-row file .jsonl)")
    return rows


def check_data_file(path: Path, suffixes: tuple[str, ...] | list[str]) -> None:
    """Refuse, before any reader runs, a path that is not a file, has a suffix outside ``suffixes`` or is empty.

    Raises:
        UsageError: one of those, naming the file (not a file: a :class:`DataFileNotFoundError`).
    """
    if not path.is_file():
        raise DataFileNotFoundError(f"dataset file not found: {path}")
    if path.suffix not in suffixes:
        raise UsageError(f"{path}: unsupported file type {path.suffix!r}; expected one of {suffixes}")
    if path.stat().st_size == 0:
        raise UsageError(f"{path}: no rows (empty file)")


def load_local_file(path: Path, builder: str, suffixes: tuple[str, ...], **config: object) -> Dataset:
    """The rows of one local file read by ``datasets.load_dataset(builder, data_files=path, **config)`` into memory,
    through a throwaway cache; whatever ``datasets`` or Arrow raises becomes one line naming the file.

    Raises:
        UsageError: not a file (a :class:`DataFileNotFoundError`), a suffix outside ``suffixes``, an empty file or no
            rows, or the reader's error (invalid JSON with its line, text that is not UTF-8, unreadable parquet).
    """
    check_data_file(path, suffixes)
    bars_were_off = are_progress_bars_disabled()
    disable_progress_bars()  # "Generating train split" of a throwaway cache is noise (and precedes any error)
    try:
        with tempfile.TemporaryDirectory(prefix="dllm-data-") as cache_dir:
            rows = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache_dir,
                                         keep_in_memory=True, **config)
        rows.data.validate(full=True)  # Arrow's JSON reader lets invalid UTF-8 through; full checks catch it
    except Exception as err:  # datasets and Arrow raise many types; none may reach the user unnamed
        raise _read_error(path, err) from err
    finally:
        if not bars_were_off:
            enable_progress_bars()
    if len(rows) == 0:
        raise UsageError(f"{path}: no rows")
    return rows


def _resolve(folder: Path, pattern: str, suffixes: tuple[str, ...] = DATA_FILE_SUFFIXES) -> set[Path]:
    """Data files (``suffixes``) of ``folder`` matching a ``datasets`` data-files pattern (hidden files excluded)."""
    base = folder.resolve()
    try:
        found = resolve_pattern(pattern, str(base), allowed_extensions=list(suffixes))
    except FileNotFoundError:
        return set()
    return {folder / Path(p).relative_to(base) for p in found if Path(p).suffix in suffixes}


def _named_split_files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, set[Path]]:
    """Data files by the split their name puts them in, per ``datasets.data_files.get_data_patterns``."""
    try:
        patterns = get_data_patterns(str(folder.resolve()))
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(f"{folder}: cannot sort the folder's files into splits ({err})") from err
    return {
        str(split): set().union(*(_resolve(folder, pattern, suffixes) for pattern in split_patterns))
        for split, split_patterns in patterns.items()
    }


def folder_files(folder: Path, suffixes: tuple[str, ...] = DATA_FILE_SUFFIXES) -> dict[str, list[Path]]:
    """Data files (``suffixes``) of a folder by split (``train`` and, when some file is named so, ``test``), sorted.

    Raises:
        ValueError: no data files, a file named both train and test, or test files without train files.
    """
    files = _resolve(folder, "**", suffixes)
    if not files:
        raise UsageError(f"{folder}: no data files ({', '.join(suffixes)}) in folder")
    named = _named_split_files(folder, suffixes)
    train, test = named.get("train", set()) & files, named.get("test", set()) & files
    if not train and not test:
        return {"train": sorted(files)}
    if train & test:
        raise UsageError(f"{folder}: file names match both train and test: {sorted(map(str, train & test))}")
    ignored = files - train - test
    if ignored:
        names = sorted(map(str, ignored))
        logger.warning("%s: ignoring data files named neither train nor test: %s", folder, names)
    if not train:
        raise UsageError(f"{folder}: has test files but no train files")
    return {split: sorted(paths) for split, paths in (("train", train), ("test", test)) if paths}


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.endswith(DATA_FILE_SUFFIXES)


def load_hub_splits(hub_id: str, streaming: bool = False) -> dict[str, Dataset]:
    """The ``train`` (required) and ``test`` splits of a hub dataset, via ``datasets.load_dataset`` (``streaming``:
    ``IterableDataset`` splits, read as they are iterated)."""
    try:
        loaded = datasets.load_dataset(hub_id, **({"streaming": True} if streaming else {}))
    except (ConnectionError, FileNotFoundError) as err:  # offline, unknown id, no access (DatasetNotFoundError)
        detail = " ".join(str(err).split())
        raise UsageError(f"{hub_id}: not a local file or folder, and not a loadable Hugging Face Hub dataset "
                         f"({detail})") from err
    if not isinstance(loaded, (DatasetDict, IterableDatasetDict)):
        raise UsageError(f"{hub_id}: expected a dataset with splits, got {type(loaded).__name__}")
    if "train" not in loaded:
        raise UsageError(f"{hub_id}: no 'train' split; found {sorted(loaded.keys())}")
    return {split: loaded[split] for split in SPLITS if split in loaded}


# ---------------------------------------------------------------------------------------------------------
# Converting raw rows to messages


def resolve_format(name: str, rows: Dataset, source: str) -> RowFormat:
    """The row format for a source: registered for ``name``, else detected from the columns.

    The columns are the union of all rows' keys (a row without a key reads it as null), so one malformed
    row (say, without ``messages``) is reported as a bad row rather than as an unknown format.

    Raises:
        ValueError: unknown format; the message names the source and the columns it found.
    """
    if name in NAMED_FORMATS:
        return NAMED_FORMATS[name]
    keys = list(rows.column_names)
    for fmt in DETECTED_FORMATS:
        if fmt.required.issubset(keys):
            return fmt
    raise UsageError(
        f"{source}: unknown data format, found keys {keys}; expected 'messages' (OpenAI chat format) "
        "or 'instruction' and 'output' (Alpaca)"
    )


def normalize_rows(rows: Dataset, fmt: RowFormat, *, source: str, skip_invalid: bool = False,
                   text_only: bool = False) -> Dataset:
    """Convert one file's or split's rows into a dataset with a ``messages`` column (plus image columns).

    Raises:
        DataValidationError: a malformed row, unless ``skip_invalid``.
        UsageError: rows with images when ``text_only`` (:func:`~dllm.data.multimodal.refuse_images`).
    """
    if text_only:
        refuse_images(rows, source)
    if fmt.prepare is not None:
        rows = fmt.prepare(rows, source)
    text_rows = rows.select_columns([c for c in fmt.columns if c in rows.column_names])
    converted = convert_rows(text_rows, fmt.convert, source=source, skip_invalid=skip_invalid)
    messages = Dataset.from_dict({"messages": converted.messages}, features=MESSAGES_FEATURES)
    extra = [c for c in PASSTHROUGH_KEYS if c in rows.column_names]
    if not extra:
        return messages
    return concatenate_datasets([messages, rows.select(converted.indices).select_columns(extra)], axis=1)


def _normalize_files(name: str, paths: list[Path], skip_invalid: bool, text_only: bool) -> Dataset:
    """Read, convert and concatenate a list of files (one split)."""
    parts = []
    for path in paths:
        rows = read_data_file(path)
        fmt = resolve_format(name, rows, str(path))
        parts.append(normalize_rows(rows, fmt, source=str(path), skip_invalid=skip_invalid, text_only=text_only))
    return _concatenate(parts, [str(p) for p in paths])


def load_source_splits(name: str, *, skip_invalid: bool = False, text_only: bool = False) -> dict[str, Dataset]:
    """All rows of one source, in message format, by split (``train`` and, when present, ``test``); ``text_only``
    refuses rows with images.

    Raises:
        FileNotFoundError: a path-like name (absolute, ``./``, ``../``, ``~`` or a data-file suffix)
            that does not exist.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return {split: _normalize_files(name, paths, skip_invalid, text_only)
                for split, paths in folder_files(path).items()}
    if path.exists() or _looks_like_path(name):
        return {"train": _normalize_files(name, [path], skip_invalid, text_only)}
    splits = {}
    for split, rows in load_hub_splits(name).items():
        source = f"{name} ({split})"
        fmt = resolve_format(name, rows, source)
        splits[split] = normalize_rows(rows, fmt, source=source, skip_invalid=skip_invalid, text_only=text_only)
    return splits


# ---------------------------------------------------------------------------------------------------------
# Splitting, subsampling and mixing


def _resolve_test_size(test_size: float | int, available: int, source: str) -> int:
    """Rows to hold out: a fraction in (0, 1) of the rows (at least 1) or an absolute count."""
    if isinstance(test_size, float) and 0 < test_size < 1:
        return max(1, round(available * test_size))
    if isinstance(test_size, int) and test_size >= 1:
        return test_size
    raise UsageError(f"{source}: test_size must be a fraction in (0, 1) or a positive int, got {test_size!r}")


def _draw(dataset: Dataset, count: int | None, seed: int, what: str) -> Dataset:
    """``count`` rows drawn with ``seed`` (``shuffle(seed).select``); all rows, in order, when None."""
    if count is None:
        return dataset
    if count > len(dataset):
        raise UsageError(f"{what}: asked for {count} rows but only {len(dataset)} are available")
    return dataset.shuffle(seed=seed).select(range(count))


def split_source(
    source: DatasetSource, splits: Mapping[str, Dataset], *, seed: int, test_size: float | int | None
) -> dict[str, Dataset]:
    """Apply a source's ``train:N`` / ``test:M`` counts, making a seeded held-out split if needed.

    With its own test split, N and M rows are drawn (seeded) from the train and test splits. Without one,
    the train rows are shuffled with ``seed``; the last M rows (or ``test_size`` rows when M is not given;
    none when both are None) become the test split and N rows are taken from the start, so train and test
    are disjoint, the train rows do not depend on M, and the same seed gives the same rows. A split taken
    whole keeps source order; drawn rows come in shuffled order.

    Raises:
        ValueError: N or M larger than the rows available (after holding out the test rows); we raise
            rather than clamp, so a run never trains on fewer rows than asked.
    """
    train = splits["train"]
    if "test" in splits:
        return {
            "train": _draw(train, source.train, seed, f"{source.name} train"),
            "test": _draw(splits["test"], source.test, seed, f"{source.name} test"),
        }
    n_test = source.test
    if n_test is None:
        n_test = _resolve_test_size(test_size, len(train), source.name) if test_size is not None else 0
    if n_test == 0:
        return {"train": _draw(train, source.train, seed, f"{source.name} train")}
    if n_test >= len(train):
        raise UsageError(
            f"{source.name} test: asked for {n_test} held-out rows but the source has only {len(train)} rows"
        )
    rest = len(train) - n_test
    n_train = rest if source.train is None else source.train
    if n_train > rest:
        raise UsageError(f"{source.name} train: asked for {n_train} rows but only {rest} are available")
    shuffled = train.shuffle(seed=seed)
    return {"train": shuffled.select(range(n_train)), "test": shuffled.select(range(rest, len(train)))}


def _concatenate(parts: list[Dataset], names: list[str]) -> Dataset:
    """Concatenate splits of several sources; they must have the same columns."""
    columns = {tuple(sorted(p.column_names)) for p in parts}
    if len(columns) > 1:
        found = ", ".join(f"{n}: {sorted(p.column_names)}" for n, p in zip(names, parts))
        raise UsageError(f"cannot mix sources with different columns ({found})")
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def load_sft_dataset(
    spec: str,
    *,
    seed: int = 42,
    test_size: float | int | None = None,
    skip_invalid: bool = False,
    text_only: bool = False,
) -> DatasetDict:
    """Load a dataset spec into a ``DatasetDict`` of message rows.

    Args:
        spec: ``name_or_path[train:N,test:M]`` parts joined by ``+`` (see :mod:`dllm.data.spec`), e.g.
            ``"examples/data/alpaca_example.json[train:30,test:5]"``.
        seed: seed of the held-out split and of the N/M row draws (same seed, same rows).
        test_size: for sources without a test split and without ``test:M``: rows to hold out as test,
            a fraction in (0, 1) or a count; None holds out nothing.
        skip_invalid: drop malformed rows (counted and logged per source) instead of raising; a row whose image
            file does not exist is one.
        text_only: refuse sources whose rows carry images (``images``/``image``), for a model that reads text
            only and would train on the ``<image>`` placeholders as text.

    Returns:
        ``{"train": ..., "test": ...}``, each split the concatenation of the sources' splits in spec
        order; ``"test"`` only when some source has or was asked for test rows. Rows have a ``messages``
        column (``[{"role", "content"}, ...]``) plus ``image``/``images`` when the source has them.
        Train and test never share a source row.

    Raises:
        ValueError: bad spec, unknown format (naming the keys found), unreadable file (naming it), N or
            M larger than available.
        FileNotFoundError: a missing local file (naming the path).
        DataValidationError: a malformed row (source, row index, problem), unless ``skip_invalid``.
        UsageError: with ``text_only``, a row with images (source, row index).
    """
    per_split: dict[str, list[Dataset]] = {split: [] for split in SPLITS}
    names: dict[str, list[str]] = {split: [] for split in SPLITS}
    for source in parse_dataset_spec(spec):
        splits = split_source(
            source, load_source_splits(source.name, skip_invalid=skip_invalid, text_only=text_only), seed=seed,
            test_size=test_size)
        for split, dataset in splits.items():
            per_split[split].append(dataset)
            names[split].append(source.name)
        logger.info("%s: %s", source.name, ", ".join(f"{s} {len(d)} rows" for s, d in splits.items()))
    return DatasetDict(
        {split: _concatenate(parts, names[split]) for split, parts in per_split.items() if parts}
    )
