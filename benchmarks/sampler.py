"""Sampler speed and accuracy on the demo checkpoint: one token per step against Fast-dLLM parallel decoding.

Four settings of :class:`~dllm.core.sampling.DiffusionGenerationConfig`, each at batch 1 and batch 64, on prompts
held out from the demo's training (:mod:`dllm.demo`: sort, reverse, add):

    (a) one token per step              steps=None, no threshold, no cache (the demo's own evaluation)
    (b) threshold                       threshold=0.9 (commit every position at least 0.9 sure, and at least one)
    (c) threshold + prefix cache        cache="prefix"
    (d) threshold + dual cache          cache="dual"

All four use the same ``block_size`` and the demo's answer canvas (``gen_length`` = longest answer + 1 EOS = 7).
Each run is ``generate_text_output`` end to end (chat template, tokenizer, sampler, decode), as a user calls it.

What is counted:

* exact match: the decoded answer equals the reference, on the same prompts for every setting of a batch size
  (batch 1: the first ``--batch1_prompts`` held-out prompts, balanced over the tasks; batch 64: all of them);
* forward passes per prompt: the model calls a prompt's batch made (every row rides every call of its batch), and
  ``passes / N`` with ``N = gen_length`` canvas positions per answer; (a) needs at most N (fewer when every row of
  the batch has finished a block holding EOS), the goal is ``passes / N <= 1/4``;
* answer tokens/s: the tokens before the first EOS of every answer (what the user gets back, EOS padding not
  counted), divided by the wall time of the whole run. The answers of all settings are nearly the same, so the
  ratio to (a) is the ratio of wall times; the goal is ``>= 3x`` (a);
* wall time: median over ``--repeats`` timed runs. Settings are interleaved within each repetition (and their order
  rotated between repetitions), so drifts in machine load hit all of them; ``paired speedup`` is the median of the
  per-repetition ratios time(a) / time(setting);
* forward share (``--profile``, one extra untimed run): the share of the wall time spent inside the model's forward,
  measured with module hooks; the rest is the Python around it (tokenizer, sampler step, decode).

Without ``--checkpoint`` a demo model is trained first into a temporary folder (``dllm.demo.run.main``).

    python benchmarks/sampler.py --checkpoint outputs/demo --output sampler.json   # a trained demo checkpoint
    python benchmarks/sampler.py --block_size 8 4 --profile                       # block-size variants
    python benchmarks/sampler.py                                                  # trains one first (~4 min)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from dllm.auto import AutoModelForMaskedDiffusion
from dllm.core.sampling import DiffusionGenerationConfig, TextGenerationOutput, answer_ids, generate_text_output
from dllm.demo.run import DemoArguments, build_tasks

SETTINGS: dict[str, str] = {
    "a": "one token per step",
    "b": "threshold",
    "c": "threshold + prefix cache",
    "d": "threshold + dual cache",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a demo checkpoint folder (model + tokenizer); default: train one")
    p.add_argument("--train_steps", type=int, default=8000, help="demo training steps when no checkpoint is given")
    p.add_argument("--train_minutes", type=float, default=10.0, help="demo training wall-clock cap")
    p.add_argument("--seed", type=int, default=42, help="demo seed: training and the held-out prompt draw")
    p.add_argument("--num_eval_per_task", type=int, default=200, help="held-out prompts per task (batch 64 set)")
    p.add_argument("--batch1_prompts", type=int, default=150, help="the first N held-out prompts run at batch 1")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 64])
    p.add_argument("--block_size", type=int, nargs="+", default=[8],
                   help="semi-autoregressive block size(s); several are interleaved like the settings")
    p.add_argument("--threshold", type=float, default=0.9, help="confidence threshold of (b), (c), (d)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per setting (median reported)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--profile", action="store_true", help="also measure the model forward's share of wall time")
    p.add_argument("--output", help="write the results as JSON here")
    return p.parse_args(argv)


def load_or_train(args: argparse.Namespace) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """The checkpoint's model (eval mode, on ``args.device``) and tokenizer; trains a demo model first when no
    checkpoint is given. Returns them with a description of where they came from."""
    if args.checkpoint:
        path, source = args.checkpoint, f"checkpoint {args.checkpoint}"
    else:
        from dllm.demo.run import main as demo_main

        path = tempfile.mkdtemp(prefix="dllm_sampler_bench_")
        result = demo_main(["--output_dir", path, "--max_steps", str(args.train_steps), "--train_minutes",
                            str(args.train_minutes), "--seed", str(args.seed), "--no_plot",
                            "--eval_every_minutes", "0"])
        source = f"demo trained here: {result['steps']} steps, seed {args.seed}, saved to {path}"
    model = AutoModelForMaskedDiffusion.from_pretrained(path).to(args.device).eval()
    return model, AutoTokenizer.from_pretrained(path), source


def settings(gen_length: int, block_size: int | None, threshold: float) -> dict[str, DiffusionGenerationConfig]:
    """The four sampler configs (a)-(d) on the demo's canvas."""
    one_per_step = DiffusionGenerationConfig(gen_length=gen_length, block_size=block_size)
    parallel = replace(one_per_step, threshold=threshold)
    return {"a": one_per_step, "b": parallel, "c": replace(parallel, cache="prefix"),
            "d": replace(parallel, cache="dual")}


