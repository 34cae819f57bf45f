"""Raw text for pretraining (``dllm pt``): a dataset spec in, rows of ``max_seq_length`` token ids out.

Sources (the spec grammar of :mod:`dllm.data.spec`, ``+`` mixes them, ``[train:N,test:M]`` counts documents):

* a ``.txt`` file: one document per line (``txt_documents="line"``, blank lines skipped), per blank-line separated
  paragraph (``"paragraph"``), or the whole file as one document (``"file"``): ``datasets``' ``text`` builder;
* a ``.json`` / ``.jsonl`` / ``.parquet`` file with a text column (``text_column``, default ``text``);
* a folder of such files, split into train and test by file name as SFT folders are
  (:func:`dllm.data.loading.folder_files`);
* anything else: a Hugging Face hub id (``datasets.load_dataset(name)``).

With ``streaming`` every source is an ``IterableDataset`` read as training goes (``datasets.load_dataset(...,
streaming=True)``), for corpora larger than memory: nothing is materialised, ``train:N`` takes the first N documents,
``test:M`` holds out the first M (the train stream skips them).

:func:`prepare_pretraining_rows` then tokenises every document once (``datasets.map``; the tokenizer's own special
tokens, e.g. BOS, then EOS appended, so the sampler learns where text ends) and makes rows of at most
``max_seq_length`` tokens, every token a label (no prompt):

* ``packing="document"`` (the default): over-long documents are split into pieces of ``max_seq_length`` (never cut),
  pieces are packed best-fit decreasing and each attends only to itself, with its own positions and diffusion time
  (:func:`dllm.data.packing.pack_documents_batch`);
* ``packing="concat"``: documents joined with their EOS between them and wrapped into rows that attend across
  document boundaries, as MDLM (OpenWebText) and LLaDA do (:func:`dllm.data.packing.concat_batch`).

``variable_length_fraction`` (LLaDA's variable-length trick, 1% there): that fraction of rows is cut at a uniformly
random length; the cut-off rest becomes a row of its own, so no token is lost.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import datasets
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict, concatenate_datasets

from dllm.data.loading import (
    DATA_FILE_SUFFIXES,
    check_data_file,
    folder_files,
    load_hub_splits,
    load_local_file,
    split_source,
)
from dllm.data.packing import concat_batch, pack_documents_batch, split_lengths
from dllm.data.spec import DatasetSource, parse_dataset_spec
from dllm.errors import UsageError

logger = logging.getLogger(__name__)

TEXT_SUFFIXES: tuple[str, ...] = (".txt", *DATA_FILE_SUFFIXES)
# --txt_documents -> the ``sample_by`` of datasets' text builder.
TXT_DOCUMENTS: dict[str, str] = {"line": "line", "paragraph": "paragraph", "file": "document"}
PACKING_MODES: tuple[str, ...] = ("document", "concat")
# Documents per datasets.map batch of packing: best-fit decreasing and concatenation work within one batch.
DOCUMENTS_PER_GROUP = 1000

AnyDataset = Dataset | IterableDataset


# ---------------------------------------------------------------------------------------------------------
# Loading


def _builder(path: Path, txt_documents: str) -> tuple[str, dict[str, Any]]:
    if path.suffix == ".txt":
        return "text", {"sample_by": TXT_DOCUMENTS[txt_documents]}
    return ("parquet" if path.suffix == ".parquet" else "json"), {}


def _first_row(rows: IterableDataset, source: str) -> Mapping[str, Any]:
    try:
        first = next(iter(rows.take(1)), None)
    except Exception as err:  # datasets and Arrow raise many types; none may reach the user unnamed
        cause = " ".join(f"{type(err).__name__}: {err}".split())
        raise UsageError(f"{source}: cannot read rows ({cause})") from err
    if first is None:
        raise UsageError(f"{source}: no rows")
    return first


def _text_column(rows: AnyDataset, source: str, column: str) -> AnyDataset:
    """The source's ``column`` as the one column ``text``, checked: it exists and holds strings; rows whose text is
    empty or blank are dropped (counted and logged when the rows are in memory).

    Raises:
        UsageError: no such column (naming the source, the column and the columns found), or a row whose value is
            not a string (naming its index; streamed sources: checked on the first row).
    """
    names = rows.column_names if isinstance(rows, Dataset) else list(_first_row(rows, source))
    if column not in names:
        raise UsageError(f"{source}: no {column!r} column (found {sorted(names)}); name the column that holds the "
                         "text with --text_column")
    rows = rows.select_columns([column])
    if column != "text":
        rows = rows.rename_column(column, "text")
    if isinstance(rows, IterableDataset):
        value = _first_row(rows, source)["text"]
        if not isinstance(value, str):
            raise UsageError(f"{source}, row 0: {column!r} is {type(value).__name__}, expected a string")
        return rows.filter(lambda row: bool(row["text"] and row["text"].strip()))
    feature = rows.features["text"]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        values = enumerate(rows["text"])
        bad = next((i for i, value in values if value is not None and not isinstance(value, str)), None)
        if bad is None:
            raise UsageError(f"{source}: no text (every {column!r} value is null)")
        raise UsageError(f"{source}, row {bad}: {column!r} is {type(rows[bad]['text']).__name__}, expected a string")
    kept = rows.filter(lambda row: bool(row["text"] and row["text"].strip()))
    if len(kept) < len(rows):
        logger.info("%s: skipped %d of %d rows with empty text", source, len(rows) - len(kept), len(rows))
    if not len(kept):
        raise UsageError(f"{source}: no text (every {column!r} value is empty)")
    return kept


def read_text_file(path: Path, *, text_column: str = "text", txt_documents: str = "line",
                   streaming: bool = False) -> AnyDataset:
    """The documents of one local file as rows ``{"text"}``, in file order.

    Raises:
        UsageError: no such file, an unsupported suffix, an empty file, an unreadable one (naming it), a missing
            text column or a non-string value (naming file, row and column).
    """
    builder, config = _builder(path, txt_documents)
    if not streaming:
        rows = load_local_file(path, builder, TEXT_SUFFIXES, **config)
    else:
        check_data_file(path, TEXT_SUFFIXES)
        rows = datasets.load_dataset(builder, data_files=str(path), split="train", streaming=True, **config)
    return _text_column(rows, str(path), text_column)


def load_text_source(name: str, *, text_column: str = "text", txt_documents: str = "line",
                     streaming: bool = False) -> dict[str, AnyDataset]:
    """One source's documents by split (``train`` and, when present, ``test``), rows ``{"text"}``."""
    options = {"text_column": text_column, "txt_documents": txt_documents, "streaming": streaming}
    path = Path(name).expanduser()
    if path.is_dir():
        return {split: _concatenate([read_text_file(p, **options) for p in paths])
                for split, paths in folder_files(path, TEXT_SUFFIXES).items()}
    if path.exists() or name.startswith(("/", "./", "../", "~")) or name.endswith(TEXT_SUFFIXES):
        return {"train": read_text_file(path, **options)}
    return {split: _text_column(rows, f"{name} ({split})", text_column)
            for split, rows in load_hub_splits(name, streaming=streaming).items()}


