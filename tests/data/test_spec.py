"""Dataset spec grammar: ``name_or_path[train:N,test:M]`` joined by ``+``."""

from __future__ import annotations

import pytest

from dllm.data import DatasetSource, parse_dataset_spec


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("tatsu-lab/alpaca", [DatasetSource("tatsu-lab/alpaca")]),
        ("data/a.json[train:100]", [DatasetSource("data/a.json", train=100)]),
        ("a.jsonl[test:5]", [DatasetSource("a.jsonl", test=5)]),
        ("a.json[train:100,test:10]", [DatasetSource("a.json", train=100, test=10)]),
        ("a.json[ test : 10 , train:100 ]", [DatasetSource("a.json", train=100, test=10)]),
        ("  my data/a b.json [train:1]  ", [DatasetSource("my data/a b.json", train=1)]),
        (
            "a.json[train:100]+b.jsonl[train:50,test:5] + org/hub",
            [DatasetSource("a.json", 100, None), DatasetSource("b.jsonl", 50, 5), DatasetSource("org/hub")],
        ),
    ],
)
def test_parse_valid_specs(spec: str, expected: list[DatasetSource]) -> None:
    assert parse_dataset_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("x[train:abc]", "bad spec 'x[train:abc]': train count must be a positive integer, got 'abc'"),
        ("x[train:0]", "bad spec 'x[train:0]': train count must be a positive integer, got '0'"),
        ("x[train:-3]", "bad spec 'x[train:-3]': train count must be a positive integer, got '-3'"),
        ("x[valid:3]", "bad spec 'x[valid:3]': unknown key 'valid'; expected 'train' or 'test'"),
        ("x[train:1,train:2]", "bad spec 'x[train:1,train:2]': 'train' given twice"),
        ("x[train]", "bad spec 'x[train]': expected 'key:count', got 'train'"),
        ("x[]", "bad spec 'x[]': empty brackets"),
        ("x[train:1", "bad spec 'x[train:1': expected name_or_path[train:N,test:M]"),
        ("[train:1]", "bad spec '[train:1]': expected name_or_path[train:N,test:M]"),
        ("a.json++b.json", "bad spec 'a.json++b.json': empty source around '+'"),
        ("a.json+", "bad spec 'a.json+': empty source around '+'"),
        ("  ", "bad spec '  ': empty spec"),
    ],
)
def test_parse_invalid_specs(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_dataset_spec(spec)
    assert str(info.value).startswith(message)
