"""Memory savers: gradient checkpointing gives the same gradients on every family (full and LoRA), and bf16
training keeps the loss finite at tiny diffusion times (ELBO weight 1/t up to 1e4).

Both go through ``MDLMTrainer.train()`` (Trainer enables checkpointing itself from
``--gradient_checkpointing True``); the diffusion noise is a function of its position (seed, step, micro-batch),
so two runs that differ only in checkpointing see the same ``t`` and masks. The peak-memory saving is measured
by ``benchmarks/memory.py`` (docs/benchmarks.md).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback, default_data_collator

import dllm.core.trainers.mdlm_trainer as mdlm_trainer
from dllm.auto import AutoModelForMaskedDiffusion
from dllm.core.trainers.mdlm_trainer import MDLMConfig, MDLMTrainer
from dllm.sft.config import ModelArguments
from dllm.sft.recipe import apply_lora
from tests.helpers import tiny_gemma2_config, tiny_llama_config, tiny_qwen3_config

MASK_ID, VOCAB = 4, 64


FAMILIES = {"llama3": tiny_llama_config, "gemma2": tiny_gemma2_config, "qwen3": tiny_qwen3_config}


def dataset(n=16, length=16, prompt=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        ids = torch.randint(5, VOCAB, (length,), generator=g)
        labels = ids.clone()
        labels[:prompt] = -100
        labels[length - i % 4:] = -100  # ragged answers
        rows.append({"input_ids": ids.tolist(), "labels": labels.tolist(), "attention_mask": [1] * length})
    return Dataset.from_list(rows)


def build(family: str, lora: bool, checkpointing: bool):
    """The family's masked LM (class picked by AutoModelForMaskedDiffusion), with dropout on (the recompute
    must replay the same dropout masks), optionally wrapped in LoRA by the SFT recipe's own apply_lora."""
    torch.manual_seed(0)
    config = FAMILIES[family](vocab_size=VOCAB, mask_token_id=MASK_ID, attention_dropout=0.1)
    model = AutoModelForMaskedDiffusion.from_config(config)
    if lora:
        args = ModelArguments(lora=True, r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj"])
        model = apply_lora(model, args, checkpointing)
        torch.manual_seed(1)
        for name, param in model.named_parameters():
            if "lora_B" in name:  # B starts at zero (then A gets no gradient): give it values
                param.data.normal_(std=0.1)
    return model


class GradsBeforeStep(TrainerCallback):
    """Copies every trainable parameter's gradient just before the optimizer step."""

    def __init__(self):
        self.grads = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def count_layer_calls(model) -> list[int]:
    """Counts forward calls of the first decoder layer's input norm: twice per micro-batch when the layer is
    recomputed in backward. (transformers checkpoints the layer's ``forward``, so a hook on the layer itself fires
    once; non-reentrant recomputation stops after the last tensor backward needs, so a late module such as
    LLaMA's ``mlp`` may not be re-entered.)"""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    calls = [0]
    base.model.layers[0].input_layernorm.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_gradient_checkpointing_gives_the_same_gradients(tmp_path, family, lora):
    grads, calls = {}, {}
    for checkpointing in (False, True):
        model = build(family, lora, checkpointing)
        spy, layer_calls = GradsBeforeStep(), count_layer_calls(model)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`gradient_checkpointing` is deprecated", FutureWarning)
            args = MDLMConfig(output_dir=str(tmp_path / str(checkpointing)), per_device_train_batch_size=4,
                              gradient_accumulation_steps=2, max_steps=1, report_to="none", use_cpu=True, seed=0,
                              save_strategy="no", gradient_checkpointing=checkpointing)
        trainer = MDLMTrainer(model=model, args=args, train_dataset=dataset(), data_collator=default_data_collator,
                              callbacks=[spy])
        trainer.train()
        grads[checkpointing], calls[checkpointing] = spy.grads, layer_calls[0]
    assert calls == {False: 2, True: 4}  # 2 micro-batches; recomputed in backward
    plain, checkpointed = grads[False], grads[True]
    assert plain.keys() == checkpointed.keys() and plain
    if lora:
        assert all("lora_" in name for name in plain)
    print(f"{family} {'lora' if lora else 'full'}: max |grad difference| = "
          f"{max((checkpointed[n] - g).abs().max().item() for n, g in plain.items()):.3g}")
    for name, grad in plain.items():
        assert grad.abs().max() > 0, f"{name} got no gradient"
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_bf16_training_keeps_the_loss_finite_at_tiny_t(tmp_path, monkeypatch):
    """200 micro-batches of bf16 training (CPU autocast) with time_eps=1e-4: ELBO weights up to 1/t = 1e4,
    and every logged loss and gradient norm stays finite. The smallest t drawn is checked to be tiny."""
    smallest = [1.0]

    def recording_sample_t(*args, **kwargs):
        t = sample_t(*args, **kwargs)
        smallest[0] = min(smallest[0], t.min().item())
        return t

    sample_t = mdlm_trainer.sample_t
    monkeypatch.setattr(mdlm_trainer, "sample_t", recording_sample_t)
    torch.manual_seed(0)
    model = AutoModelForMaskedDiffusion.from_config(tiny_llama_config(vocab_size=VOCAB, mask_token_id=MASK_ID))
    args = MDLMConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, gradient_accumulation_steps=2,
                      max_steps=100, logging_steps=1, learning_rate=1e-3, bf16=True, time_eps=1e-4,
                      time_sampler="uniform", report_to="none", use_cpu=True, seed=0, save_strategy="no")
    trainer = MDLMTrainer(model=model, args=args, train_dataset=dataset(64), data_collator=default_data_collator)
    assert trainer.accelerator.mixed_precision == "bf16"
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 100
    assert all(math.isfinite(entry["loss"]) and math.isfinite(entry["grad_norm"]) for entry in logs)
    print(f"bf16: smallest t {smallest[0]:.3g}, largest loss {max(e['loss'] for e in logs):.4g}")
    assert smallest[0] < 2e-3  # the 1/t weight really reached the hundreds or more
    assert all(math.isfinite(p.float().sum().item()) for p in model.parameters())
