"""``dllm grpo CKPT ...`` and ``dllm dpo CKPT ...``: post-train a dllm checkpoint with rewards or preferences.

    dllm grpo outputs/demo --dataset_args prompts.jsonl --reward_funcs exact_match --loss_type elbo
    dllm grpo CKPT --dataset_args rows.jsonl --reward_funcs exact_match my_rewards:brevity --reward_weights 1 0.1
    dllm dpo outputs/demo --dataset_args pairs.jsonl --beta 0.1 --lora True

Steps: parse the flags, load and check the rows (so a bad file stops the run before the weights load), resolve
the reward functions, load the model and tokenizer as ``dllm sft`` does (optionally LoRA: the reference is then the
adapter switched off), train, and save a checkpoint with the sampler settings the input checkpoint was saved with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments, set_seed

from dllm.core.sampling import DiffusionGenerationConfig
from dllm.errors import UsageError
from dllm.rl.data import load_rows
from dllm.rl.rewards import resolve_reward
from dllm.sft.checkpoints import check_output_dir
from dllm.sft.config import ModelArguments
from dllm.options import OptionParser, save_options
from dllm.sft.recipe import apply_lora, build_model_and_tokenizer, save_final

logger = logging.getLogger(__name__)


@dataclass
class RLDataArguments:
    """Which rows to train on."""

    dataset_args: str | None = field(
        default=None, metadata={"help": "Dataset spec: name_or_path[train:N], '+' mixes sources. GRPO: a 'prompt' "
                                "column (text or messages) plus the columns the rewards read ('answer' for "
                                "exact_match); DPO: 'prompt', 'chosen', 'rejected' (trl's formats)."}
    )


def parse_rl_args(argv: list[str], config_class: type[TrainingArguments],
                  prog: str = "dllm grpo") -> tuple[ModelArguments, RLDataArguments, Any]:
    """``(model_args, data_args, config)``; ``argv`` starts with the checkpoint (``CKPT``) or gives
    ``--model_name_or_path``.

    Raises:
        UsageError: an unknown flag or a bad value (one line), no checkpoint, or no ``--dataset_args``.
    """
    if argv and not argv[0].startswith("-"):
        argv = ["--model_name_or_path", argv[0], *argv[1:]]
    parser = OptionParser((ModelArguments, RLDataArguments, config_class), prog=prog)  # --config FILE.yaml too
    model_args, data_args, config = parser.parse(argv)
    if not model_args.model_name_or_path:
        raise UsageError("give the checkpoint to post-train first: dllm grpo|dpo CKPT --dataset_args ...")
    if not data_args.dataset_args:
        raise UsageError("give the rows to train on: --dataset_args FILE (see --help for the columns)")
    check_output_dir(config.output_dir, [model_args.model_name_or_path])  # never over the checkpoint it reads
    if config.process_index == 0:  # the resolved options beside the checkpoint; --config reads them back
        save_options(config.output_dir, (model_args, data_args, config), header=f"{prog} options of this run")
    return model_args, data_args, config


def saved_sampler_settings(checkpoint: str) -> DiffusionGenerationConfig:
    """The sampler settings saved with ``checkpoint`` (defaults when it has none).

    Raises:
        UsageError: the saved file is unreadable (its message names it).
    """
    try:
        return DiffusionGenerationConfig.from_pretrained(checkpoint)
    except ValueError as err:
        raise UsageError(str(err)) from err


def grpo_main(argv: list[str] | None = None) -> Any:
    """Run ``dllm grpo`` with command-line ``argv``; returns the trainer."""
    from dllm.rl.grpo import DiffusionGRPOConfig, DiffusionGRPOTrainer

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    model_args, data_args, args = parse_rl_args(list(argv or []), DiffusionGRPOConfig)
    checkpoint = model_args.model_name_or_path
    rows = load_rows(data_args.dataset_args, ["prompt"], seed=args.seed)
    rewards = [resolve_reward(name, args.format_pattern, args.format_max_length) for name in args.reward_funcs]
    if "exact_match" in args.reward_funcs and "answer" not in rows.column_names:
        raise UsageError(f"{data_args.dataset_args}: the exact_match reward needs an 'answer' column, found "
                         f"{rows.column_names}")
    sampler = saved_sampler_settings(checkpoint)
    set_seed(args.seed)
    model, tokenizer = build_model_and_tokenizer(checkpoint, model_args)
    if model_args.lora:
        model = apply_lora(model, model_args, args.gradient_checkpointing)
    trainer = DiffusionGRPOTrainer(model, rewards, args, rows, tokenizer, generation_config=sampler)
    trainer.train()
    save_final(trainer, tokenizer, args.output_dir, model_args.lora, base=checkpoint, generation_config=sampler)
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return trainer


def dpo_main(argv: list[str] | None = None) -> Any:
    """Run ``dllm dpo`` with command-line ``argv``; returns the trainer."""
    from dllm.rl.dpo import DiffusionDPOConfig, DiffusionDPOTrainer, PreferenceCollator

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    model_args, data_args, args = parse_rl_args(list(argv or []), DiffusionDPOConfig, "dllm dpo")
    checkpoint = model_args.model_name_or_path
    rows = load_rows(data_args.dataset_args, ["prompt", "chosen", "rejected"], seed=args.seed)
    sampler = saved_sampler_settings(checkpoint)
    set_seed(args.seed)
    model, tokenizer = build_model_and_tokenizer(checkpoint, model_args)
    collator = PreferenceCollator(tokenizer, args.max_completion_length)
    collator(rows.select(range(min(len(rows), 64))))  # a row the template cannot encode stops the run here
    if model_args.lora:
        model = apply_lora(model, model_args, args.gradient_checkpointing)
    trainer = DiffusionDPOTrainer(model, args, rows, tokenizer, data_collator=collator)
    trainer.train()
    save_final(trainer, tokenizer, args.output_dir, model_args.lora, base=checkpoint, generation_config=sampler)
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return trainer
