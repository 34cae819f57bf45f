"""``dllm eval CHECKPOINT``: exact match of the sampler's answers, on the demo's held-out tasks or on a dataset.

    dllm eval outputs/demo                                       # the demo's held-out prompts, 200 per task
    dllm eval outputs/demo --steps 4 --output results.json       # any sampler flag overrides the saved settings
    dllm eval CKPT --dataset_args "chat.jsonl[test:200]" --gen_length 64 --likelihood True
    dllm eval --help                                             # every flag

Prompts and references:

* ``--task demo`` (the default): the demo's task mix (:func:`dllm.demo.tasks.default_tasks`) drawn from the
  held-out split with the demo's seed (42) and ``--heldout_fraction`` (0.1), the split the demo holds out by
  prompt hash, so no prompt was seen in training. A checkpoint without saved sampler settings is answered on the
  demo's canvas (the longest answer plus one EOS) unless ``--gen_length`` says otherwise.
* ``--dataset_args SPEC``: any spec of :func:`dllm.data.loading.load_sft_dataset`. Each row's last assistant turn
  is the reference, the turns before it (system, user, earlier answers) the prompt, tokenized through the chat
  template exactly as training tokenizes them (:func:`dllm.data.collator.assistant_spans`). The ``test`` split
  when the spec has one, else ``train`` (``--split`` chooses).

The sampler starts from the checkpoint's ``diffusion_generation_config.json``; each sampler flag given overrides
it (:mod:`dllm.inference.loading`). An answer counts when it equals the reference after whitespace normalisation
(:func:`normalize_answer`). The table has a row per task and one overall: exact match, N, forward passes per
answer (model calls of the sampler call each answer came from), and generation seconds. ``--likelihood True``
adds the mean ELBO NLL per reference token (:func:`dllm.core.likelihood.elbo_nll`; the reference's tokens as
training saw them, end-of-turn tokens included) with its Monte-Carlo standard error. ``--output`` writes the
table, the settings and every answer as JSON.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from dllm.core.likelihood import elbo_nll
from dllm.core.sampling import GENERATION_CONFIG_NAME, DiffusionGenerationConfig
from dllm.data.collator import assistant_spans
from dllm.errors import UsageError
from dllm.inference.engine import Engine, check_generation_config
from dllm.inference.loading import (
    CheckpointArguments,
    SamplerOptions,
    load_checkpoint,
    parse_verb_args,
    sampler_overrides,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEMO = "demo"


@dataclass
class EvalArguments:
    """What is evaluated and where the results go."""

    task: str | None = field(default=None, metadata={
        "help": "demo: the demo's held-out tasks (the default unless --dataset_args is given); a checkpoint "
                "without saved sampler settings is answered on the demo's canvas (gen_length 7) unless "
                "--gen_length is given."})
    dataset_args: str | None = field(default=None, metadata={
        "help": 'A dataset spec (as dllm sft takes), e.g. "chat.jsonl[test:200]": last assistant turn = reference.'})
    split: str | None = field(default=None, metadata={
        "help": "Split of --dataset_args to evaluate. Default: test when it has one, else train."})
    num_per_task: int = field(default=200, metadata={"help": "--task demo: held-out prompts per task."})
    seed: int = field(default=42, metadata={
        "help": "Draws the demo's held-out prompts (42: the demo's own) and seeds sampling and the likelihood."})
    heldout_fraction: float = field(default=0.1, metadata={
        "help": "--task demo: the share of prompts the demo held out (must match training; the demo's is 0.1)."})
    max_examples: int | None = field(default=None, metadata={"help": "--dataset_args: evaluate the first N rows."})
    batch_size: int = field(default=64, metadata={"help": "Prompts per sampler call."})
    output: str | None = field(default=None, metadata={"help": "Write the results and every answer here (JSON)."})
    likelihood: bool = field(default=False, metadata={
        "help": "Also report the ELBO NLL per reference token (Monte-Carlo; num_samples forward rows per example)."})
    likelihood_samples: int = field(default=32, metadata={
        "help": "Monte-Carlo draws per reference (at least 2, for the standard error)."})
    likelihood_estimator: Literal["time", "count"] = field(default="time", metadata={
        "help": "time: MDLM's t ~ U[eps, 1] with weight 1/t; count: LLaDA's l ~ U{1..L} masked tokens, weight L/l."})


@dataclass
class EvalExample:
    """One question: ``messages`` are the prompt turns followed by the reference assistant turn."""

    task: str
    messages: list[dict[str, str]]

    @property
    def reference(self) -> str:
        return self.messages[-1]["content"]


def normalize_answer(text: str) -> str:
    """Whitespace-normalised answer: leading and trailing whitespace dropped, every inner run one space."""
    return " ".join(text.split())


def demo_examples(args: EvalArguments) -> tuple[list[EvalExample], int]:
    """The demo's held-out questions and its answer canvas (the longest answer plus one EOS)."""
    from dllm.demo.tasks import default_tasks, make_examples, to_messages

    tasks = default_tasks()
    rows = make_examples(tasks, args.num_per_task, "test", seed=args.seed, heldout_fraction=args.heldout_fraction)
    canvas = max(task.max_answer_length() for task in tasks) + 1
    return [EvalExample(row["task"], to_messages(row)["messages"]) for row in rows], canvas