def _concatenate(parts: list[AnyDataset]) -> AnyDataset:
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def _split_stream(source: DatasetSource, splits: Mapping[str, IterableDataset],
                  test_size: float | int | None) -> dict[str, IterableDataset]:
    """``train:N`` / ``test:M`` of a streamed source: the first N documents; M of its test split, else the first M
    documents held out (the train stream skips them).

    Raises:
        UsageError: a fractional ``test_size`` (a stream has no length to take a fraction of).
    """
    train = splits["train"]
    if "test" in splits:
        test = splits["test"] if source.test is None else splits["test"].take(source.test)
        return {"train": train if source.train is None else train.take(source.train), "test": test}
    held = source.test
    if held is None and test_size:
        if not isinstance(test_size, int):
            raise UsageError(f"{source.name}: --test_size {test_size} is a fraction, which a stream (--streaming "
                             "True) has no length for; give a count of documents, or test:M in the spec")
        held = test_size
    if not held:
        return {"train": train if source.train is None else train.take(source.train)}
    rest = train.skip(held)
    return {"train": rest if source.train is None else rest.take(source.train), "test": train.take(held)}


def load_text_dataset(spec: str, *, text_column: str = "text", txt_documents: str = "line", streaming: bool = False,
                      seed: int = 42, test_size: float | int | None = None) -> DatasetDict | IterableDatasetDict:
    """Documents (rows ``{"text"}``) of a spec by split, each split the sources' in spec order.

    ``test_size`` (sources without a test split and without ``test:M``): a fraction or a count of documents held
    out, seeded by ``seed`` as :func:`dllm.data.loading.split_source` does (streamed: a count, the first ones).
    """
    if txt_documents not in TXT_DOCUMENTS:
        raise UsageError(f"txt_documents must be one of {', '.join(TXT_DOCUMENTS)}, got {txt_documents!r}")
    per_split: dict[str, list[AnyDataset]] = {}
    for source in parse_dataset_spec(spec):
        splits = load_text_source(source.name, text_column=text_column, txt_documents=txt_documents,
                                  streaming=streaming)
        if streaming:
            chosen = _split_stream(source, splits, test_size)
        else:
            chosen = split_source(source, splits, seed=seed, test_size=test_size)
            logger.info("%s: %s", source.name, ", ".join(f"{s} {len(d)} documents" for s, d in chosen.items()))
        for split, rows in chosen.items():
            per_split.setdefault(split, []).append(rows)
    made = {split: _concatenate(parts) for split, parts in per_split.items()}
    return IterableDatasetDict(made) if streaming else DatasetDict(made)


