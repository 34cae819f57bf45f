"""``Qwen3VLTrainer``: :class:`~dllm.core.trainers.MDLMTrainer` with Qwen3-VL's input preparation (one hook)."""

from __future__ import annotations

from typing import Any

import torch

from dllm.core.trainers.mdlm_trainer import MDLMTrainer


class Qwen3VLTrainer(MDLMTrainer):
    """Masked-diffusion SFT of Qwen3-VL; the loss is :class:`MDLMTrainer`'s, unchanged.

    :meth:`_preprocess_inputs` places the vision tensors on the model's device (``pixel_values`` in the vision
    tower's dtype) and computes the multimodal rotary positions (3 x [B, L], temporal/height/width) from the
    *clean* ``input_ids`` before any token is masked, so masking never changes a position, and upstream's
    stateful ``rope_deltas`` cache is never consulted.
    """

    def _base_model(self) -> torch.nn.Module:
        model = self.accelerator.unwrap_model(self.model)
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def _preprocess_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        base = self._base_model()
        device = base.device
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(device=device, dtype=base.model.visual.dtype)
        for key in ("image_grid_thw", "mm_token_type_ids", "attention_mask"):
            if key in inputs:
                inputs[key] = inputs[key].to(device)
        if "position_ids" not in inputs and "image_grid_thw" in inputs:
            if "mm_token_type_ids" not in inputs:
                raise ValueError("a batch with images needs 'mm_token_type_ids' (the Qwen3-VL collator writes it) "
                                 "for the multimodal rotary positions")
            position_ids, _ = base.model.get_rope_index(
                inputs["input_ids"].to(device),
                mm_token_type_ids=inputs["mm_token_type_ids"],
                image_grid_thw=inputs["image_grid_thw"],
                attention_mask=inputs.get("attention_mask"),
            )  # [3, B, L]
            inputs["position_ids"] = position_ids
        return inputs
