"""GPU check of packing: each packed document's logits equal its logits alone, for every attention kernel this
machine has (sdpa, flex_attention, and flash_attention_2 when flash-attn is installed), and a packed MDLM step
(forward, loss, backward) stays finite.

    python benchmarks/gpu_packing_check.py

Prints one ``PASS``/``FAIL``/``SKIP`` line per check and exits 1 if any failed. Needs CUDA.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile

import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

from dllm.core.models.masked_lm import masked_lm_class
from dllm.core.trainers.mdlm_trainer import MDLMConfig, MDLMTrainer
from dllm.data.packing import collate_packed

LENGTHS = ((70, 50, 130), (200, 30))  # two packed rows of up to 250 tokens
VOCAB = 1000


def packed_batch(device: str) -> tuple[dict[str, torch.Tensor], list[list[int]], list[tuple[int, int, int]]]:
    g = torch.Generator().manual_seed(0)
    docs, rows, spans = [], [], []
    for b, lengths in enumerate(LENGTHS):
        start, ids = 0, []
        for n in lengths:
            doc = torch.randint(4, VOCAB, (n,), generator=g).tolist()
            docs.append(doc)
            spans.append((b, start, n))
            ids += doc
            start += n
        rows.append({"input_ids": ids, "labels": ids, "seq_lengths": list(lengths)})
    batch = collate_packed(rows, pad_id=0, length=256)
    return {k: v.to(device) for k, v in batch.items()}, docs, spans


def model_for(family: str, attention: str, dtype: torch.dtype):
    if family == "llama":
        cls, config = LlamaForCausalLM, LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=512,
                                                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    else:
        cls, config = Gemma2ForCausalLM, Gemma2Config(vocab_size=VOCAB, hidden_size=256, intermediate_size=512,
                                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                      head_dim=64, sliding_window=64)
    torch.manual_seed(0)
    model = masked_lm_class(cls)._from_config(config, attn_implementation=attention, dtype=dtype)
    model.config.mask_token_id = 3
    return model.cuda().eval()


def check_logits(family: str, attention: str, dtype: torch.dtype) -> tuple[bool, str]:
    model = model_for(family, attention, dtype)
    batch, docs, spans = packed_batch("cuda")
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       document_ids=batch["document_ids"]).logits.float()
        worst, scale = 0.0, 0.0
        for (row, start, n), doc in zip(spans, docs):
            alone = model(input_ids=torch.tensor([doc], device="cuda")).logits[0].float()
            worst = max(worst, (packed[row, start:start + n] - alone).abs().max().item())
            scale = max(scale, alone.abs().max().item())
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2 * max(1.0, scale)
    return worst <= tolerance, f"max |packed - alone| = {worst:.2e} (tolerance {tolerance:.1e})"


def check_step(family: str, attention: str, dtype: torch.dtype) -> tuple[bool, str]:
    model = model_for(family, attention, dtype).train()
    trainer = MDLMTrainer(model=model, args=MDLMConfig(output_dir=tempfile.mkdtemp(), report_to="none"))
    batch, _, _ = packed_batch("cuda")
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    grads_finite = all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    return bool(torch.isfinite(loss)) and grads_finite, f"loss {loss.item():.4f}, gradients finite: {grads_finite}"


def main() -> int:
    if not torch.cuda.is_available():
        print("SKIP no CUDA device")
        return 0
    kernels = [("sdpa", torch.float32), ("sdpa", torch.bfloat16), ("flex_attention", torch.bfloat16)]
    if importlib.util.find_spec("flash_attn") is not None:
        kernels.append(("flash_attention_2", torch.bfloat16))
    else:
        print("SKIP flash_attention_2: flash-attn is not installed here")
    failed = 0
    for family in ("llama", "gemma2"):
        for attention, dtype in [("eager", torch.float32)] + kernels:
            for name, check in (("logits", check_logits), ("step", check_step)):
                try:
                    ok, detail = check(family, attention, dtype)
                except Exception as error:  # report every kernel, not just the first that breaks
                    ok, detail = False, f"{type(error).__name__}: {str(error)[:300]}"
                failed += not ok
                print(f"{'PASS' if ok else 'FAIL'} {family} {attention} {str(dtype).removeprefix('torch.')} {name}: "
                      f"{detail}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
