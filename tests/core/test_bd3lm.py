"""Block diffusion training: the one-pass ``x_t ⊕ x_0`` loss equals a slow per-block reference.

The reference runs the model's own attention (plain bidirectional over a ``DynamicCache``), block after block: the
noisy block ``k`` is fed with the cache of the clean blocks before it, then the clean block ``k`` is appended. So it
shares no mask code with the trainer, whose single forward uses the vectorised BD3-LMs mask.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from transformers import DynamicCache, Gemma2ForCausalLM, LlamaForCausalLM, Qwen3ForCausalLM

import dllm.core.trainers.mdlm_trainer as mdlm_trainer
from dllm.core.models.masked_lm import (
    OBJECTIVE_KEY,
    block_diffusion_attention_mask,
    block_diffusion_size,
    first_noisy_column,
    masked_lm_class,
    text_config,
)
from dllm.core.trainers import OBJECTIVES, BD3LMConfig, BD3LMTrainer, MDLMConfig, MDLMTrainer
from dllm.data.packing import collate_packed
from tests.helpers import tiny_gemma2_config, tiny_llama_config, tiny_qwen3_config

VOCAB, MASK_ID, BLOCK = 64, 3, 3
LENGTHS = (7, 5, 9, 3)  # 2 prompt tokens each: the first block holds the prompt and the first answer token
FAMILIES = {
    "llama": (LlamaForCausalLM, tiny_llama_config),
    "gemma2": (Gemma2ForCausalLM, tiny_gemma2_config),  # sliding window 4 on every other layer
    "qwen3": (Qwen3ForCausalLM, tiny_qwen3_config),
}


def build(family: str, lora: bool = False, attention: str = "eager", seed: int = 0):
    cls, make_config = FAMILIES[family]
    config = make_config(vocab_size=VOCAB, mask_token_id=MASK_ID)
    config._attn_implementation = attention
    torch.manual_seed(seed)
    model = masked_lm_class(cls)(config)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False, task_type="CAUSAL_LM"))
    return model.double()


def trainer_for(model, tmp_path, block_size: int = BLOCK, **overrides) -> BD3LMTrainer:
    args = BD3LMConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, seed=5, block_size=block_size,
                       **overrides)
    return BD3LMTrainer(model=model, args=args)


def documents(seed: int = 0) -> list[dict[str, list[int]]]:
    """Random conversations of LENGTHS tokens, the first two the prompt (label -100)."""
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(4, VOCAB, (n,), generator=g).tolist() for n in LENGTHS]
    return [{"input_ids": row, "labels": [-100, -100] + row[2:]} for row in ids]


def unpacked_batch(docs) -> tuple[dict[str, torch.Tensor], list[tuple[int, int, int]]]:
    width = max(LENGTHS)
    ids = torch.zeros(len(docs), width, dtype=torch.long)
    attention, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
    for i, doc in enumerate(docs):
        n = len(doc["input_ids"])
        ids[i, :n], attention[i, :n], labels[i, :n] = torch.tensor(doc["input_ids"]), 1, torch.tensor(doc["labels"])
    return {"input_ids": ids, "labels": labels, "attention_mask": attention}, [(i, 0, n) for i, n in enumerate(LENGTHS)]


def packed_batch(docs) -> tuple[dict[str, torch.Tensor], list[tuple[int, int, int]]]:
    packs = [[docs[0], docs[1]], [docs[2], docs[3]]]
    rows = [{"input_ids": sum((d["input_ids"] for d in p), []), "labels": sum((d["labels"] for d in p), []),
             "seq_lengths": [len(d["input_ids"]) for d in p]} for p in packs]
    return collate_packed(rows, pad_id=0, length=14), [(0, 0, 7), (0, 7, 5), (1, 0, 9), (1, 9, 3)]


@contextmanager
def plain_bidirectional(model):
    """The model with its block-diffusion mark removed: every forward is plain bidirectional attention."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    configs = {id(c): c for c in (base.config, text_config(base.config))}.values()
    saved = [getattr(c, OBJECTIVE_KEY) for c in configs]
    for c in configs:
        setattr(c, OBJECTIVE_KEY, None)
    try:
        yield
    finally:
        for c, value in zip(configs, saved):
            setattr(c, OBJECTIVE_KEY, value)


