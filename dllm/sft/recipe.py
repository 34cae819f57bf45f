"""The supervised fine-tuning recipe behind ``examples/<family>/sft.py`` and ``dllm sft [family]``.

Steps: parse options, check the checkpoint's config, load and validate the data (so a mistake in either stops
the run before any weights load), load the tokenizer and the bidirectional model (the class is picked from the
checkpoint's ``model_type`` by :class:`dllm.auto.AutoModelForMaskedDiffusion`), give it a mask token, optionally
wrap it in LoRA, build the collator, train with :class:`MDLMTrainer`, and save a checkpoint
that ``AutoModelForMaskedDiffusion.from_pretrained`` (and ``AutoTokenizer``) load back, with the sampler defaults
(``--gen_length``) that ``dllm sample``/``chat``/``serve``/``playground`` start from.

A family name (``llama3``, ``gemma2``) only supplies the default checkpoint; ``--model_name_or_path`` may point
at any causal LM transformers knows (Qwen3, Mistral, ...).
"""

from __future__ import annotations

import argparse
import functools
import logging
import shlex
import sys
from pathlib import Path
from collections.abc import Callable
from typing import Any, NoReturn

import torch
from datasets import DatasetDict
from transformers import HfArgumentParser, PreTrainedModel, PreTrainedTokenizerBase, set_seed

from dllm.auto import FAMILIES, AutoModelForMaskedDiffusion, family_for_model_type, load_config, load_tokenizer
from dllm.core.models.masked_lm import DEFAULT_MASK_TOKEN, add_mask_token, text_config
from dllm.core.sampling import DiffusionGenerationConfig, generation_defaults
from dllm.core.trainers import OBJECTIVES
from dllm.core.trainers.mdlm_trainer import MDLMTrainer
from dllm.data.collator import SFTDataCollator, tokenize_messages
from dllm.data.packing import pack_dataset
from dllm.data.utils import load_sft_dataset
from dllm.errors import UsageError
from dllm.sft.config import DataArguments, ModelArguments, SFTConfig

logger = logging.getLogger(__name__)


class _Parser(HfArgumentParser):
    """Flag mistakes (unknown flag, bad choice, bad value) raise a one-line UsageError, not the whole usage."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, SFTConfig]:
    """``(model_args, data_args, training_args)`` from the command line (``--help`` lists every flag).

    Raises:
        UsageError: an unknown flag, a bad value, or options the configs' checks reject (``TrainingArguments``'
            and :class:`MDLMConfig`'s ValueErrors, which only ever judge the flags given).
    """
    parser = _Parser((ModelArguments, DataArguments, SFTConfig))
    try:
        return parser.parse_args_into_dataclasses(args=argv)
    except UsageError:
        raise
    except ValueError as err:
        raise UsageError(" ".join(str(err).split())) from err


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


def family_recipe(family: str | None, argv: list[str] | None) -> Callable[[list[str] | None], Any] | None:
    """The family's own SFT recipe, by name or by the ``model_type`` of ``--model_name_or_path``; None for the
    text recipe. Only that one flag is read here, so the family's recipe parses its own flags."""
    if family is not None:
        return FAMILIES[family].sft_main if family in FAMILIES else None
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--model_name_or_path")
    peek.add_argument("--trust_remote_code", type=lambda v: v.lower() in ("true", "1", "yes"), default=False)
    known, _ = peek.parse_known_args(sys.argv[1:] if argv is None else argv)
    if not known.model_name_or_path:
        return None
    found = family_for_model_type(load_config(known.model_name_or_path, known.trust_remote_code).model_type)
    return found.sft_main if found is not None else None


def tokenize_dataset(dataset: DatasetDict, tokenizer: PreTrainedTokenizerBase, mask_prompt_loss: bool = True,
                     num_proc: int | None = None) -> DatasetDict:
    """Message rows to ``{"input_ids", "labels"}`` rows, once, with ``datasets.map``: the collator then skips the
    chat template (about three renders a row) at every epoch and gives the same batches (a test checks), and
    Trainer's ``train_sampling_strategy="group_by_length"`` can read the lengths."""

    def encode(row: dict[str, Any]) -> dict[str, list[int]]:
        return tokenize_messages(tokenizer, row["messages"], mask_prompt_loss)

    return DatasetDict({split: rows.map(encode, remove_columns=rows.column_names, num_proc=num_proc,
                                        desc=f"tokenizing {split}")
                        for split, rows in dataset.items()})


def _dtype(name: str) -> str | torch.dtype:
    return name if name == "auto" else getattr(torch, name)


