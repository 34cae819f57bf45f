"""The one training recipe behind ``examples/<family>/sft.py``, ``examples/<family>/pt.py``, ``dllm sft [family]`` and
``dllm pt [family]``: every model family, objective and data mode goes through it; a family changes it only through
its hooks in :data:`dllm.auto.FAMILIES` (tokenizer or processor, model, collator, trainer, its own options), an
objective through :data:`dllm.sft.config.OBJECTIVES` (its config and trainer classes), a data mode through
:data:`MODES` (``sft``: chat rows, :class:`~dllm.sft.config.DataArguments`; ``pt``: raw text, every token trained,
:class:`~dllm.sft.config.PTDataArguments` and :mod:`dllm.data.text`).

Parsing is apart from running, as in trl: :func:`make_parser` builds the options parser of a family and objective,
:func:`main` runs the recipe on parsed options (``main(model_args, data_args, training_args)``, callable from
Python), and :func:`run` is the command line (it reads the checkpoint's ``config.json`` once, picks the family
from its ``model_type``, parses, and calls :func:`main` with that config).

Steps of :func:`main`: load and validate the data (a mistake stops the run before any weights load), load the
tokenizer (or processor) and the bidirectional model, give it a mask token, optionally wrap it in LoRA, build the
collator, train, and save a checkpoint that ``AutoModelForMaskedDiffusion.from_pretrained`` (and ``AutoTokenizer``)
load back, with the sampler defaults (``--gen_length``) that ``dllm sample``/``chat``/``serve``/``playground``
start from, and the resolved options (``run_config.yaml``, which ``--config`` reads back).

A family name (``llama3``, ``gemma2``, ``qwen3_vl``) only supplies the default checkpoint; the checkpoint's
``model_type`` picks the class and the hooks, so ``--model_name_or_path`` may point at any causal LM transformers
knows (Qwen3, Mistral, ...).
"""

from __future__ import annotations

import argparse
import functools
import logging
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import DatasetDict
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase, set_seed

from dllm.auto import FAMILIES, GENERIC_FAMILY, ModelFamily, check_sequence_length, load_config, recipe_family
from dllm.core.models.masked_lm import DEFAULT_MASK_TOKEN, add_mask_token, text_config
from dllm.core.sampling import DiffusionGenerationConfig, generation_defaults
from dllm.core.trainers.mdlm_trainer import MDLMTrainer
from dllm.data.collator import tokenize_messages
from dllm.data.packing import pack_dataset
from dllm.data.text import load_text_dataset, prepare_pretraining_rows
from dllm.data.utils import load_sft_dataset
from dllm.errors import UsageError
from dllm.options import OptionParser, config_path, read_option_file, save_options, torch_dtype
from dllm.sft.checkpoints import check_output_dir, resolve_resume_checkpoint
from dllm.sft.config import OBJECTIVES, DataArguments, ModelArguments, PTDataArguments, sft_config_class

logger = logging.getLogger(__name__)


def make_parser(family: ModelFamily | None = None, objective: str = "mdlm", prog: str = "dllm sft",
                mode: str = "sft") -> OptionParser:
    """The options of ``dllm sft`` (``mode="pt"``: ``dllm pt``) for a family (its own options dataclass and defaults;
    ``None``: a text model) and an objective (its config class): ``parser.parse(argv)`` gives ``(model_args,
    data_args, training_args[, family_args])``."""
    family = family or GENERIC_FAMILY
    types = [ModelArguments, MODES[mode].data_arguments, sft_config_class(objective)]
    parser = OptionParser(types + ([family.options] if family.options else []), prog=prog)
    defaults = {"output_dir": f"outputs/{mode}", **family.option_defaults}
    if family.default_checkpoint and family.name in FAMILIES:
        defaults["model_name_or_path"] = family.default_checkpoint
    parser.set_defaults(**defaults)
    return parser


def parse_args(argv: list[str] | None = None, family: ModelFamily | None = None, mode: str = "sft") -> tuple[Any, ...]:
    """``(model_args, data_args, training_args[, family_args])`` from the command line (``--help`` lists every flag).

    Raises:
        UsageError: an unknown flag, a bad value, or options the configs' checks reject.
    """
    return make_parser(family, _peek(list(argv or []), "objective") or "mdlm", f"dllm {mode}", mode).parse(argv)


