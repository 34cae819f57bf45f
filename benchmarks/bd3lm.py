"""Block diffusion against MDLM on the same model: the training step, and decoding with the exact block cache
against MDLM's prefix and dual caches doing the same work. Random weights (speed only), one CPU thread.

1. Training step (forward + backward of ``compute_loss``, median of ``--repeats``): ``BD3LMTrainer`` (one pass
   over ``x_t ⊕ x_0``, twice the tokens, the head on the noisy copy's masked positions only) against
   ``MDLMTrainer`` on the same batch. Goal: at most 1.6x.
2. Decoding tokens/s (answer tokens / wall time, no EOS: every answer runs to ``gen_length``), at batch 1 and 64 and
   answers of 64 and 256 tokens, blocks of ``--block_size``, ``gen_length / --tokens_per_step`` steps for every
   setting: ``block`` (the model marked block-diffusion) against ``prefix`` and ``dual`` (the same weights as an
   MDLM model). Goal: block >= 2x prefix at 256 tokens.

Every number is the median of ``--repeats`` (at least 5 for a reported table) repetitions *interleaved* across the
settings it compares (repetition r of every setting, then r + 1), after one warm-up of each, so a load that comes
and goes on a shared machine hits the settings alike. ``--smoke``: a tiny model and one repetition (the test).

    flock /work/cpu.lock python benchmarks/bd3lm.py --output bd3lm.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import time
from typing import Callable

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from dllm.core.models.masked_lm import masked_lm_class, set_block_diffusion
from dllm.core.sampling import DiffusionGenerationConfig, generate
from dllm.core.trainers import OBJECTIVES

MASK_ID = 3


def build(args: argparse.Namespace, block_diffusion: bool) -> torch.nn.Module:
    config = Qwen3Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=args.hidden // 32, num_key_value_heads=2,
                         head_dim=32, max_position_embeddings=2048, mask_token_id=MASK_ID)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = masked_lm_class(Qwen3ForCausalLM)(config)
    if block_diffusion:
        set_block_diffusion(model.config, args.block_size)
    return model


def interleaved_medians(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each of ``runs``: one warm-up each, then ``repeats`` rounds that run every one once."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            began = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - began)
    return {name: statistics.median(values) for name, values in times.items()}


def training_step(args: argparse.Namespace) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, args.vocab, (args.train_batch, args.train_length), generator=g)
    labels = ids.clone()
    labels[:, : args.train_length // 4] = -100  # a quarter prompt
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    steps = {}
    with tempfile.TemporaryDirectory() as folder:
        for objective, (config_cls, trainer_cls) in OBJECTIVES.items():
            model = build(args, block_diffusion=False).train()
            extra = {"block_size": args.block_size} if objective == "bd3lm" else {}
            trainer = trainer_cls(model=model, args=config_cls(output_dir=folder, use_cpu=True, report_to="none",
                                                               **extra))

            def step(trainer=trainer, model=model) -> None:
                model.zero_grad()
                trainer.compute_loss(model, dict(batch)).backward()

            steps[objective] = step
        seconds = interleaved_medians(steps, args.repeats)
    return {"mdlm_s": seconds["mdlm"], "bd3lm_s": seconds["bd3lm"], "ratio": seconds["bd3lm"] / seconds["mdlm"]}


def decoding(args: argparse.Namespace) -> list[dict[str, float | int | str]]:
    models = {"block": build(args, True).eval(), "prefix": build(args, False).eval()}
    models["dual"] = models["prefix"]
    rows = []
    for batch in args.batch_sizes:
        g = torch.Generator().manual_seed(1)
        prompt = torch.randint(4, args.vocab, (batch, args.prompt_length), generator=g)
        for gen_length in args.gen_lengths:
            row: dict[str, float | int | str] = {"batch": batch, "gen_length": gen_length}
            runs = {}
            for cache, model in models.items():
                config = DiffusionGenerationConfig(gen_length=gen_length, steps=gen_length // args.tokens_per_step,
                                                   block_size=args.block_size, cache=cache, mask_token_id=MASK_ID)
                runs[cache] = lambda model=model, config=config: generate(model, prompt, config)
            for cache, seconds in interleaved_medians(runs, args.repeats).items():
                row[f"{cache}_tokens_per_s"] = batch * gen_length / seconds
            row["block_over_prefix"] = row["block_tokens_per_s"] / row["prefix_tokens_per_s"]
            row["block_over_dual"] = row["block_tokens_per_s"] / row["dual_tokens_per_s"]
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def cpu_model() -> str:
    """``lscpu``'s model name (the platform's processor string where there is no lscpu)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    names = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name:")]
    return names[0] if names else platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--block_size", type=int, default=32)
    parser.add_argument("--train_batch", type=int, default=8)
    parser.add_argument("--train_length", type=int, default=512)
    parser.add_argument("--prompt_length", type=int, default=64)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--gen_lengths", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--tokens_per_step", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip_training", action="store_true")
    parser.add_argument("--skip_decoding", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="A tiny model, short answers, one repetition.")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.hidden, args.layers, args.vocab, args.block_size, args.train_batch, args.train_length = 64, 1, 64, 4, 2, 16
        args.prompt_length, args.batch_sizes, args.gen_lengths, args.repeats = 4, [1, 2], [8, 16], 1
    torch.set_num_threads(1)
    result = {"machine": f"{cpu_model()}, 1 torch thread, torch {torch.__version__}", "args": vars(args)}
    if not args.skip_training:
        result["training_step"] = training_step(args)
        print(json.dumps(result["training_step"]), flush=True)
    if not args.skip_decoding:
        result["decoding"] = decoding(args)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
