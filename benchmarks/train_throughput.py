"""Training throughput against the machine's limit: the masked-only output head, packing, and the AR step.

Two measurements on LLaMA-shaped models (hidden 256, 4 layers by default) at each vocabulary size (32k, 128k):

1. **The output head** (synthetic rows of ``--seq`` tokens, ``--answer_fraction`` of them answer): one optimizer step
   of the autoregressive model (``LlamaForCausalLM``, shifted cross-entropy), of MDLM with the head at every
   position (``[B, L, V]`` logits, as before issue 10), and of MDLM with the head at masked positions only
   (``logits_mask``, what ``MDLMTrainer`` does). Goal: MDLM with the masked head <= 0.6x the AR step at 128k.
2. **Packing** (Alpaca rows, tokenised with a BPE trained on the file itself so token counts are realistic, at
   ``max_seq_length`` 512): right-padded batches of ``--batch`` conversations (``SFTDataCollator``, padded to the
   longest row) against ``--batch`` packed rows (``pack_dataset``). Useful tokens/s counts real tokens (not padding).
   Goal: >= 2x useful tokens/s with packing.

Steps are timed interleaved (one step of each mode in turn, ``--repeats`` rounds, medians), so load drifts hit all
modes alike. Achieved FLOP/s is ``6 x (parameters the tokens pass through) x tokens`` plus attention
(``12 x layers x hidden x`` the attended keys per query), counting the output head only where it runs, against the
FLOP/s of a large float32 matmul timed in the same run. Peak memory: each mode runs alone in a fresh process whose
resident high-water mark is reset before a step (as ``benchmarks/memory.py`` does); reported is what the step adds.

    python benchmarks/train_throughput.py --data path/to/alpaca_en_demo.json --json results.json
    python benchmarks/train_throughput.py --data ... --vocab 32000 --repeats 5 --no_memory
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dllm.core.trainers.mdlm_trainer import MDLMConfig, MDLMTrainer
from dllm.pipelines.llama3 import Llama3ForMaskedLM

MASK_ID = 3
HEAD_MODES = ("ar", "mdlm_full_head", "mdlm_masked_head")
PACKING_MODES = ("mdlm_padded", "mdlm_padded_to_max", "mdlm_packed")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="an Alpaca JSON file for the packing measurement (skipped without it)")
    p.add_argument("--vocab", type=int, nargs="+", default=[32000, 128256])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=4, help="rows per step (conversations, or packs of 512)")
    p.add_argument("--seq", type=int, default=512, help="synthetic row length and packing's max_seq_length")
    p.add_argument("--answer_fraction", type=float, default=0.75, help="synthetic rows: trailing answer tokens")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds (medians reported)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--no_memory", action="store_true", help="skip the per-mode peak-memory processes")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--only", help=argparse.SUPPRESS)  # internal: one mode's memory probe, "mode:vocab"
    return p.parse_args(argv)


# ---- models, batches, steps ----------------------------------------------------------------------------------
def llama_config(args: argparse.Namespace, vocab: int) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                       num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                       num_key_value_heads=max(1, args.hidden // 256), max_position_embeddings=args.seq,
                       attn_implementation="sdpa", pad_token_id=0, bos_token_id=1, eos_token_id=2)


def synthetic_batch(args: argparse.Namespace, vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(4, vocab, (args.batch, args.seq), generator=g)
    labels = input_ids.clone()
    labels[:, : round((1 - args.answer_fraction) * args.seq)] = -100  # the prompt
    return {"input_ids": input_ids, "labels": labels, "attention_mask": torch.ones_like(input_ids)}


class FullHead(torch.nn.Module):
    """The masked LM with its output head at every position: drops ``logits_mask``, so the trainer's loss gathers
    the masked rows from ``[B, L, V]`` logits (the path before the masked-only head)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.config = model, model.config

    def forward(self, logits_mask: torch.Tensor | None = None, **kwargs):  # noqa: ARG002 - dropped on purpose
        return self.model(**kwargs)