def dataset_examples(spec: str, split: str | None, seed: int,
                     max_examples: int | None) -> tuple[list[EvalExample], str]:
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
    rows = data[split] if max_examples is None else data[split].select(range(min(max_examples, len(data[split]))))
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
    tokenizes a conversation: the chat template's text cut at the answer span, each piece tokenized alone."""
    text, spans = assistant_spans(tokenizer, example.messages)
    start, end = spans[-1]
    return _tokens(tokenizer, text[:start]), _tokens(tokenizer, text[start:end])


def _tokens(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


@dataclass
class TaskScore:
    """What one task's examples scored; sums, so tasks add up to the overall row."""

    n: int = 0
    correct: int = 0
    forward_passes: int = 0  # summed over answers
    seconds: float = 0.0
    nll: float = 0.0  # ELBO NLL summed over every reference token
    nll_variance: float = 0.0  # summed squared standard errors
    tokens: int = 0

    def add(self, other: TaskScore) -> TaskScore:
        return TaskScore(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values())))

    def summary(self, likelihood: bool) -> dict[str, float | int | None]:
        """The JSON row: exact match in [0, 1], counts, passes per answer, seconds, and NLL per token."""
        row = {"exact_match": self.correct / max(self.n, 1), "n": self.n, "correct": self.correct,
               "forward_passes_per_answer": self.forward_passes / max(self.n, 1), "seconds": self.seconds}
        if likelihood:
            row["nll_per_token"] = self.nll / max(self.tokens, 1)
            row["nll_per_token_stderr"] = math.sqrt(self.nll_variance) / max(self.tokens, 1)
            row["reference_tokens"] = self.tokens
        return row


def score_task(engine: Engine, examples: list[EvalExample], args: EvalArguments) -> tuple[TaskScore, list[dict]]:
    """Answer one task's examples in batches, compare with the references, and (``args.likelihood``) bound their
    NLL. Returns the score and one record per example."""
    encoded = [encode_example(engine.tokenizer, example) for example in examples]
    prompts, references = [p for p, _ in encoded], [r for _, r in encoded]
    started, answers, passes = time.perf_counter(), [], 0
    for start in range(0, len(prompts), args.batch_size):
        for completion in engine.run(prompts[start:start + args.batch_size]):
            answers.append(engine.decode(completion.ids))
            passes += completion.forward_passes
    score = TaskScore(len(examples), 0, passes, time.perf_counter() - started)
    records = []
    for example, answer in zip(examples, answers):
        correct = normalize_answer(answer) == normalize_answer(example.reference)
        score.correct += correct
        records.append({"task": example.task, "prompt": example.messages[:-1], "reference": example.reference,
                        "answer": answer, "correct": correct})
    if args.likelihood:
        config = engine.config
        bound = elbo_nll(engine.model, prompts, references, config.mask_token_id, num_samples=args.likelihood_samples,
                         estimator=args.likelihood_estimator, seed=args.seed, batch_size=args.batch_size,
                         pad_token_id=config.pad_token_id)
        score.nll, score.tokens = float(bound.nll.sum()), int(bound.num_tokens.sum())
        score.nll_variance = float(bound.stderr.pow(2).sum())
        for record, nll, tokens in zip(records, bound.nll.tolist(), bound.num_tokens.tolist()):
            record.update(nll=nll, reference_tokens=tokens)
    return score, records


