"""The lm-evaluation-harness adapter, offline: a tiny checkpoint through ``lm_eval.simple_evaluate`` on local
YAML tasks (generation, multiple choice, rolling perplexity) and through ``python -m dllm.eval.lm_eval_adapter``;
stop strings, ``max_gen_toks``, ``is_greedy`` and the rolling windows. Skipped without lm-eval (optional extra
``eval``: ``pip install -e '.[eval]'``)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is the optional extra 'eval': pip install -e '.[eval]'")

from dllm.core.likelihood import elbo_nll  # noqa: E402
from dllm.core.sampling import infill, left_pad  # noqa: E402
from dllm.eval.lm_eval_adapter import DiffusionLM, rolling_windows  # noqa: E402
from tests.helpers import save_tiny_masked_lm  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_masked_lm(tmp_path_factory.mktemp("lm_eval_ckpt"), initializer_range=0.3)


@pytest.fixture(scope="module")
def lm(checkpoint):
    return DiffusionLM(pretrained=str(checkpoint), device="cpu", batch_size=4, num_samples=4, gen_length=8)


def request(*args):
    return SimpleNamespace(args=args)


@pytest.mark.parametrize("length, max_length, prefix", [(5, 10, []), (23, 8, []), (23, 8, [1]), (7, 3, [1, 2])])
def test_rolling_windows_score_every_token_once_with_the_context_that_fits(length, max_length, prefix):
    ids = list(range(100, 100 + length))
    windows = rolling_windows(ids, max_length, prefix)
    assert [t for _, chunk in windows for t in chunk] == ids
    full = prefix + ids
    for context, chunk in windows:
        assert len(context) + len(chunk) <= max_length and chunk
        end = len(prefix) + ids.index(chunk[0])
        assert context == full[max(end - len(context), 0):end]  # the tokens right before the chunk
        assert len(context) == min(end, max_length - len(chunk))  # as many as fit


def test_generation_honours_max_gen_toks_and_stop_strings(lm):
    calls = []
    run = lm.engine.run
    lm.engine.run = lambda prompts, config=None: calls.append(config) or run(prompts, config)
    try:
        free = lm.generate_until([request("hello", {"max_gen_toks": 6, "until": []})])[0]
        assert calls[-1].gen_length == 6 and calls[-1].temperature == 0.0
        assert 2 <= len(free) <= 6  # one character per token
        stop = free[1]
        cut = lm.generate_until([request("hello", {"max_gen_toks": 6, "until": [stop], "do_sample": False})])[0]
        assert cut == free[: free.index(stop)]
        lm.generate_until([request("hello", {})])
        assert calls[-1].gen_length == 8  # the model_args gen_length when the task sets none
    finally:
        lm.engine.run = run


def test_loglikelihood_is_minus_the_elbo_and_is_greedy_compares_with_the_greedy_fill(lm):
    context = "sort 321"
    ctx_ids = lm.tokenizer(context, add_special_tokens=False)["input_ids"]
    ids, attention = left_pad([ctx_ids + [lm.config.mask_token_id] * 3], lm.config.pad_token_id)
    greedy_config = type(lm.config)(**{**vars(lm.config), "steps": None, "block_size": None})
    greedy_ids = infill(lm.model, ids, greedy_config, attention_mask=attention).sequences[0, -3:].tolist()
    greedy_text = lm.tokenizer.decode(greedy_ids)
    other = "xyz" if greedy_text != "xyz" else "abc"
    results = lm.loglikelihood([request(context, greedy_text), request(context, other)])
    assert [is_greedy for _, is_greedy in results] == [True, False]
    expected = elbo_nll(lm.model, [ctx_ids], [lm.tokenizer(other, add_special_tokens=False)["input_ids"]],
                        lm.config.mask_token_id, num_samples=4, seed=0, pad_token_id=lm.config.pad_token_id)
    assert results[1][0] == pytest.approx(-float(expected.nll[0]), rel=1e-5) and results[1][0] < 0
    assert lm.loglikelihood([request(context, other)])[0] == pytest.approx(results[1])  # seeded: reproducible


def test_unknown_model_args_are_refused(checkpoint):
    with pytest.raises(ValueError, match="unknown option.*stepz"):
        DiffusionLM(pretrained=str(checkpoint), device="cpu", stepz=3)


def write_tasks(folder: Path) -> Path:
    """Three tiny tasks on local JSON lines: generation (exact match), multiple choice (acc) and rolling
    perplexity; datasets' cache for them stays in ``folder``."""
    data = folder / "data.jsonl"
    rows = [{"question": f"sort {d}", "answer": "".join(sorted(d)), "choices": ["".join(sorted(d)), d[::-1]],
             "label": 0, "text": f"sort {d} gives {''.join(sorted(d))}"} for d in ("321", "213", "97", "4312")]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n  cache_dir: {folder / 'cache'}\n"
              "test_split: test\n")
    (folder / "gen.yaml").write_text(
        "task: dllm_tiny_gen\n" + common + "output_type: generate_until\ndoc_to_text: '{{question}}'\n"
        "doc_to_target: '{{answer}}'\ngeneration_kwargs:\n  until: ['\\n']\n  max_gen_toks: 5\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")
    (folder / "mc.yaml").write_text(
        "task: dllm_tiny_mc\n" + common + "output_type: multiple_choice\ndoc_to_text: '{{question}} ='\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n")
    (folder / "rolling.yaml").write_text(
        "task: dllm_tiny_rolling\n" + common + "output_type: loglikelihood_rolling\ndoc_to_text: ''\n"
        "doc_to_target: '{{text}}'\nmetric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n")
    return folder


