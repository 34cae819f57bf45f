"""Sampler cost at a real model size (GPU): how the key/value caches and the output head restricted to the
committable columns pay off when the forward pass, not Python, is the cost.

A randomly initialised LLaMA-3-shaped model (default: 1.2B parameters, 128k vocabulary, bf16) denoises
``--gen_length`` positions after a ``--prompt_length`` prompt for ``--batch`` rows, one token per step, in
blocks of ``--block_size``. Random weights mean the answers are meaningless and the threshold would never fire,
so this measures cost only: milliseconds per denoising step and forward passes, for cache none / prefix / dual,
interleaved over ``--repeats`` repetitions (medians). Also reported: the time of one full-canvas forward with
the head on every position against the head only on one block's columns (``logits_to_keep``), the saving the
sampler gets on every uncached step.

    python benchmarks/sampler_scale.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import LlamaConfig

from dllm.auto import AutoModelForMaskedDiffusion
from dllm.core.sampling import DiffusionGenerationConfig, generate


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt_length", type=int, default=256)
    p.add_argument("--gen_length", type=int, default=256)
    p.add_argument("--block_size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    return p.parse_args()


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                         num_key_value_heads=max(1, args.hidden // 256), max_position_embeddings=8192)
    torch.manual_seed(0)
    model = AutoModelForMaskedDiffusion.from_config(config)  # sdpa, the default
    return model.to(device=args.device, dtype=torch.bfloat16).eval()


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    model = build_model(args)
    params = sum(p.numel() for p in model.parameters())
    mask_id = args.vocab - 1
    prompt = torch.randint(0, args.vocab - 2, (args.batch, args.prompt_length), device=args.device)
    configs = {cache: DiffusionGenerationConfig(gen_length=args.gen_length, block_size=args.block_size,
                                                cache=cache, mask_token_id=mask_id)
               for cache in ("none", "prefix", "dual")}
    canvas = torch.cat([prompt, torch.full((args.batch, args.gen_length), mask_id, device=args.device)], 1)
    heads = {"head on every position": lambda: model(canvas),
             "head on one block": lambda: model(canvas, logits_to_keep=torch.arange(
                 args.prompt_length, args.prompt_length + args.block_size, device=args.device))}
    with torch.no_grad():
        for fn in list(heads.values()) + [lambda c=c: generate(model, prompt, c) for c in configs.values()]:
            fn()  # warm-up (kernels, allocator)
        times: dict[str, list[float]] = {name: [] for name in [*heads, *configs]}
        passes = {}
        for _ in range(args.repeats):
            for name, fn in heads.items():
                times[name].append(timed(fn, args.device))
            for name, config in configs.items():
                out = []
                times[name].append(timed(lambda: out.append(generate(model, prompt, config)), args.device))
                passes[name] = out[0].forward_passes
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"{name}; torch {torch.__version__}; {params / 1e9:.2f}B parameters (hidden {args.hidden}, {args.layers} "
          f"layers, vocab {args.vocab}), bf16; batch {args.batch}, prompt {args.prompt_length}, gen "
          f"{args.gen_length}, block {args.block_size}; medians of {args.repeats}")
    print("| forward of the whole canvas | ms |\n|---|---|")
    for label in heads:
        print(f"| {label} | {1e3 * statistics.median(times[label]):.1f} |")
    base = statistics.median(times["none"])
    print("\n| cache | forward passes | s per answer batch | ms per step | speed-up |\n|---|---|---|---|---|")
    for cache in configs:
        t = statistics.median(times[cache])
        print(f"| {cache} | {passes[cache]} | {t:.2f} | {1e3 * t / passes[cache]:.1f} | {base / t:.2f}x |")


if __name__ == "__main__":
    main()
