"""``dllm pt``'s two packings on real text: document packing (the default) against concatenation.

For each file (a ``.txt`` of one document per line, or a JSONL with a ``text`` column), the documents are tokenised
with a BPE trained on the files themselves (``--vocab`` tokens, so token counts are realistic) and made into rows of
``--seq`` tokens by :func:`dllm.data.text.prepare_pretraining_rows`, once per packing:

- ``document``: documents split into pieces of ``--seq``, packed best-fit decreasing, each attending only to itself
  (block-diagonal attention, its own positions and diffusion time);
- ``concat``: documents joined with EOS between them and wrapped into rows that attend across documents.

Reported per packing: rows, the fraction of padding in the batches (``--batch`` shuffled rows, padded to the longest
row as dllm's collator does), and useful tokens/s of MDLM training steps on a LLaMA-shaped model (``--hidden`` x
``--layers``, SDPA), the steps of both packings timed interleaved (``--repeats`` rounds, two warm-up steps each), so
load drifts hit both alike. Useful tokens are real tokens, not padding.

    python benchmarks/pt_packing.py --data ../shared/data/text/c4_demo.jsonl ../shared/data/text/wiki_demo.txt
    python benchmarks/pt_packing.py --data ... --seq 2048 --no_timing     # rows and padding only
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch
from datasets import DatasetDict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import llama_config, make_step, real_tokens, time_interleaved  # noqa: E402

from dllm.core.trainers.mdlm_trainer import MDLMConfig, MDLMTrainer  # noqa: E402
from dllm.data.collator import SFTDataCollator  # noqa: E402
from dllm.data.text import PACKING_MODES, load_text_dataset, prepare_pretraining_rows  # noqa: E402
from dllm.pipelines.llama3 import Llama3ForMaskedLM  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True, help=".txt (one document a line) or JSONL files with 'text'")
    p.add_argument("--vocab", type=int, default=8000, help="BPE vocabulary trained on the files")
    p.add_argument("--seq", type=int, default=512, help="max_seq_length: tokens per row")
    p.add_argument("--batch", type=int, default=8, help="rows per step")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10, help="interleaved timed rounds")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no_timing", action="store_true", help="rows and padding only (no training steps)")
    p.add_argument("--json", help="also write the results to this file")
    return p.parse_args(argv)


def train_tokenizer(texts: list[str], vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=[
        "<pad>", "<bos>", "<eos>", "<mask>", "<unk>"]))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   mask_token="<mask>", unk_token="<unk>")


def measure_file(args: argparse.Namespace, path: str, tokenizer) -> dict[str, dict]:
    documents = load_text_dataset(path)
    collator = SFTDataCollator(tokenizer, max_seq_length=args.seq)
    batches, stats = {}, {}
    for packing in PACKING_MODES:
        rows = prepare_pretraining_rows(DatasetDict(documents), tokenizer, args.seq, packing=packing)["train"]
        rows = rows.shuffle(seed=0)  # Trainer's random sampler
        made = [collator(rows.select(range(i, min(i + args.batch, len(rows)))).to_list())
                for i in range(0, len(rows), args.batch)]
        tokens = sum(real_tokens(b) for b in made)
        positions = sum(b["input_ids"].numel() for b in made)
        stats[packing] = {"documents": len(documents["train"]), "rows": len(rows), "tokens": tokens,
                          "padding_fraction": 1 - tokens / positions}
        batches[packing] = made
    if args.no_timing:
        return stats
    steps = {}
    for packing, made in batches.items():
        torch.manual_seed(0)
        model = Llama3ForMaskedLM(llama_config(args, len(tokenizer)))
        model.config.mask_token_id = tokenizer.mask_token_id
        trainer = MDLMTrainer(model=model, args=MDLMConfig(output_dir=tempfile.mkdtemp(), report_to="none",
                                                           use_cpu=True))
        model.train()
        steps[packing] = make_step(model, lambda b, t=trainer, m=model: t.compute_loss(m, b), made)
    for packing, timed in time_interleaved(steps, args.repeats).items():
        seconds = sum(s for s, _ in timed)
        stats[packing]["useful_tokens_per_s"] = sum(real_tokens(b) for _, b in timed) / seconds
        stats[packing]["seconds_per_step"] = seconds / len(timed)
    return stats


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    texts = [row["text"] for path in args.data for row in load_text_dataset(path)["train"]]
    tokenizer = train_tokenizer(texts, args.vocab)
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                           "threads": args.threads}, "args": vars(args), "files": {}}
    print(f"{'file':<16} {'packing':<9} {'docs':>5} {'rows':>6} {'tokens':>8} {'padding':>8} {'useful tok/s':>13}")
    for path in args.data:
        stats = measure_file(args, path, tokenizer)
        results["files"][path] = stats
        for packing, s in stats.items():
            print(f"{Path(path).name:<16} {packing:<9} {s['documents']:>5} {s['rows']:>6} {s['tokens']:>8} "
                  f"{100 * s['padding_fraction']:>7.2f}% {s.get('useful_tokens_per_s', float('nan')):>13.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
