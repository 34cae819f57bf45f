"""benchmarks/sampler_upstream.py, our side: the weight renaming, the settings, the paired measurement and its token
check. The comparison itself needs an upstream checkout: set DLLM_UPSTREAM to one to run it on the tiny size."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch

from tests.helpers import benchmark_module


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("sampler_upstream.py") as module:
        yield module


def test_every_llama_weight_gets_one_llada_name(bench):
    from dllm.auto import AutoModelForMaskedDiffusion

    size = bench.Size(layers=2, hidden=16, heads=2, intermediate=32, vocab=20, prompt=4, gen_length=4, block_size=2)
    ours = AutoModelForMaskedDiffusion.from_config(bench.llama_config(size)).state_dict()
    renamed = bench.llada_state_dict(ours, size.layers)
    used = {id(t) for t in renamed.values()}
    assert len(used) == len(renamed)  # no weight used twice
    # Every weight of ours is used, except the head, tied to the embedding.
    assert {name for name, t in ours.items() if id(t) not in used} <= {"lm_head.weight"}
    assert torch.equal(ours["lm_head.weight"], renamed["model.transformer.wte.weight"])
    assert renamed["model.transformer.blocks.1.ff_out.weight"] is ours["model.layers.1.mlp.down_proj.weight"]


def test_rules_differ_only_in_threshold(bench):
    size = bench.SIZES["tiny"]
    one, threshold = (bench.our_config(size, "dual", rule, 0.3) for rule in bench.RULES)
    assert one.steps == threshold.steps == size.gen_length and one.eos_token_id is None
    assert (one.threshold, threshold.threshold) == (None, 0.3)
    assert one.cache == threshold.cache == "dual" and one.block_size == size.block_size


def test_measure_row_pairs_timings_and_refuses_other_tokens(bench):
    tokens = torch.tensor([[5, 6, 7]])
    counts = {"ours": 0, "upstream": 0}

    def runner(name: str, passes: int, output: torch.Tensor):
        def run():
            counts[name] += 1
            sum(i * i for i in range(20000 if name == "upstream" else 2000))  # upstream burns more CPU
            return output, passes
        return run

    row = bench.measure_row({"ours": runner("ours", 4, tokens), "upstream": runner("upstream", 4, tokens)},
                            repeats=3, calls=2)
    assert counts == {"ours": 1 + 3 * 2, "upstream": 1 + 3 * 2}  # a warm-up, then repeats x calls
    assert row["passes"] == {"ours": 4, "upstream": 4}
    assert 0 < row["ratio_min"] <= row["ratio"] <= row["ratio_max"] < 1
    with pytest.raises(AssertionError, match="tokens differ"):
        bench.measure_row({"ours": runner("ours", 4, tokens), "upstream": runner("upstream", 4, tokens + 1)},
                          repeats=1, calls=1)


def test_against_upstream_on_the_tiny_size(bench):
    root = os.environ.get("DLLM_UPSTREAM")
    if not root:
        pytest.skip("set DLLM_UPSTREAM to a checkout of ZHZisZZ/dllm to compare with it")
    upstream = bench.load_upstream(Path(root).resolve())
    args = argparse.Namespace(modes=list(bench.MODES), rules=list(bench.RULES), threshold=0.3, repeats=1,
                              calls={"tiny": 1})
    rows = bench.run_size(upstream, "tiny", args)  # asserts identical tokens in every row
    assert [(r["mode"], r["rule"]) for r in rows] == [(m, r) for m in bench.MODES for r in bench.RULES]
    assert all(r["passes"]["ours"] == r["passes"]["upstream"] for r in rows)