def make_step(model: torch.nn.Module, loss_fn: Callable[[dict], torch.Tensor],
              batches: list[dict]) -> Callable[[], dict]:
    """One AdamW step per call on the next batch (cycling); returns the batch it trained on."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    position = [0]

    def step() -> dict:
        batch = batches[position[0] % len(batches)]
        position[0] += 1
        loss_fn(batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return batch

    return step


def mdlm_model(args: argparse.Namespace, vocab: int) -> tuple[Llama3ForMaskedLM, MDLMTrainer]:
    torch.manual_seed(0)
    model = Llama3ForMaskedLM(llama_config(args, vocab))
    model.config.mask_token_id = MASK_ID
    trainer = MDLMTrainer(model=model, args=MDLMConfig(output_dir=tempfile.mkdtemp(), report_to="none",
                                                       use_cpu=True))
    return model, trainer


def build_steps(args: argparse.Namespace, vocab: int, modes: tuple[str, ...],
                data: dict[str, list[dict]] | None) -> dict[str, Callable[[], dict]]:
    steps = {}
    for mode in modes:
        if mode == "ar":
            torch.manual_seed(0)
            ar = LlamaForCausalLM(llama_config(args, vocab))
            steps[mode] = make_step(ar, lambda batch, ar=ar: ar(**batch).loss, [synthetic_batch(args, vocab)])
            continue
        model, trainer = mdlm_model(args, vocab)
        if mode == "mdlm_full_head":
            wrapped = FullHead(model)
            steps[mode] = make_step(model, lambda b, t=trainer, w=wrapped: t.compute_loss(w, b),
                                    [synthetic_batch(args, vocab)])
        else:
            batches = [synthetic_batch(args, vocab)] if mode == "mdlm_masked_head" else data[mode]
            steps[mode] = make_step(model, lambda b, t=trainer, m=model: t.compute_loss(m, b), batches)
        model.train()
    return steps


# ---- Alpaca data ---------------------------------------------------------------------------------------------
def alpaca_batches(args: argparse.Namespace, vocab: int) -> dict[str, list[dict]]:
    """Right-padded batches of ``--batch`` conversations and batches of ``--batch`` packed rows, from the same
    tokenised Alpaca rows (a BPE of 8000 tokens trained on the file, ids < ``vocab``)."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from dllm.data.alpaca import alpaca_to_messages
    from dllm.data.collator import SFTDataCollator, tokenize_messages
    from dllm.data.packing import pack_dataset

    rows = json.loads(Path(args.data).read_text())
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    texts = [" ".join(str(v) for v in row.values()) for row in rows]
    backend.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=min(8000, vocab - 1),
                                                           special_tokens=["<pad>", "<bos>", "<eos>", "<mask>", "<unk>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>",
                                        eos_token="<eos>", unk_token="<unk>")
    tokenizer.chat_template = ("{% for m in messages %}{{ '<bos>' + m['role'] + ': ' + m['content'] + '<eos>' }}"
                               "{% endfor %}{% if add_generation_prompt %}{{ '<bos>assistant: ' }}{% endif %}")
    tokenised = Dataset.from_list([tokenize_messages(tokenizer, alpaca_to_messages(row, args.data, i))
                                   for i, row in enumerate(rows)])
    tokenised = tokenised.shuffle(seed=0)  # Trainer's random sampler: rows of unrelated lengths share a batch

    def batches(rows: Dataset, collator: SFTDataCollator) -> list[dict]:
        return [collator(rows.select(range(i, i + args.batch)).to_list())
                for i in range(0, len(rows) - args.batch + 1, args.batch)]

    to_longest = SFTDataCollator(tokenizer, max_seq_length=args.seq)  # dllm's default: pad to the longest row
    to_max = SFTDataCollator(tokenizer, max_seq_length=args.seq, pad_to_multiple_of=args.seq)  # fixed-length
    return {"mdlm_padded": batches(tokenised, to_longest), "mdlm_padded_to_max": batches(tokenised, to_max),
            "mdlm_packed": batches(pack_dataset(tokenised, args.seq).shuffle(seed=0), to_longest)}


def real_tokens(batch: dict) -> int:
    if "document_ids" in batch:
        return int((batch["document_ids"] >= 0).sum())
    return int(batch["attention_mask"].sum())


