"""AR-to-diffusion adaptation: does attention annealing (``--attention_annealing_steps N``, DiffuLLaMA) lower the
held-out ELBO at equal steps against switching to bidirectional attention at once?

On the project's shared web text (``c4_demo.jsonl``; data, BPE tokenizer, raw-text packing and model shape as in
``benchmarks/pretrain_ppl.py``):

1. A tiny LLaMA-shaped model is trained briefly as an autoregressive LM (``--ar_steps``), then saved.
2. From those AR weights, two MDLM adaptations with the same rows in the same order, the same steps, optimiser and
   diffusion noise (``MDLMTrainer``; the annealed attention is drawn after ``t`` and the masks): ``--steps`` steps
   bidirectional from the first, and ``--steps`` steps with ``attention_annealing_steps = --annealing_steps``.
3. The held-out per-token ELBO of both (bidirectional, :func:`dllm.core.likelihood.elbo_nll`, the same
   ``--rounds`` x ``--samples`` antithetic draws for both models: the noise is seeded by each row's tokens), and the
   paired difference with its standard error (per row and draw, annealed minus at once).

    flock /work/cpu.lock python benchmarks/annealing.py --json annealing.json
    python benchmarks/annealing.py --quick       # smoke run (seconds): finite numbers, not a measurement
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

# Run as a script, this folder is on sys.path: the data, tokenizer, model and evaluation are pretrain_ppl's.
from pretrain_ppl import (
    QUICK,
    ar_nll_per_token,
    base_parser,
    machine,
    mdlm_bound,
    parse_with_quick,
    prepare,
    quiet,
    save_initialisation,
    train_ar,
    train_mdlm,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument("--ar_steps", type=int, default=150, help="autoregressive training before the adaptation")
    parser.add_argument("--annealing_steps", type=int, default=75, help="N of the annealed adaptation")
    parser.add_argument("--rounds", type=int, default=4, help="ELBO rounds of --samples draws per row (both models)")
    parser.set_defaults(steps=150)
    args = parse_with_quick(parser, argv, QUICK | {"ar_steps": 4, "annealing_steps": 2})
    if not 0 < args.annealing_steps <= args.steps:
        parser.error(f"--annealing_steps must be in 1..--steps ({args.steps}), got {args.annealing_steps}")
    return args


def paired(at_once: dict, annealed: dict, tokens: int) -> dict:
    """Annealed minus at once, per token: the mean over rows and draws (common noise) and its standard error
    (rows independent; each row's draws treated as independent, conservative for antithetic ones)."""
    diff = annealed["per_row"] - at_once["per_row"]  # [rows, K R] nats
    stderr = math.sqrt((diff.var(dim=1, correction=1) / diff.shape[1]).sum().item()) / tokens
    return {"elbo_difference": diff.mean(dim=1).sum().item() / tokens, "elbo_difference_stderr": stderr}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    quiet()
    torch.set_num_threads(args.threads)
    evaluation = argparse.Namespace(**vars(args) | {"min_rounds": args.rounds, "max_rounds": args.rounds})
    began = time.perf_counter()
    tokenizer, train_rows, held_rows, n_train, n_held = prepare(args, "web")
    tokens = held_rows[:, 1:].numel()
    with tempfile.TemporaryDirectory() as folder:
        init = save_initialisation(Path(folder) / "init", tokenizer, args)
        ar_args = argparse.Namespace(**vars(args) | {"steps": args.ar_steps})
        ar, _ = train_ar(init, train_rows, ar_args, Path(folder) / "ar")
        ar.save_pretrained(Path(folder) / "ar-weights")
        runs = {}
        for name, steps in (("at_once", 0), ("annealed", args.annealing_steps)):
            model, history = train_mdlm(Path(folder) / "ar-weights", train_rows, args, Path(folder) / name, steps)
            bound = mdlm_bound(model, held_rows, tokenizer.mask_token_id, evaluation)
            losses = [entry["loss"] for entry in history if "loss" in entry]
            runs[name] = bound | {"last_logged_train_loss": losses[-1] if losses else math.nan}
    result = {
        "machine": machine(args.threads), "command": " ".join(["python", *sys.argv]),
        "data": f"web (c4_demo.jsonl: {n_train} train / {n_held} held-out documents), {tokens} held-out tokens",
        "model": f"LLaMA {args.layers} x {args.hidden}, vocab {len(tokenizer)}, rows {args.batch} x {args.seq}",
        "seed": args.seed, "ar_steps": args.ar_steps, "adaptation_steps": args.steps,
        "annealing_steps": args.annealing_steps,
        "ar_ppl": math.exp(ar_nll_per_token(ar, held_rows)),
        **{f"{name}_{key}": run[key] for name, run in runs.items()
           for key in ("nll_per_token", "stderr_iid", "last_logged_train_loss")},
        **paired(runs["at_once"], runs["annealed"], tokens),
        "samples_per_row": runs["at_once"]["samples_per_row"], "wall_s": round(time.perf_counter() - began, 1),
    }
    print(json.dumps(result, indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
