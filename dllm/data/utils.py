"""Dataset spec parsing and the SFT dataset loader.

A dataset spec names one or more sources, mixed with ``+``::

    tatsu-lab/alpaca
    ../shared/data/alpaca/alpaca_en_demo.json[train:900,test:99]
    a.json[train:100]+b.jsonl[train:50,test:5]

``name_or_path[train:N,test:M]``: the bracket part and each key in it are optional; N and M are positive
integers. A source is a local ``.json`` (a JSON array of rows, or JSON lines), ``.jsonl`` or ``.parquet``
file, a local folder of such files, or a Hugging Face hub id (loaded with ``datasets.load_dataset``).
Paths containing ``+``, ``[`` or ``]`` are not supported.

Every row is converted to the OpenAI message format (see :mod:`dllm.data.messages`) by a row format:
the one registered for the source name in :data:`NAMED_FORMATS` (``tatsu-lab/alpaca``), else the one
detected from the row keys (``messages`` -> validated as is; ``instruction`` + ``output`` -> Alpaca).
Validation runs on each whole source before any split or subsampling, so row indices in errors are
positions in the source file (or hub split), 0-based.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow.parquet as pq
from datasets import Dataset, DatasetDict, concatenate_datasets

from dllm.data.alpaca import ALPACA_FORMAT, ALPACA_HUB_ID
from dllm.data.messages import MESSAGES_FEATURES, MESSAGES_FORMAT, PASSTHROUGH_KEYS, RowFormat, convert_rows

logger = logging.getLogger(__name__)

DATA_FILE_SUFFIXES: tuple[str, ...] = (".json", ".jsonl", ".parquet")
# Formats chosen by source name (hub id); checked before detection from row keys.
NAMED_FORMATS: dict[str, RowFormat] = {ALPACA_HUB_ID: ALPACA_FORMAT}
# Formats detected from row keys, in order: the first whose required keys a row has wins.
DETECTED_FORMATS: tuple[RowFormat, ...] = (MESSAGES_FORMAT, ALPACA_FORMAT)

_SPEC_PART = re.compile(r"^(?P<name>[^\[\]]+?)\s*(?:\[(?P<options>[^\[\]]*)\])?$")
_SPLITS = ("train", "test")

# Raw rows of one split: Python rows (from JSON) or an Arrow-backed dataset (parquet, hub).
RawRows = Sequence[Any] | Dataset


@dataclass(frozen=True)
class DatasetSource:
    """One ``+``-separated part of a dataset spec.

    Attributes:
        name: local path or hub id.
        train: number of train rows to take (None: all).
        test: number of test rows to take (None: the source's own test split if it has one, else
            ``test_size`` rows of a seeded split, else no test rows).
    """

    name: str
    train: int | None = None
    test: int | None = None


def _spec_error(spec: str, problem: str) -> ValueError:
    return ValueError(f"bad spec {spec!r}: {problem}")


def _parse_options(part: str, options: str) -> dict[str, int]:
    """Parse ``train:N,test:M`` (either key optional) into a dict."""
    if not options.strip():
        raise _spec_error(part, "empty brackets; expected e.g. [train:100,test:10]")
    counts: dict[str, int] = {}
    for item in options.split(","):
        key, sep, value = (s.strip() for s in item.partition(":"))
        if not sep:
            raise _spec_error(part, f"expected 'key:count', got {item.strip()!r}")
        if key not in _SPLITS:
            raise _spec_error(part, f"unknown key {key!r}; expected 'train' or 'test'")
        if key in counts:
            raise _spec_error(part, f"{key!r} given twice")
        if not value.isdigit() or int(value) < 1:
            raise _spec_error(part, f"{key} count must be a positive integer, got {value!r}")
        counts[key] = int(value)
    return counts


def parse_dataset_spec(spec: str) -> list[DatasetSource]:
    """Parse ``name[train:N,test:M]+name2[...]`` into sources.

    Raises:
        ValueError: ``bad spec '<part>': <problem>`` for an empty part, bad brackets, unknown keys,
            repeated keys or counts that are not positive integers.
    """
    if not spec or not spec.strip():
        raise _spec_error(spec, "empty spec")
    sources = []
    for raw_part in spec.split("+"):
        part = raw_part.strip()
        if not part:
            raise _spec_error(spec, "empty source around '+'")
        match = _SPEC_PART.match(part)
        if match is None:
            raise _spec_error(part, "expected name_or_path[train:N,test:M] with the bracket part optional")
        options = match.group("options")
        counts = _parse_options(part, options) if options is not None else {}
        sources.append(DatasetSource(match.group("name").strip(), counts.get("train"), counts.get("test")))
    return sources


# ---------------------------------------------------------------------------------------------------------
# Reading raw rows


def _read_json_rows(path: Path) -> list[Any]:
    """Rows of a ``.json`` (array, or JSON lines) or ``.jsonl`` file."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from err
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON array of rows")
        return rows
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}: invalid JSON at line {lineno}: {err.msg} "
                "(expected a JSON array of rows or one JSON object per line)"
            ) from err
    return rows


