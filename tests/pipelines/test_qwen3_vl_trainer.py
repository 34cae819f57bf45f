"""Qwen3VLTrainer: vision inputs placed, multimodal positions from clean ids, a few real training steps."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchvision", reason="Qwen3-VL's image processor needs torchvision")

from datasets import Dataset  # noqa: E402

from dllm.core.trainers.mdlm_trainer import MDLMConfig  # noqa: E402
from dllm.pipelines.qwen3_vl.trainer import Qwen3VLTrainer  # noqa: E402
from dllm.pipelines.qwen3_vl.utils import create_qwen3_vl_collator  # noqa: E402
from tests.helpers import vl_rows  # noqa: E402


def _args(tmp_path, **overrides) -> MDLMConfig:
    values = dict(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=4, learning_rate=5e-3,
                  logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, weight_decay=0.0)
    values.update(overrides)
    return MDLMConfig(**values)


def test_positions_come_from_clean_ids_and_vision_tensors_are_placed(tiny_vl, tmp_path):
    model, processor = tiny_vl
    model.to(torch.bfloat16)
    collator = create_qwen3_vl_collator(processor)
    trainer = Qwen3VLTrainer(model=model, args=_args(tmp_path), data_collator=collator,
                             processing_class=processor)
    batch = collator(vl_rows(2))
    prepared = trainer._preprocess_inputs(dict(batch))
    assert prepared["pixel_values"].dtype == torch.bfloat16
    expected, _ = model.model.get_rope_index(batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                                             image_grid_thw=batch["image_grid_thw"],
                                             attention_mask=batch["attention_mask"])
    assert prepared["position_ids"].shape == (3, *batch["input_ids"].shape)
    assert torch.equal(prepared["position_ids"], expected)
    text_positions = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"])
    assert not torch.equal(prepared["position_ids"][1], text_positions)  # height positions differ inside the image
    # Masking every answer token leaves the positions as they were.
    noisy = dict(batch, input_ids=batch["input_ids"].masked_fill(batch["labels"] != -100, trainer.mask_token_id))
    assert torch.equal(trainer._preprocess_inputs(noisy)["position_ids"], expected)


def _masked_answer_loss(model, processor, mask_id) -> float:
    """Cross-entropy of every answer token with all answer tokens masked (deterministic, unlike the ELBO)."""
    batch = create_qwen3_vl_collator(processor)(vl_rows(4))
    batch["input_ids"] = batch["input_ids"].masked_fill(batch["labels"] != -100, mask_id)
    with torch.no_grad():
        return model(**batch).loss.item()


def _train(model, processor, tmp_path):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    mask_id = processor.tokenizer.mask_token_id
    loss_before = _masked_answer_loss(model, processor, mask_id)
    trainer = Qwen3VLTrainer(model=model, args=_args(tmp_path), train_dataset=Dataset.from_list(vl_rows()),
                             data_collator=create_qwen3_vl_collator(processor), processing_class=processor)
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    return changed, (loss_before, _masked_answer_loss(model, processor, mask_id))


@pytest.mark.parametrize("freeze_merger", [True, False])
def test_full_training_changes_exactly_the_trainable_parameters(tiny_vl, tmp_path, freeze_merger):
    model, processor = tiny_vl
    model.freeze_vision_components(freeze_vision=True, freeze_merger=freeze_merger)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("merger" in n for n in trainable) is not freeze_merger
    changed, (loss_before, loss_after) = _train(model, processor, tmp_path)
    assert changed == trainable
    assert loss_after < loss_before


def test_lora_training_changes_only_adapters(tiny_vl, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, processor = tiny_vl
    model.freeze_vision_components()
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                  "o_proj"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("visual" in n for n in trainable)  # the vision tower's attention is qkv/proj, not matched
    changed, (loss_before, loss_after) = _train(model, processor, tmp_path)
    assert loss_after < loss_before
    # lora_B starts at zero and lora_A gets no gradient on the first step, but after 4 steps both moved.
    assert changed == trainable
