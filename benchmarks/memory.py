"""Peak host memory of one MDLM training step with and without gradient checkpointing (CPU).

    python benchmarks/memory.py --hidden 512 --layers 8 --seq 512 --batch 8 --vocab 8192
    python benchmarks/memory.py --hidden 512 --layers 8 --seq 512 --batch 8 --vocab 8192 --lora

Each setting runs in a fresh process (``MDLMTrainer.train()``, 2 optimizer steps, AdamW, fp32). The first step
warms up (AdamW state, allocator); just before the second step the process's resident-set high-water mark is
reset (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0); after the step the peak is ``VmHWM`` from
``/proc/self/status``. Reported: that peak, and the peak minus the RSS when training began (model and data
built, no optimizer state yet): what training adds (AdamW state, gradients, activations, temporaries).
The child runs with ``MALLOC_MMAP_THRESHOLD_=131072``: glibc otherwise raises its mmap threshold (up to 32 MiB)
after large frees, keeps the next tensors on its heap and does not return them, so RSS would carry freed
memory from the first step into the second (seen: 1.2 GiB more RSS at the second step's start).

Why this measure: torch's CPU allocator keeps no statistics (``torch.cuda.max_memory_allocated`` has no CPU
counterpart), and ``tracemalloc`` sees only Python's allocator, not torch's. ``ru_maxrss`` would work but cannot
be reset, so it would also count model construction; resetting ``VmHWM`` isolates the step. Large tensors are
``mmap``-ed by glibc and returned on free, so RSS follows live tensors closely.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(args: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from transformers import LlamaConfig, TrainerCallback, default_data_collator

    from dllm.auto import AutoModelForMaskedDiffusion
    from dllm.core.trainers.mdlm_trainer import MDLMConfig, MDLMTrainer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                         num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                         num_key_value_heads=max(1, args.hidden // 256), max_position_embeddings=args.seq,
                         mask_token_id=args.vocab - 1, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = AutoModelForMaskedDiffusion.from_config(config)
    if args.lora:  # the SFT recipe's own LoRA wrapping (r 16 on q, k, v, o)
        from dllm.sft.config import ModelArguments
        from dllm.sft.recipe import apply_lora

        model = apply_lora(model, ModelArguments(lora=True), args.checkpointing)
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(2 * args.batch):
        ids = torch.randint(3, args.vocab - 1, (args.seq,), generator=g)
        labels = ids.clone()
        labels[: args.seq // 4] = -100  # a prompt
        rows.append({"input_ids": ids.tolist(), "labels": labels.tolist(), "attention_mask": [1] * args.seq})

    class PeakOfSecondStep(TrainerCallback):
        def __init__(self):
            self.result = {}

        def on_train_begin(self, targs, state, control, **kwargs):
            self.result["rss_train_begin_mib"] = _status_kib("VmRSS") / 1024

        def on_step_begin(self, targs, state, control, **kwargs):
            if state.global_step == 1:
                Path("/proc/self/clear_refs").write_text("5")
                self.result["rss_before_mib"] = _status_kib("VmRSS") / 1024
                self.start = time.perf_counter()

        def on_step_end(self, targs, state, control, **kwargs):
            if state.global_step == 2:
                self.result["step_s"] = time.perf_counter() - self.start
                self.result["peak_mib"] = _status_kib("VmHWM") / 1024
                self.result["training_adds_mib"] = self.result["peak_mib"] - self.result["rss_train_begin_mib"]

    spy = PeakOfSecondStep()
    targs = MDLMConfig(output_dir="/tmp/dllm_memory_benchmark", per_device_train_batch_size=args.batch, max_steps=2,
                       report_to="none", use_cpu=True, seed=0, save_strategy="no", logging_steps=1,
                       disable_tqdm=True, activation_checkpointing=args.checkpointing)
    trainer = MDLMTrainer(model=model, args=targs, train_dataset=Dataset.from_list(rows),
                          data_collator=default_data_collator, callbacks=[spy])
    trainer.train()
    params = sum(p.numel() for p in model.parameters())
    return {"checkpointing": args.checkpointing, "lora": args.lora, "params_m": params / 1e6, **spy.result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lora", action="store_true", help="train LoRA adapters (the recipe's defaults)")
    parser.add_argument("--checkpointing", type=lambda s: s.lower() in ("1", "true", "yes"), default=None,
                        help="run one setting in this process (used internally); default: both, one process each")
    args = parser.parse_args()
    if args.checkpointing is not None:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    results = []
    for setting in (False, True):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--checkpointing", str(setting)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "MALLOC_MMAP_THRESHOLD_": "131072"}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
        results.append(json.loads(next(l for l in out.splitlines() if l.startswith("RESULT "))[7:]))
        print(json.dumps(results[-1]), flush=True)
    off, on = results
    print(f"| {off['params_m']:.1f}M params{' LoRA' if args.lora else ''}, batch {args.batch} x {args.seq} | "
          f"{off['peak_mib']:.0f} | {on['peak_mib']:.0f} | {off['training_adds_mib']:.0f} | "
          f"{on['training_adds_mib']:.0f} | {1 - on['training_adds_mib'] / off['training_adds_mib']:.0%} |")


if __name__ == "__main__":
    main()
