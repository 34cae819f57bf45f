"""Packing: a packed conversation is computed (attention, positions, t, ELBO weight, normalisation) as if alone."""

import math

import pytest
import torch
from datasets import Dataset
from transformers import (
    Gemma2ForCausalLM,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import dllm.core.trainers.mdlm_trainer as mdlm_trainer
from dllm.core.diffusion import masked_diffusion_loss, sample_document_t
from dllm.core.models.masked_lm import masked_lm_class
from dllm.core.trainers.mdlm_trainer import MDLMConfig, MDLMTrainer
from dllm.data.collator import SFTDataCollator
from dllm.data.packing import best_fit_decreasing, collate_packed, pack_dataset
from tests.helpers import tiny_gemma2_config, tiny_llama_config

VOCAB, MASK_ID = 64, 3
LENGTHS = (7, 5, 9, 3)  # two packs: [7, 5] and [9, 3]; each longer than Gemma 2's test window (4) but one


def _small(config_cls, **overrides):
    values = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, max_position_embeddings=64, pad_token_id=0)
    return config_cls(**values | overrides)


FAMILIES = {  # the mask shapes transformers takes: one tensor, a per-layer-type dict, a window on every layer
    "llama": (LlamaForCausalLM, lambda: tiny_llama_config(vocab_size=VOCAB)),
    "gemma2": (Gemma2ForCausalLM, lambda: tiny_gemma2_config(vocab_size=VOCAB)),
    "qwen3": (Qwen3ForCausalLM, lambda: _small(Qwen3Config)),
    "mistral": (MistralForCausalLM, lambda: _small(MistralConfig, sliding_window=4)),
}


def documents(seed: int = 0) -> list[dict[str, list[int]]]:
    """Tokenised conversations: 2 prompt tokens (label -100), the rest answer."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in LENGTHS:
        ids = torch.randint(4, VOCAB, (n,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100, -100] + ids[2:]})
    return rows


def packed_batch(docs) -> dict[str, torch.Tensor]:
    packs = [[docs[0], docs[1]], [docs[2], docs[3]]]
    rows = [{"input_ids": sum((d["input_ids"] for d in p), []), "labels": sum((d["labels"] for d in p), []),
             "seq_lengths": [len(d["input_ids"]) for d in p]} for p in packs]
    return collate_packed(rows, pad_id=0, length=14)


SPANS = [(0, 0, 7), (0, 7, 5), (1, 0, 9), (1, 9, 3)]  # (row, start, length) of each document in packed_batch


def model_for(family: str, attention: str, seed: int = 0):
    cls, make_config = FAMILIES[family]
    config = make_config()
    config._attn_implementation = attention
    torch.manual_seed(seed)
    return masked_lm_class(cls)(config).double().eval()


# ---- the layout ---------------------------------------------------------------------------------------------
def test_best_fit_decreasing_places_every_row_once_within_capacity():
    lengths = [5, 9, 3, 8, 2, 7, 1, 6, 4, 10]
    bins = best_fit_decreasing(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert len(bins) == math.ceil(sum(lengths) / 10) == 6  # a perfect packing exists and BFD finds it here


def test_collate_packed_restarts_positions_and_numbers_documents_across_the_batch():
    batch = packed_batch(documents())
    assert batch["position_ids"][0].tolist() == [*range(7), *range(5), 0, 1]
    assert batch["position_ids"][1].tolist() == [*range(9), *range(3), 0, 1]
    assert batch["document_ids"].tolist() == [[0] * 7 + [1] * 5 + [-1] * 2, [2] * 9 + [3] * 3 + [-1] * 2]
    assert batch["labels"][0, 12:].tolist() == [-100, -100] and batch["input_ids"][0, 12:].tolist() == [0, 0]
    assert "attention_mask" not in batch


# ---- attention: each document alone ---------------------------------------------------------------------------
@pytest.mark.parametrize("family,attention", [("llama", "eager"), ("llama", "sdpa"), ("gemma2", "eager"),
                                              ("qwen3", "sdpa"), ("mistral", "eager")])
def test_a_packed_documents_logits_equal_its_logits_alone(family, attention):
    model = model_for(family, attention)
    docs, batch = documents(), packed_batch(documents())
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       document_ids=batch["document_ids"]).logits  # [B, L, V]
        leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits  # no document mask
        for (row, start, n), doc in zip(SPANS, docs):
            alone = model(input_ids=torch.tensor([doc["input_ids"]])).logits[0]  # [n, V]
            # Double precision, except transformers' eager attention takes its softmax in float32
            # (eager_attention_forward, softmax(..., dtype=torch.float32)): rows of other lengths round differently
            # there (seen: 2.6e-8 on an AMD EPYC), far below what a leaking mask changes (checked below).
            tolerance = 1e-6 if attention == "eager" else 1e-9
            torch.testing.assert_close(packed[row, start:start + n], alone, rtol=tolerance, atol=tolerance)
        # Without document_ids the documents see each other: the test above would catch a mask that leaks.
        assert not torch.allclose(leaky[0, :7], packed[0, :7])


def test_selected_head_on_packed_rows_gives_the_selected_full_logits():
    model = model_for("gemma2", "eager")
    batch = packed_batch(documents())
    select = (torch.arange(14) % 3 == 0).expand(2, 14) & (batch["document_ids"] >= 0)
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                     document_ids=batch["document_ids"]).logits
        selected = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                         document_ids=batch["document_ids"], logits_mask=select).logits
    torch.testing.assert_close(selected, full[select], rtol=1e-9, atol=1e-9)


def test_packed_rows_refuse_an_attention_mask():
    model = model_for("llama", "sdpa")
    batch = packed_batch(documents())
    with pytest.raises(ValueError, match="take no attention_mask"):
        model(input_ids=batch["input_ids"], attention_mask=torch.ones(2, 14, dtype=torch.long),
              document_ids=batch["document_ids"], position_ids=batch["position_ids"])


# ---- the objective: per-document t, weight and normalisation --------------------------------------------------
def test_antithetic_document_times_are_evenly_spread_over_the_documents():
    batch = packed_batch(documents())
    t = sample_document_t(batch["document_ids"], torch.tensor(0.1), eps=0.0)[:4]
    assert torch.allclose(t, torch.tensor([0.1, 0.35, 0.6, 0.85]))


def _unpacked(docs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same documents one per row, right-padded: input_ids, attention_mask, labels [4, 9]."""
    width = max(LENGTHS)
    ids = torch.zeros(len(docs), width, dtype=torch.long)
    attention = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, doc in enumerate(docs):
        n = len(doc["input_ids"])
        ids[i, :n], attention[i, :n], labels[i, :n] = torch.tensor(doc["input_ids"]), 1, torch.tensor(doc["labels"])
    return ids, attention, labels