def read_data_file(path: Path) -> RawRows:
    """Raw rows of one local data file (``.json``, ``.jsonl`` or ``.parquet``).

    Raises:
        FileNotFoundError: the path does not exist (the message names it).
        ValueError: unsupported suffix, invalid JSON, or no rows.
    """
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    if path.suffix not in DATA_FILE_SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; expected one of {DATA_FILE_SUFFIXES}")
    rows: RawRows = Dataset(pq.read_table(path)) if path.suffix == ".parquet" else _read_json_rows(path)
    if len(rows) == 0:
        raise ValueError(f"{path}: no rows")
    return rows


def _split_of(relative: Path) -> str | None:
    """``"train"``/``"test"`` when a path component has that word as a token, e.g. ``data/train-0.parquet``."""
    tokens = set(re.split(r"[^a-z0-9]+", relative.as_posix().lower()))
    found = [split for split in _SPLITS if split in tokens]
    if len(found) > 1:
        raise ValueError(f"{relative}: file name matches both train and test")
    return found[0] if found else None


def _folder_files(folder: Path) -> dict[str, list[Path]]:
    """Data files of a folder by split.

    Files whose relative path has the token ``train`` or ``test`` go to that split; if no file has
    either, every data file is train. When some files are named by split, the others (e.g.
    ``validation.json``) are ignored with a warning.
    """
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix in DATA_FILE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not files:
        raise ValueError(f"{folder}: no data files ({', '.join(DATA_FILE_SUFFIXES)}) in folder")
    by_split: dict[str, list[Path]] = {split: [] for split in _SPLITS}
    unnamed = []
    for path in files:
        split = _split_of(path.relative_to(folder))
        (by_split[split] if split else unnamed).append(path)
    if not by_split["train"] and not by_split["test"]:
        return {"train": unnamed}
    if unnamed:
        logger.warning("%s: ignoring data files named neither train nor test: %s", folder, [str(p) for p in unnamed])
    if not by_split["train"]:
        raise ValueError(f"{folder}: has test files but no train files")
    return {split: paths for split, paths in by_split.items() if paths}


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.endswith(DATA_FILE_SUFFIXES)


def _load_hub_splits(hub_id: str) -> dict[str, Dataset]:
    """The ``train`` (required) and ``test`` splits of a hub dataset, via ``datasets.load_dataset``."""
    loaded = datasets.load_dataset(hub_id)
    if not isinstance(loaded, DatasetDict):
        raise ValueError(f"{hub_id}: expected a dataset with splits, got {type(loaded).__name__}")
    if "train" not in loaded:
        raise ValueError(f"{hub_id}: no 'train' split; found {sorted(loaded.keys())}")
    return {split: loaded[split] for split in _SPLITS if split in loaded}


# ---------------------------------------------------------------------------------------------------------
# Converting raw rows to messages


def _row_keys(rows: RawRows) -> list[str]:
    """Column names, or the union of the rows' keys in order of first appearance."""
    if isinstance(rows, Dataset):
        return list(rows.column_names)
    keys: dict[str, None] = {}
    for row in rows:
        if isinstance(row, Mapping):
            keys.update(dict.fromkeys(row))
    return list(keys)