# ---- FLOPs and the machine's limit ---------------------------------------------------------------------------
def step_flops(args: argparse.Namespace, vocab: int, mode: str, batch: dict, masked_fraction: float) -> float:
    """Matmul FLOPs of forward + backward: 6 x weights x tokens for the body, the head where it runs, and attention
    over the keys each query attends to (all of its row, or of its document when packed)."""
    h, layers = args.hidden, args.layers
    kv = h * max(1, h // 256) // max(1, h // 64)  # key/value width (grouped-query attention)
    body = layers * (2 * h * h + 2 * h * kv + 3 * h * (h * 11 // 4))  # q, o, k, v, gate/up/down
    tokens = batch["input_ids"].numel()
    if "document_ids" in batch:
        counts = torch.bincount(batch["document_ids"][batch["document_ids"] >= 0])
        attended = float((counts.double() ** 2).sum())  # sum over queries of the keys they see
    else:
        lengths = batch["attention_mask"].sum(dim=1).double()
        attended = float((lengths * batch["input_ids"].shape[1]).sum())  # padding queries attend too
    answer = int((batch["labels"] != -100).sum())
    head_rows = tokens if mode in ("ar", "mdlm_full_head") else masked_fraction * answer
    return 6.0 * body * tokens + 6.0 * h * vocab * head_rows + 12.0 * layers * h * attended


def matmul_peak(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a ``size``-cubed float32 matmul on this machine (median of ``repeats``)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2.0 * size**3 / statistics.median(times)


# ---- timing and memory ---------------------------------------------------------------------------------------
def time_interleaved(steps: dict[str, Callable[[], dict]], repeats: int) -> dict[str, list[tuple[float, dict]]]:
    """Per mode, ``(seconds, batch)`` of each timed step; two warm-up steps each, then one step per mode per round."""
    for step in steps.values():
        step()
        step()
    times: dict[str, list[tuple[float, dict]]] = {mode: [] for mode in steps}
    for _ in range(repeats):
        for mode, step in steps.items():
            start = time.perf_counter()
            batch = step()
            times[mode].append((time.perf_counter() - start, batch))
    return times


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def probe_memory(args: argparse.Namespace) -> None:
    """Child process: one mode; after a warm-up step (AdamW state exists), reset the resident high-water mark, run
    one step, print the peak minus the resident memory before it, in MiB (Linux only)."""
    mode, vocab = args.only.split(":")
    torch.set_num_threads(args.threads)
    data = alpaca_batches(args, int(vocab)) if mode in PACKING_MODES else None
    step = build_steps(args, int(vocab), (mode,), data)[mode]
    step()
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    step()
    print((_status_kib("VmHWM") - before) / 1024)


def peak_memory_mib(args: argparse.Namespace, mode: str, vocab: int) -> float:
    argv = [sys.executable, __file__, "--only", f"{mode}:{vocab}", "--hidden", str(args.hidden), "--layers",
            str(args.layers), "--batch", str(args.batch), "--seq", str(args.seq), "--answer_fraction",
            str(args.answer_fraction), "--threads", str(args.threads)] + (["--data", args.data] if args.data else [])
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}  # freed large tensors go back to the OS (memory.py)
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env=env).stdout
    return float(out.strip().splitlines()[-1])


# ---- one vocabulary ------------------------------------------------------------------------------------------
def measure_vocab(args: argparse.Namespace, vocab: int, peak: float) -> dict[str, dict]:
    data = alpaca_batches(args, vocab) if args.data else None
    modes = HEAD_MODES + (PACKING_MODES if data else ())
    steps = build_steps(args, vocab, modes, data)
    timed = time_interleaved(steps, args.repeats)
    results: dict[str, dict] = {}
    for mode in modes:
        seconds = [s for s, _ in timed[mode]]
        total_tokens = sum(real_tokens(b) for _, b in timed[mode])
        masked_fraction = 0.5  # E[t] under the linear schedule with t ~ U[0, 1]: the expected masked share
        flops = statistics.mean(step_flops(args, vocab, mode, b, masked_fraction) for _, b in timed[mode])
        median = statistics.median(seconds)
        results[mode] = {
            "step_s": round(median, 4),
            "useful_tokens_per_s": round(total_tokens / sum(seconds)),
            "padding_fraction": round(1 - total_tokens / sum(b["input_ids"].numel() for _, b in timed[mode]), 3),
            "tflops": round(flops / median / 1e12, 4),
            "of_matmul_peak": round(flops / median / peak, 3),
        }
        if not args.no_memory:
            results[mode]["step_adds_mib"] = round(peak_memory_mib(args, mode, vocab), 1)
    ar = statistics.median(s for s, _ in timed["ar"])
    for mode in ("mdlm_full_head", "mdlm_masked_head"):
        results[mode]["step_over_ar"] = round(results[mode]["step_s"] / ar, 3)
        paired = [m / a for (m, _), (a, _) in zip(timed[mode], timed["ar"])]
        results[mode]["paired_step_over_ar"] = round(statistics.median(paired), 3)
    for baseline in ("mdlm_padded", "mdlm_padded_to_max") if data else ():
        results["mdlm_packed"][f"useful_tokens_over_{baseline.removeprefix('mdlm_')}"] = round(
            results["mdlm_packed"]["useful_tokens_per_s"] / results[baseline]["useful_tokens_per_s"], 2)
    return results


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import datasets
    import transformers

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    if args.only:
        probe_memory(args)
        return {}
    torch.set_num_threads(args.threads)
    peak = matmul_peak(args.threads)
    result: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}",
        "shape": f"LLaMA hidden {args.hidden}, {args.layers} layers, sdpa, float32; {args.batch} rows x {args.seq}; "
                 f"synthetic answer fraction {args.answer_fraction}",
        "matmul_peak_tflops": round(peak / 1e12, 4),
        "repeats": args.repeats,
    }
    for vocab in args.vocab:
        result[f"vocab_{vocab}"] = measure_vocab(args, vocab, peak)
        print(json.dumps({f"vocab_{vocab}": result[f"vocab_{vocab}"]}, indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if not k.startswith("vocab_")}, indent=1))
    return result


if __name__ == "__main__":
    main()