def evaluate_examples(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, config: DiffusionGenerationConfig,
                      examples: list[EvalExample], args: EvalArguments) -> dict[str, Any]:
    """Exact match (and optionally the ELBO) per task and overall. ``config`` has its token ids filled in.

    Returns ``{"sampler", "likelihood", "tasks": {name: row}, "overall": row, "examples": [...]}``, rows as
    :meth:`TaskScore.summary` writes them.
    """
    torch.manual_seed(args.seed)  # sampling at temperature > 0 is then reproducible
    engine = Engine(model, tokenizer, config)
    groups: dict[str, list[EvalExample]] = {}
    for example in examples:
        groups.setdefault(example.task, []).append(example)
    scores, records = {}, []
    for task, group in groups.items():
        scores[task], task_records = score_task(engine, group, args)
        records += task_records
    overall = TaskScore()
    for score in scores.values():
        overall = overall.add(score)
    settings = {k: v for k, v in asdict(config).items() if k not in ("record_history", "progress")}
    likelihood = ({"num_samples": args.likelihood_samples, "estimator": args.likelihood_estimator, "seed": args.seed}
                  if args.likelihood else None)
    return {"sampler": settings, "likelihood": likelihood,
            "tasks": {task: score.summary(args.likelihood) for task, score in scores.items()},
            "overall": overall.summary(args.likelihood), "examples": records}


def format_table(results: dict[str, Any]) -> str:
    """The per-task and overall rows as a text table."""
    likelihood = results.get("likelihood") is not None
    header = f"{'task':12s} {'exact match':>11s} {'N':>6s} {'passes/answer':>13s} {'seconds':>8s}"
    lines = [header + (f" {'ELBO nll/token':>18s}" if likelihood else "")]
    for name, row in [*results["tasks"].items(), ("overall", results["overall"])]:
        line = (f"{name:12s} {100 * row['exact_match']:10.1f}% {row['n']:6d} {row['forward_passes_per_answer']:13.1f} "
                f"{row['seconds']:8.2f}")
        if likelihood:
            line += f" {row['nll_per_token']:9.4f} ± {row['nll_per_token_stderr']:.4f}"
        lines.append(line)
    return "\n".join(lines)


def _examples(checkpoint: str, args: EvalArguments, overrides: dict[str, Any]) -> tuple[list[EvalExample], str]:
    """The questions and a description of their source; the demo's canvas joins ``overrides`` when needed."""
    for name, least in (("num_per_task", 1), ("batch_size", 1), ("likelihood_samples", 2)):  # 2: a spread
        if getattr(args, name) < least:
            raise UsageError(f"--{name} must be at least {least}, got {getattr(args, name)}")
    if args.task is not None and args.dataset_args is not None:
        raise UsageError(f"give --task {args.task} or --dataset_args {args.dataset_args!r}, not both")
    if args.dataset_args is not None:
        examples, split = dataset_examples(args.dataset_args, args.split, args.seed, args.max_examples)
        return examples, f"{args.dataset_args} ({split} split)"
    if (args.task or DEMO) != DEMO:
        raise UsageError(f"--task {args.task!r}: the only task is {DEMO!r}; use --dataset_args SPEC for a dataset")
    examples, canvas = demo_examples(args)
    if "gen_length" not in overrides and not (Path(checkpoint) / GENERATION_CONFIG_NAME).is_file():
        overrides["gen_length"] = canvas
    return examples, f"demo held-out tasks (seed {args.seed}, heldout_fraction {args.heldout_fraction})"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run ``dllm eval`` with command-line ``argv``; prints the table and returns the results (as written to
    ``--output``)."""
    checkpoint, _, (args, sampler, loading) = parse_verb_args(
        "dllm eval", argv, (EvalArguments, SamplerOptions, CheckpointArguments))
    overrides = sampler_overrides(sampler)
    examples, source = _examples(checkpoint, args, overrides)
    loaded = load_checkpoint(checkpoint, loading, **overrides)
    try:
        config = check_generation_config(loaded.generation_config)
    except ValueError as err:  # steps above gen_length
        raise UsageError(f"{checkpoint}: {err}") from err
    results = {"checkpoint": checkpoint, "source": source,
               **evaluate_examples(loaded.model, loaded.tokenizer, config, examples, args)}
    print(f"dllm eval {checkpoint}: {source}, {len(examples)} questions")
    print(format_table(results), flush=True)
    if args.output:
        path = Path(args.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    return results