@pytest.mark.parametrize("normalization", ["token", "sequence"])
def test_packed_loss_and_gradients_equal_the_unpacked_under_the_same_t_and_masks(tmp_path, monkeypatch,
                                                                                normalization):
    model = model_for("llama", "eager", seed=1)
    model.config.mask_token_id = MASK_ID
    trainer = MDLMTrainer(model=model, args=MDLMConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                                       loss_normalization=normalization, seed=3))
    seen = {}
    real_loss = mdlm_trainer.masked_diffusion_loss

    def spy(logits, labels, masked, weight, **kwargs):
        seen.update(masked=masked, weight=weight)
        return real_loss(logits, labels, masked, weight, **kwargs)

    monkeypatch.setattr(mdlm_trainer, "masked_diffusion_loss", spy)
    docs, batch = documents(), packed_batch(documents())
    model.train()
    packed_loss = trainer.compute_loss(model, batch)
    packed_grads = torch.autograd.grad(packed_loss, list(model.parameters()))

    # The documents one per row, masked where they were masked in the pack, each with its document's weight.
    ids, attention, labels = _unpacked(docs)
    masked = torch.zeros_like(ids, dtype=torch.bool)
    for i, (row, start, n) in enumerate(SPANS):
        masked[i, :n] = seen["masked"][row, start:start + n]
    assert masked.any(dim=1).sum() >= 2  # the draw masked tokens in several documents
    noisy = torch.where(masked, torch.full_like(ids, MASK_ID), ids)
    logits = model(input_ids=noisy, attention_mask=attention).logits
    loss = real_loss(logits, labels, masked, seen["weight"][:4], normalization=normalization)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    torch.testing.assert_close(packed_loss, loss, rtol=1e-9, atol=1e-12)
    for packed_grad, grad in zip(packed_grads, grads):
        torch.testing.assert_close(packed_grad, grad, rtol=1e-7, atol=1e-10)


