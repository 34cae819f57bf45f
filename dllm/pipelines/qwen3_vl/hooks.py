"""What the one SFT recipe (:mod:`dllm.sft.recipe`, ``dllm sft qwen3_vl``) asks of the Qwen3-VL family: its own
options (vision freezing, where images live), its model, its collator and its trainer. Registered in
:data:`dllm.auto.FAMILIES` (imported on first use: the trainer pulls in ``transformers.Trainer``); like every pipeline module it imports only the core, the data layer and its pipeline.
"""

from __future__ import annotations

from typing import Any

from dllm.core.trainers.mdlm_trainer import MDLMTrainer
from dllm.errors import UsageError
from dllm.pipelines.qwen3_vl.collator import Qwen3VLDataCollator, create_qwen3_vl_collator
from dllm.pipelines.qwen3_vl.models import Qwen3VLForMaskedLM
from dllm.pipelines.qwen3_vl.options import Qwen3VLOptions
from dllm.pipelines.qwen3_vl.trainer import Qwen3VLTrainer


def build_model(checkpoint: str, load_kwargs: dict[str, Any], options: Qwen3VLOptions | None) -> Qwen3VLForMaskedLM:
    """The bidirectional Qwen3-VL with its vision components frozen as ``options`` say."""
    options = options or Qwen3VLOptions()
    return Qwen3VLForMaskedLM.from_pretrained(checkpoint, freeze_vision=options.freeze_vision,
                                              freeze_merger=options.freeze_merger, **load_kwargs)


def build_collator(processor: Any, data_args: Any, options: Qwen3VLOptions | None) -> Qwen3VLDataCollator:
    """The multimodal collator (images decoded per batch, labels only on the assistant answers)."""
    options = options or Qwen3VLOptions()
    return create_qwen3_vl_collator(processor, mask_prompt_loss=data_args.mask_prompt_loss,
                                    max_seq_length=data_args.max_seq_length, image_root=options.image_root)


def trainer_for(trainer_class: type) -> type:
    """:class:`Qwen3VLTrainer` for the MDLM objective (its hook places the vision inputs and multimodal positions).

    Raises:
        UsageError: another objective (its forward would need multimodal positions it does not compute).
    """
    if trainer_class is MDLMTrainer:
        return Qwen3VLTrainer
    raise UsageError(f"Qwen3-VL trains with the MDLM objective only (--objective mdlm), not {trainer_class.__name__}")
