"""benchmarks/sampler.py: its counting on hand-made outputs, and a whole run on a tiny untrained demo model
(accuracy is meaningless there; the counts, the shared prompts, the speedup baseline and the outputs are not)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import benchmark_module
import torch

from dllm.core.sampling import GenerationOutput, TextGenerationOutput


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("sampler.py") as module:
        yield module


def test_count_weights_passes_by_batch_rows_and_counts_tokens_before_eos(bench):
    eos = 2
    # Batch of two (prompt width 2, canvas 3) that took 3 passes, and a batch of one (prompt width 1) that took 6.
    first = GenerationOutput(torch.tensor([[7, 8, 10, 11, eos], [0, 8, 10, eos, eos]]), forward_passes=3)
    second = GenerationOutput(torch.tensor([[9, 12, 13, 14]]), forward_passes=6)
    result = TextGenerationOutput(texts=["ab", "a", "xyz"], outputs=[first, second])
    counts = bench.count(result, ["ab", "b", "xyz"], gen_length=3, eos_token_id=eos)
    assert counts.prompts == 3
    assert counts.passes_per_prompt == pytest.approx((3 * 2 + 6 * 1) / 3)  # every row rides its batch's calls
    assert counts.answer_tokens == 2 + 1 + 3  # the prompt columns and everything from the first EOS are not counted
    assert counts.exact_match == pytest.approx(2 / 3)


def test_settings_differ_only_in_threshold_and_cache(bench):
    configs = bench.settings(gen_length=7, block_size=4, threshold=0.9)
    assert list(configs) == ["a", "b", "c", "d"]
    assert configs["a"].threshold is None and configs["a"].steps is None and configs["a"].cache == "none"
    assert [configs[k].cache for k in "bcd"] == ["none", "prefix", "dual"]
    assert {(c.gen_length, c.block_size) for c in configs.values()} == {(7, 4)}
    assert {configs[k].threshold for k in "bcd"} == {0.9}


def test_whole_run_on_a_tiny_untrained_demo_model(bench, tmp_path, capsys):
    from dllm.demo.run import DemoArguments, build_tokenizer_and_model

    torch.manual_seed(0)
    tokenizer, model = build_tokenizer_and_model(DemoArguments(hidden_size=16, num_hidden_layers=2,
                                                               intermediate_size=32))
    model.save_pretrained(tmp_path / "demo")
    tokenizer.save_pretrained(tmp_path / "demo")
    out = tmp_path / "sampler.json"
    result = bench.main(["--checkpoint", str(tmp_path / "demo"), "--num_eval_per_task", "3", "--batch1_prompts",
                         "4", "--batch_sizes", "1", "4", "--block_size", "8", "4", "--repeats", "2", "--profile",
                         "--output", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    rows, n = result["rows"], result["gen_length"]
    assert n == 7  # the demo's canvas: longest answer (6) + EOS
    assert [(r["block_size"], r["batch_size"], r["setting"]) for r in rows] == [
        (block, batch, s) for block in (8, 4) for batch in (1, 4) for s in "abcd"]
    for row in rows:
        assert row["prompts"] == (4 if row["batch_size"] == 1 else 9)  # the same prompts for every setting
        assert len(row["times_s"]) == 2 and row["wall_s"] > 0
        assert row["answer_tokens_per_s"] == pytest.approx(row["answer_tokens"] / row["wall_s"], rel=0.01)
        assert 0 < row["forward_share"] <= 1
        assert 1 <= row["passes_per_prompt"] <= n
        if row["setting"] == "a":
            assert row["speedup"] == row["paired_speedup"] == 1.0 and row["exact_match_loss"] == 0
        if row["block_size"] == 8 and row["setting"] == "a":  # one block, one position per pass, no early stop
            assert row["passes_per_prompt"] == n and row["passes_over_n"] == 1
    table = capsys.readouterr().out.strip().splitlines()[-18:]
    assert table[0].startswith("| block | batch | setting |") and len(table) == 2 + len(rows)
    assert "(d) threshold + dual cache" in table[-1]