def local_tasks(folder: Path):
    """lm-eval's task index of ``folder`` alone: indexing its own thousands of task files as well takes 20 s (the
    command-line tests below go through lm-eval's default index)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(folder), include_defaults=False)


TASKS = ["dllm_tiny_gen", "dllm_tiny_mc", "dllm_tiny_rolling"]
METRICS = {"dllm_tiny_gen": "exact_match,none", "dllm_tiny_mc": "acc,none",
           "dllm_tiny_rolling": "word_perplexity,none"}


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_simple_evaluate_runs_every_request_type_offline(checkpoint, tmp_path, offline):
    import lm_eval

    tasks = write_tasks(tmp_path)
    results = lm_eval.simple_evaluate(model="dllm", model_args=f"pretrained={checkpoint},device=cpu,num_samples=2",
                                      tasks=TASKS, task_manager=local_tasks(tasks), limit=4,
                                      batch_size=4)
    assert set(TASKS) <= set(results["results"])
    for task, metric in METRICS.items():
        value = results["results"][task][metric]
        assert isinstance(value, float) and math.isfinite(value), (task, value)
    assert 0 <= results["results"]["dllm_tiny_gen"]["exact_match,none"] <= 1
    assert results["results"]["dllm_tiny_rolling"]["word_perplexity,none"] > 1


@pytest.mark.slow
def test_python_m_adapter_runs_lm_evals_command_line(checkpoint, tmp_path):
    tasks = write_tasks(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "dllm.eval.lm_eval_adapter", "--model", "dllm", "--model_args",
         f"pretrained={checkpoint},num_samples=2", "--device", "cpu", "--tasks", "dllm_tiny_mc", "--include_path",
         str(tasks), "--limit", "2", "--output_path", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dllm_tiny_mc" in result.stdout and "acc" in result.stdout
    written = list((tmp_path / "out").rglob("results_*.json"))
    assert written and "dllm_tiny_mc" in json.loads(written[0].read_text())["results"]


@pytest.mark.slow
def test_the_dllm_lm_eval_verb_runs_lm_evals_command_line_with_the_model_by_default(checkpoint, tmp_path, offline,
                                                                                     capsys):
    from dllm.cli import main as cli_main

    tasks = write_tasks(tmp_path)
    code = cli_main(["lm-eval", "--model_args", f"pretrained={checkpoint},num_samples=2,steps=2", "--device", "cpu",
                     "--tasks", "dllm_tiny_mc,dllm_tiny_gen", "--include_path", str(tasks), "--limit", "2",
                     "--output_path", str(tmp_path / "out")])
    assert code == 0
    written = list((tmp_path / "out").rglob("results_*.json"))
    results = json.loads(written[0].read_text())
    assert {"dllm_tiny_mc", "dllm_tiny_gen"} <= set(results["results"])
    assert results["config"]["model"] == "dllm" and results["config"]["model_args"]["steps"] == 2


def test_simple_evaluate_takes_the_model_object(checkpoint, tmp_path, offline):
    import lm_eval

    model = DiffusionLM(pretrained=str(checkpoint), device="cpu", batch_size=4, num_samples=2, gen_length=4)
    results = lm_eval.simple_evaluate(model=model, tasks=["dllm_tiny_gen"], limit=2,
                                      task_manager=local_tasks(write_tasks(tmp_path)))
    assert 0 <= results["results"]["dllm_tiny_gen"]["exact_match,none"] <= 1


def test_the_declared_entry_point_resolves_to_the_registered_model():
    """``pyproject.toml`` declares the plugin entry point later lm-eval versions discover; lm-eval's registry
    resolves such an entry point to the class, and its value is the name the decorator registers (the
    condition under which lm-eval lets the import upgrade the placeholder)."""
    import importlib.metadata as md
    import tomllib

    from lm_eval.api.registry import get_model, model_registry

    value = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["lm_eval.models"]["dllm"]
    assert value == f"{DiffusionLM.__module__}:{DiffusionLM.__name__}"
    assert get_model("dllm") is DiffusionLM
    model_registry.register("dllm-entry-point-test", target=md.EntryPoint("dllm", value, "lm_eval.models"))
    try:
        assert get_model("dllm-entry-point-test") is DiffusionLM
    finally:
        model_registry._objs.pop("dllm-entry-point-test", None)  # no public unregister