def _peek(argv: list[str], name: str) -> str | None:
    """The value of ``--name`` on the command line, else in its ``--config`` file, else None (read before the full
    parse: it decides which parser parses)."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument(f"--{name}")
    known, _ = peek.parse_known_args(argv)
    value = getattr(known, name)
    if value is None:
        value = read_option_file(config_path(argv)).get(name)
    return None if value is None else str(value)


def resolve_checkpoint(family: str | None, argv: list[str], verb: str = "dllm sft") -> tuple[str, PretrainedConfig]:
    """The checkpoint to start from (``--model_name_or_path``, its ``--config`` file value, else the named family's
    default) and its config, read once.

    Raises:
        UsageError: an unknown family, neither a family nor a checkpoint, or a checkpoint that cannot be read.
    """
    if family is not None and family not in FAMILIES:
        raise UsageError(f"unknown family {family!r}; choose one of {', '.join(sorted(FAMILIES))}, "
                         "or give --model_name_or_path alone")
    checkpoint = _peek(argv, "model_name_or_path") or (FAMILIES[family].default_checkpoint if family else None)
    if not checkpoint:
        raise UsageError("give --model_name_or_path (a hub id or a local checkpoint), or name a family: "
                         f"{verb} {{{','.join(sorted(FAMILIES))}}}")
    trust = (_peek(argv, "trust_remote_code") or "false").lower() in ("true", "1", "yes")
    config = load_config(checkpoint, trust)
    if family is not None and config.model_type != FAMILIES[family].model_type:
        logger.warning("%s has model_type %r, not %s's %r: training it as %s", checkpoint, config.model_type,
                       family, FAMILIES[family].model_type, recipe_family(config).name)
    return checkpoint, config


def run(family: str | None = None, argv: list[str] | None = None, mode: str = "sft") -> MDLMTrainer:
    """``dllm sft [family] [flags]`` (``mode="pt"``: ``dllm pt [family] [flags]``): read the checkpoint's config once,
    parse the options of its family, objective and data mode, and run :func:`main`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = f"dllm {mode} {family or ''}".strip()
    objective = _peek(argv, "objective") or "mdlm"
    help_only = "-h" in argv or "--help" in argv
    if help_only:  # the flags of the named family (or of text models), without reading any checkpoint
        make_parser(FAMILIES.get(family), objective, prog, mode).parse(argv)
    try:
        checkpoint, config = resolve_checkpoint(family, argv, f"dllm {mode}")
    except UsageError:
        if family in FAMILIES:  # a flag mistake is the more useful line when the checkpoint cannot be read either
            make_parser(FAMILIES[family], objective, prog, mode).parse(argv)
        raise
    hooks = recipe_family(config)
    parser = make_parser(hooks, objective, prog, mode)
    parser.set_defaults(model_name_or_path=checkpoint)
    return main(*parser.parse(argv), model_config=config)


