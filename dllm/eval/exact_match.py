"""``dllm eval CHECKPOINT``: the sampler's answers scored on offline tasks or a dataset, each metric with its 95%
confidence interval, optionally over a sweep of sampler settings, with what reproduces the run.

    dllm eval outputs/demo                                       # the demo's held-out prompts, 200 per task
    dllm eval outputs/demo --task countdown --limit 100          # Countdown / 4x4 Sudoku test puzzles
    dllm eval CKPT --task humaneval --allow_code_execution True --gen_length 256 --num_samples 10 --pass_k 1 10
    dllm eval CKPT --sweep "threshold=none,0.9 cache=none,prefix,dual block_size=8,32" --output sweep.json
    dllm eval --rerun sweep.json                                 # repeat a run from its file; do the numbers match?
    dllm eval CKPT --dataset_args "chat.jsonl[test:200]" --gen_length 64 --likelihood True
    dllm eval --help                                             # every flag

Prompts and how an answer is scored:

* ``--task demo`` (the default): the demo's task mix (:func:`dllm.tasks.default_tasks`) from the held-out split
  with the demo's seed (42) and ``--heldout_fraction`` (0.1), the split the demo holds out by prompt hash, so no
  prompt was seen in training; exact match. ``--task countdown`` / ``sudoku``: ``--num_per_task`` test puzzles of
  :class:`dllm.tasks.Countdown` / :class:`dllm.tasks.Sudoku`, scored by their exact verifiers (any correct
  expression or grid counts; metric ``accuracy``). A checkpoint without saved sampler settings answers these on
  the task's canvas (the longest reference plus one EOS) unless ``--gen_length`` says otherwise.
* ``--task humaneval``: the 164 HumanEval problems (:mod:`dllm.eval.humaneval`; needs ``--allow_code_execution
  True``), completions run in the sandbox (:mod:`dllm.eval.sandbox`); ``pass@1`` and, with ``--num_samples n``
  answers per problem, ``pass@k`` for each ``--pass_k`` (the Codex paper's unbiased estimator).
* ``--dataset_args SPEC``: any spec of :func:`dllm.data.loading.load_sft_dataset`. Each row's last assistant turn
  is the reference, the turns before it the prompt, tokenized through the chat template exactly as training
  tokenizes them (:func:`dllm.data.collator.assistant_spans`); exact match after whitespace normalisation.

``--limit N`` keeps the first N examples of each task. Intervals (:mod:`dllm.eval.stats`): Wilson's score interval
for a metric of one answer per prompt, a percentile bootstrap over prompts (2000 resamples, ``--seed``) for
several answers per prompt and for pass@k. Each row also reports forward passes per answer (model calls of the
sampler call it came from), answer tokens per second (tokens before EOS over generation seconds), latency per
answer p50 / p95 (the seconds of the sampler call that produced it; ``--batch_size`` answers share one) and the
peak memory (CUDA: ``torch.cuda.max_memory_allocated`` of the run; CPU: the process's peak resident set so far).
``--likelihood True`` adds the mean ELBO NLL per reference token (:func:`dllm.core.likelihood.elbo_nll`) with its
Monte-Carlo standard error.

The sampler starts from the checkpoint's ``diffusion_generation_config.json``; each sampler flag overrides it
(:mod:`dllm.inference.loading`), and each ``--sweep`` combination overrides both (:mod:`dllm.eval.sweep`).
``--output F.json`` (checked writable before anything runs) writes the results, every answer and the provenance
(:mod:`dllm.eval.provenance`: dllm version and commit, checkpoint and weights hash, full sampler settings, seeds,
batch size, task version, machine) as JSON, and the table as ``F.md``.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

import numpy as np
import torch

from dllm.core.likelihood import elbo_nll
from dllm.core.sampling import GENERATION_CONFIG_NAME, DiffusionGenerationConfig
from dllm.data.collator import assistant_spans
from dllm.errors import UsageError
from dllm.eval.provenance import check_writable, provenance, write_results
from dllm.eval.stats import bootstrap_interval, pass_at_k, wilson_interval
from dllm.eval.sweep import parse_sweep, settings_label, sweep_configs, sweep_table
from dllm.inference.engine import Engine, cut_at_stop
from dllm.inference.loading import (
    CheckpointArguments,
    SamplerOptions,
    VerbArgumentParser,
    load_checkpoint,
    parse_verb_args,
    sampler_overrides,
)
from dllm.tasks import TASK_SETS, make_examples, normalize_answer, tasks_named, to_messages

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEMO, HUMANEVAL = "demo", "humaneval"
TASK_CHOICES = (*TASK_SETS, HUMANEVAL)


@dataclass
class EvalArguments:
    """What is evaluated and where the results go."""

    task: str | None = field(default=None, metadata={
        "help": f"One of {', '.join(TASK_CHOICES)} (demo unless --dataset_args is given). demo / countdown / "
                "sudoku: a checkpoint without saved sampler settings answers on the task's canvas unless "
                "--gen_length is given."})
    dataset_args: str | None = field(default=None, metadata={
        "help": 'A dataset spec (as dllm sft takes), e.g. "chat.jsonl[test:200]": last assistant turn = reference.'})
    split: str | None = field(default=None, metadata={
        "help": "Split of --dataset_args to evaluate. Default: test when it has one, else train."})
    limit: int | None = field(default=None, metadata={"help": "Evaluate the first N examples of each task."})
    num_per_task: int = field(default=200, metadata={"help": "demo / countdown / sudoku: test prompts per task."})
    seed: int = field(default=42, metadata={
        "help": "Draws the generated tasks' prompts (42: the demo's own) and seeds sampling, the likelihood and "
                "the bootstrap."})
    heldout_fraction: float = field(default=0.1, metadata={
        "help": "demo / countdown / sudoku: the share of prompts held out (must match training; the demo's is 0.1)."})
    batch_size: int = field(default=64, metadata={"help": "Prompts per sampler call."})
    num_samples: int = field(default=1, metadata={
        "help": "Answers per prompt (pass@k needs several, and a temperature above 0 to make them differ)."})
    pass_k: list[int] = field(default_factory=lambda: [1], metadata={
        "help": "The k of each pass@k to report (each at most --num_samples), e.g. --pass_k 1 10."})
    allow_code_execution: bool = field(default=False, metadata={
        "help": "--task humaneval: run the model's code (in a sandbox: subprocess, time and memory limits, no "
                "network, a temporary directory). Required for humaneval."})
    execution_timeout: float = field(default=10.0, metadata={"help": "--task humaneval: seconds per program."})
    execution_memory_mb: int = field(default=1024, metadata={"help": "--task humaneval: address space per program."})
    sweep: str | None = field(default=None, metadata={
        "help": 'Sampler settings to cross, e.g. "threshold=none,0.9 cache=none,prefix,dual block_size=8,32": '
                "every combination on the same prompts, one table."})
    output: str | None = field(default=None, metadata={
        "help": "Write the results, every answer and the provenance here (JSON), the table beside it (.md); "
                "dllm eval --rerun F.json [--output G.json] repeats the run and says whether the numbers match."})
    likelihood: bool = field(default=False, metadata={
        "help": "Also report the ELBO NLL per reference token (Monte-Carlo; num_samples forward rows per example)."})
    likelihood_samples: int = field(default=32, metadata={
        "help": "Monte-Carlo draws per reference (at least 2, for the standard error)."})
    likelihood_estimator: Literal["time", "count"] = field(default="time", metadata={
        "help": "time: MDLM's t ~ U[eps, 1] with weight 1/t; count: LLaDA's l ~ U{1..L} masked tokens, weight L/l."})


@dataclass
class RerunArguments:
    """``dllm eval --rerun RESULT.json``."""

    rerun: str = field(metadata={"help": "A result file of dllm eval: repeat its run and compare the numbers."})
    output: str | None = field(default=None, metadata={"help": "Write the repeated run's results here."})


@dataclass
class EvalExample:
    """One question: ``messages`` are the prompt turns followed by the reference assistant turn.

    ``check(answer)`` decides correctness (default: exact match with the reference after whitespace
    normalisation); ``text_prompt`` is a raw-text prompt that replaces the chat template (HumanEval's code);
    ``stop`` cuts each answer at its first stop string."""

    task: str
    messages: list[dict[str, str]]
    check: Callable[[str], bool] | None = None
    text_prompt: str | None = None
    stop: tuple[str, ...] = ()

    @property
    def reference(self) -> str:
        return self.messages[-1]["content"]

    def is_correct(self, answer: str) -> bool:
        if self.check is not None:
            return bool(self.check(answer))
        return normalize_answer(answer) == normalize_answer(self.reference)


def task_examples(name: str, args: EvalArguments) -> tuple[list[EvalExample], int]:
    """The test questions of a generated task set (``demo``, ``countdown``, ``sudoku``) and its answer canvas
    (the longest answer plus one EOS); each is scored by its task's verifier."""
    tasks = tasks_named(name)
    count = args.num_per_task if args.limit is None else min(args.num_per_task, args.limit)
    rows = make_examples(tasks, count, "test", seed=args.seed, heldout_fraction=args.heldout_fraction)
    by_name = {task.name: task for task in tasks}
    canvas = max(task.max_answer_length() for task in tasks) + 1
    return [EvalExample(row["task"], to_messages(row)["messages"], partial(by_name[row["task"]].verify, row))
            for row in rows], canvas


def demo_examples(args: EvalArguments) -> tuple[list[EvalExample], int]:
    """The demo's held-out questions and its answer canvas (the longest answer plus one EOS)."""
    return task_examples(DEMO, args)


def humaneval_examples(args: EvalArguments) -> list[EvalExample]:
    """The HumanEval problems (the first ``--limit``), each checked by running its tests in the sandbox."""
    from dllm.eval.humaneval import STOP_SEQUENCES, execute, load_problems

    problems = load_problems()[: args.limit]

    def passes(problem: dict[str, Any], answer: str) -> bool:
        return execute(problem, answer, args.execution_timeout, args.execution_memory_mb).passed

    return [EvalExample(HUMANEVAL, [{"role": "user", "content": p["prompt"]},
                                    {"role": "assistant", "content": p["canonical_solution"]}],
                        partial(passes, p), text_prompt=p["prompt"], stop=STOP_SEQUENCES) for p in problems]


def dataset_examples(spec: str, split: str | None, seed: int,
                     limit: int | None) -> tuple[list[EvalExample], str]:
    """The rows of ``spec``'s split as questions (last assistant turn = reference); returns them and the split.

    Raises:
        UsageError: the spec cannot be loaded, has no such split, or a row has no assistant turn.
    """
    from dllm.data.loading import load_sft_dataset

    try:
        data = load_sft_dataset(spec, seed=seed)
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(f"--dataset_args {spec!r}: {' '.join(str(err).split())}") from err
    split = split or ("test" if "test" in data else "train")
    if split not in data:
        raise UsageError(f"--dataset_args {spec!r} has no {split!r} split (it has {', '.join(data)})")
    rows = data[split] if limit is None else data[split].select(range(min(limit, len(data[split]))))
    examples = []
    for index, row in enumerate(rows):
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if not answers:
            raise UsageError(f"--dataset_args {spec!r}, {split} row {index}: no assistant turn to compare against")
        examples.append(EvalExample("dataset", messages[: answers[-1] + 1]))
    return examples, split


def encode_example(tokenizer: PreTrainedTokenizerBase, example: EvalExample) -> tuple[list[int], list[int]]:
    """Prompt ids (with the assistant header) and reference ids (with its end-of-turn tokens), as training
    tokenizes a conversation: the chat template's text cut at the answer span, each piece tokenized alone. A
    ``text_prompt`` is tokenized as raw text (with the tokenizer's own special tokens) and the reference after it."""
    if example.text_prompt is not None:
        return list(tokenizer(example.text_prompt)["input_ids"]), _tokens(tokenizer, example.reference)
    text, spans = assistant_spans(tokenizer, example.messages)
    start, end = spans[-1]
    return _tokens(tokenizer, text[:start]), _tokens(tokenizer, text[start:end])


def _tokens(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def metric_name(task: str) -> str:
    """The metric a task reports: pass@1 for code, accuracy for verified tasks, else exact match."""
    return "pass@1" if task == HUMANEVAL else "accuracy" if task in ("countdown", "sudoku") else "exact_match"


@dataclass
class TaskScore:
    """What one task's examples scored; tasks concatenate into the overall row."""

    hits: list[int] = field(default_factory=list)  # correct answers per example
    samples: int = 1  # answers per example
    forward_passes: int = 0  # summed over answers
    seconds: float = 0.0
    answer_tokens: int = 0
    latencies: list[float] = field(default_factory=list)  # per answer: seconds of its sampler call
    nll: float = 0.0  # ELBO NLL summed over every reference token
    nll_variance: float = 0.0  # summed squared standard errors
    tokens: int = 0

    def add(self, other: TaskScore) -> TaskScore:
        values = {k: a + b for (k, a), b in zip(asdict(self).items(), asdict(other).values())}
        return TaskScore(**{**values, "samples": max(self.samples, other.samples)})

    def summary(self, metric: str, pass_k: list[int], seed: int, likelihood: bool) -> dict[str, Any]:
        """The JSON row: the metric in [0, 1] with its 95% interval, pass@k, counts, speed and NLL per token."""
        n, answers = len(self.hits), max(len(self.hits) * self.samples, 1)
        fractions = [h / self.samples for h in self.hits]
        score = sum(fractions) / max(n, 1)
        one_each = self.samples == 1
        interval = wilson_interval(sum(self.hits), n) if one_each else bootstrap_interval(fractions, seed)
        row: dict[str, Any] = {"metric": metric, metric: score, f"{metric}_ci95": list(interval),
                               "ci_method": "wilson" if one_each else "bootstrap", "n": n,
                               "correct": sum(self.hits), "samples_per_prompt": self.samples}
        for k in (k for k in pass_k if k > 1):
            values = [pass_at_k(self.samples, h, k) for h in self.hits]
            row[f"pass@{k}"] = sum(values) / max(n, 1)
            row[f"pass@{k}_ci95"] = list(bootstrap_interval(values, seed))
        row.update(forward_passes_per_answer=self.forward_passes / answers, seconds=self.seconds,
                   tokens_per_second=self.answer_tokens / self.seconds if self.seconds > 0 else None,
                   latency_p50=float(np.percentile(self.latencies, 50)) if self.latencies else None,
                   latency_p95=float(np.percentile(self.latencies, 95)) if self.latencies else None)
        if likelihood:
            row["nll_per_token"] = self.nll / max(self.tokens, 1)
            row["nll_per_token_stderr"] = math.sqrt(self.nll_variance) / max(self.tokens, 1)
            row["reference_tokens"] = self.tokens
        return row


def generate_answers(engine: Engine, prompts: list[list[int]], batch_size: int, stop: tuple[str, ...]
                     ) -> tuple[list[tuple[str, int]], TaskScore]:
    """Each prompt's answer text (cut at ``stop``) and token count, in batches; the score's speed fields."""
    answers, score = [], TaskScore()
    for start in range(0, len(prompts), batch_size):
        started = time.perf_counter()
        completions = engine.run(prompts[start:start + batch_size])
        seconds = time.perf_counter() - started
        score.seconds += seconds
        for completion in completions:
            answers.append((cut_at_stop(engine.decode(completion.ids), list(stop))[0], len(completion.ids)))
            score.forward_passes += completion.forward_passes
            score.answer_tokens += len(completion.ids)
            score.latencies.append(seconds)
    return answers, score


def score_task(engine: Engine, examples: list[EvalExample], args: EvalArguments) -> tuple[TaskScore, list[dict]]:
    """Answer one task's examples (``args.num_samples`` answers each) in batches, check them, and
    (``args.likelihood``) bound their references' NLL. Returns the score and one record per example."""
    encoded = [encode_example(engine.tokenizer, example) for example in examples]
    prompts = [p for p, _ in encoded for _ in range(args.num_samples)]
    answers, score = generate_answers(engine, prompts, args.batch_size, examples[0].stop)
    score.samples, records = args.num_samples, []
    for index, example in enumerate(examples):
        texts = [text for text, _ in answers[index * args.num_samples:(index + 1) * args.num_samples]]
        correct = [example.is_correct(text) for text in texts]
        score.hits.append(sum(correct))
        record = {"task": example.task, "prompt": example.messages[:-1], "reference": example.reference,
                  "answer": texts[0], "correct": correct[0]}
        if args.num_samples > 1:
            record.update(answers=texts, correct_per_answer=correct)
        records.append(record)
    if args.likelihood:
        config = engine.config
        bound = elbo_nll(engine.model, [p for p, _ in encoded], [r for _, r in encoded], config.mask_token_id,
                         num_samples=args.likelihood_samples, estimator=args.likelihood_estimator, seed=args.seed,
                         batch_size=args.batch_size, pad_token_id=config.pad_token_id)
        score.nll, score.tokens = float(bound.nll.sum()), int(bound.num_tokens.sum())
        score.nll_variance = float(bound.stderr.pow(2).sum())
        for record, nll, tokens in zip(records, bound.nll.tolist(), bound.num_tokens.tolist()):
            record.update(nll=nll, reference_tokens=tokens)
    return score, records


def _peak_memory(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {"mb": torch.cuda.max_memory_allocated(device) / 2**20, "kind": "cuda max allocated (this run)"}
    return {"mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "kind": "process max RSS (so far)"}


def evaluate_examples(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, config: DiffusionGenerationConfig,
                      examples: list[EvalExample], args: EvalArguments) -> dict[str, Any]:
    """Every metric per task and overall, with speed. ``config`` has its token ids filled in.

    Returns ``{"sampler", "likelihood", "tasks": {name: row}, "overall": row, "peak_memory", "examples": [...]}``,
    rows as :meth:`TaskScore.summary` writes them.
    """
    torch.manual_seed(args.seed)  # sampling at temperature > 0 is then reproducible
    engine = Engine(model, tokenizer, config)
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(engine.device)
    groups: dict[str, list[EvalExample]] = {}
    for example in examples:
        groups.setdefault(example.task, []).append(example)
    scores, records = {}, []
    for task, group in groups.items():
        scores[task], task_records = score_task(engine, group, args)
        records += task_records
    overall = TaskScore(samples=args.num_samples)
    for score in scores.values():
        overall = overall.add(score)
    settings = {k: v for k, v in asdict(config).items() if k not in ("record_history", "progress")}
    likelihood = ({"num_samples": args.likelihood_samples, "estimator": args.likelihood_estimator, "seed": args.seed}
                  if args.likelihood else None)
    metric = metric_name(next(iter(groups)))
    return {"sampler": settings, "likelihood": likelihood,
            "tasks": {task: score.summary(metric, args.pass_k, args.seed, args.likelihood)
                      for task, score in scores.items()},
            "overall": overall.summary(metric, args.pass_k, args.seed, args.likelihood),
            "peak_memory": _peak_memory(engine.device), "examples": records}


def _metric_cell(row: dict[str, Any], metric: str) -> str:
    low, high = row[f"{metric}_ci95"]
    return f"{100 * row[metric]:5.1f}% [{100 * low:5.1f}, {100 * high:5.1f}]"


def format_table(results: dict[str, Any]) -> str:
    """The per-task and overall rows of one run as a text table (the metric with its 95% interval)."""
    likelihood = results.get("likelihood") is not None
    metric = results["overall"]["metric"]
    extra = [key for key in results["overall"] if key.startswith("pass@") and not key.endswith("_ci95")
             and key != metric]
    header = (f"{'task':12s} {metric + ' (95% CI)':>24s}" + "".join(f" {k + ' (95% CI)':>24s}" for k in extra)
              + f" {'N':>5s} {'passes/answer':>13s} {'tokens/s':>9s} {'p50 s':>7s} {'p95 s':>7s} {'seconds':>8s}")
    lines = [header + (f" {'ELBO nll/token':>18s}" if likelihood else "")]
    for name, row in [*results["tasks"].items(), ("overall", results["overall"])]:
        speed = [row["tokens_per_second"], row["latency_p50"], row["latency_p95"]]
        tps, p50, p95 = (f"{v:.{d}f}" if v is not None else "-" for v, d in zip(speed, (1, 3, 3)))
        line = (f"{name:12s} {_metric_cell(row, metric):>24s}" + "".join(f" {_metric_cell(row, k):>24s}" for k in extra)
                + f" {row['n']:5d} {row['forward_passes_per_answer']:13.1f} {tps:>9s} {p50:>7s} {p95:>7s}"
                f" {row['seconds']:8.2f}")
        if likelihood:
            line += f" {row['nll_per_token']:9.4f} ± {row['nll_per_token_stderr']:.4f}"
        lines.append(line)
    return "\n".join(lines)


def _check_arguments(args: EvalArguments) -> None:
    for name, least in (("num_per_task", 1), ("batch_size", 1), ("likelihood_samples", 2), ("num_samples", 1),
                        ("limit", 1)):  # likelihood_samples 2: a spread
        value = getattr(args, name)
        if value is not None and value < least:
            raise UsageError(f"--{name} must be at least {least}, got {value}")
    bad = [k for k in args.pass_k if not 1 <= k <= args.num_samples]
    if bad:
        raise UsageError(f"--pass_k {' '.join(map(str, bad))}: each k must be in 1..--num_samples ({args.num_samples})")
    if args.task is not None and args.dataset_args is not None:
        raise UsageError(f"give --task {args.task} or --dataset_args {args.dataset_args!r}, not both")
    if args.dataset_args is None and (args.task or DEMO) not in TASK_CHOICES:
        raise UsageError(f"--task {args.task!r}: choose one of {', '.join(TASK_CHOICES)}, or --dataset_args SPEC "
                         "for a dataset")
    if args.task == HUMANEVAL and not args.allow_code_execution:
        raise UsageError("--task humaneval runs the model's code: add --allow_code_execution True to allow it "
                         "(in a sandbox: subprocess, time and memory limits, no network)")


def _examples(checkpoint: str, args: EvalArguments, overrides: dict[str, Any]) -> tuple[list[EvalExample], str]:
    """The questions and a description of their source; a generated task's canvas joins ``overrides`` when the
    checkpoint saved no sampler settings."""
    _check_arguments(args)
    if args.dataset_args is not None:
        examples, split = dataset_examples(args.dataset_args, args.split, args.seed, args.limit)
        return examples, f"{args.dataset_args} ({split} split)"
    task = args.task or DEMO
    if task == HUMANEVAL:
        from dllm.eval.humaneval import VERSION

        return humaneval_examples(args), VERSION
    examples, canvas = task_examples(task, args)
    if "gen_length" not in overrides and not (Path(checkpoint) / GENERATION_CONFIG_NAME).is_file():
        overrides["gen_length"] = canvas
    versions = ", ".join(f"{t.name} v{t.version}" for t in tasks_named(task))
    return examples, (f"{task} test split ({versions}; seed {args.seed}, heldout_fraction {args.heldout_fraction})")


def compare_results(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two result files' numbers: per run, its settings, every row's counts, metrics and
    forward passes, and the answers themselves (timings and memory are expected to differ, and are not compared)."""
    runs = [saved.get("runs", [saved]), new.get("runs", [new])]
    if len(runs[0]) != len(runs[1]):
        return [f"{len(runs[0])} runs saved, {len(runs[1])} repeated"]
    differences = []
    for old, now in zip(*runs):
        label = settings_label(old.get("settings", {}))
        if old.get("settings", {}) != now.get("settings", {}):
            differences.append(f"{label}: settings {now.get('settings')} repeated")
        for name in sorted(set(old["tasks"]) | {"overall"}):
            before, after = (run["overall"] if name == "overall" else run["tasks"].get(name, {}) for run in (old, now))
            keys = [k for k in before if k in ("n", "correct", "forward_passes_per_answer") or k.startswith("pass@")
                    or k == before.get("metric")]
            changed = [f"{k} {before[k]} -> {after.get(k)}" for k in keys if before[k] != after.get(k)]
            differences += [f"{label}, {name}: {'; '.join(changed)}"] if changed else []
        answers = sum(a.get("answers", a.get("answer")) != b.get("answers", b.get("answer"))
                      for a, b in zip(old["examples"], now["examples"]))
        differences += [f"{label}: {answers} of {len(old['examples'])} answers differ"] if answers else []
    return differences


def _without_output(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--output="):
            skip = False
            continue
        skip = arg == "--output"
        kept += [] if skip else [arg]
    return kept


def rerun(argv: list[str]) -> dict[str, Any]:
    """``dllm eval --rerun RESULT.json [--output NEW.json]``: run again with the file's arguments and report whether
    the numbers match (:func:`compare_results`) and whether the checkpoint's weights are the same.

    Raises:
        UsageError: the file cannot be read or is not a result file of ``dllm eval``.
    """
    (options,) = VerbArgumentParser((RerunArguments,), prog="dllm eval").parse_args_into_dataclasses(argv)
    path = Path(options.rerun)
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"--rerun {path}: cannot read it as JSON ({err})") from err
    if not isinstance(saved, dict) or not isinstance(saved.get("arguments"), list):
        raise UsageError(f"--rerun {path}: no 'arguments' list; is it a result file of dllm eval?")
    arguments = _without_output(saved["arguments"]) + (["--output", options.output] if options.output else [])
    results = main(arguments)
    differences = compare_results(saved, results)
    weights = [r.get("provenance", {}).get("weights") for r in (saved, results)]
    if weights[0] != weights[1]:
        print(f"note: the checkpoint's weights differ from the saved run's ({weights[0]} -> {weights[1]})")
    if differences:
        print(f"dllm eval --rerun {path}: the numbers differ:\n  " + "\n  ".join(differences))
    else:
        print(f"dllm eval --rerun {path}: the numbers match (every count, metric, forward pass and answer)")
    results["rerun"] = {"of": str(path), "match": not differences, "differences": differences}
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run ``dllm eval`` with command-line ``argv``; prints the table(s) and returns the results (as written to
    ``--output``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg == "--rerun" or arg.startswith("--rerun=") for arg in argv):
        return rerun(argv)
    checkpoint, _, (args, sampler, loading) = parse_verb_args(
        "dllm eval", argv, (EvalArguments, SamplerOptions, CheckpointArguments))
    output = check_writable(args.output)  # before anything runs
    combinations = parse_sweep(args.sweep) if args.sweep else [{}]
    overrides = sampler_overrides(sampler)
    examples, source = _examples(checkpoint, args, overrides)
    loaded = load_checkpoint(checkpoint, loading, **overrides)
    configs = sweep_configs(loaded.generation_config, combinations)
    print(f"dllm eval {checkpoint}: {source}, {len(examples)} questions"
          + (f", {len(configs)} sampler settings" if args.sweep else ""))
    if args.num_samples > 1 and any(config.temperature == 0 for config in configs):
        print("note: --num_samples above 1 at temperature 0 repeats the same answer; pass@k needs --temperature > 0")
    runs = []
    for settings, config in zip(combinations, configs):
        runs.append({"settings": settings, **evaluate_examples(loaded.model, loaded.tokenizer, config, examples, args)})
        print(f"\n{settings_label(settings)}\n{format_table(runs[-1])}", flush=True)
    results = {"checkpoint": checkpoint, "source": source, "arguments": argv, "evaluation": asdict(args),
               "provenance": provenance(checkpoint)}
    results.update({"sweep": args.sweep, "runs": runs} if args.sweep else runs[0])
    table = sweep_table(runs)
    if args.sweep:
        print(f"\n{table}")
    if output is not None:
        write_results(output, results, table)
        print(f"wrote {output} and {output.with_suffix('.md')}")
    return results
