"""The Qwen3-VL SFT recipe behind ``examples/qwen3_vl/sft.py`` and ``dllm sft qwen3_vl``: the text recipe's steps
(:mod:`dllm.sft.recipe`) with the processor, the frozen vision tower, the multimodal collator and
:class:`~dllm.pipelines.qwen3_vl.trainer.Qwen3VLTrainer`. Launch commands are in ``examples/qwen3_vl/sft.py``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser, set_seed

from dllm.auto import FAMILIES, load_config, load_processor
from dllm.core.models.masked_lm import add_mask_token
from dllm.core.sampling import DiffusionGenerationConfig
from dllm.data import load_sft_dataset
from dllm.errors import UsageError
from dllm.pipelines.qwen3_vl import Qwen3VLForMaskedLM
from dllm.pipelines.qwen3_vl.trainer import Qwen3VLTrainer
from dllm.pipelines.qwen3_vl.utils import create_qwen3_vl_collator
from dllm.sft.config import DataArguments, ModelArguments, SFTConfig
from dllm.sft.recipe import apply_lora, save_final

logger = logging.getLogger(__name__)


@dataclass
class Qwen3VLModelArguments(ModelArguments):
    """The recipe's model options with Qwen3-VL's defaults and vision-freezing flags."""

    lora: bool = field(default=True, metadata={"help": "Train LoRA adapters on the language model (vision stays "
                                                       "frozen under LoRA); False trains every unfrozen weight."})
    freeze_vision: bool = field(default=True, metadata={"help": "Freeze the vision tower (without its mergers)."})
    freeze_merger: bool = field(default=True, metadata={"help": "Freeze the merger and the DeepStack mergers."})
    image_root: str | None = field(default=None, metadata={"help": "Folder that relative image paths resolve "
                                                                   "against (paths in data files already do)."})


def main(argv: list[str] | None = None) -> Qwen3VLTrainer:
    """Masked-diffusion SFT of Qwen3-VL with command-line ``argv`` (``examples/qwen3_vl/sft.py``,
    ``dllm sft qwen3_vl``, or ``dllm sft --model_name_or_path`` with a Qwen3-VL checkpoint)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    parser = HfArgumentParser((Qwen3VLModelArguments, DataArguments, SFTConfig))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    checkpoint = model_args.model_name_or_path or FAMILIES["qwen3_vl"].default_checkpoint
    if data_args.packing:
        raise UsageError("--packing is for text models: Qwen3-VL rows keep one conversation (and its images) each")
    load_config(checkpoint, model_args.trust_remote_code)  # a missing or untrusted checkpoint fails first

    # 1. Data: message rows with <image> placeholders and undecoded images (decoded by the collator).
    test_size = int(data_args.test_size) if data_args.test_size >= 1 else data_args.test_size or None
    dataset = load_sft_dataset(data_args.dataset_args, seed=training_args.seed, test_size=test_size,
                               skip_invalid=data_args.skip_invalid_rows)

    # 2. Processor and model (bidirectional, vision frozen, a mask token). Seeded: a new mask-token row is random.
    set_seed(training_args.seed)
    processor = load_processor(checkpoint, model_args.trust_remote_code)
    kwargs = {"dtype": model_args.dtype if model_args.dtype == "auto" else getattr(torch, model_args.dtype),
              "trust_remote_code": model_args.trust_remote_code}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    model = Qwen3VLForMaskedLM.from_pretrained(checkpoint, freeze_vision=model_args.freeze_vision,
                                               freeze_merger=model_args.freeze_merger, **kwargs)
    add_mask_token(model, processor.tokenizer, model_args.mask_token)
    if model_args.lora:
        model = apply_lora(model, model_args, training_args.gradient_checkpointing)
    collator = create_qwen3_vl_collator(processor, mask_prompt_loss=data_args.mask_prompt_loss,
                                        max_seq_length=data_args.max_seq_length, image_root=model_args.image_root)

    # 3. Train.
    trainer = Qwen3VLTrainer(model=model, args=training_args, train_dataset=dataset["train"],
                             eval_dataset=dataset.get("test"), data_collator=collator, processing_class=processor)
    trainer.train()
    if collator.num_dropped:
        logger.warning("%d rows were dropped (image or prompt beyond max_seq_length=%d)", collator.num_dropped,
                       data_args.max_seq_length)

    # 4. Save a checkpoint Qwen3VLForMaskedLM / AutoModelForMaskedDiffusion and AutoProcessor load back.
    save_final(trainer, processor, training_args.output_dir, model_args.lora, base=checkpoint,
               generation_config=DiffusionGenerationConfig(gen_length=training_args.gen_length))
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return trainer

