"""benchmarks/bd3lm.py: the interleaved medians, and a whole ``--smoke`` run (a tiny model, one repetition)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import benchmark_module


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("bd3lm.py") as module:
        yield module


def test_repetitions_are_interleaved_after_one_warm_up_each(bench, monkeypatch):
    order, clock = [], iter(range(100))
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    medians = bench.interleaved_medians({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 3)
    assert order == ["a", "b"] + ["a", "b"] * 3
    assert medians == {"a": 1, "b": 1}  # each run spans one tick of the fake clock


def test_a_smoke_run_measures_every_setting(bench, tmp_path):
    out = tmp_path / "bd3lm.json"
    result = bench.main(["--smoke", "--output", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["training_step"]["ratio"] == pytest.approx(
        result["training_step"]["bd3lm_s"] / result["training_step"]["mdlm_s"])
    cells = [(row["batch"], row["gen_length"]) for row in result["decoding"]]
    assert cells == [(1, 8), (1, 16), (2, 8), (2, 16)]
    for row in result["decoding"]:
        assert min(row[f"{cache}_tokens_per_s"] for cache in ("block", "prefix", "dual")) > 0
        assert row["block_over_prefix"] == pytest.approx(row["block_tokens_per_s"] / row["prefix_tokens_per_s"])