def main(model_args: ModelArguments, data_args: DataArguments, training_args: Any, family_args: Any = None, *,
         model_config: PretrainedConfig | None = None) -> MDLMTrainer:
    """Masked-diffusion training on parsed options (the trl pattern: ``main(script_args, training_args,
    model_args)``): SFT on chat rows for :class:`~dllm.sft.config.DataArguments`, pretraining on raw text for
    :class:`~dllm.sft.config.PTDataArguments` (the data mode of :data:`MODES`); everything else is shared.

    ``family_args``: the family's own options (Qwen3-VL's :class:`~dllm.pipelines.qwen3_vl.options.Qwen3VLOptions`;
    their defaults when None). ``model_config``: the checkpoint's config if already read (it is not read again).
    """
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    mode = MODES["pt" if isinstance(data_args, PTDataArguments) else "sft"]
    checkpoint = model_args.model_name_or_path
    if not checkpoint:
        raise UsageError("give --model_name_or_path (a hub id or a local checkpoint)")
    config = model_config or load_config(checkpoint, model_args.trust_remote_code)  # the one config.json read
    family = recipe_family(config)
    check_sequence_length(config, data_args.max_seq_length, checkpoint)  # an encoder's absolute positions
    family_args = family_args if family_args is not None or family.options is None else family.options()
    if not family.text_rows and (mode.name == "pt" or data_args.packing):
        raise UsageError(f"{'dllm pt' if mode.name == 'pt' else '--packing'} is for text models: {family.name} rows "
                         "keep one conversation (and its images) each")
    trainer_class = family.trainer_for(OBJECTIVES[getattr(training_args, "objective", "mdlm")][1])
    if getattr(training_args, "attention_annealing_steps", 0) and "flash" in (model_args.attn_implementation or ""):
        raise UsageError(f"--attention_annealing_steps needs a partly causal attention mask, which "
                         f"--attn_implementation {model_args.attn_implementation} does not take: use sdpa, eager or "
                         "flex_attention")
    _prepare_output(mode, checkpoint, [model_args, data_args, training_args, family_args])

    # 1. Data first, so a bad spec, file or row stops the run before any weights load.
    dataset = mode.load(data_args, training_args, family)

    # 2. Model and tokenizer (bidirectional, with a mask token). Seeded first: a new mask-token row is random.
    set_seed(training_args.seed)
    model, processing = build_model_and_tokenizer(checkpoint, model_args, family_args=family_args, config=config,
                                                  chat_template=mode.chat_template)
    if model_args.lora:
        model = apply_lora(model, model_args, training_args.gradient_checkpointing,
                           vocab_size=text_config(config).vocab_size)
    collator = family.build_collator(processing, data_args, family_args)
    if family.text_rows:
        dataset = mode.prepare(dataset, processing, data_args, training_args)

    # 3. Train.
    trainer = trainer_class(model=model, args=training_args, train_dataset=dataset["train"],
                            eval_dataset=dataset.get("test"), data_collator=collator, processing_class=processing)
    trainer.train()
    if getattr(collator, "num_dropped", 0):
        logger.warning("%d rows were dropped: they do not fit in max_seq_length=%d", collator.num_dropped,
                       data_args.max_seq_length)

    # 4. Save a loadable checkpoint with its tokenizer and sampler defaults. Then every process waits for the
    #    save and the process group is torn down before the interpreter exits: a rank that exits with gloo threads
    #    still running aborts ("terminate called without an active exception"), which failed 1 in ~10
    #    two-process runs.
    save_final(trainer, processing, training_args.output_dir, model_args.lora, base=checkpoint,
               generation_config=generation_defaults(trainer.accelerator.unwrap_model(model).config,
                                                     gen_length=training_args.gen_length))
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return trainer


def _prepare_output(mode: RecipeMode, checkpoint: str, options: list[Any]) -> None:
    """Before any work: where the run writes (never over the model it reads), what it resumes from, and its
    resolved options (``run_config.yaml``, which ``--config`` reads back). ``options``: model, data, training and
    family options (None: the family has none)."""
    training_args = options[2]
    resume = resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    training_args.resume_from_checkpoint = resume
    check_output_dir(training_args.output_dir, [checkpoint], resume_from_checkpoint=resume)
    if training_args.process_index == 0:
        save_options(training_args.output_dir, [o for o in options if o],
                     header=f"dllm {mode.name} options of this run (read back with --config "
                            f"{Path(training_args.output_dir)}/run_config.yaml)")


def _load_data(data_args: DataArguments, training_args: Any, family: ModelFamily) -> DatasetDict:
    """The validated message rows (a family that reads no images refuses rows with images); without a test split
    nothing is evaluated (eval_strategy becomes no)."""
    test_size = int(data_args.test_size) if data_args.test_size >= 1 else data_args.test_size or None
    dataset = load_sft_dataset(data_args.dataset_args, seed=training_args.seed, test_size=test_size,
                               skip_invalid=data_args.skip_invalid_rows, text_only=family.image_inputs is None)
    return _evaluate_if_tested(dataset, training_args)


def _evaluate_if_tested(dataset: Any, training_args: Any) -> Any:
    """``dataset``; without a test split in it, nothing is evaluated (eval_strategy becomes no)."""
    if "test" not in dataset and training_args.eval_strategy != "no":  # a str enum
        training_args.eval_strategy = type(training_args.eval_strategy)("no")
        training_args.do_eval = False
    return dataset