def reference_logits(model, clean: torch.Tensor, noisy: torch.Tensor, block_size: int) -> torch.Tensor:
    """Logits [n, V] of one document's noisy tokens, one block at a time: noisy block k with the cache of the clean
    blocks before it (prompt included), then clean block k appended to the cache."""
    cache, pieces = DynamicCache(), []
    with plain_bidirectional(model):
        for a in range(0, len(clean), block_size):
            b = min(a + block_size, len(clean))
            positions = torch.arange(a, b)[None]
            out = model(input_ids=noisy[None, a:b], position_ids=positions, cache=cache, use_cache=True)
            pieces.append(out.logits[0])  # [b - a, V]
            cache.crop(-(b - a))  # drop the noisy block again
            model(input_ids=clean[None, a:b], position_ids=positions, cache=cache, use_cache=True)
    return torch.cat(pieces)  # [n, V]


def spy_on_loss(monkeypatch) -> dict:
    seen, real = {}, mdlm_trainer.masked_diffusion_loss

    def spy(logits, labels, masked, weight, **kwargs):
        seen.update(logits=logits, masked=masked, weight=weight, kwargs=kwargs)
        return real(logits, labels, masked, weight, **kwargs)

    monkeypatch.setattr(mdlm_trainer, "masked_diffusion_loss", spy)
    return seen


CASES = [(family, lora, packed, BLOCK) for family in FAMILIES for lora in (False, True) for packed in (False, True)]
# Blocks of 2: every prompt (2 tokens) is a whole block, so the noisy copy starts after it.
CASES += [("llama", False, False, 2), ("gemma2", False, True, 2)]


@pytest.mark.parametrize(("family", "lora", "packed", "block"), CASES,
                         ids=["-".join(map(str, case)).replace("True", "t").replace("False", "f") for case in CASES])
def test_one_pass_loss_equals_the_per_block_reference(tmp_path, monkeypatch, family, lora, packed, block):
    model = build(family, lora, attention="eager" if family == "gemma2" else "sdpa")
    trainer = trainer_for(model, tmp_path, block_size=block)
    seen = spy_on_loss(monkeypatch)
    batch, spans = (packed_batch if packed else unpacked_batch)(documents())
    model.train()
    loss = trainer.compute_loss(model, batch)

    masked, noisy = seen["masked"], torch.where(seen["masked"], MASK_ID, batch["input_ids"])
    assert masked.sum() >= 6
    reference = torch.zeros(*batch["input_ids"].shape, VOCAB, dtype=torch.float64)  # [B, L, V]
    for row, start, n in spans:
        reference[row, start:start + n] = reference_logits(model, batch["input_ids"][row, start:start + n],
                                                           noisy[row, start:start + n], block)
    # float64 models; eager attention takes its softmax in float32 (transformers' eager_attention_forward), so the
    # one pass (more, masked keys) and the reference differ at float32 rounding there
    tolerance = dict(rtol=1e-6, atol=1e-7) if family == "gemma2" else dict(rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(seen["logits"], reference[masked], **tolerance)
    expected = mdlm_trainer.masked_diffusion_loss(reference[masked], batch["labels"], masked, seen["weight"],
                                                  **seen["kwargs"])
    torch.testing.assert_close(loss, expected, **tolerance)


@pytest.mark.parametrize(("family", "attention"), [("gemma2", "eager"), ("llama", "sdpa")])
def test_a_later_block_changes_no_logit_of_an_earlier_block(tmp_path, family, attention):
    model = build(family, attention=attention).eval()
    trainer = trainer_for(model, tmp_path)
    batch, _ = unpacked_batch(documents())
    clean = batch["input_ids"][:1, :9]  # [1, 9]: blocks [0, 3), [3, 6), [6, 9)
    noisy = clean.clone()
    noisy[0, [2, 4, 7]] = MASK_ID
    masked = noisy == MASK_ID

    def logits(c, x):
        with torch.no_grad():
            return trainer._denoise(model, c, x, masked, {}, select=False).logits[0]  # [9, V]

    before = logits(clean, noisy)
    changed_clean, changed_noisy = clean.clone(), noisy.clone()
    changed_clean[0, 6:] = changed_noisy[0, [6, 8]] = 5  # every token of block 2, in both copies
    changed_noisy[0, 7] = MASK_ID
    after = logits(changed_clean, changed_noisy)
    assert torch.equal(before[:6], after[:6])
    assert not torch.allclose(before[6:], after[6:])
    # and the first block changes the second (the clean context), so the test can see a dependency
    changed_clean[0, 0] = 6
    assert not torch.allclose(logits(changed_clean, noisy)[3:6], before[3:6])


def test_the_noisy_copy_starts_at_the_first_block_holding_a_masked_position():
    masked = torch.zeros(2, 8, dtype=torch.bool)
    masked[0, 5] = masked[1, [3, 7]] = True
    assert first_noisy_column(masked, torch.arange(8).expand(2, 8), 2) == 2  # row 1's block [2, 4)
    assert first_noisy_column(masked[:1], torch.arange(8)[None], 2) == 4
    packed = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]])  # a second document from column 3
    assert first_noisy_column(masked[:1], packed, 2) == 5  # column 5 is position 2: its block opens there
    assert first_noisy_column(torch.zeros(2, 8, dtype=torch.bool), torch.arange(8).expand(2, 8), 2) == 0


