"""Gradient checkpointing with Qwen3-VL: on an image batch from the real collator, the loss and every gradient
equal those without it, for full fine-tuning (vision tower included) and for LoRA wrapped by the recipe.

Both runs go through ``Qwen3VLTrainer.train()`` (Trainer enables checkpointing from ``gradient_checkpointing=True``
itself), one optimizer step of two micro-batches; the diffusion noise is a function of (seed, step, micro-batch),
so the two runs see the same ``t`` and masks, and dropout is on (the recompute must replay its masks).
"""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("torchvision", reason="Qwen3-VL's image processor needs torchvision")

from datasets import Dataset  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from dllm.core.models import add_mask_token  # noqa: E402
from dllm.core.trainers.mdlm_trainer import MDLMConfig  # noqa: E402
from dllm.pipelines.qwen3_vl.testing import build_tiny_qwen3_vl  # noqa: E402
from dllm.pipelines.qwen3_vl.trainer import Qwen3VLTrainer  # noqa: E402
from dllm.pipelines.qwen3_vl.utils import create_qwen3_vl_collator  # noqa: E402
from dllm.sft.config import ModelArguments  # noqa: E402
from dllm.sft.recipe import apply_lora  # noqa: E402
from tests.helpers import vl_rows  # noqa: E402


class Recorder(TrainerCallback):
    """The trainable parameters' gradients just before the optimizer step."""

    grads: dict[str, torch.Tensor]

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _build(lora: bool, checkpointing: bool):
    """The tiny Qwen3-VL (nothing frozen) with dropout on, or wrapped in LoRA by the recipe's apply_lora (vision
    frozen, as the recipe's defaults), ``lora_B`` given values so every adapter gets a gradient."""
    model, processor = build_tiny_qwen3_vl(attention_dropout=0.1)
    add_mask_token(model, processor.tokenizer)
    if lora:
        model.freeze_vision_components()
        args = ModelArguments(lora=True, r=4, lora_alpha=8, lora_dropout=0.1)
        model = apply_lora(model, args, checkpointing)
        torch.manual_seed(1)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.data.normal_(std=0.1)
    return model, processor


def _count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _train_one_step(tmp_path, lora: bool, checkpointing: bool):
    """``(micro-batch losses, gradients, forward calls of the first text layer's and vision block's norms)``."""
    model, processor = _build(lora, checkpointing)
    base = model.get_base_model() if lora else model
    text_calls = _count_calls(base.model.language_model.layers[0].input_layernorm)
    vision_calls = _count_calls(base.model.visual.blocks[0].norm1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`gradient_checkpointing` is deprecated", FutureWarning)
        args = MDLMConfig(output_dir=str(tmp_path / str(checkpointing)), per_device_train_batch_size=2,
                          gradient_accumulation_steps=2, max_steps=1, report_to="none", use_cpu=True, seed=0,
                          save_strategy="no", gradient_checkpointing=checkpointing)
    recorder = Recorder()
    trainer = Qwen3VLTrainer(model=model, args=args, train_dataset=Dataset.from_list(vl_rows(4)),
                             data_collator=create_qwen3_vl_collator(processor), processing_class=processor,
                             callbacks=[recorder])
    losses, compute_loss = [], trainer.compute_loss

    def recording_compute_loss(*args, **kwargs):
        loss = compute_loss(*args, **kwargs)
        losses.append(loss.detach())
        return loss

    trainer.compute_loss = recording_compute_loss
    trainer.train()
    return torch.stack(losses), recorder.grads, (text_calls[0], vision_calls[0])


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tmp_path, lora):
    plain_loss, plain, plain_calls = _train_one_step(tmp_path, lora, checkpointing=False)
    checkpointed_loss, checkpointed, calls = _train_one_step(tmp_path, lora, checkpointing=True)
    # 2 micro-batches; checkpointed layers run again in backward (the frozen vision tower under LoRA needs no
    # backward, so it is not recomputed)
    assert plain_calls == (2, 2) and calls == ((4, 2) if lora else (4, 4))
    assert plain_loss.shape == (2,) and torch.isfinite(plain_loss).all()
    torch.testing.assert_close(checkpointed_loss, plain_loss, rtol=1e-6, atol=0)
    assert plain.keys() == checkpointed.keys()
    if lora:
        assert plain and all("lora_" in name for name in plain)
    else:
        assert any(name.startswith("model.visual.blocks.") for name in plain)  # the vision tower trains too
    for name, grad in plain.items():
        assert grad.abs().max() > 0, f"{name} got no gradient"
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)
