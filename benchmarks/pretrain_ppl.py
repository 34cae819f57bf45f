"""Pretraining from scratch, autoregressive against MDLM: held-out perplexity against the MDLM perplexity bound.

The MDLM paper (Sahoo et al. 2024, arXiv 2406.07524) trains the same transformer both ways on the same tokens and
reports the ratio of the MDLM bound to the AR perplexity at about 1.21 on LM1B (27.04 vs 22.32, Table 1) and 1.32
on OpenWebText (23.21 vs 17.54, Table 2). This script does the same at a CPU-sized scale, per corpus of the
project's shared text (``ROOT.parent/shared/data/text``: web text ``c4_demo.jsonl``, Wikipedia ``wiki_demo.txt``):

1. Documents are split by document into train and held-out (``--held_out`` of them, after a seeded shuffle).
2. No pretrained tokenizer is available offline, so a byte-level BPE of ``--vocab`` tokens is trained with
   ``tokenizers`` on the training split alone (specials ``<pad> <bos> <eos> <mask> <unk>``).
3. Raw-text packing as MDLM does for OpenWebText: each split's documents are tokenised, concatenated with EOS
   after each, and cut into pieces of ``--seq - 1`` tokens; a row is ``<bos>`` + a piece (the tail is dropped).
4. One random initialisation of a LLaMA-shaped model, saved once, is trained twice with the same rows in the same
   order, batch, steps and optimiser: as ``LlamaForCausalLM`` (``transformers.Trainer``, shifted cross-entropy)
   and as an MDLM (``MDLMTrainer``: linear schedule, ELBO weight ``1/t``, antithetic ``t``, bidirectional).
5. Held-out: the AR perplexity is ``exp`` of the mean NLL of the ``seq - 1`` tokens after each row's ``<bos>``; the
   MDLM bound is ``exp`` of the per-token ELBO of the same tokens given the clean ``<bos>``
   (:func:`dllm.core.likelihood.elbo_nll`, antithetic ``t``), with rounds of ``--samples`` draws per row until the
   standard error of the per-token bound is under ``--target_stderr`` (1%) of it, or ``--max_rounds`` rounds are
   done. A standard error of ``s`` nats in the per-token bound is one of about ``s`` (relative) in its ``exp``.

    flock /work/cpu.lock python benchmarks/pretrain_ppl.py --json pretrain_ppl.json
    python benchmarks/pretrain_ppl.py --quick       # smoke run (seconds): finite numbers, not a measurement
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "text"
CORPORA = {"web": "c4_demo.jsonl", "wiki": "wiki_demo.txt"}
SPECIALS = ["<pad>", "<bos>", "<eos>", "<mask>", "<unk>"]


# --quick: a smoke run of seconds (tiny everything); its numbers check that the script works, they measure nothing.
QUICK = dict(vocab=300, seq=32, hidden=32, layers=1, batch=4, steps=4, eval_rows=8, samples=4, min_rounds=2,
             max_rounds=2, max_documents=40)


def base_parser(description: str) -> argparse.ArgumentParser:
    """The options this benchmark shares with ``benchmarks/annealing.py``: data, model, training, evaluation."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=DATA, help="folder holding the corpora's files")
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--seq", type=int, default=128, help="tokens per row, <bos> included")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--held_out", type=float, default=0.1, help="fraction of documents held out")
    parser.add_argument("--eval_rows", type=int, default=64, help="held-out rows evaluated (at most)")
    parser.add_argument("--samples", type=int, default=8, help="ELBO draws per row and round")
    parser.add_argument("--min_rounds", type=int, default=4)
    parser.add_argument("--max_rounds", type=int, default=16)
    parser.add_argument("--target_stderr", type=float, default=0.01,
                        help="relative standard error of the per-token ELBO to reach")
    parser.add_argument("--max_documents", type=int, default=None, help="use the first N documents only")
    parser.add_argument("--seed", type=int, default=0, help="initialisation, data order and diffusion noise")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds (tiny everything)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument("--corpus", nargs="+", default=list(CORPORA), choices=list(CORPORA))
    return parse_with_quick(parser, argv, QUICK)


def parse_with_quick(parser: argparse.ArgumentParser, argv: list[str] | None, quick: dict) -> argparse.Namespace:
    """Parse; with ``--quick`` the ``quick`` values become the defaults (flags given explicitly still win)."""
    if parser.parse_args(argv).quick:
        parser.set_defaults(**quick)
    return parser.parse_args(argv)