def _load_text(data_args: PTDataArguments, training_args: Any, family: ModelFamily) -> Any:
    """``dllm pt``'s documents (:func:`dllm.data.text.load_text_dataset`), read (streamed: opened) before any weights.

    Raises:
        UsageError: no ``--dataset_args``, ``--streaming True`` without ``--max_steps``, or a bad source.
    """
    if not data_args.dataset_args:
        raise UsageError("give --dataset_args: the raw text to pretrain on (a .txt, JSON/JSONL/Parquet file with a "
                         "text column, a folder or a hub id)")
    if data_args.streaming and training_args.max_steps <= 0:
        raise UsageError("--streaming True needs --max_steps: a stream has no length, so the epochs of "
                         "--num_train_epochs cannot be counted")
    test_size = int(data_args.test_size) if data_args.test_size >= 1 else data_args.test_size or None
    dataset = load_text_dataset(data_args.dataset_args, text_column=data_args.text_column,
                                txt_documents=data_args.txt_documents, streaming=data_args.streaming,
                                seed=training_args.seed, test_size=test_size)
    return _evaluate_if_tested(dataset, training_args)


def _prepare_text(dataset: Any, tokenizer: PreTrainedTokenizerBase, data_args: PTDataArguments,
                  training_args: Any) -> Any:
    """Documents tokenised once and made into rows of ``--max_seq_length`` (:mod:`dllm.data.text`)."""
    return prepare_pretraining_rows(dataset, tokenizer, data_args.max_seq_length, packing=data_args.packing,
                                    variable_length_fraction=data_args.variable_length_fraction,
                                    seed=training_args.seed, num_proc=data_args.preprocessing_num_workers,
                                    shuffle_buffer_size=data_args.shuffle_buffer_size)


def _prepare_rows(dataset: DatasetDict, tokenizer: PreTrainedTokenizerBase, data_args: DataArguments,
                  training_args: Any = None) -> DatasetDict:
    """Text rows tokenised once (``--tokenize_once``) and packed (``--packing``)."""
    if data_args.tokenize_once or data_args.packing:
        dataset = tokenize_dataset(dataset, tokenizer, data_args.mask_prompt_loss, data_args.preprocessing_num_workers)
    if data_args.packing:
        dataset = DatasetDict({split: pack_dataset(rows, data_args.max_seq_length, name=split,
                                                   num_proc=data_args.preprocessing_num_workers)
                               for split, rows in dataset.items()})
    return dataset


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


def build_model_and_tokenizer(
    checkpoint: str, model_args: ModelArguments, family: str | None = None, *, family_args: Any = None,
    config: PretrainedConfig | None = None, chat_template: bool = True,
) -> tuple[PreTrainedModel, Any]:
    """Load the tokenizer (a vision-language family's processor) and the bidirectional model through the family's
    hooks; make sure a mask token exists (resizing if added). ``config``: the checkpoint's, if already read;
    ``chat_template``: the tokenizer must have one (SFT renders conversations with it; pretraining reads raw text).

    Raises:
        UsageError: no such checkpoint, checkpoint code without ``--trust_remote_code``, a tokenizer without a
            chat template, an unusable ``--mask_token``, corrupt weights (all before any training).
    """
    config = config or load_config(checkpoint, model_args.trust_remote_code)  # names a missing checkpoint first
    hooks = recipe_family(config)
    processing = hooks.load_processing(checkpoint, model_args.trust_remote_code, config)
    tokenizer = getattr(processing, "tokenizer", processing)  # a processor wraps its tokenizer
    if chat_template and processing.chat_template is None:
        raise UsageError(f"{checkpoint}: the tokenizer has no chat template, which SFT renders every conversation "
                         "with; start from an instruct/chat checkpoint or save a chat_template with the tokenizer")
    check_mask_token(checkpoint, tokenizer, model_args.mask_token)
    kwargs = {"dtype": torch_dtype(model_args.dtype), "trust_remote_code": model_args.trust_remote_code,
              "config": config}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    model = hooks.build_model(checkpoint, kwargs, family_args)
    if family is not None and model.config.model_type != FAMILIES[family].model_type:
        logger.warning("%s has model_type %r, not %s's %r: training it as %s", checkpoint,
                       model.config.model_type, family, FAMILIES[family].model_type, type(model).__name__)
    add_mask_token(model, tokenizer, model_args.mask_token)
    return model, processing


