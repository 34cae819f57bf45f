"""GPU check of the shipped FSDP2 config: build a small causal LLaMA checkpoint, fine-tune it with
``accelerate launch --config_file scripts/accelerate_configs/fsdp.yaml examples/llama3/sft.py`` (full and LoRA,
bf16), then reload the saved output through ``AutoModelForMaskedDiffusion`` and check it.

    python benchmarks/gpu_fsdp_check.py --workdir /tmp/fsdp_check --num_processes 1

Prints one ``PASS``/``FAIL`` line per check. Needs CUDA (FSDP through accelerate does not run on CPU).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def build_checkpoint(path: Path) -> None:
    """A causal LLaMA (hidden 256, 4 layers) with the demo's character tokenizer, without a mask token."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from dllm.demo.tokenizer import build_char_tokenizer

    chars = build_char_tokenizer()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=chars.backend_tokenizer, bos_token="<|bos|>",
                                        eos_token="<|eos|>", pad_token="<|pad|>")
    tokenizer.chat_template = chars.chat_template
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def train(base: Path, out: Path, num_processes: int, lora: bool) -> subprocess.CompletedProcess:
    """One FSDP2 run of the LLaMA SFT example on the repository's example data."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "scripts/accelerate_configs/fsdp.yaml"), "--num_processes", str(num_processes),
               str(ROOT / "examples/llama3/sft.py"), "--model_name_or_path", str(base),
               "--dataset_args", str(ROOT / "examples/data/alpaca_example.json") + "[train:30,test:5]",
               "--output_dir", str(out), "--max_steps", "12", "--per_device_train_batch_size", "4",
               "--learning_rate", "1e-3", "--logging_steps", "4", "--eval_strategy", "steps", "--eval_steps", "6",
               "--report_to", "none", "--save_strategy", "no", "--max_seq_length", "256", "--bf16", "True"]
    if lora:
        command += ["--lora", "True", "--r", "8", "--target_modules", "q_proj", "v_proj"]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env={**os.environ})


def check_output(base: Path, out: Path) -> list[tuple[str, bool]]:
    """The saved checkpoint loads as a bidirectional masked LM, has moved, and gives finite logits on GPU."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from dllm.auto import AutoModelForMaskedDiffusion
    from dllm.core.models import is_bidirectional

    model = AutoModelForMaskedDiffusion.from_pretrained(str(out)).cuda().eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    before = LlamaForCausalLM.from_pretrained(base).state_dict()
    after = {k: v.cpu() for k, v in model.state_dict().items()}
    moved = [k for k in before if not torch.equal(before[k], after[k][: before[k].shape[0]].to(before[k].dtype))]
    ids = torch.tensor([[1, 5, 6, tokenizer.mask_token_id, 2]], device="cuda")
    with torch.no_grad():
        logits = model(ids).logits
    return [("loads bidirectional", is_bidirectional(model)),
            ("mask token saved", model.config.mask_token_id == tokenizer.mask_token_id is not None),
            (f"weights moved ({len(moved)}/{len(before)} tensors)", len(moved) > 0),
            ("finite logits", bool(torch.isfinite(logits).all()))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("outputs/fsdp_check"))
    parser.add_argument("--num_processes", type=int, default=max(1, torch.cuda.device_count()))
    args = parser.parse_args()
    base = args.workdir / "base"
    build_checkpoint(base)
    failed = 0
    for lora in (False, True):
        out = args.workdir / ("lora" if lora else "full")
        run = train(base, out, args.num_processes, lora)
        name = f"fsdp2 {'lora' if lora else 'full'} x{args.num_processes}"
        losses = [line for line in run.stdout.splitlines() + run.stderr.splitlines() if "'loss'" in line]
        print(f"{'PASS' if run.returncode == 0 else 'FAIL'} {name}: exit {run.returncode}; {len(losses)} loss lines; "
              f"last: {losses[-1].strip() if losses else '-'}")
        if run.returncode != 0:
            print(run.stdout[-3000:] + run.stderr[-3000:])
            failed += 1
            continue
        saved = out if (out / "model.safetensors").exists() else None
        if saved is None:
            print(f"INFO {name}: no full checkpoint in {out} (adapter only: {(out / 'adapter').exists()})")
            continue
        for check, ok in check_output(base, saved):
            print(f"{'PASS' if ok else 'FAIL'} {name}: {check}")
            failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