@dataclass
class Counts:
    """What one run produced, independent of its timing."""

    prompts: int
    passes_per_prompt: float  # model calls of each prompt's batch, averaged over prompts
    answer_tokens: int  # tokens before the first EOS, summed over answers
    exact_match: float


def count(result: TextGenerationOutput, references: list[str], gen_length: int, eos_token_id: int | None) -> Counts:
    """Forward passes per prompt, answer tokens and exact match of one ``generate_text_output`` run."""
    rows = [out.sequences.shape[0] for out in result.outputs]
    passes = sum(out.forward_passes * n for out, n in zip(result.outputs, rows)) / sum(rows)
    tokens = sum(len(ids) for out in result.outputs
                 for ids in answer_ids(out.sequences.cpu(), out.sequences.shape[1] - gen_length, eos_token_id))
    hits = sum(text == ref for text, ref in zip(result.texts, references))
    return Counts(len(references), passes, tokens, hits / len(references))


def forward_seconds(model: PreTrainedModel, run) -> tuple[float, float]:
    """Run ``run()`` once; returns (wall seconds, seconds inside ``model``'s forward), from module hooks."""
    inside, began = [0.0], [0.0]

    def pre(*_):
        sync(model)
        began[0] = time.perf_counter()

    def post(*_):
        sync(model)
        inside[0] += time.perf_counter() - began[0]

    handles = [model.register_forward_pre_hook(pre), model.register_forward_hook(post)]
    try:
        start = time.perf_counter()
        run()
        wall = time.perf_counter() - start
    finally:
        for handle in handles:
            handle.remove()
    return wall, inside[0]


def sync(model: PreTrainedModel) -> None:
    if next(model.parameters()).device.type == "cuda":
        torch.cuda.synchronize()


def measure(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: list[dict], gen_length: int,
            batch_sizes: list[int], block_sizes: list[int | None], threshold: float, batch1_prompts: int,
            repeats: int, profile: bool = False) -> list[dict]:
    """Every (block size, batch size, setting): one untimed run for the counts (temperature 0, so every run gives
    the same answers), then ``repeats`` timed runs interleaved over all of them. Returns one row per combination."""
    cases = []
    for block in block_sizes:
        for batch in batch_sizes:
            subset = examples[:batch1_prompts] if batch == 1 else examples
            for name, config in settings(gen_length, block, threshold).items():
                cases.append({"block_size": block, "batch_size": batch, "setting": name, "config": config,
                              "prompts": [e["prompt"] for e in subset], "references": [e["answer"] for e in subset],
                              "times": []})

    def run(case: dict) -> TextGenerationOutput:
        return generate_text_output(model, tokenizer, case["prompts"], case["config"], batch_size=case["batch_size"])

    eos = tokenizer.eos_token_id
    for case in cases:  # warm-up, and the counts
        case["counts"] = count(run(case), case["references"], gen_length, eos)
    for rep in range(repeats):
        shift = rep % len(cases)
        for case in cases[shift:] + cases[:shift]:
            sync(model)
            start = time.perf_counter()
            run(case)
            sync(model)
            case["times"].append(time.perf_counter() - start)
    if profile:
        for case in cases:
            wall, inside = forward_seconds(model, lambda: run(case))
            case["forward_share"] = inside / wall
    return [summarise(case, cases, gen_length) for case in cases]