def resolve_format(name: str, rows: RawRows, source: str) -> RowFormat:
    """The row format for a source: registered for ``name``, else detected from the rows' keys.

    Detection uses the union of all rows' keys, so one malformed row (say, without ``messages``) is
    reported as a bad row rather than making the whole source look like an unknown format.

    Raises:
        ValueError: unknown format; the message names the source and the keys it found.
    """
    if name in NAMED_FORMATS:
        return NAMED_FORMATS[name]
    keys = _row_keys(rows)
    for fmt in DETECTED_FORMATS:
        if fmt.required.issubset(keys):
            return fmt
    raise ValueError(
        f"{source}: unknown data format, found keys {keys}; expected 'messages' (OpenAI chat format) "
        "or 'instruction' and 'output' (Alpaca)"
    )


def _passthrough(rows: RawRows, indices: list[int]) -> Dataset | None:
    """The pass-through (image) columns of the kept rows, or None when there are none."""
    if isinstance(rows, Dataset):
        columns = [c for c in PASSTHROUGH_KEYS if c in rows.column_names]
        return rows.select(indices).select_columns(columns) if columns else None
    columns = [c for c in PASSTHROUGH_KEYS if any(c in rows[i] for i in indices)]
    if not columns:
        return None
    return Dataset.from_dict({c: [rows[i].get(c) for i in indices] for c in columns})


def normalize_rows(rows: RawRows, fmt: RowFormat, *, source: str, skip_invalid: bool = False) -> Dataset:
    """Convert one split's raw rows into a dataset with a ``messages`` column (plus image columns).

    Raises:
        DataValidationError: a malformed row, unless ``skip_invalid``.
    """
    if isinstance(rows, Dataset):
        text_rows: Any = rows.select_columns([c for c in fmt.columns if c in rows.column_names])
    else:
        text_rows = rows
    converted = convert_rows(text_rows, fmt.convert, source=source, skip_invalid=skip_invalid)
    messages = Dataset.from_dict({"messages": converted.messages}, features=MESSAGES_FEATURES)
    extra = _passthrough(rows, converted.indices)
    return concatenate_datasets([messages, extra], axis=1) if extra is not None else messages


def _normalize_files(name: str, paths: list[Path], skip_invalid: bool) -> Dataset:
    """Read, convert and concatenate a list of files (one split)."""
    parts = []
    for path in paths:
        rows = read_data_file(path)
        fmt = resolve_format(name, rows, str(path))
        parts.append(normalize_rows(rows, fmt, source=str(path), skip_invalid=skip_invalid))
    return _concatenate(parts, [str(p) for p in paths])