# ---------------------------------------------------------------------------------------------------------
# Tokenising and packing


def document_end_id(tokenizer: Any) -> int | None:
    """The token that ends every document: EOS, else SEP (encoders), else None."""
    for name in ("eos_token_id", "sep_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return None


def tokenize_documents(rows: Mapping[str, list], tokenizer: Any, end_id: int | None) -> dict[str, list]:
    """``datasets.map(batched=True)`` function: ``text`` to ``input_ids`` with the tokenizer's own special tokens
    (BOS, as a prompt gets at sampling) and ``end_id`` appended unless the tokenizer already ended with it."""
    encoded = tokenizer(rows["text"], add_special_tokens=True)["input_ids"]
    if end_id is not None:
        encoded = [list(ids) if ids and ids[-1] == end_id else [*ids, end_id] for ids in encoded]
    return {"input_ids": encoded}


def crop_rows(rows: Mapping[str, list], indices: list[int], *, fraction: float, seed: int) -> dict[str, list]:
    """``datasets.map(batched=True, with_indices=True)`` function, LLaDA's variable-length trick: each row, with
    probability ``fraction`` (drawn from ``(seed, row index)``, so the same rows every run), is cut after a uniformly
    drawn ``k`` in ``[1, n - 1]`` tokens; the cut-off rest becomes a row of its own (no token is lost). Packs keep
    their ``seq_lengths`` (the document the cut falls in is split)."""
    out: dict[str, list] = {name: [] for name in rows}
    for position, index in enumerate(indices):
        row = {name: values[position] for name, values in rows.items()}
        draw = random.Random(f"{seed}:{index}")
        n = len(row["input_ids"])
        parts = [row]
        if n > 1 and draw.random() < fraction:
            cut = draw.randint(1, n - 1)
            parts = [{name: row[name][:cut] for name in ("input_ids", "labels")},
                     {name: row[name][cut:] for name in ("input_ids", "labels")}]
            if "seq_lengths" in row:
                parts[0]["seq_lengths"], parts[1]["seq_lengths"] = split_lengths(row["seq_lengths"], cut)
        for part in parts:
            for name in out:
                out[name].append(part[name])
    return out


def _log_counts(name: str, documents: Dataset, rows: Dataset, max_seq_length: int, packing: str) -> None:
    tokens = long = 0
    for batch in documents.iter(batch_size=DOCUMENTS_PER_GROUP):  # a batch at a time, never every row at once
        tokens += sum(len(ids) for ids in batch["input_ids"])
        long += sum(len(ids) > max_seq_length for ids in batch["input_ids"])
    logger.info("pretraining %s: %d documents (%d longer than max_seq_length=%d, split), %d tokens in %d rows "
                "(%s packing, %.1f%% of the row positions hold tokens)", name, len(documents), long, max_seq_length,
                tokens, len(rows), packing, 100.0 * tokens / max(1, len(rows) * max_seq_length))


def make_rows(documents: AnyDataset, max_seq_length: int, *, packing: str = "document",
              variable_length_fraction: float = 0.0, seed: int = 42, num_proc: int | None = None,
              name: str = "train") -> AnyDataset:
    """Tokenised documents (``input_ids``) to training rows ``{"input_ids", "labels"[, "seq_lengths"]}`` of at most
    ``max_seq_length`` tokens (see the module docstring)."""
    if packing not in PACKING_MODES:
        raise UsageError(f"packing must be one of {', '.join(PACKING_MODES)}, got {packing!r}")
    function = pack_documents_batch if packing == "document" else concat_batch
    in_memory = isinstance(documents, Dataset)
    extra = {"num_proc": num_proc, "desc": f"{packing} packing {name}"} if in_memory else {}
    rows = documents.map(function, batched=True, batch_size=DOCUMENTS_PER_GROUP, remove_columns=["input_ids"],
                         fn_kwargs={"capacity": max_seq_length}, **extra)
    if variable_length_fraction > 0:
        extra = {"num_proc": num_proc, "desc": f"variable-length rows of {name}"} if in_memory else {}
        rows = rows.map(crop_rows, batched=True, with_indices=True,
                        fn_kwargs={"fraction": variable_length_fraction, "seed": seed}, **extra)
    if in_memory:
        _log_counts(name, documents, rows, max_seq_length, packing)
    return rows


def prepare_pretraining_rows(dataset: DatasetDict | IterableDatasetDict, tokenizer: Any, max_seq_length: int, *,
                             packing: Literal["document", "concat"] = "document", variable_length_fraction: float = 0.0,
                             seed: int = 42, num_proc: int | None = None,
                             shuffle_buffer_size: int = 0) -> DatasetDict | IterableDatasetDict:
    """Every split's documents tokenised once (:func:`tokenize_documents`) and made into rows (:func:`make_rows`);
    a streamed train split is shuffled through a buffer of ``shuffle_buffer_size`` rows (0: in order).

    Raises:
        UsageError: concatenation with a tokenizer that has neither EOS nor SEP to put between documents.
    """
    end_id = document_end_id(tokenizer)
    if end_id is None and packing == "concat":
        raise UsageError("--packing concat puts EOS between documents, and the tokenizer has no eos_token (nor "
                         "sep_token); use --packing document or a tokenizer with an EOS token")
    made = {}
    for split, documents in dataset.items():
        in_memory = isinstance(documents, Dataset)
        extra = {"num_proc": num_proc, "desc": f"tokenizing {split}"} if in_memory else {}
        tokenized = documents.map(tokenize_documents, batched=True, remove_columns=["text"],
                                  fn_kwargs={"tokenizer": tokenizer, "end_id": end_id}, **extra)
        rows = make_rows(tokenized, max_seq_length, packing=packing, variable_length_fraction=(
            variable_length_fraction if split == "train" else 0.0), seed=seed, num_proc=num_proc, name=split)
        if not in_memory and split == "train" and shuffle_buffer_size > 0:
            rows = rows.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
        made[split] = rows
    return DatasetDict(made) if isinstance(dataset, DatasetDict) else IterableDatasetDict(made)
