"""Attention annealing (``--attention_annealing_steps N``, DiffuLLaMA): causal at step 0, bidirectional from step N.

Reference models are the same weights as a plain ``LlamaForCausalLM`` (causal) and as the masked LM without
annealing (bidirectional); the annealed masks are checked entry by entry against ``tril | relaxed``.
"""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset
from transformers import (
    Gemma2ForCausalLM,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    default_data_collator,
)

from dllm.core.models.masked_lm import (
    annealed_attention_fraction,
    annealed_attention_mask,
    draw_relaxed_attention,
    masked_lm_class,
)
from dllm.core.trainers.bd3lm_trainer import BD3LMConfig
from dllm.core.trainers.mdlm_trainer import MDLMConfig, MDLMTrainer
from tests.helpers import tiny_gemma2_config, tiny_llama_config

VOCAB, MASK_ID, N = 48, 3, 4


def models(tmp_path, attn: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(causal, masked LM) with the same weights: a causal checkpoint read back both ways."""
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(vocab_size=VOCAB, mask_token_id=MASK_ID)).save_pretrained(tmp_path / "ar")
    causal = LlamaForCausalLM.from_pretrained(tmp_path / "ar", attn_implementation=attn).eval()
    masked = masked_lm_class(LlamaForCausalLM).from_pretrained(tmp_path / "ar", attn_implementation=attn).eval()
    return causal, masked


def args(tmp_path, **overrides) -> MDLMConfig:
    values = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=3e-3, max_steps=6,
                  logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=0, data_seed=0,
                  warmup_steps=0, lr_scheduler_type="constant", dataloader_drop_last=True,
                  attention_annealing_steps=N)
    return MDLMConfig(**values | overrides)


class Recording(MDLMTrainer):
    """Records each forward's noisy ids and model inputs (relaxed_attention included)."""

    def _denoise(self, model, input_ids, noisy_ids, masked, inputs, *, select):
        self.seen = getattr(self, "seen", []) + [(self.state.global_step, noisy_ids.clone(), dict(inputs))]
        return super()._denoise(model, input_ids, noisy_ids, masked, inputs, select=select)


def left_padded_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (3, 12), generator=g)
    attention = torch.ones_like(ids)
    attention[1, :3], attention[2, :5] = 0, 0  # left padding
    ids[attention == 0] = 0
    labels = torch.where(attention.bool(), ids, -100)
    labels[:, 5:7] = -100  # part prompt
    return {"input_ids": ids, "labels": labels, "attention_mask": attention}


