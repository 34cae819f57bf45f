"""``dllm eval --sweep`` and ``--rerun`` on a tiny untrained checkpoint: every combination on the same prompts,
one table in JSON and Markdown, the provenance a result file records, and a rerun that matches (and one that
notices a changed number); the sweep spec's parsing."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import transformers

from dllm import __version__
from dllm.cli import main as cli_main
from dllm.errors import UsageError
from dllm.eval.exact_match import main as eval_main
from dllm.eval.provenance import weights_hash
from dllm.eval.sweep import parse_sweep
from tests.helpers import save_tiny_masked_lm


def test_parse_sweep_reads_each_value_by_its_fields_type():
    grid = parse_sweep("threshold=none,0.9 cache=none,prefix,dual block_size=8,32")
    assert len(grid) == 12 and grid[0] == {"threshold": None, "cache": "none", "block_size": 8}
    assert grid[-1] == {"threshold": 0.9, "cache": "dual", "block_size": 32}
    assert parse_sweep("steps=none,4 remasking=margin temperature=0") == [
        {"steps": None, "remasking": "margin", "temperature": 0.0}, {"steps": 4, "remasking": "margin",
                                                                    "temperature": 0.0}]
    for bad, says in (("cache=fast", "cache='fast'"), ("steps=2 steps=3", "steps=3"), ("steps", "'steps'"),
                      ("record_history=true", "record_history"), ("", "no field")):
        with pytest.raises(UsageError, match=says):
            parse_sweep(bad)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_masked_lm(tmp_path_factory.mktemp("sweep_ckpt"), gen_length=6)


@pytest.fixture(scope="module")
def swept(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep_out") / "sweep.json"
    code = cli_main(["eval", str(checkpoint), "--num_per_task", "2", "--device", "cpu", "--batch_size", "3",
                     "--sweep", "steps=2,3 cache=none,prefix", "--block_size", "3", "--output", str(out)])
    assert code == 0
    return out


def test_a_sweep_runs_every_combination_on_the_same_prompts(swept):
    results = json.loads(swept.read_text())
    runs = results["runs"]
    assert [r["settings"] for r in runs] == [{"steps": 2, "cache": "none"}, {"steps": 2, "cache": "prefix"},
                                             {"steps": 3, "cache": "none"}, {"steps": 3, "cache": "prefix"}]
    prompts = [[e["prompt"] for e in run["examples"]] for run in runs]
    assert all(p == prompts[0] for p in prompts) and len(prompts[0]) == 6
    for run in runs:
        assert run["sampler"]["steps"] == run["settings"]["steps"] and run["sampler"]["block_size"] == 3
        assert run["sampler"]["cache"] == run["settings"]["cache"] and run["sampler"]["gen_length"] == 6
        assert run["overall"]["forward_passes_per_answer"] == run["settings"]["steps"]  # two blocks, steps split
        assert run["peak_memory"]["mb"] > 0
    table = swept.with_suffix(".md").read_text().splitlines()
    assert table[0].startswith("| settings | exact_match (95% CI) | N | tokens/s | passes/answer | latency p50")
    assert len(table) == 2 + 4 and "| steps=3 cache=prefix |" in table[-1]


def test_the_result_file_records_what_reproduces_it(swept, checkpoint):
    results = json.loads(swept.read_text())
    origin = results["provenance"]
    assert origin["dllm_version"] == __version__ and origin["checkpoint"] == str(checkpoint)
    (checkpoint / "training_args.bin").write_bytes(b"not weights")  # a trainer file: not hashed
    weights_only = weights_hash(str(checkpoint))
    weights = sorted(p for p in checkpoint.iterdir() if p.suffix == ".safetensors")
    digest = hashlib.sha256()
    for path in weights:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    assert origin["weights"] == weights_only == {"sha256": digest.hexdigest(), "files": [p.name for p in weights]}
    assert origin["machine"]["torch"] == torch.__version__
    assert origin["machine"]["transformers"] == transformers.__version__ and origin["machine"]["cpu"]
    assert origin["git"] is None or len(origin["git"]["commit"]) == 40
    evaluation = results["evaluation"]
    assert (evaluation["seed"], evaluation["batch_size"], evaluation["num_per_task"]) == (42, 3, 2)
    assert "sort v1" in results["source"] and results["arguments"][0] == str(checkpoint)
    assert results["runs"][0]["sampler"]["mask_token_id"] is not None  # the full settings, token ids included


def test_rerun_matches_and_notices_a_changed_number(swept, tmp_path, capsys):
    again = eval_main(["--rerun", str(swept), "--output", str(tmp_path / "again.json")])
    assert again["rerun"]["match"] and again["rerun"]["differences"] == []
    assert "the numbers match" in capsys.readouterr().out
    assert json.loads((tmp_path / "again.json").read_text())["runs"][1]["settings"] == {"steps": 2, "cache": "prefix"}
    tampered = json.loads(swept.read_text())
    tampered["runs"][2]["overall"]["correct"] += 1
    tampered["runs"][3]["examples"][0]["answer"] += "x"
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(tampered))
    repeated = eval_main(["--rerun", str(path)])["rerun"]
    assert not repeated["match"] and len(repeated["differences"]) == 2
    assert "steps=3 cache=none, overall: correct" in repeated["differences"][0]
    assert "1 of 6 answers differ" in repeated["differences"][1]


def test_rerun_of_something_else_is_one_line(tmp_path, capsys):
    path = tmp_path / "other.json"
    path.write_text("[1, 2]")
    assert cli_main(["eval", "--rerun", str(path)]) == 2
    assert "is it a result file" in capsys.readouterr().err