def build_model_and_tokenizer(
    checkpoint: str, model_args: ModelArguments, family: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the tokenizer and the bidirectional model; make sure a mask token exists (resizing if added).

    Raises:
        UsageError: no such checkpoint, checkpoint code without ``--trust_remote_code``, a tokenizer without a
            chat template, an unusable ``--mask_token``, corrupt weights (all before any training).
    """
    load_config(checkpoint, model_args.trust_remote_code)  # names a missing checkpoint before the tokenizer does
    tokenizer = load_tokenizer(checkpoint, model_args.trust_remote_code)
    if tokenizer.chat_template is None:
        raise UsageError(f"{checkpoint}: the tokenizer has no chat template, which SFT renders every conversation "
                         "with; start from an instruct/chat checkpoint or save a chat_template with the tokenizer")
    check_mask_token(checkpoint, tokenizer, model_args.mask_token)
    kwargs = {"dtype": _dtype(model_args.dtype), "trust_remote_code": model_args.trust_remote_code}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    model = AutoModelForMaskedDiffusion.from_pretrained(checkpoint, **kwargs)
    if family is not None and model.config.model_type != FAMILIES[family].model_type:
        logger.warning("%s has model_type %r, not %s's %r: training it as %s", checkpoint,
                       model.config.model_type, family, FAMILIES[family].model_type, type(model).__name__)
    add_mask_token(model, tokenizer, model_args.mask_token)
    return model, tokenizer


def check_mask_token(checkpoint: str, tokenizer: PreTrainedTokenizerBase, mask_token: str) -> None:
    """Refuse a ``--mask_token`` that cannot become a mask token of this tokenizer.

    A tokenizer without a mask token gets ``mask_token`` added, which needs a string that is not already an
    ordinary token of its vocabulary: reusing one (``a``, ``the``) would make every masked position look like
    that text to the model. Reserved special tokens (added tokens, e.g. LLaMA 3's reserved ones) may be reused.

    Raises:
        UsageError: an empty ``mask_token``, or one that is an ordinary vocabulary token.
    """
    if tokenizer.mask_token_id is not None:
        return
    if not mask_token.strip():
        raise UsageError(f"--mask_token must be a non-empty string (default {DEFAULT_MASK_TOKEN!r}), "
                         f"got {mask_token!r}")
    token_id = tokenizer.get_vocab().get(mask_token)
    if token_id is not None and mask_token not in tokenizer.added_tokens_encoder:
        raise UsageError(f"{checkpoint}: --mask_token {mask_token!r} is already ordinary token {token_id} of the "
                         "tokenizer, so masked positions could not be told from that text; choose a string that is "
                         f"not in the vocabulary (default {DEFAULT_MASK_TOKEN!r}) or a reserved special token")


def check_target_modules(model: PreTrainedModel, target_modules: list[str]) -> None:
    """Every ``--target_modules`` name must name modules of ``model`` (peft silently skips a missing one when
    another matches).

    Raises:
        UsageError: the names that match no module, and the model's linear layer names to choose from.
    """
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise UsageError(f"--target_modules {' '.join(missing)}: no module of {type(model).__name__} has that name; "
                         f"its linear layers are: {' '.join(linear)}")


def apply_lora(model: PreTrainedModel, model_args: ModelArguments, gradient_checkpointing: bool) -> PreTrainedModel:
    """Wrap ``model`` in LoRA adapters on ``target_modules`` (peft is imported only here).

    When the embeddings were resized for the mask token, the saved adapter holds them (the mask token's row,
    which ``dllm merge-lora`` needs): peft's own "auto" check misses the resize when the config has no top-level
    ``vocab_size`` (Qwen3-VL keeps it in ``text_config``) or the base is a hub id it cannot reach (offline)."""
    from peft import LoraConfig, get_peft_model

    check_target_modules(model, list(model_args.target_modules))
    config = LoraConfig(r=model_args.r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
                        target_modules=list(model_args.target_modules), bias="none")
    if gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need a grad-carrying input under LoRA
    resized = _embeddings_resized(model, model_args.trust_remote_code)
    model = get_peft_model(model, config)
    if resized:  # Trainer.save_model calls save_pretrained without this argument
        model.save_pretrained = functools.partial(model.save_pretrained, save_embedding_layers=True)
    model.print_trainable_parameters()
    return model


def _embeddings_resized(model: PreTrainedModel, trust_remote_code: bool) -> bool:
    """Whether ``model`` has other input-embedding rows than the checkpoint it was loaded from."""
    if not model.name_or_path:  # built from a config: nothing to compare with
        return False
    saved = text_config(load_config(model.name_or_path, trust_remote_code)).vocab_size
    return model.get_input_embeddings().weight.shape[0] != saved


def save_final(trainer: MDLMTrainer, tokenizer: PreTrainedTokenizerBase, output_dir: str, lora: bool,
               base: str = "BASE", generation_config: DiffusionGenerationConfig | None = None) -> None:
    """Write a full checkpoint ``from_pretrained`` can load; with LoRA also the adapter in ``adapter/``
    (under DeepSpeed/FSDP only the adapter, with the ``dllm merge-lora`` command that merges it into ``base``).

    ``generation_config``: the sampler defaults (``diffusion_generation_config.json``, which ``dllm sample``,
    ``chat``, ``serve`` and ``playground`` start from), written beside the checkpoint and the adapter (``dllm
    merge-lora`` copies the adapter's); ``None`` writes none."""
    if lora:
        adapter = Path(output_dir) / "adapter"
        trainer.save_model(str(adapter))
        _save_sampler_defaults(trainer, generation_config, adapter)
        if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
            logger.warning("LoRA under DeepSpeed/FSDP: only the adapter was saved to %s/adapter; merge it into the "
                           "base model on one process with: %s", output_dir, merge_command(base, output_dir))
            return
        if trainer.accelerator.is_main_process:
            merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
            merged.save_pretrained(output_dir)
    else:
        trainer.save_model(output_dir)
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(output_dir)
    _save_sampler_defaults(trainer, generation_config, Path(output_dir))


def _save_sampler_defaults(trainer: MDLMTrainer, config: DiffusionGenerationConfig | None, folder: Path) -> None:
    if config is not None and trainer.accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(folder)


def merge_command(base: str, output_dir: str) -> str:
    """The ``dllm merge-lora`` command that merges ``output_dir/adapter`` into ``base``, writing ``output_dir``
    (``--overwrite True``: the folder already holds the adapter; merging writes files beside it, deletes none)."""
    adapter = str(Path(output_dir) / "adapter")
    return f"dllm merge-lora {shlex.quote(base)} {shlex.quote(adapter)} {shlex.quote(output_dir)} --overwrite True"


def main(family: str | None = None, argv: list[str] | None = None) -> MDLMTrainer:
    """Run masked-diffusion SFT with command-line ``argv``; ``family`` ("llama3", "gemma2") supplies the default
    checkpoint, and the checkpoint's ``model_type`` picks the model class."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    own_recipe = family_recipe(family, argv)
    if own_recipe is not None:  # a family with its own recipe (Qwen3-VL) takes the whole command line
        return own_recipe(argv)
    model_args, data_args, training_args = parse_args(argv)
    checkpoint = resolve_checkpoint(family, model_args)
    load_config(checkpoint, model_args.trust_remote_code)  # a missing or untrusted checkpoint fails first

    # 1. Data first, so a bad spec, file or row stops the run before any weights load: validated message rows,
    #    tokenised on the fly by the collator.
    test_size = int(data_args.test_size) if data_args.test_size >= 1 else data_args.test_size or None
    dataset = load_sft_dataset(data_args.dataset_args, seed=training_args.seed, test_size=test_size,
                               skip_invalid=data_args.skip_invalid_rows)

    # 2. Model and tokenizer (bidirectional, with a mask token). Seeded first: a new mask-token row is random.
    set_seed(training_args.seed)
    model, tokenizer = build_model_and_tokenizer(checkpoint, model_args, family)
    if model_args.lora:
        model = apply_lora(model, model_args, training_args.gradient_checkpointing)
    collator = SFTDataCollator(tokenizer, max_seq_length=data_args.max_seq_length,
                               mask_prompt_loss=data_args.mask_prompt_loss,
                               train_on_eos_padding=data_args.train_on_eos_padding)
    if data_args.tokenize_once or data_args.packing:
        dataset = tokenize_dataset(dataset, tokenizer, data_args.mask_prompt_loss,
                                   data_args.preprocessing_num_workers)
    if data_args.packing:
        dataset = DatasetDict({split: pack_dataset(rows, data_args.max_seq_length, name=split,
                                                   num_proc=data_args.preprocessing_num_workers)
                               for split, rows in dataset.items()})

    # 3. Train.
    _, trainer_class = OBJECTIVES[training_args.objective]
    trainer = trainer_class(model=model, args=training_args, train_dataset=dataset["train"],
                            eval_dataset=dataset.get("test"), data_collator=collator, processing_class=tokenizer)
    trainer.train()
    if collator.num_dropped:
        logger.warning("%d rows were dropped: no answer token fits in max_seq_length=%d",
                       collator.num_dropped, data_args.max_seq_length)

    # 4. Save a loadable checkpoint with its tokenizer and sampler defaults. Then every process waits for the
    #    save and the process group is torn down before the interpreter exits: a rank that exits with gloo threads
    #    still running aborts ("terminate called without an active exception"), which failed 1 in ~10
    #    two-process runs.
    save_final(trainer, tokenizer, training_args.output_dir, model_args.lora, base=checkpoint,
               generation_config=generation_defaults(model.config, gen_length=training_args.gen_length))
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return trainer


if __name__ == "__main__":
    main(None, sys.argv[1:])
