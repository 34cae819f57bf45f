"""Sampler time per answer against torch's intra-op thread count (``dllm sample/serve/chat/playground
--num_threads``): random LLaMA masked LMs of three sizes, the same prompts and settings at every thread count.

    python benchmarks/sampler_threads.py --threads 1 2 --sizes tiny small medium

Prints one JSON line per (size, threads): median seconds of a batch of ``--batch`` prompts answered with
``gen_length`` 32 in blocks of 8, 8 steps, and the model's parameter count. Weights are random: the time of a forward
does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

SIZES = {  # hidden, layers, intermediate, vocab
    "tiny": (32, 2, 64, 128),  # the demo's size
    "small": (256, 4, 1024, 32000),
    "medium": (768, 12, 2048, 32000),
}


def build(size: str) -> torch.nn.Module:
    from transformers import LlamaConfig

    from dllm.auto import AutoModelForMaskedDiffusion

    hidden, layers, intermediate, vocab = SIZES[size]
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 64),
                         max_position_embeddings=512, mask_token_id=vocab - 1)
    torch.manual_seed(0)
    return AutoModelForMaskedDiffusion.from_config(config).eval()


def seconds(model: torch.nn.Module, batch: int, repeats: int) -> float:
    from dllm.core.sampling import DiffusionGenerationConfig, generate

    vocab = model.config.vocab_size
    config = DiffusionGenerationConfig(gen_length=32, block_size=8, steps=8, mask_token_id=vocab - 1)
    prompt = torch.randint(0, vocab - 1, (batch, 24), generator=torch.Generator().manual_seed(0))
    generate(model, prompt, config)  # warm-up
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        generate(model, prompt, config)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for size in args.sizes:
        model = build(size)
        params = sum(p.numel() for p in model.parameters())
        for threads in args.threads:
            torch.set_num_threads(threads)
            print(json.dumps({"size": size, "parameters": params, "threads": threads, "batch": args.batch,
                              "seconds": round(seconds(model, args.batch, args.repeats), 4)}), flush=True)


if __name__ == "__main__":
    main()
