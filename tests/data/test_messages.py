"""Row validation: every malformed row names its source, row index and problem; skip mode counts and logs."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from dllm.data import DataValidationError, load_sft_dataset

USER = {"role": "user", "content": "hi"}
ASSISTANT = {"role": "assistant", "content": "hello"}
GOOD = {"messages": [USER, ASSISTANT]}

# (bad row, problem category, exact detail after "<source> row <index>: ")
MESSAGE_CASES = [
    ({"other": 1}, "missing messages", "'messages' is missing"),
    ({"messages": []}, "empty messages", "'messages' is empty"),
    ({"messages": "hi"}, "messages not a list", "'messages' must be a list, got str"),
    ({"messages": [USER, "hello"]}, "malformed message", "messages[1] must be an object, got str"),
    (
        {"messages": [{"role": "bot", "content": "x"}, ASSISTANT]},
        "unknown role",
        "messages[0].role must be one of system, user, assistant, got 'bot'",
    ),
    (
        {"messages": [USER, {"role": "assistant", "content": 7}]},
        "non-string content",
        "messages[1].content must be a string, got int",
    ),
    ({"messages": [USER, USER]}, "no assistant turn", "no assistant turn (roles: user, user)"),
    (
        {"messages": [{"role": "user", "content": "  "}, ASSISTANT]},
        "empty content",
        "messages[0].content is empty",
    ),
    ([1, 2], "not an object", "expected an object, got list"),
]

ALPACA_CASES = [
    ({"instruction": "Do", "input": "", "output": 3}, "non-string field", "'output' must be a string, got int"),
    ({"instruction": "", "input": "", "output": "ok"}, "empty field", "'instruction' is empty"),
    ({"instruction": "Do", "input": 5, "output": "ok"}, "non-string field", "'input' must be a string, got int"),
    ({"instruction": "Do", "input": "x"}, "missing field", "'output' is missing"),
]


def _write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(("bad", "problem", "detail"), MESSAGE_CASES, ids=[c[1] for c in MESSAGE_CASES])
def test_malformed_message_row_names_source_index_and_problem(tmp_path, bad, problem, detail) -> None:
    path = _write_jsonl(tmp_path / "chat.jsonl", [GOOD, GOOD, bad, GOOD])
    with pytest.raises(DataValidationError) as info:
        load_sft_dataset(str(path))
    assert str(info.value) == f"{path} row 2: {detail}"
    assert (info.value.source, info.value.index, info.value.problem) == (str(path), 2, problem)


@pytest.mark.parametrize(("bad", "problem", "detail"), ALPACA_CASES, ids=[c[2] for c in ALPACA_CASES])
def test_malformed_alpaca_row_names_source_index_and_problem(tmp_path, bad, problem, detail) -> None:
    good = {"instruction": "Say hi", "input": "", "output": "hi"}
    path = tmp_path / "alpaca_en_demo.json"
    path.write_text(json.dumps([good] * 17 + [bad, good]), encoding="utf-8")
    with pytest.raises(DataValidationError) as info:
        load_sft_dataset(str(path))
    assert str(info.value) == f"{path} row 17: {detail}"
    assert info.value.problem == problem


def test_error_index_is_source_row_even_when_subsampling(tmp_path) -> None:
    """Validation runs on the whole source before the split, so the index is the file's row index."""
    rows = [GOOD] * 30 + [{"messages": [USER, {"role": "assistant", "content": 1}]}]
    path = _write_jsonl(tmp_path / "chat.jsonl", rows)
    with pytest.raises(ValueError) as info:  # callers may catch the documented ValueError
        load_sft_dataset(f"{path}[train:5,test:2]")
    assert type(info.value) is DataValidationError
    assert str(info.value) == f"{path} row 30: messages[1].content must be a string, got int"


def test_null_row_reads_as_a_row_without_fields(tmp_path) -> None:
    """datasets reads a JSON ``null`` row as a row whose every column is null."""
    path = _write_jsonl(tmp_path / "chat.jsonl", [GOOD, None, GOOD])
    with pytest.raises(DataValidationError) as info:
        load_sft_dataset(str(path))
    assert str(info.value) == f"{path} row 1: 'messages' is missing"


def test_skip_invalid_drops_counts_and_logs_once(tmp_path, caplog) -> None:
    bad_role = {"messages": [{"role": "bot", "content": "x"}, ASSISTANT]}
    bad_content = {"messages": [USER, {"role": "assistant", "content": None}]}
    rows = [GOOD, bad_role, GOOD, bad_content, bad_role, GOOD]
    path = _write_jsonl(tmp_path / "chat.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="dllm.data"):
        dataset = load_sft_dataset(str(path), skip_invalid=True)
    assert len(dataset["train"]) == 3
    assert [row["messages"] for row in dataset["train"]] == [GOOD["messages"]] * 3
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("dllm.") and r.levelno >= logging.WARNING]
    assert warnings == [
        f"{path}: skipped 3 of 6 rows as invalid (unknown role: 2, non-string content: 1). First of each: "
        f"{path} row 1: messages[0].role must be one of system, user, assistant, got 'bot'; "
        f"{path} row 3: messages[1].content must be a string, got NoneType"
    ]


def test_skip_invalid_skips_a_row_whose_field_has_another_type(tmp_path, caplog) -> None:
    rows = [{"instruction": f"Do {i}", "input": "", "output": "ok"} for i in range(4)]
    rows[2]["output"] = ["not", "a", "string"]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="dllm.data"):
        dataset = load_sft_dataset(str(path), skip_invalid=True)
    assert [row["messages"][0]["content"] for row in dataset["train"]] == ["Do 0", "Do 1", "Do 3"]
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("dllm.") and r.levelno >= logging.WARNING]
    assert warnings == [
        f"{path}: skipped 1 of 4 rows as invalid (non-string field: 1). First of each: "
        f"{path} row 2: 'output' must be a string, got list"
    ]


def test_skip_invalid_with_every_row_bad_raises(tmp_path) -> None:
    path = _write_jsonl(tmp_path / "chat.jsonl", [{"messages": []}] * 3)
    with pytest.raises(ValueError, match=r"chat\.jsonl: all 3 rows are invalid"):
        load_sft_dataset(str(path), skip_invalid=True)


def test_valid_rows_keep_images_and_drop_other_keys(tmp_path) -> None:
    system = {"role": "system", "content": "Be brief.", "name": "sys"}
    user = {"role": "user", "content": "<image>hi"}
    rows = [{"messages": [system, user, ASSISTANT], "images": ["a.jpg"], "id": 1}]
    path = _write_jsonl(tmp_path / "mm.jsonl", rows)
    (tmp_path / "a.jpg").touch()  # the image exists: loading checks that much, not its pixels
    row = load_sft_dataset(str(path))["train"][0]
    # image paths are made absolute against the data file (the multimodal format), other keys dropped
    assert row == {"messages": [{"role": "system", "content": "Be brief."}, user, ASSISTANT],
                   "images": [str(tmp_path / "a.jpg")]}


def test_first_row_malformed_is_a_row_error_not_an_unknown_format(tmp_path) -> None:
    path = _write_jsonl(tmp_path / "chat.jsonl", [{"msgs": []}, GOOD])
    with pytest.raises(DataValidationError, match=r"chat\.jsonl row 0: 'messages' is missing"):
        load_sft_dataset(str(path))
