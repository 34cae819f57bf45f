"""load_sft_dataset: sources (files, folders, hub), read errors, formats, seeded disjoint splits and mixing."""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import socket
from pathlib import Path

import datasets
import pytest
from datasets import Dataset, DatasetDict

import dllm.data.loading as loading
from dllm.errors import UsageError
from dllm.data import (
    MESSAGES_FORMAT,
    NAMED_FORMATS,
    DataValidationError,
    RowFormat,
    alpaca_to_messages,
    load_sft_dataset,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = "examples/data/alpaca_example.json"  # relative to ROOT, as the docs write it
# Real data kept next to the repository on the project's machines, never copied into it.
REAL_DATA = ROOT.parent / "shared" / "data"


def alpaca_rows(n: int, prefix: str = "Task") -> list[dict[str, str]]:
    """Alpaca rows whose instruction identifies them; every third row has an input."""
    return [
        {"instruction": f"{prefix} {i}", "input": f"in {i}" if i % 3 == 0 else "", "output": f"Answer {i}"}
        for i in range(n)
    ]


def chat_rows(n: int, prefix: str = "Q") -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"{prefix} {i}"}, {"role": "assistant", "content": f"A {i}"}]}
        for i in range(n)
    ]


def prompts(dataset: Dataset) -> list[str]:
    """First user message of each row, i.e. the row's identity in these fixtures."""
    return [row["messages"][0]["content"] for row in dataset]


def expected_prompts(rows: list[dict]) -> list[str]:
    return [alpaca_to_messages(r, "s", i)[0]["content"] for i, r in enumerate(rows)]


