"""Cost of the masked-diffusion objective: an MDLM training step against an autoregressive step.

Both steps use the same tiny LLaMA weights, batch and optimiser; the only differences are the objective
(MDLM: sample t, mask answer tokens, bidirectional forward, ELBO-weighted CE on masked positions, through
``MDLMTrainer.compute_loss``; AR: causal forward with the shifted CE of ``LlamaForCausalLM``) and the
attention direction. Timings are interleaved (AR, MDLM, AR, MDLM, ...) so drifts in machine load hit both;
we report medians over repetitions and the time ratio MDLM / AR (goal: <= 1.03).

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` per mode; on CPU, the sampled peak RSS growth of a
fresh subprocess that runs only that mode (a process's peak RSS cannot be reset).

    python benchmarks/train_step.py                      # defaults below, bf16 autocast on CPU
    python benchmarks/train_step.py --dtype float32 --repeats 7
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dllm.core.trainers.mdlm_trainer import MDLMConfig, MDLMTrainer
from dllm.pipelines.llama3 import Llama3ForMaskedLM

MASK_ID = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--prompt_fraction", type=float, default=0.25, help="leading tokens labelled -100")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16", help="autocast dtype")
    p.add_argument("--steps", type=int, default=5, help="steps per timed block")
    p.add_argument("--repeats", type=int, default=7, help="timed blocks per mode (median reported)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--only", choices=["ar", "mdlm"], help="internal: run one mode for the memory probe")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p.parse_args(argv)


def build(args: argparse.Namespace) -> tuple[LlamaForCausalLM, Llama3ForMaskedLM, MDLMTrainer, dict]:
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.heads, max_position_embeddings=args.seq,
                         attn_implementation="sdpa")
    torch.manual_seed(0)
    ar = LlamaForCausalLM(config).to(args.device)
    mdlm = Llama3ForMaskedLM(config).to(args.device)
    mdlm.load_state_dict(ar.state_dict())
    mdlm.config.mask_token_id = MASK_ID
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(4, args.vocab, (args.batch, args.seq), generator=g)
    labels = input_ids.clone()
    labels[:, : int(args.prompt_fraction * args.seq)] = -100
    batch = {"input_ids": input_ids.to(args.device), "labels": labels.to(args.device),
             "attention_mask": torch.ones_like(input_ids).to(args.device)}
    out = tempfile.mkdtemp()
    trainer = MDLMTrainer(model=mdlm, args=MDLMConfig(output_dir=out, report_to="none",
                                                      use_cpu=args.device == "cpu"))
    return ar, mdlm, trainer, batch


def step_fn(mode: str, ar: LlamaForCausalLM, mdlm: Llama3ForMaskedLM, trainer: MDLMTrainer, batch: dict,
            dtype: str) -> Callable[[], None]:
    model = ar if mode == "ar" else mdlm
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    device_type = batch["input_ids"].device.type
    autocast = torch.autocast(device_type, dtype=getattr(torch, dtype), enabled=dtype != "float32")

    def step() -> None:
        with autocast:
            if mode == "ar":
                loss = model(**batch).loss  # shifted causal CE over all labelled tokens
            else:
                loss = trainer.compute_loss(model, batch)  # t, mask, bidirectional forward, weighted CE
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_modes(args: argparse.Namespace, ar: LlamaForCausalLM, mdlm: Llama3ForMaskedLM, trainer: MDLMTrainer,
               batch: dict) -> dict[str, list[float]]:
    steps = {mode: step_fn(mode, ar, mdlm, trainer, batch, args.dtype) for mode in ("ar", "mdlm")}
    for step in steps.values():  # warm-up
        step()
        step()
    times = {"ar": [], "mdlm": []}
    for _ in range(args.repeats):
        for mode, step in steps.items():
            sync(args.device)
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync(args.device)
            times[mode].append((time.perf_counter() - start) / args.steps)
    return times


def peak_memory_mib(args: argparse.Namespace, mode: str) -> float:
    if args.device.startswith("cuda"):
        ar, mdlm, trainer, batch = build(args)
        step = step_fn(mode, ar, mdlm, trainer, batch, args.dtype)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(3):
            step()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    argv = [sys.executable, __file__, "--only", mode] + [
        f"--{k}={v}" for k, v in vars(args).items() if k not in ("only", "json") and v is not None]
    return float(subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])


def current_rss_mib() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def run_only(args: argparse.Namespace) -> None:
    """Memory probe (CPU): peak resident memory of this process while three steps of one mode run, minus the
    resident memory before the models were built, in MiB (sampled every millisecond by a thread; weights and
    optimiser state are the same for both modes, so the difference between modes is the objective's)."""
    import threading

    before = current_rss_mib()
    peak, done = [before], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], current_rss_mib())
            time.sleep(0.001)

    ar, mdlm, trainer, batch = build(args)
    step = step_fn(args.only, ar, mdlm, trainer, batch, args.dtype)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for _ in range(3):
        step()
    done.set()
    sampler.join()
    print(peak[0] - before)


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    if args.only:
        return run_only(args)
    ar, mdlm, trainer, batch = build(args)
    times = time_modes(args, ar, mdlm, trainer, batch)
    tokens = args.batch * args.seq
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                   f"torch {torch.__version__}, device {args.device}",
        "shape": f"LLaMA vocab {args.vocab}, hidden {args.hidden}, {args.layers} layers; batch {args.batch} x "
                 f"{args.seq} tokens; {args.dtype}",
        "repeats": args.repeats,
        "steps_per_repeat": args.steps,
    }
    for mode in ("ar", "mdlm"):
        median = statistics.median(times[mode])
        result[f"{mode}_step_s"] = round(median, 4)
        result[f"{mode}_tokens_per_s"] = round(tokens / median)
        result[f"{mode}_peak_mib"] = round(peak_memory_mib(args, mode), 1)
    result["time_ratio_mdlm_over_ar"] = round(result["mdlm_step_s"] / result["ar_step_s"], 4)
    ratios = [m / a for m, a in zip(times["mdlm"], times["ar"])]
    result["paired_ratio_median"] = round(statistics.median(ratios), 4)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:>26}: {value}")
    return result


if __name__ == "__main__":
    main()