def test_one_block_over_the_whole_sequence_is_the_mdlm_loss(tmp_path):
    batch, _ = unpacked_batch(documents())
    losses = []
    for objective in ("mdlm", "bd3lm"):
        config_cls, trainer_cls = OBJECTIVES[objective]
        model = build("llama", attention="sdpa").train()
        extra = {"block_size": batch["input_ids"].shape[1]} if objective == "bd3lm" else {}
        args = config_cls(output_dir=str(tmp_path / objective), report_to="none", use_cpu=True, seed=5, **extra)
        losses.append(trainer_cls(model=model, args=args).compute_loss(model, dict(batch)))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-9, atol=1e-12)


def test_the_checkpoint_records_its_objective_and_block_size(tmp_path):
    from dllm.auto import AutoModelForMaskedDiffusion

    model = build("qwen3").float()
    trainer_for(model, tmp_path, block_size=4)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = AutoModelForMaskedDiffusion.from_pretrained(tmp_path / "ckpt")
    assert block_diffusion_size(loaded.config) == 4
    assert block_diffusion_size(build("qwen3").config) is None


def test_flash_attention_and_plain_arguments_are_refused(tmp_path):
    model = build("llama")
    trainer_for(model, tmp_path)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="flash_attention_2 does not take"):
        block_diffusion_attention_mask(model.config, torch.arange(4)[None], torch.float32)
    with pytest.raises(TypeError, match="BD3LMConfig"):
        BD3LMTrainer(model=build("llama"), args=MDLMConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none"))
    with pytest.raises(ValueError, match="block_size"):
        BD3LMConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", block_size=0)
    assert OBJECTIVES["mdlm"] == (MDLMConfig, MDLMTrainer)
    marked = build("llama")
    trainer_for(marked, tmp_path)
    with pytest.raises(ValueError, match="train it with BD3LMTrainer"):
        MDLMTrainer(model=marked, args=MDLMConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none"))
    trainer_for(marked, tmp_path, block_size=2)  # a block-diffusion checkpoint trains on, blocks of any size


@pytest.mark.slow  # flex attention compiles its kernel (about 30 s on CPU)
def test_flex_attention_takes_the_training_mask_and_gives_sdpas_logits(tmp_path):
    models, trainers = {}, {}
    for attention in ("sdpa", "flex_attention"):  # flex on CPU runs float32 only
        models[attention] = build("llama", attention=attention).float().eval()
        trainers[attention] = trainer_for(models[attention], tmp_path / attention)
    models["flex_attention"].load_state_dict(models["sdpa"].state_dict())
    batch, _ = unpacked_batch(documents())
    noisy = batch["input_ids"].clone()
    noisy[:, 3::2] = MASK_ID
    logits = {}
    with torch.no_grad():
        for attention, model in models.items():
            inputs = {"attention_mask": batch["attention_mask"]}
            logits[attention] = trainers[attention]._denoise(model, batch["input_ids"], noisy, noisy == MASK_ID,
                                                             inputs, select=False).logits
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(logits["flex_attention"][real], logits["sdpa"][real], rtol=1e-5, atol=1e-5)
