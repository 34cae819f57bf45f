"""The supervised fine-tuning recipe behind ``examples/<family>/sft.py`` and ``dllm sft [family]``.

Steps: parse options, load the tokenizer and the bidirectional model (the class is picked from the checkpoint's
``model_type`` by :class:`dllm.auto.AutoModelForMaskedDiffusion`), give it a mask token, optionally wrap it in
LoRA, load and validate the data, build the collator, train with :class:`MDLMTrainer`, and save a checkpoint
that ``AutoModelForMaskedDiffusion.from_pretrained`` (and ``AutoTokenizer``) load back.

A family name (``llama3``, ``gemma2``) only supplies the default checkpoint; ``--model_name_or_path`` may point
at any causal LM transformers knows (Qwen3, Mistral, ...).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer, HfArgumentParser, PreTrainedModel, PreTrainedTokenizerBase, set_seed

from dllm.auto import FAMILIES, AutoModelForMaskedDiffusion
from dllm.core.models.masked_lm import add_mask_token
from dllm.core.trainers.mdlm_trainer import MDLMTrainer
from dllm.data.collator import SFTDataCollator
from dllm.data.utils import load_sft_dataset
from dllm.errors import UsageError
from dllm.sft.config import DataArguments, ModelArguments, SFTConfig

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, SFTConfig]:
    """``(model_args, data_args, training_args)`` from the command line (``--help`` lists every flag)."""
    parser = HfArgumentParser((ModelArguments, DataArguments, SFTConfig))
    return parser.parse_args_into_dataclasses(args=argv)


def resolve_checkpoint(family: str | None, model_args: ModelArguments) -> str:
    """``--model_name_or_path``, else the named family's default checkpoint.

    Raises:
        UsageError: an unknown family, or neither a family nor a checkpoint.
    """
    if family is not None and family not in FAMILIES:
        raise UsageError(f"unknown family {family!r}; choose one of {', '.join(sorted(FAMILIES))}, "
                         "or give --model_name_or_path alone")
    if model_args.model_name_or_path:
        return model_args.model_name_or_path
    if family is None:
        raise UsageError("give --model_name_or_path (a hub id or a local checkpoint), or name a family: "
                         f"dllm sft {{{','.join(sorted(FAMILIES))}}}")
    return FAMILIES[family].default_checkpoint


def _dtype(name: str) -> str | torch.dtype:
    return name if name == "auto" else getattr(torch, name)


def build_model_and_tokenizer(
    checkpoint: str, model_args: ModelArguments, family: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the tokenizer and the bidirectional model; make sure a mask token exists (resizing if added)."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    kwargs = {"dtype": _dtype(model_args.dtype)}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    model = AutoModelForMaskedDiffusion.from_pretrained(checkpoint, **kwargs)
    if family is not None and model.config.model_type != FAMILIES[family].model_type:
        logger.warning("%s has model_type %r, not %s's %r: training it as %s", checkpoint,
                       model.config.model_type, family, FAMILIES[family].model_type, type(model).__name__)
    add_mask_token(model, tokenizer, model_args.mask_token)
    return model, tokenizer


def apply_lora(model: PreTrainedModel, model_args: ModelArguments, gradient_checkpointing: bool) -> PreTrainedModel:
    """Wrap ``model`` in LoRA adapters on ``target_modules`` (peft is imported only here)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=model_args.r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
                        target_modules=list(model_args.target_modules), bias="none")
    if gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need a grad-carrying input under LoRA
    model = get_peft_model(model, config)
    model.print_trainable_parameters()
    return model


def save_final(trainer: MDLMTrainer, tokenizer: PreTrainedTokenizerBase, output_dir: str, lora: bool) -> None:
    """Write a full checkpoint ``from_pretrained`` can load; with LoRA also the adapter in ``adapter/``."""
    if lora:
        trainer.save_model(str(Path(output_dir) / "adapter"))
        if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
            logger.warning("LoRA under DeepSpeed/FSDP: only the adapter was saved to %s/adapter; merge it into "
                           "the base model with peft's merge_and_unload on one process.", output_dir)
            return
        if trainer.accelerator.is_main_process:
            merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
            merged.save_pretrained(output_dir)
    else:
        trainer.save_model(output_dir)
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(output_dir)


def main(family: str | None = None, argv: list[str] | None = None) -> MDLMTrainer:
    """Run masked-diffusion SFT with command-line ``argv``; ``family`` ("llama3", "gemma2") supplies the default
    checkpoint, and the checkpoint's ``model_type`` picks the model class."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    model_args, data_args, training_args = parse_args(argv)
    checkpoint = resolve_checkpoint(family, model_args)

    # 1. Model and tokenizer (bidirectional, with a mask token). Seeded first: a new mask-token row is random.
    set_seed(training_args.seed)
    model, tokenizer = build_model_and_tokenizer(checkpoint, model_args, family)
    if model_args.lora:
        model = apply_lora(model, model_args, training_args.gradient_checkpointing)

    # 2. Data: validated message rows, tokenised on the fly by the collator.
    test_size = int(data_args.test_size) if data_args.test_size >= 1 else data_args.test_size or None
    dataset = load_sft_dataset(data_args.dataset_args, seed=training_args.seed, test_size=test_size,
                               skip_invalid=data_args.skip_invalid_rows)
    collator = SFTDataCollator(tokenizer, max_seq_length=data_args.max_seq_length,
                               mask_prompt_loss=data_args.mask_prompt_loss,
                               train_on_eos_padding=data_args.train_on_eos_padding)

    # 3. Train.
    trainer = MDLMTrainer(model=model, args=training_args, train_dataset=dataset["train"],
                          eval_dataset=dataset.get("test"), data_collator=collator, processing_class=tokenizer)
    trainer.train()
    if collator.num_dropped:
        logger.warning("%d rows were dropped: no answer token fits in max_seq_length=%d",
                       collator.num_dropped, data_args.max_seq_length)

    # 4. Save a loadable checkpoint with its tokenizer. Then every process waits for the save and the process
    #    group is torn down before the interpreter exits: a rank that exits with gloo threads still running
    #    aborts ("terminate called without an active exception"), which failed 1 in ~10 two-process runs.
    save_final(trainer, tokenizer, training_args.output_dir, model_args.lora)
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return trainer


if __name__ == "__main__":
    main(None, sys.argv[1:])
