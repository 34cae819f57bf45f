"""load_sft_dataset: sources (files, folders, hub), formats, seeded disjoint splits, counts and mixing."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict

import dllm.data.utils as data_utils
from dllm.data import alpaca_to_messages, load_sft_dataset

REAL_ALPACA = Path("/work/shared/data/alpaca/alpaca_en_demo.json")


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
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


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
# Sources


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
    assert prompts(dataset["train"]) == [alpaca_to_messages(r, "s", 0)[0]["content"] for r in rows]
    assert dataset["train"][3]["messages"][0]["content"] == "Task 3\n\nin 3"


def test_parquet_message_rows_pass_through(tmp_path) -> None:
    path = write_parquet(tmp_path / "chat.parquet", chat_rows(4))
    assert prompts(load_sft_dataset(str(path))["train"]) == ["Q 0", "Q 1", "Q 2", "Q 3"]


def test_folder_with_train_and_test_files_uses_them(tmp_path) -> None:
    write_jsonl(tmp_path / "ds" / "train.jsonl", chat_rows(5, "train"))
    write_json(tmp_path / "ds" / "test.json", chat_rows(2, "test"))
    write_jsonl(tmp_path / "ds" / "validation.jsonl", chat_rows(3, "val"))  # neither: ignored
    dataset = load_sft_dataset(str(tmp_path / "ds"))
    assert prompts(dataset["train"]) == [f"train {i}" for i in range(5)]
    assert prompts(dataset["test"]) == ["test 0", "test 1"]


def test_folder_with_hub_style_shards(tmp_path) -> None:
    write_parquet(tmp_path / "ds" / "data" / "train-00000-of-00002.parquet", chat_rows(3, "a"))
    write_parquet(tmp_path / "ds" / "data" / "train-00001-of-00002.parquet", chat_rows(2, "b"))
    write_parquet(tmp_path / "ds" / "data" / "test-00000-of-00001.parquet", chat_rows(1, "t"))
    dataset = load_sft_dataset(str(tmp_path / "ds"))
    assert prompts(dataset["train"]) == ["a 0", "a 1", "a 2", "b 0", "b 1"]
    assert prompts(dataset["test"]) == ["t 0"]


def test_folder_without_split_names_is_all_train(tmp_path) -> None:
    write_jsonl(tmp_path / "ds" / "part1.jsonl", alpaca_rows(3, "x"))
    write_json(tmp_path / "ds" / "part2.json", alpaca_rows(2, "y"))
    dataset = load_sft_dataset(str(tmp_path / "ds"))
    assert list(dataset) == ["train"]
    assert prompts(dataset["train"]) == ["x 0\n\nin 0", "x 1", "x 2", "y 0\n\nin 0", "y 1"]


def test_empty_folder_is_an_error(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no data files"):
        load_sft_dataset(str(tmp_path / "empty"))


def fake_hub(monkeypatch, datasets_by_id: dict[str, DatasetDict]) -> list[str]:
    """Replace datasets.load_dataset; returns the list of ids it was called with."""
    calls: list[str] = []

    def load_dataset(name: str) -> DatasetDict:
        calls.append(name)
        return datasets_by_id[name]

    monkeypatch.setattr(data_utils.datasets, "load_dataset", load_dataset)
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
    assert all(p.startswith("Task ") for p in prompts(dataset["train"]) + prompts(dataset["test"]))


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


def test_missing_file_names_the_path(tmp_path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match=f"dataset file not found: {path}"):
        load_sft_dataset(f"{path}[train:3]")


def test_unknown_format_names_source_and_keys(tmp_path) -> None:
    path = write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(ValueError) as info:
        load_sft_dataset(str(path))
    assert str(info.value).startswith(f"{path}: unknown data format, found keys ['question', 'answer']")


def test_invalid_json_names_file_and_line(tmp_path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"messages": []}\n{not json}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.jsonl: invalid JSON at line 2"):
        load_sft_dataset(str(path))


def test_unsupported_suffix(tmp_path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"unsupported file type '\.csv'"):
        load_sft_dataset(str(path))


# ---------------------------------------------------------------------------------------------------------
# Splits and counts


@pytest.fixture
def alpaca_file(tmp_path) -> Path:
    return write_json(tmp_path / "alpaca.json", alpaca_rows(50))


def test_counts_are_honoured_and_split_is_disjoint(alpaca_file) -> None:
    dataset = load_sft_dataset(f"{alpaca_file}[train:30,test:8]", seed=1)
    train, test = set(prompts(dataset["train"])), set(prompts(dataset["test"]))
    assert (len(dataset["train"]), len(dataset["test"])) == (30, 8)
    assert len(train) == 30 and len(test) == 8
    assert not train & test


def test_all_train_rows_with_test_count_uses_the_rest(alpaca_file) -> None:
    dataset = load_sft_dataset(f"{alpaca_file}[test:8]")
    train, test = set(prompts(dataset["train"])), set(prompts(dataset["test"]))
    assert (len(train), len(test)) == (42, 8)
    assert len(train | test) == 50


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


def test_test_size_holds_out_a_fraction(alpaca_file) -> None:
    dataset = load_sft_dataset(str(alpaca_file), test_size=0.2)
    assert (len(dataset["train"]), len(dataset["test"])) == (40, 10)
    assert not set(prompts(dataset["train"])) & set(prompts(dataset["test"]))
    assert list(load_sft_dataset(str(alpaca_file))) == ["train"]


@pytest.mark.parametrize(
    ("spec_suffix", "message"),
    [
        ("[train:51]", "train: asked for 51 rows but only 50 are available"),
        ("[train:45,test:10]", "train: asked for 45 rows but only 40 are available"),
        ("[test:50]", "test: asked for 50 held-out rows but the source has only 50 rows"),
    ],
)
def test_counts_larger_than_available_are_errors(alpaca_file, spec_suffix: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_sft_dataset(f"{alpaca_file}{spec_suffix}")


def test_counts_on_source_with_own_test_split(tmp_path) -> None:
    write_jsonl(tmp_path / "ds" / "train.jsonl", chat_rows(10, "train"))
    write_jsonl(tmp_path / "ds" / "test.jsonl", chat_rows(6, "test"))
    dataset = load_sft_dataset(f"{tmp_path / 'ds'}[train:3,test:2]", seed=0)
    assert len(dataset["train"]) == 3 and set(prompts(dataset["train"])) <= {f"train {i}" for i in range(10)}
    assert len(dataset["test"]) == 2 and set(prompts(dataset["test"])) <= {f"test {i}" for i in range(6)}
    with pytest.raises(ValueError, match="test: asked for 7 rows but only 6"):
        load_sft_dataset(f"{tmp_path / 'ds'}[test:7]")


# ---------------------------------------------------------------------------------------------------------
# Mixing


def test_mixing_concatenates_per_split(tmp_path) -> None:
    a = write_json(tmp_path / "a.json", alpaca_rows(20, "alpaca"))
    b = write_jsonl(tmp_path / "b.jsonl", chat_rows(20, "chat"))
    dataset = load_sft_dataset(f"{a}[train:10]+{b}[train:5,test:3]")
    train, test = prompts(dataset["train"]), prompts(dataset["test"])
    assert len(train) == 15 and len(test) == 3
    assert sum(p.startswith("alpaca") for p in train[:10]) == 10  # spec order: a first, then b
    assert sum(p.startswith("chat") for p in train[10:]) == 5
    assert all(p.startswith("chat") for p in test)
    assert not set(train) & set(test)


def test_mixing_sources_with_different_columns_is_an_error(tmp_path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", chat_rows(3))
    b = write_jsonl(tmp_path / "b.jsonl", [dict(r, images=["x.jpg"]) for r in chat_rows(3)])
    with pytest.raises(ValueError, match="cannot mix sources with different columns"):
        load_sft_dataset(f"{a}+{b}")


# ---------------------------------------------------------------------------------------------------------
# Real data (present on the project's machines, never copied into the repository)


@pytest.mark.skipif(not REAL_ALPACA.is_file(), reason=f"real data file {REAL_ALPACA} not present")
def test_real_alpaca_demo_file() -> None:
    dataset = load_sft_dataset(f"{REAL_ALPACA}[train:900,test:99]", seed=0)
    assert (len(dataset["train"]), len(dataset["test"])) == (900, 99)
    rows = json.loads(REAL_ALPACA.read_text(encoding="utf-8"))
    expected = [alpaca_to_messages(r, "s", i)[0]["content"] for i, r in enumerate(rows)]
    train, test = prompts(dataset["train"]), prompts(dataset["test"])
    assert sorted(train + test) == sorted(expected)  # all 999 rows used, each exactly once
    assert all(row["messages"][1]["role"] == "assistant" for row in dataset["test"])
