"""benchmarks/pretrain_ppl.py and benchmarks/annealing.py: the raw-text packing, and whole ``--quick`` runs on a
small generated corpus (the numbers measure nothing there; that they are finite perplexities, that the ELBO stops
at its standard-error target and that the counts add up, is what is checked)."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def benchmarks(monkeypatch):
    """The two scripts as modules (annealing imports pretrain_ppl by name, as when run from benchmarks/)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    try:
        yield importlib.import_module("pretrain_ppl"), importlib.import_module("annealing")
    finally:
        sys.modules.pop("pretrain_ppl", None)
        sys.modules.pop("annealing", None)


@pytest.fixture
def corpus(tmp_path) -> Path:
    """A web-text file of 24 documents of generated sentences, named as the shared one."""
    g = torch.Generator().manual_seed(0)
    words = "the a cat dog sat ran on under mat tree house river saw big small red quick".split()
    docs = [" ".join(words[i] for i in torch.randint(len(words), (int(n),), generator=g).tolist()) + "."
            for n in torch.randint(60, 200, (24,), generator=g)]
    (tmp_path / "c4_demo.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return tmp_path


class Words:
    """A tokenizer stand-in: ids of whitespace words; bos 1, eos 2."""

    bos_token_id, eos_token_id = 1, 2

    def __call__(self, documents, add_special_tokens):
        return {"input_ids": [[10 + len(w) for w in d.split()] for d in documents]}


def test_documents_are_concatenated_with_eos_and_cut_into_bos_rows(benchmarks):
    pretrain, _ = benchmarks
    rows = pretrain.pack_rows(Words(), ["a bb ccc", "dddd", "ee f", "g"], seq=4)
    # stream: 11 12 13 | 2 14 2 | 12 11 2 | 11 2 (the tail shorter than a row is dropped)
    assert rows.tolist() == [[1, 11, 12, 13], [1, 2, 14, 2], [1, 12, 11, 2]]


def test_quick_run_gives_finite_perplexities_and_stops_at_the_stderr_target(benchmarks, corpus):
    pretrain, _ = benchmarks
    result = pretrain.main(["--quick", "--corpus", "web", "--data", str(corpus), "--target_stderr", "0.05",
                            "--max_rounds", "40"])
    (run,) = result["corpora"]
    for key in ("ar_ppl", "mdlm_ppl_bound", "ratio"):
        assert math.isfinite(run[key]) and run[key] > 0, key
    assert run["ar_ppl"] > 1 and run["mdlm_ppl_bound"] > 1
    assert run["mdlm_ppl_bound"] == pytest.approx(math.exp(run["mdlm_nll_bound"]))
    assert run["ratio"] == pytest.approx(run["mdlm_ppl_bound"] / run["ar_ppl"])
    # Stopped because the target was reached, not at the cap, and after the minimum number of rounds.
    assert run["mdlm_nll_relative_stderr"] < 0.05
    assert 2 <= run["elbo_rounds"] < 40 and run["elbo_samples_per_row"] == 4 * run["elbo_rounds"]
    assert run["train_tokens"] == 4 * 4 * 32 and run["held_out_tokens"] % 31 == 0
    assert "AMD" in result["machine"] or "torch" in result["machine"]


def test_annealing_quick_run_compares_both_adaptations_on_common_noise(benchmarks, corpus):
    _, annealing = benchmarks
    result = annealing.main(["--quick", "--data", str(corpus)])
    for name in ("at_once", "annealed"):
        assert math.isfinite(result[f"{name}_nll_per_token"]) and result[f"{name}_nll_per_token"] > 0
    assert result["elbo_difference"] == pytest.approx(
        result["annealed_nll_per_token"] - result["at_once_nll_per_token"], abs=1e-9)
    assert 0 <= result["elbo_difference_stderr"] < result["annealed_stderr_iid"]  # common noise: paired is tighter


def test_missing_data_exits_with_a_message(benchmarks, tmp_path):
    pretrain, _ = benchmarks
    with pytest.raises(SystemExit, match="not found"):
        pretrain.main(["--quick", "--corpus", "web", "--data", str(tmp_path / "absent")])