def write_json(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(rows).to_parquet(str(path))
    return path


# ---------------------------------------------------------------------------------------------------------
# Module layout


def test_utils_reexports_the_loader_and_the_spec_grammar() -> None:
    from dllm.data import spec
    from dllm.data.utils import DatasetSource, NAMED_FORMATS as utils_formats, load_sft_dataset as utils_load
    from dllm.data.utils import load_source_splits, parse_dataset_spec

    assert utils_load is loading.load_sft_dataset
    assert load_source_splits is loading.load_source_splits
    assert utils_formats is loading.NAMED_FORMATS
    assert parse_dataset_spec is spec.parse_dataset_spec
    assert DatasetSource is spec.DatasetSource


def test_nothing_imports_pyarrow_directly() -> None:
    """pyarrow comes with datasets (and is no dev extra); dllm and its tests read files through datasets."""
    offenders = []
    for path in sorted([*(ROOT / "dllm").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "pyarrow"]
    assert offenders == []


# ---------------------------------------------------------------------------------------------------------
# Alpaca conversion


def test_alpaca_without_input_is_instruction_only() -> None:
    row = {"instruction": "Name a color.", "input": "", "output": "Blue."}
    assert alpaca_to_messages(row, "s", 0) == [
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": "Blue."},
    ]


def test_alpaca_with_input_appends_it_after_blank_line() -> None:
    row = {"instruction": "Translate to French.", "input": "cat", "output": "chat"}
    assert alpaca_to_messages(row, "s", 0)[0] == {"role": "user", "content": "Translate to French.\n\ncat"}


def test_alpaca_missing_input_key_is_allowed() -> None:
    assert alpaca_to_messages({"instruction": "Hi", "output": "Yo"}, "s", 0)[0]["content"] == "Hi"


# ---------------------------------------------------------------------------------------------------------
# Local files


@pytest.mark.parametrize("writer", ["json_array", "json_lines_in_json", "jsonl", "parquet"])
def test_local_file_formats_load_all_rows_in_order(tmp_path, writer: str) -> None:
    rows = alpaca_rows(7)
    path = {
        "json_array": lambda: write_json(tmp_path / "d.json", rows),
        "json_lines_in_json": lambda: write_jsonl(tmp_path / "d.json", rows),
        "jsonl": lambda: write_jsonl(tmp_path / "d.jsonl", rows),
        "parquet": lambda: write_parquet(tmp_path / "d.parquet", rows),
    }[writer]()
    dataset = load_sft_dataset(str(path))
    assert list(dataset) == ["train"]
    assert prompts(dataset["train"]) == expected_prompts(rows)
    assert dataset["train"][3]["messages"] == [
        {"role": "user", "content": "Task 3\n\nin 3"},
        {"role": "assistant", "content": "Answer 3"},
    ]


def test_parquet_message_rows_pass_through(tmp_path) -> None:
    path = write_parquet(tmp_path / "chat.parquet", chat_rows(4))
    assert prompts(load_sft_dataset(str(path))["train"]) == ["Q 0", "Q 1", "Q 2", "Q 3"]


def test_one_row_jsonl_file_is_one_row(tmp_path) -> None:
    path = write_jsonl(tmp_path / "one.jsonl", alpaca_rows(1))
    assert prompts(load_sft_dataset(str(path))["train"]) == ["Task 0\n\nin 0"]


def test_rows_with_a_field_of_mixed_types_are_row_errors(tmp_path) -> None:
    """datasets stores a column of mixed JSON types as JSON; validation still sees (and names) the bad row."""
    rows = alpaca_rows(5)
    rows[3]["output"] = 42
    path = write_json(tmp_path / "mixed.json", rows)
    with pytest.raises(DataValidationError, match=r"mixed\.json row 3: 'output' must be a string, got int$"):
        load_sft_dataset(str(path))


def test_rewritten_file_is_reloaded_not_served_from_cache(tmp_path) -> None:
    """datasets keys its cache of a local file on path and mtime; a rewrite with the same mtime is still seen."""
    path = write_jsonl(tmp_path / "d.jsonl", alpaca_rows(3, "old"))
    assert prompts(load_sft_dataset(str(path))["train"]) == ["old 0\n\nin 0", "old 1", "old 2"]
    stat = path.stat()
    write_jsonl(path, alpaca_rows(3, "new"))  # same size, same path
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert prompts(load_sft_dataset(str(path))["train"]) == ["new 0\n\nin 0", "new 1", "new 2"]


def test_local_loading_opens_no_network_connection(tmp_path, monkeypatch) -> None:
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access in a local-data test")

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # what HF_HUB_OFFLINE=1 would hide
    monkeypatch.setattr(socket, "getaddrinfo", refuse)  # name lookups come first
    monkeypatch.setattr(socket.socket, "connect", refuse)
    write_jsonl(tmp_path / "ds" / "train.jsonl", chat_rows(3))
    file_path = write_json(tmp_path / "a.json", alpaca_rows(4))
    assert len(load_sft_dataset(f"{tmp_path / 'ds'}+{file_path}")["train"]) == 7
    assert attempts == []


# Each case: file name, content (str or bytes), expected message after "<path>: ".
READ_ERRORS = [
    ("empty.json", "", r"no rows \(empty file\)$"),
    ("empty.jsonl", "", r"no rows \(empty file\)$"),
    ("blank.jsonl", "\n  \n", r"no rows$"),
    ("empty_array.json", "[]", r"no rows$"),
    ("object.json", '{"a": 1}', r"one JSON object instead of rows; expected a JSON array of rows or JSON lines"),
    (
        "pretty_object.json",
        json.dumps({"instruction": "x", "output": "y"}, indent=2),
        r"one JSON object instead of rows; expected a JSON array of rows or JSON lines",
    ),
    ("broken.jsonl", '{"messages": []}\n\n{not json}\n', r"invalid JSON at line 3: Expecting property name"),
    ("broken.json", '[{"a": 1},\n {"a": }\n]', r"invalid JSON at line 2: Expecting value"),
    ("truncated.json", '[{"a": 1},\n {"a": 2}', r"invalid JSON at line 2: Expecting ',' delimiter"),
    ("latin1.jsonl", '{"instruction": "caf\xe9", "output": "x"}\n'.encode("latin-1"), r"not UTF-8 text \("),
    ("latin1.json", '[{"instruction": "caf\xe9", "output": "x"}]'.encode("latin-1"), r"not UTF-8 text \("),
    ("garbage.parquet", b"not a parquet file", r"not a readable parquet file \(ArrowInvalid: "),
]


@pytest.mark.parametrize(("name", "content", "message"), READ_ERRORS, ids=[c[0] for c in READ_ERRORS])
def test_unreadable_file_is_a_one_line_value_error_naming_it(tmp_path, name, content, message) -> None:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    with pytest.raises(ValueError) as info:
        load_sft_dataset(f"{path}[train:1]")
    assert type(info.value) is UsageError  # dllm's own one-line error, not a datasets/Arrow exception
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: ")
    assert re.search(message, text.removeprefix(f"{path}: ")), text


def test_zero_row_parquet_file_is_an_error(tmp_path) -> None:
    path = write_parquet(tmp_path / "zero.parquet", chat_rows(2))
    Dataset.from_list(chat_rows(2)).select([]).to_parquet(str(path))
    with pytest.raises(ValueError, match=rf"^{path}: no rows$"):
        load_sft_dataset(str(path))


@pytest.mark.parametrize(("writer", "name"), [(write_json, "rows.json"), (write_jsonl, "rows.jsonl")])
def test_row_that_is_not_an_object_names_its_index(tmp_path, writer, name: str) -> None:
    """datasets cannot read such a file at all; the error still names the row, even with skip_invalid."""
    path = writer(tmp_path / name, [*chat_rows(3), "text", *chat_rows(1)])
    with pytest.raises(DataValidationError) as info:
        load_sft_dataset(str(path), skip_invalid=True)
    assert str(info.value) == f"{path} row 3: expected an object, got str"


def test_missing_file_names_the_path(tmp_path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match=f"^dataset file not found: {path}$"):
        load_sft_dataset(f"{path}[train:3]")


def test_unsupported_suffix(tmp_path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^{path}: unsupported file type '\.csv'"):
        load_sft_dataset(str(path))


def test_unknown_format_names_source_and_keys(tmp_path) -> None:
    path = write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(ValueError) as info:
        load_sft_dataset(str(path))
    assert str(info.value).startswith(f"{path}: unknown data format, found keys ['question', 'answer']")


# ---------------------------------------------------------------------------------------------------------
# Folders


def test_folder_with_train_and_test_files_uses_them_and_warns_about_the_rest(tmp_path, caplog) -> None:
    folder = tmp_path / "ds"
    write_jsonl(folder / "train.jsonl", chat_rows(5, "train"))
    write_json(folder / "test.json", chat_rows(2, "test"))
    write_jsonl(folder / "validation.jsonl", chat_rows(3, "val"))  # named neither: ignored
    write_jsonl(folder / ".hidden.jsonl", chat_rows(1, "hidden"))  # hidden: not a data file
    (folder / "README.md").write_text("# notes\n", encoding="utf-8")  # not a data file
    with caplog.at_level(logging.WARNING, logger="dllm.data.loading"):
        dataset = load_sft_dataset(str(folder))
    assert prompts(dataset["train"]) == [f"train {i}" for i in range(5)]
    assert prompts(dataset["test"]) == ["test 0", "test 1"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "dllm.data.loading"]
    ignored = [str(folder / "validation.jsonl")]
    assert warnings == [f"{folder}: ignoring data files named neither train nor test: {ignored}"]


def test_folder_with_hub_style_shards(tmp_path) -> None:
    write_parquet(tmp_path / "ds" / "data" / "train-00000-of-00002.parquet", chat_rows(3, "a"))
    write_parquet(tmp_path / "ds" / "data" / "train-00001-of-00002.parquet", chat_rows(2, "b"))
    write_parquet(tmp_path / "ds" / "data" / "test-00000-of-00001.parquet", chat_rows(1, "t"))
    dataset = load_sft_dataset(str(tmp_path / "ds"))
    assert prompts(dataset["train"]) == ["a 0", "a 1", "a 2", "b 0", "b 1"]
    assert prompts(dataset["test"]) == ["t 0"]


def test_folder_with_split_subfolders_and_datasets_test_keywords(tmp_path) -> None:
    write_jsonl(tmp_path / "ds" / "train" / "part-0.jsonl", chat_rows(2, "train"))
    write_jsonl(tmp_path / "ds" / "eval" / "part-0.jsonl", chat_rows(1, "eval"))  # datasets: eval names test
    dataset = load_sft_dataset(str(tmp_path / "ds"))
    assert prompts(dataset["train"]) == ["train 0", "train 1"]
    assert prompts(dataset["test"]) == ["eval 0"]


def test_folder_without_split_names_is_all_train(tmp_path) -> None:
    write_jsonl(tmp_path / "ds" / "part1.jsonl", alpaca_rows(3, "x"))
    write_json(tmp_path / "ds" / "part2.json", alpaca_rows(2, "y"))
    dataset = load_sft_dataset(str(tmp_path / "ds"))
    assert list(dataset) == ["train"]
    assert prompts(dataset["train"]) == ["x 0\n\nin 0", "x 1", "x 2", "y 0\n\nin 0", "y 1"]


def test_folder_whose_only_split_name_is_on_a_non_data_file_is_all_train(tmp_path) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train.csv").write_text("a\n1\n", encoding="utf-8")
    write_jsonl(tmp_path / "ds" / "data.jsonl", chat_rows(2))
    assert prompts(load_sft_dataset(str(tmp_path / "ds"))["train"]) == ["Q 0", "Q 1"]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ([], "no data files (.json, .jsonl, .parquet) in folder"),
        (["notes.txt"], "no data files (.json, .jsonl, .parquet) in folder"),
        (["test.jsonl"], "has test files but no train files"),
        (["train.jsonl", "train_test.jsonl"], "file names match both train and test: ["),
    ],
)
def test_bad_folders_are_errors_naming_the_folder(tmp_path, files: list[str], message: str) -> None:
    folder = tmp_path / "ds"
    folder.mkdir()
    for name in files:
        write_jsonl(folder / name, chat_rows(1))
    with pytest.raises(ValueError) as info:
        load_sft_dataset(str(folder))
    assert str(info.value).startswith(f"{folder}: {message}")


# ---------------------------------------------------------------------------------------------------------
# Hub ids and named formats


def fake_hub(monkeypatch, datasets_by_id: dict[str, DatasetDict]) -> list[str]:
    """Replace datasets.load_dataset for hub ids; returns the list of ids it was called with."""
    calls: list[str] = []

    def load_dataset(name: str, **kwargs) -> DatasetDict:
        assert kwargs == {}, f"a hub id is loaded with datasets' defaults, got {kwargs}"
        calls.append(name)
        return datasets_by_id[name]

    monkeypatch.setattr(loading.datasets, "load_dataset", load_dataset)
    return calls


def test_hub_id_goes_through_load_dataset_and_alpaca_registry(monkeypatch) -> None:
    rows = alpaca_rows(10)
    for row in rows:
        row["text"] = "pre-rendered prompt, ignored"
    calls = fake_hub(monkeypatch, {"tatsu-lab/alpaca": DatasetDict({"train": Dataset.from_list(rows)})})
    dataset = load_sft_dataset("tatsu-lab/alpaca[train:4,test:2]")
    assert calls == ["tatsu-lab/alpaca"]
    assert (len(dataset["train"]), len(dataset["test"])) == (4, 2)
    assert dataset["train"].column_names == ["messages"]
    drawn = prompts(dataset["train"]) + prompts(dataset["test"])
    assert len(set(drawn)) == 6 and set(drawn) <= set(expected_prompts(rows))


def test_named_format_registry_is_used_before_detection(monkeypatch) -> None:
    """A source registered in NAMED_FORMATS is converted by its format even when its columns match another."""

    def question_answer(row, source, index):
        return [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"]}]

    fmt = RowFormat("qa", ("question", "answer"), frozenset({"question", "answer"}), question_answer)
    monkeypatch.setitem(NAMED_FORMATS, "org/qa", fmt)
    rows = [{"question": "Why?", "answer": "Because.", "messages": None}]
    assert MESSAGES_FORMAT.required <= set(rows[0])  # so detection alone would pick the messages format
    fake_hub(monkeypatch, {"org/qa": DatasetDict({"train": Dataset.from_list(rows)})})
    assert load_sft_dataset("org/qa")["train"][0]["messages"] == question_answer(rows[0], "", 0)


def test_hub_test_split_is_used_and_errors_name_the_split(monkeypatch) -> None:
    bad = chat_rows(3)
    bad[1]["messages"][1]["role"] = "bot"
    hub = DatasetDict({"train": Dataset.from_list(chat_rows(6)), "test": Dataset.from_list(bad)})
    fake_hub(monkeypatch, {"org/chat": hub})
    with pytest.raises(ValueError, match=r"^org/chat \(test\) row 1: messages\[1\]\.role must be one of"):
        load_sft_dataset("org/chat")
    hub["test"] = Dataset.from_list(chat_rows(3, "held"))
    dataset = load_sft_dataset("org/chat[train:4]")
    assert len(dataset["train"]) == 4
    assert prompts(dataset["test"]) == ["held 0", "held 1", "held 2"]


def test_hub_without_train_split_is_an_error(monkeypatch) -> None:
    fake_hub(monkeypatch, {"org/x": DatasetDict({"validation": Dataset.from_list(chat_rows(2))})})
    with pytest.raises(ValueError, match=r"org/x: no 'train' split; found \['validation'\]"):
        load_sft_dataset("org/x")


# ---------------------------------------------------------------------------------------------------------
# Splits and counts


@pytest.fixture
def alpaca_file(tmp_path) -> Path:
    return write_json(tmp_path / "alpaca.json", alpaca_rows(50))


def test_counts_are_honoured_and_split_is_disjoint(alpaca_file) -> None:
    dataset = load_sft_dataset(f"{alpaca_file}[train:30,test:8]", seed=1)
    train, test = prompts(dataset["train"]), prompts(dataset["test"])
    assert (len(set(train)), len(set(test))) == (30, 8)  # distinct rows
    assert (len(train), len(test)) == (30, 8)
    assert not set(train) & set(test)
    assert set(train) | set(test) <= set(expected_prompts(alpaca_rows(50)))


def test_all_train_rows_with_test_count_uses_the_rest(alpaca_file) -> None:
    dataset = load_sft_dataset(f"{alpaca_file}[test:8]")
    train, test = prompts(dataset["train"]), prompts(dataset["test"])
    assert (len(train), len(test)) == (42, 8)
    assert sorted(train + test) == sorted(expected_prompts(alpaca_rows(50)))


def test_same_seed_same_split_different_seed_different_split(alpaca_file) -> None:
    spec = f"{alpaca_file}[train:10,test:5]"
    first, again = load_sft_dataset(spec, seed=3), load_sft_dataset(spec, seed=3)
    other = load_sft_dataset(spec, seed=4)
    assert prompts(first["train"]) == prompts(again["train"])
    assert prompts(first["test"]) == prompts(again["test"])
    assert set(prompts(first["train"])) != set(prompts(other["train"]))
    assert set(prompts(first["test"])) != set(prompts(other["test"]))


def test_train_rows_do_not_depend_on_test_count(alpaca_file) -> None:
    """A larger test split does not reshuffle the train rows (they come from the other end)."""
    small = load_sft_dataset(f"{alpaca_file}[train:10,test:2]")
    large = load_sft_dataset(f"{alpaca_file}[train:10,test:20]")
    assert prompts(small["train"]) == prompts(large["train"])
    assert prompts(small["test"]) != prompts(large["test"])


def test_test_size_holds_out_a_fraction(alpaca_file) -> None:
    dataset = load_sft_dataset(str(alpaca_file), test_size=0.2)
    assert (len(dataset["train"]), len(dataset["test"])) == (40, 10)
    assert not set(prompts(dataset["train"])) & set(prompts(dataset["test"]))
    assert list(load_sft_dataset(str(alpaca_file))) == ["train"]


@pytest.mark.parametrize("test_size", [0.0, 1.0, 0, -3, "0.1"])
def test_bad_test_size_is_an_error(alpaca_file, test_size) -> None:
    with pytest.raises(ValueError, match=r"test_size must be a fraction in \(0, 1\) or a positive int"):
        load_sft_dataset(str(alpaca_file), test_size=test_size)


@pytest.mark.parametrize(
    ("spec_suffix", "message"),
    [
        ("[train:51]", "train: asked for 51 rows but only 50 are available"),
        ("[train:45,test:10]", "train: asked for 45 rows but only 40 are available"),
        ("[test:50]", "test: asked for 50 held-out rows but the source has only 50 rows"),
    ],
)
def test_counts_larger_than_available_are_errors(alpaca_file, spec_suffix: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{alpaca_file} {message}$"):
        load_sft_dataset(f"{alpaca_file}{spec_suffix}")


def test_counts_on_source_with_own_test_split(tmp_path) -> None:
    write_jsonl(tmp_path / "ds" / "train.jsonl", chat_rows(10, "train"))
    write_jsonl(tmp_path / "ds" / "test.jsonl", chat_rows(6, "test"))
    dataset = load_sft_dataset(f"{tmp_path / 'ds'}[train:3,test:2]", seed=0)
    train, test = prompts(dataset["train"]), prompts(dataset["test"])
    assert len(set(train)) == 3 and set(train) <= {f"train {i}" for i in range(10)}
    assert len(set(test)) == 2 and set(test) <= {f"test {i}" for i in range(6)}
    with pytest.raises(ValueError, match="test: asked for 7 rows but only 6 are available"):
        load_sft_dataset(f"{tmp_path / 'ds'}[test:7]")


# ---------------------------------------------------------------------------------------------------------
# Mixing


def test_mixing_concatenates_per_split(tmp_path) -> None:
    a = write_json(tmp_path / "a.json", alpaca_rows(20, "alpaca"))
    b = write_jsonl(tmp_path / "b.jsonl", chat_rows(20, "chat"))
    dataset = load_sft_dataset(f"{a}[train:10]+{b}[train:5,test:3]")
    train, test = prompts(dataset["train"]), prompts(dataset["test"])
    assert len(train) == 15 and len(test) == 3
    assert all(p.startswith("alpaca") for p in train[:10])  # spec order: a first, then b
    assert all(p.startswith("chat") for p in train[10:])
    assert all(p.startswith("chat") for p in test)
    assert not set(train) & set(test)


def test_mixing_sources_with_different_columns_is_an_error(tmp_path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", chat_rows(3))
    with_image = [{"messages": [{**r["messages"][0], "content": "<image>" + r["messages"][0]["content"]},
                                *r["messages"][1:]], "images": ["x.jpg"]} for r in chat_rows(3)]
    b = write_jsonl(tmp_path / "b.jsonl", with_image)
    (tmp_path / "x.jpg").touch()  # the image exists: loading checks that much, not its pixels
    with pytest.raises(ValueError, match="cannot mix sources with different columns"):
        load_sft_dataset(f"{a}+{b}")


# ---------------------------------------------------------------------------------------------------------
# The example file shipped in the repository, and real data next to it


def test_example_file_loads_as_documented(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    rows = json.loads((ROOT / EXAMPLE).read_text(encoding="utf-8"))
    dataset = load_sft_dataset(f"{EXAMPLE}[train:30,test:5]")
    train, test = prompts(dataset["train"]), prompts(dataset["test"])
    assert (len(train), len(test)) == (30, 5)
    assert not set(train) & set(test)
    assert set(train) | set(test) <= set(expected_prompts(rows))
    everything = load_sft_dataset(EXAMPLE)["train"]  # every row is valid
    assert prompts(everything) == expected_prompts(rows)
    assert len(rows) == 40 and sum(bool(r["input"]) for r in rows) >= 3


@pytest.mark.parametrize(("name", "n_rows"), [("alpaca_en_demo.json", 999), ("alpaca_zh_demo.json", 1000)])
def test_real_alpaca_demo_file(name: str, n_rows: int) -> None:
    path = REAL_DATA / "alpaca" / name
    if not path.is_file():
        pytest.skip(f"real data file {name} not present in the shared data folder next to the repository")
    n_test = 99
    dataset = load_sft_dataset(f"{path}[train:{n_rows - n_test},test:{n_test}]", seed=0)
    assert (len(dataset["train"]), len(dataset["test"])) == (n_rows - n_test, n_test)
    rows = json.loads(path.read_text(encoding="utf-8"))
    assert len(rows) == n_rows
    loaded = [tuple(m["content"] for m in row["messages"]) for split in ("train", "test") for row in dataset[split]]
    expected = [(prompt, row["output"]) for prompt, row in zip(expected_prompts(rows), rows)]
    assert sorted(loaded) == sorted(expected)  # every row used, each exactly once, output kept