def check_mask_token(checkpoint: str, tokenizer: PreTrainedTokenizerBase, mask_token: str) -> None:
    """Refuse a ``--mask_token`` that cannot become a mask token of this tokenizer.

    A tokenizer without a mask token gets ``mask_token`` added, which needs a string that is not already an
    ordinary token of its vocabulary: reusing one (``a``, ``the``) would make every masked position look like
    that text to the model. Reserved special tokens (added tokens, e.g. LLaMA 3's reserved ones) may be reused.

    Raises:
        UsageError: an empty ``mask_token``, one that is an ordinary vocabulary token, or plain words (``hello``),
            which the added special token would capture wherever the text holds them.
    """
    if tokenizer.mask_token_id is not None:
        return
    if not mask_token.strip():
        raise UsageError(f"--mask_token must be a non-empty string (default {DEFAULT_MASK_TOKEN!r}), "
                         f"got {mask_token!r}")
    if mask_token in tokenizer.added_tokens_encoder:  # a reserved special token: never produced by plain text
        return
    token_id = tokenizer.get_vocab().get(mask_token)
    if token_id is not None:
        raise UsageError(f"{checkpoint}: --mask_token {mask_token!r} is already ordinary token {token_id} of the "
                         "tokenizer, so masked positions could not be told from that text; choose a string that is "
                         f"not in the vocabulary (default {DEFAULT_MASK_TOKEN!r}) or a reserved special token")
    if re.fullmatch(r"[\w\s'.,!?-]+", mask_token):
        # Added as a special token, plain text would become it: every "hello" in the data would be a mask.
        raise UsageError(f"{checkpoint}: --mask_token {mask_token!r} is ordinary text, which the tokenizer would then "
                         "encode as the mask token wherever the data contains it; use markup that text does not hold "
                         f"(default {DEFAULT_MASK_TOKEN!r}) or a reserved special token")


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


def apply_lora(model: PreTrainedModel, model_args: ModelArguments, gradient_checkpointing: bool,
               vocab_size: int | None = None) -> PreTrainedModel:
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
    resized = _embeddings_resized(model, model_args.trust_remote_code, vocab_size)
    model = get_peft_model(model, config)
    if resized:  # Trainer.save_model calls save_pretrained without this argument
        model.save_pretrained = functools.partial(model.save_pretrained, save_embedding_layers=True)
    model.print_trainable_parameters()
    return model


def _embeddings_resized(model: PreTrainedModel, trust_remote_code: bool, vocab_size: int | None = None) -> bool:
    """Whether ``model`` has other input-embedding rows than the checkpoint it was loaded from (``vocab_size``: the
    checkpoint's, when the caller has its config; else it is read)."""
    if vocab_size is None:
        if not model.name_or_path:  # built from a config: nothing to compare with
            return False
        vocab_size = text_config(load_config(model.name_or_path, trust_remote_code)).vocab_size
    return model.get_input_embeddings().weight.shape[0] != vocab_size


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


@dataclass(frozen=True)
class RecipeMode:
    """What one data mode of the recipe changes: its data options, how its data loads (before any weights: a bad
    source stops the run first), how rows are made once the tokenizer exists, and whether the tokenizer needs a
    chat template."""

    name: str
    data_arguments: type
    load: Callable[[Any, Any, ModelFamily], Any]
    prepare: Callable[[Any, PreTrainedTokenizerBase, Any, Any], Any]
    chat_template: bool


MODES: dict[str, RecipeMode] = {
    "sft": RecipeMode("sft", DataArguments, _load_data, _prepare_rows, chat_template=True),
    "pt": RecipeMode("pt", PTDataArguments, _load_text, _prepare_text, chat_template=False),
}


if __name__ == "__main__":
    run(None, sys.argv[1:])