def summarise(case: dict, cases: list[dict], gen_length: int) -> dict:
    """One result row; speedups are against setting (a) of the same block and batch size."""
    base = next(c for c in cases if c["block_size"] == case["block_size"] and c["batch_size"] == case["batch_size"]
                and c["setting"] == "a")
    counts, seconds = case["counts"], statistics.median(case["times"])
    row = {
        "block_size": case["block_size"], "batch_size": case["batch_size"], "setting": case["setting"],
        "description": SETTINGS[case["setting"]], "prompts": counts.prompts,
        "exact_match": round(100 * counts.exact_match, 2),
        "exact_match_loss": round(100 * (base["counts"].exact_match - counts.exact_match), 2),
        "passes_per_prompt": round(counts.passes_per_prompt, 3),
        "passes_over_n": round(counts.passes_per_prompt / gen_length, 3),
        "answer_tokens": counts.answer_tokens,
        "wall_s": round(seconds, 4),
        "answer_tokens_per_s": round(counts.answer_tokens / seconds, 1),
        "speedup": round(statistics.median(base["times"]) / seconds, 2),
        "paired_speedup": round(statistics.median(t0 / t for t0, t in zip(base["times"], case["times"])), 2),
        "times_s": [round(t, 4) for t in case["times"]],
    }
    if "forward_share" in case:
        row["forward_share"] = round(case["forward_share"], 3)
    return row


def markdown_table(rows: list[dict]) -> str:
    """The rows as a markdown table; goals: passes / N <= 0.25, exact-match loss <= 1 point, speedup >= 3."""
    profiled = any("forward_share" in row for row in rows)
    head = ["block", "batch", "setting", "prompts", "exact match %", "passes / prompt", "passes / N",
            "answer tok/s", "wall s", "speedup vs (a)", "paired speedup"] + (["forward share"] if profiled else [])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        cells = [row["block_size"], row["batch_size"], f"({row['setting']}) {row['description']}", row["prompts"],
                 f"{row['exact_match']:.2f}", f"{row['passes_per_prompt']:.2f}", f"{row['passes_over_n']:.3f}",
                 f"{row['answer_tokens_per_s']:.0f}", f"{row['wall_s']:.3f}", f"{row['speedup']:.2f}x",
                 f"{row['paired_speedup']:.2f}x"]
        if profiled:
            cells.append(f"{100 * row['forward_share']:.0f}%" if "forward_share" in row else "")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def machine(device: str) -> str:
    """CPU model, cores, torch version and the thread count in use (and the GPU when there is one)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"{model}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if device.startswith("cuda"):
        text += f", {torch.cuda.get_device_name()}"
    return text


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    model, tokenizer, source = load_or_train(args)
    if args.threads:  # after training: the demo sets its own thread count
        torch.set_num_threads(args.threads)
    demo = build_tasks(replace(DemoArguments(), num_eval_per_task=args.num_eval_per_task), args.seed)
    rows = measure(model, tokenizer, demo.heldout, demo.gen_length, args.batch_sizes, args.block_size,
                   args.threshold, args.batch1_prompts, args.repeats, args.profile)
    result = {
        "machine": machine(args.device), "device": args.device, "model": source,
        "gen_length": demo.gen_length, "threshold": args.threshold, "repeats": args.repeats,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None, "rows": rows,
    }
    print(f"{result['machine']}; {source}; gen_length N = {demo.gen_length}; threshold {args.threshold}; "
          f"medians of {args.repeats} interleaved runs; load average after: {result['load_average']}")
    print(markdown_table(rows))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