# ---- data -----------------------------------------------------------------------------------------------------
def read_documents(path: Path) -> list[str]:
    """One document per line: JSONL rows' ``text``, or the lines of a text file (empty lines skipped)."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [json.loads(line)["text"] for line in lines] if path.suffix == ".jsonl" else lines


def split_documents(documents: list[str], held_out: float, seed: int = 0) -> tuple[list[str], list[str]]:
    order = torch.randperm(len(documents), generator=torch.Generator().manual_seed(seed)).tolist()
    count = max(1, round(held_out * len(documents)))
    return [documents[i] for i in order[count:]], [documents[i] for i in order[:count]]


def train_tokenizer(documents: list[str], vocab: int):
    """A byte-level BPE trained on ``documents`` (the training split), as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(documents, trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIALS,
                                                               show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", mask_token="<mask>", unk_token="<unk>")


def pack_rows(tokenizer, documents: list[str], seq: int) -> torch.Tensor:
    """Rows ``[R, seq]``: ``<bos>`` + ``seq - 1`` tokens of the documents concatenated with ``<eos>`` after each."""
    stream = [t for ids in tokenizer(documents, add_special_tokens=False)["input_ids"]
              for t in ids + [tokenizer.eos_token_id]]
    pieces = torch.tensor(stream[: len(stream) // (seq - 1) * (seq - 1)]).view(-1, seq - 1)  # [R, seq - 1]
    return torch.cat([torch.full((len(pieces), 1), tokenizer.bos_token_id), pieces], dim=1)  # [R, seq]


# ---- models and training --------------------------------------------------------------------------------------
def save_initialisation(folder: Path, tokenizer, args: argparse.Namespace) -> Path:
    """One random LLaMA-shaped initialisation (untied head), saved as a causal checkpoint both runs start from."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 32),
                         num_key_value_heads=max(1, args.hidden // 32), max_position_embeddings=args.seq,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, mask_token_id=tokenizer.mask_token_id,
                         attn_implementation="sdpa")
    torch.manual_seed(args.seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def training_args(args: argparse.Namespace, output_dir: Path, config_cls: type, **extra):
    return config_cls(output_dir=str(output_dir), per_device_train_batch_size=args.batch, max_steps=args.steps,
                      learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=max(1, args.steps // 20),
                      weight_decay=0.0, logging_steps=max(1, args.steps // 10), save_strategy="no",
                      report_to="none", use_cpu=True, seed=args.seed, data_seed=args.seed, dataloader_drop_last=True,
                      disable_tqdm=True, **extra)


def rows_dataset(rows: torch.Tensor, mdlm: bool):
    """Rows as a dataset; MDLM's labels leave ``<bos>`` clean (-100), AR's shifted loss never predicts it."""
    from datasets import Dataset

    labels = rows.clone()
    if mdlm:
        labels[:, 0] = -100
    return Dataset.from_dict({"input_ids": rows.tolist(), "labels": labels.tolist()})


def train_ar(init: Path, rows: torch.Tensor, args: argparse.Namespace, output_dir: Path):
    from transformers import LlamaForCausalLM, Trainer, TrainingArguments, default_data_collator

    model = LlamaForCausalLM.from_pretrained(init)
    trainer = Trainer(model=model, args=training_args(args, output_dir, TrainingArguments),
                      train_dataset=rows_dataset(rows, mdlm=False), data_collator=default_data_collator)
    trainer.train()
    return model.eval(), trainer.state.log_history


def train_mdlm(init: Path, rows: torch.Tensor, args: argparse.Namespace, output_dir: Path,
               attention_annealing_steps: int = 0):
    """MDLM from the causal checkpoint ``init`` (bidirectional, or annealed from causal over N steps)."""
    from transformers import default_data_collator

    from dllm.core.trainers.mdlm_trainer import MDLMConfig, MDLMTrainer
    from dllm.pipelines.llama3 import Llama3ForMaskedLM

    model = Llama3ForMaskedLM.from_pretrained(init)
    config = training_args(args, output_dir, MDLMConfig, attention_annealing_steps=attention_annealing_steps)
    trainer = MDLMTrainer(model=model, args=config, train_dataset=rows_dataset(rows, mdlm=True),
                          data_collator=default_data_collator)
    trainer.train()
    return model.eval(), trainer.state.log_history


# ---- held-out evaluation --------------------------------------------------------------------------------------
@torch.no_grad()
def ar_nll_per_token(model: torch.nn.Module, rows: torch.Tensor, batch: int = 32) -> float:
    """Mean NLL (nats) of every token after ``<bos>``, each given the tokens before it."""
    total = 0.0
    for chunk in rows.split(batch):
        logits = model(input_ids=chunk).logits[:, :-1].float()  # [b, seq - 1, V]
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten(),
                                                   reduction="sum").item()
    return total / rows[:, 1:].numel()


def mdlm_bound(model: torch.nn.Module, rows: torch.Tensor, mask_id: int, args: argparse.Namespace) -> dict:
    """The per-token ELBO of the tokens after each row's clean ``<bos>``, in independent rounds (seeds 0, 1, ...) of
    ``--samples`` antithetic draws per row, until its standard error is under ``--target_stderr`` of it (at least
    ``--min_rounds`` rounds, at most ``--max_rounds``).

    Two standard errors, the larger one is used: that of the mean of the rounds' estimates (rounds are independent,
    the draws within one are not) and the per-draw formula of
    :attr:`~dllm.core.likelihood.LikelihoodEstimate.stderr` (``stderr_iid``: conservative for antithetic draws, and
    steadier than the first with few rounds)."""
    from dllm.core.likelihood import elbo_nll

    prompts, answers = rows[:, :1].tolist(), rows[:, 1:].tolist()
    tokens, samples = rows[:, 1:].numel(), []
    for round_ in range(args.max_rounds):
        estimate = elbo_nll(model, prompts, answers, mask_id, num_samples=args.samples, seed=round_, batch_size=64)
        samples.append(estimate.samples)  # [rows, K] nats per row and draw
        per_round = torch.stack([s.mean(dim=1).sum() for s in samples]) / tokens  # [R] per-token bound of each
        per_row = torch.cat(samples, dim=1)  # [rows, K R]
        stderr_iid = math.sqrt((per_row.var(dim=1, correction=1) / per_row.shape[1]).sum().item()) / tokens
        stderr = (per_round.std(correction=1) / math.sqrt(len(samples))).item() if len(samples) > 1 else math.inf
        if len(samples) >= args.min_rounds and max(stderr, stderr_iid) < args.target_stderr * per_round.mean():
            break
    return {"nll_per_token": per_round.mean().item(), "stderr_per_token": stderr, "stderr_iid": stderr_iid,
            "rounds": len(samples), "samples_per_row": per_row.shape[1], "per_row": per_row}


# ---- the run --------------------------------------------------------------------------------------------------
def prepare(args: argparse.Namespace, corpus: str) -> tuple:
    path = args.data / CORPORA[corpus]
    if not path.is_file():
        sys.exit(f"{path}: not found; this benchmark reads the project's shared text "
                 f"(ROOT.parent/shared/data/text/{CORPORA[corpus]}), or give --data FOLDER")
    documents = read_documents(path)[: args.max_documents]
    train_docs, held_docs = split_documents(documents, args.held_out)
    tokenizer = train_tokenizer(train_docs, args.vocab)
    train_rows, held_rows = pack_rows(tokenizer, train_docs, args.seq), pack_rows(tokenizer, held_docs, args.seq)
    return tokenizer, train_rows, held_rows[: args.eval_rows], len(train_docs), len(held_docs)


def run_corpus(args: argparse.Namespace, corpus: str, folder: Path) -> dict:
    tokenizer, train_rows, held_rows, n_train, n_held = prepare(args, corpus)
    init = save_initialisation(folder / f"{corpus}-init", tokenizer, args)
    began = time.perf_counter()
    ar, _ = train_ar(init, train_rows, args, folder / f"{corpus}-ar")
    ar_seconds, began = time.perf_counter() - began, time.perf_counter()
    mdlm, _ = train_mdlm(init, train_rows, args, folder / f"{corpus}-mdlm")
    mdlm_seconds = time.perf_counter() - began
    ar_nll = ar_nll_per_token(ar, held_rows)
    bound = mdlm_bound(mdlm, held_rows, tokenizer.mask_token_id, args)
    parameters = sum(p.numel() for p in ar.parameters())
    return {
        "corpus": f"{corpus} ({CORPORA[corpus]}: {n_train} train / {n_held} held-out documents)",
        "model": f"LLaMA {args.layers} x {args.hidden}, {parameters / 1e6:.2f}M parameters, vocab {len(tokenizer)} "
                 f"(BPE trained on the training split)",
        "train_rows": len(train_rows), "train_tokens": args.steps * args.batch * args.seq,
        "epochs": round(args.steps * args.batch / len(train_rows), 2),
        "held_out_tokens": held_rows[:, 1:].numel(),
        "ar_nll": ar_nll, "mdlm_nll_bound": bound["nll_per_token"],
        "ar_ppl": math.exp(ar_nll), "mdlm_ppl_bound": math.exp(bound["nll_per_token"]),
        "ratio": math.exp(bound["nll_per_token"] - ar_nll),
        # A standard error of s nats in the per-token bound is a relative one of about s in its exp.
        "mdlm_nll_stderr": bound["stderr_per_token"], "mdlm_nll_stderr_iid": bound["stderr_iid"],
        "mdlm_nll_relative_stderr": max(bound["stderr_per_token"], bound["stderr_iid"]) / bound["nll_per_token"],
        "elbo_rounds": bound["rounds"], "elbo_samples_per_row": bound["samples_per_row"],
        "ar_train_s": round(ar_seconds, 1), "mdlm_train_s": round(mdlm_seconds, 1),
    }


def machine(threads: int) -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
        name = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name}, {threads} torch thread(s), torch {torch.__version__}"


def quiet() -> None:
    import datasets
    import transformers

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    quiet()
    torch.set_num_threads(args.threads)
    result: dict = {"machine": machine(args.threads), "command": " ".join(["python", *sys.argv]),
                    "seed": args.seed, "steps": args.steps, "batch": f"{args.batch} x {args.seq}", "corpora": []}
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for corpus in args.corpus:
            result["corpora"].append(run_corpus(args, corpus, Path(folder)))
            print(json.dumps(result["corpora"][-1], indent=1), flush=True)
    result["wall_s"] = round(time.perf_counter() - began, 1)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