def test_each_document_is_masked_at_its_own_noise_level(tmp_path, monkeypatch):
    """200 documents of 40 answer tokens in 50 packs: each document's masked fraction follows its own t (the grid
    spans the documents), not one t per packed row."""
    model = model_for("llama", "sdpa")
    model.config.mask_token_id = MASK_ID
    trainer = MDLMTrainer(model=model, args=MDLMConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                                       time_eps=0.0))
    seen = {}
    real_loss = mdlm_trainer.masked_diffusion_loss
    monkeypatch.setattr(mdlm_trainer, "masked_diffusion_loss",
                        lambda *args, **kwargs: seen.update(masked=args[2], weight=args[3]) or real_loss(*args, **kwargs))
    ids = list(range(4, 44))
    rows = [{"input_ids": ids * 4, "labels": ids * 4, "seq_lengths": [40] * 4}] * 50
    batch = collate_packed(rows, pad_id=0, length=160)
    with torch.no_grad():
        trainer.compute_loss(model, batch)
    t = 1.0 / seen["weight"][:200]  # linear schedule: weight 1/t
    assert torch.allclose(t.sort().values - t.min(), torch.arange(200) / 200, atol=1e-5)  # one grid over documents
    fraction = torch.stack([seen["masked"][batch["document_ids"] == d].float().mean() for d in range(200)])
    assert (fraction - t).abs().mean() < 0.08  # Binomial(40, t) / 40 has a spread of at most 0.08
    assert torch.corrcoef(torch.stack([fraction, t.float()]))[0, 1] > 0.9
    assert len(set(t.tolist())) == 200  # one t per document, not one per packed row


# ---- the data path --------------------------------------------------------------------------------------------
def test_pack_dataset_keeps_every_answer_token_and_drops_rows_without_one(caplog):
    rows = documents() + [{"input_ids": [5, 6, 7], "labels": [-100, -100, -100]},  # no answer: dropped
                          {"input_ids": list(range(4, 30)), "labels": [-100] * 20 + list(range(24, 30))}]  # cut
    packed = pack_dataset(Dataset.from_list(rows), max_seq_length=12)
    assert all(len(ids) <= 12 and sum(lengths) == len(ids)
               for ids, lengths in zip(packed["input_ids"], packed["seq_lengths"]))
    assert sum(sum(lengths) for lengths in packed["seq_lengths"]) == sum(LENGTHS)
    answers = sorted(t for labels in packed["labels"] for t in labels if t != -100)
    # The long row keeps its first 12 tokens, all prompt, so it is dropped like the row without an answer.
    assert answers == sorted(t for d in documents() for t in d["labels"] if t != -100)
    assert "dropped 2 of 6 rows" in caplog.text


def test_the_collator_batches_packs_and_refuses_eos_padding():
    packed = pack_dataset(Dataset.from_list(documents()), max_seq_length=12)
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1},
                                                                                    unk_token="<pad>")),
                                        pad_token="<pad>", eos_token="<eos>")
    batch = SFTDataCollator(tokenizer, max_seq_length=12, pad_to_multiple_of=8)(list(packed))
    assert batch["input_ids"].shape == (len(packed), 16) and set(batch) == {"input_ids", "labels", "position_ids",
                                                                           "document_ids"}
    assert int(batch["document_ids"].max()) + 1 == len(LENGTHS)
    with pytest.raises(Exception, match="train_on_eos_padding"):
        SFTDataCollator(tokenizer, train_on_eos_padding=True)(list(packed))


def test_qwen3_vl_recipe_refuses_packing(tmp_path):
    from transformers import Qwen3VLConfig

    from dllm.errors import UsageError
    from dllm.sft.config import DataArguments, ModelArguments, SFTConfig
    from dllm.sft.recipe import main

    # The family's hooks come from the checkpoint's config (Qwen3-VL here); refused before any data or weights load.
    with pytest.raises(UsageError, match="--packing is for text models: qwen3_vl rows"):
        main(ModelArguments(model_name_or_path="Qwen/Qwen3-VL-2B-Instruct"), DataArguments(packing=True),
             SFTConfig(output_dir=str(tmp_path), report_to="none"), model_config=Qwen3VLConfig())