def forward_seen(trainer: Recording, model, step: int) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """Run compute_loss at ``step``; return the noisy ids, the inputs the model got, and its full logits on them."""
    trainer.state.global_step = step
    batch = left_padded_batch()
    trainer.compute_loss(model, dict(batch))
    _, noisy, inputs = trainer.seen[-1]
    inputs = {k: v for k, v in inputs.items() if k != "logits_mask"}
    with torch.no_grad():
        logits = model(input_ids=noisy, **inputs).logits  # [B, L, V]
    return noisy, inputs, logits


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_step_zero_is_the_causal_model_and_step_n_the_bidirectional_one(tmp_path, attn):
    causal, masked = models(tmp_path, attn)
    trainer = Recording(model=masked, args=args(tmp_path))
    real = left_padded_batch()["attention_mask"].bool()  # [B, L]

    noisy, inputs, logits = forward_seen(trainer, masked, step=0)
    assert not inputs["relaxed_attention"].any()
    with torch.no_grad():
        expected = causal(input_ids=noisy, attention_mask=inputs["attention_mask"]).logits
    torch.testing.assert_close(logits[real], expected[real], rtol=1e-5, atol=1e-5)

    noisy, inputs, logits = forward_seen(trainer, masked, step=N)
    assert "relaxed_attention" not in inputs  # the model's own (bidirectional) attention
    with torch.no_grad():
        bidirectional = masked(input_ids=noisy, attention_mask=inputs["attention_mask"]).logits
        everything = masked(input_ids=noisy, attention_mask=inputs["attention_mask"],
                            relaxed_attention=torch.ones(12, 12, dtype=torch.bool)).logits
        as_causal = causal(input_ids=noisy, attention_mask=inputs["attention_mask"]).logits
    torch.testing.assert_close(logits, bidirectional)
    torch.testing.assert_close(everything[real], bidirectional[real], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(bidirectional[real], as_causal[real], atol=1e-3)  # the two references differ


def test_the_fraction_of_relaxed_entries_follows_the_schedule(tmp_path):
    _, masked = models(tmp_path, "sdpa")
    trainer = MDLMTrainer(model=masked, args=args(tmp_path, attention_annealing_steps=8))
    length, upper = 64, 64 * 63 // 2
    generator = torch.Generator()
    for step in range(10):
        trainer.state.global_step = step
        relaxed = trainer._relaxed_attention(length, torch.device("cpu"), generator.manual_seed(step))
        fraction = min(step / 8, 1.0)
        assert fraction == annealed_attention_fraction(step, 8)
        if fraction == 1.0:
            assert relaxed is None
            continue
        assert not relaxed.tril().any()  # only key-after-query entries are ever opened
        spread = 4 * math.sqrt(fraction * (1 - fraction) / upper)
        assert abs(relaxed.sum().item() / upper - fraction) <= spread
        # The mask the model builds is exactly causal | relaxed.
        mask = annealed_attention_mask(masked.config, relaxed, torch.float32)  # [1, 1, L, L] bool
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        assert torch.equal(mask[0, 0], causal | relaxed)


def test_the_draw_is_a_function_of_seed_and_step(tmp_path):
    _, masked = models(tmp_path, "sdpa")
    masked.train()  # training noise is keyed by (seed, step); evaluation's by batch index alone

    def drawn(seed: int, step: int) -> torch.Tensor:
        trainer = Recording(model=masked, args=args(tmp_path, seed=seed, attention_annealing_steps=100))
        trainer.state.global_step = step
        trainer.compute_loss(masked, left_padded_batch())
        return trainer.seen[-1][2]["relaxed_attention"]

    assert torch.equal(drawn(0, 50), drawn(0, 50))
    assert not torch.equal(drawn(0, 50), drawn(0, 51))
    assert not torch.equal(drawn(0, 50), drawn(1, 50))


def packed_rows() -> dict[str, torch.Tensor]:
    """Two rows of 12: documents of 7 and 5 tokens, then 9 and 3."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, VOCAB, (2, 12), generator=g)
    documents = torch.tensor([[0] * 7 + [1] * 5, [2] * 9 + [3] * 3])
    positions = torch.tensor([list(range(7)) + list(range(5)), list(range(9)) + list(range(3))])
    return {"input_ids": ids, "document_ids": documents, "position_ids": positions}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_documents_never_see_each_other(tmp_path, attn):
    causal, masked = models(tmp_path, attn)
    rows = packed_rows()
    relaxed = draw_relaxed_attention(12, 0.5, generator=torch.Generator().manual_seed(0))
    changed = dict(rows, input_ids=rows["input_ids"].clone())
    changed["input_ids"][0, 7:] = 5  # the second document of row 0
    changed["input_ids"][1, :9] = 6  # the first document of row 1
    with torch.no_grad():
        for opened in (relaxed, torch.zeros_like(relaxed), torch.ones_like(relaxed)):
            before = masked(**rows, relaxed_attention=opened).logits
            after = masked(**changed, relaxed_attention=opened).logits
            torch.testing.assert_close(before[0, :7], after[0, :7], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(before[1, 9:], after[1, 9:], rtol=1e-5, atol=1e-5)
        # Nothing opened: each document as the causal model reads it alone; everything: packing's own mask.
        none = masked(**rows, relaxed_attention=torch.zeros_like(relaxed)).logits
        alone = causal(input_ids=rows["input_ids"][1:, 9:]).logits
        torch.testing.assert_close(none[1:, 9:], alone, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(masked(**rows, relaxed_attention=torch.ones_like(relaxed)).logits,
                                   masked(**rows).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["gemma2", "mistral"])
def test_windowed_models_start_as_their_causal_model(tmp_path, family):
    """Sliding-window layers (Gemma 2: per layer type; Mistral: every layer; windows of 4 < the documents): nothing
    opened is the causal model's sliding window exactly; opened entries stay inside the window ahead."""
    if family == "gemma2":
        causal_cls, config = Gemma2ForCausalLM, tiny_gemma2_config(vocab_size=VOCAB)
    else:
        causal_cls, config = MistralForCausalLM, tiny_llama_config(vocab_size=VOCAB, sliding_window=4)
        config = MistralConfig(**config.to_dict())
    torch.manual_seed(0)
    causal_cls(config).save_pretrained(tmp_path / family)
    causal = causal_cls.from_pretrained(tmp_path / family, attn_implementation="eager").eval()
    masked = masked_lm_class(causal_cls).from_pretrained(tmp_path / family, attn_implementation="eager").eval()
    rows = packed_rows()
    with torch.no_grad():
        none = masked(**rows, relaxed_attention=torch.zeros(12, 12, dtype=torch.bool)).logits
        alone = causal(input_ids=rows["input_ids"][1:, :9]).logits
    torch.testing.assert_close(none[1:, :9], alone, rtol=1e-5, atol=1e-5)
    mask = annealed_attention_mask(masked.config, torch.ones(12, 12, dtype=torch.bool), torch.float32)
    sliding = (mask["sliding_attention"] if isinstance(mask, dict) else mask)[0, 0] == 0  # eager: additive [L, L]
    q, kv = torch.arange(12)[:, None], torch.arange(12)[None, :]
    assert torch.equal(sliding, ((kv <= q) & (q - kv < 4)) | ((kv > q) & (kv - q <= 4)))


def copy_task(n: int = 32, length: int = 12) -> Dataset:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, VOCAB, (n, length), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100
    return Dataset.from_list([{"input_ids": i.tolist(), "labels": lab.tolist(), "attention_mask": [1] * length}
                              for i, lab in zip(ids, labels)])


def test_a_resumed_run_continues_the_schedule_exactly(tmp_path):
    """Checkpoint at step 2 (mid-annealing, N = 4), resume to step 6: the same relaxed masks at each step and the
    same final weights as the uninterrupted run."""
    def trainer_for(out: str, **extra) -> Recording:
        torch.manual_seed(0)
        model = masked_lm_class(LlamaForCausalLM)(tiny_llama_config(vocab_size=VOCAB, mask_token_id=MASK_ID))
        return Recording(model=model, args=args(tmp_path, output_dir=str(tmp_path / out), save_strategy="steps",
                                                save_steps=2, **extra),
                         train_dataset=copy_task(), data_collator=default_data_collator)

    reference = trainer_for("reference")
    reference.train()
    resumed = trainer_for("resumed", resume_from_checkpoint=str(tmp_path / "reference" / "checkpoint-2"))
    resumed.train()
    opened = {step: inputs.get("relaxed_attention") for step, _, inputs in reference.seen}
    assert [step for step, _, _ in resumed.seen] == [2, 3, 4, 5]
    for step, _, inputs in resumed.seen:
        expected = opened[step]
        assert (expected is None) == ("relaxed_attention" not in inputs) == (step >= N)
        assert expected is None or torch.equal(inputs["relaxed_attention"], expected)
    assert 0 < opened[2].sum() < opened[2].numel() // 2  # mid-annealing: some, not all
    for p, q in zip(resumed.model.parameters(), reference.model.parameters()):
        assert torch.equal(p, q)


def test_refused_combinations_say_so_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="non-negative integer"):
        args(tmp_path, attention_annealing_steps=-1)
    with pytest.raises(ValueError, match="mdlm objective"):
        BD3LMConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", attention_annealing_steps=10)
    _, masked = models(tmp_path, "sdpa")
    masked.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="flash_attention_2 does not take"):
        MDLMTrainer(model=masked, args=args(tmp_path))
    with pytest.raises(ValueError, match="flash_attention_2 does not take"):
        masked(**packed_rows(), relaxed_attention=torch.zeros(12, 12, dtype=torch.bool))


def test_the_recipe_refuses_annealing_with_flash_attention_before_any_work(tmp_path):
    from dllm.errors import UsageError
    from dllm.sft import recipe

    parsed = recipe.parse_args(["--model_name_or_path", str(tmp_path / "model"), "--output_dir", str(tmp_path / "out"),
                                "--dataset_args", str(tmp_path / "missing.jsonl"), "--attention_annealing_steps", "4",
                                "--attn_implementation", "flash_attention_2", "--use_cpu", "True"])
    with pytest.raises(UsageError, match="attention_annealing_steps needs a partly causal") as err:
        recipe.main(*parsed, model_config=tiny_llama_config())
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()  # refused before writing anything (and before reading the data)