def load_source_splits(name: str, *, skip_invalid: bool = False) -> dict[str, Dataset]:
    """All rows of one source, in message format, by split (``train`` and, when present, ``test``).

    Raises:
        FileNotFoundError: a path-like name (absolute, ``./``, ``~`` or a data-file suffix) that does
            not exist.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return {split: _normalize_files(name, paths, skip_invalid) for split, paths in _folder_files(path).items()}
    if path.exists() or _looks_like_path(name):
        return {"train": _normalize_files(name, [path], skip_invalid)}
    splits = {}
    for split, rows in _load_hub_splits(name).items():
        source = f"{name} ({split})"
        fmt = resolve_format(name, rows, source)
        splits[split] = normalize_rows(rows, fmt, source=source, skip_invalid=skip_invalid)
    return splits


# ---------------------------------------------------------------------------------------------------------
# Splitting, subsampling and mixing


def _resolve_test_size(test_size: float | int, available: int, source: str) -> int:
    """Rows to hold out: a fraction in (0, 1) of the rows (at least 1) or an absolute count."""
    if isinstance(test_size, float) and 0 < test_size < 1:
        return max(1, round(available * test_size))
    if isinstance(test_size, int) and test_size >= 1:
        return test_size
    raise ValueError(f"{source}: test_size must be a fraction in (0, 1) or a positive int, got {test_size!r}")


def _take(dataset: Dataset, count: int | None, order: np.ndarray, what: str) -> Dataset:
    """The first ``count`` rows of a seeded ``order`` (all rows when None), kept in source order."""
    if count is None:
        return dataset.select(np.sort(order)) if len(order) != len(dataset) else dataset
    if count > len(order):
        raise ValueError(f"{what}: asked for {count} rows but only {len(order)} are available")
    return dataset.select(np.sort(order[:count]))


def split_source(
    source: DatasetSource, splits: Mapping[str, Dataset], *, seed: int, test_size: float | int | None
) -> dict[str, Dataset]:
    """Apply a source's ``train:N`` / ``test:M`` counts, making a seeded held-out split if needed.

    With its own test split, N and M rows are drawn (seeded) from the train and test splits. Without one,
    the train rows are permuted with ``seed``; the last M rows (or ``test_size`` rows when M is not given;
    none when both are None) become the test split and N rows are taken from the start of the rest, so
    train and test are disjoint, and the same seed gives the same split. Selected rows keep source order.

    Raises:
        ValueError: N or M larger than the rows available (after holding out the test rows).
    """
    rng = np.random.default_rng(seed)
    train = splits["train"]
    if "test" in splits:
        test = splits["test"]
        train_order, test_order = rng.permutation(len(train)), rng.permutation(len(test))
        return {
            "train": _take(train, source.train, train_order, f"{source.name} train"),
            "test": _take(test, source.test, test_order, f"{source.name} test"),
        }
    order = rng.permutation(len(train))
    if source.test is not None:
        n_test = source.test
    elif test_size is not None:
        n_test = _resolve_test_size(test_size, len(train), source.name)
    else:
        n_test = 0
    if n_test >= len(train):
        raise ValueError(
            f"{source.name} test: asked for {n_test} held-out rows but the source has only {len(train)} rows"
        )
    result = {"train": _take(train, source.train, order[: len(order) - n_test], f"{source.name} train")}
    if n_test:
        result["test"] = train.select(np.sort(order[len(order) - n_test :]))
    return result


def _concatenate(parts: list[Dataset], names: list[str]) -> Dataset:
    """Concatenate splits of several sources; they must have the same columns."""
    columns = {tuple(sorted(p.column_names)) for p in parts}
    if len(columns) > 1:
        found = ", ".join(f"{n}: {sorted(p.column_names)}" for n, p in zip(names, parts))
        raise ValueError(f"cannot mix sources with different columns ({found})")
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def load_sft_dataset(
    spec: str,
    *,
    seed: int = 42,
    test_size: float | int | None = None,
    skip_invalid: bool = False,
) -> DatasetDict:
    """Load a dataset spec into a ``DatasetDict`` of message rows.

    Args:
        spec: ``name_or_path[train:N,test:M]`` parts joined by ``+`` (see the module docstring).
        seed: seed of the held-out split and of the N/M row draws (same seed, same rows).
        test_size: for sources without a test split and without ``test:M``: rows to hold out as test,
            a fraction in (0, 1) or a count; None holds out nothing.
        skip_invalid: drop malformed rows (counted and logged per source) instead of raising.

    Returns:
        ``{"train": ..., "test": ...}``, each split the concatenation of the sources' splits in spec
        order; ``"test"`` only when some source has or was asked for test rows. Rows have a ``messages``
        column (``[{"role", "content"}, ...]``) plus ``image``/``images`` when the source has them.
        Train and test never share a source row.

    Raises:
        ValueError: bad spec, unknown format (naming the keys found), N or M larger than available
            (we raise rather than clamp, so a run never trains on fewer rows than asked).
        FileNotFoundError: a missing local file (naming the path).
        DataValidationError: a malformed row (source, row index, problem), unless ``skip_invalid``.
    """
    per_split: dict[str, list[Dataset]] = {split: [] for split in _SPLITS}
    names: dict[str, list[str]] = {split: [] for split in _SPLITS}
    for source in parse_dataset_spec(spec):
        splits = split_source(
            source, load_source_splits(source.name, skip_invalid=skip_invalid), seed=seed, test_size=test_size
        )
        for split, dataset in splits.items():
            per_split[split].append(dataset)
            names[split].append(source.name)
        logger.info("%s: %s", source.name, ", ".join(f"{s} {len(d)} rows" for s, d in splits.items()))
    return DatasetDict(
        {split: _concatenate(parts, names[split]) for split, parts in per_split.items() if parts}
    )
