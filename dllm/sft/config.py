"""Typed options of the SFT scripts, parsed by ``transformers.HfArgumentParser``.

Family defaults (hub id, attention implementation) live once, in :data:`dllm.auto.FAMILIES` and the family's
class; the options here only carry what the user chose. Training flags are
:class:`~dllm.core.trainers.mdlm_trainer.MDLMConfig`'s: every ``TrainingArguments`` flag under its usual name
plus the diffusion options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from dllm.core.models.masked_lm import DEFAULT_MASK_TOKEN
from dllm.core.trainers import OBJECTIVES  # objective name -> (its config class, its trainer): --objective
from dllm.errors import UsageError
from dllm.options import DTYPES


@dataclass
class ModelArguments:
    """Which checkpoint to start from, and how to adapt it."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub id or local path of the causal checkpoint to turn into a masked diffusion LM; its "
                  "config's model_type picks the class (LLaMA 3, Gemma 2, or any causal LM in transformers). "
                  "Default: the family's checkpoint when a family is named (dllm sft llama3, "
                  "examples/llama3/sft.py)."},
    )
    dtype: str = field(
        default="auto", metadata={"help": "Weights dtype: auto, bfloat16, float16 or float32.", "choices": list(DTYPES)}
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "eager, sdpa or flash_attention_2 (None: the family's default)."}
    )
    mask_token: str = field(
        default=DEFAULT_MASK_TOKEN,
        metadata={"help": "Mask token added when the tokenizer has none (the embeddings are resized)."},
    )
    lora: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of all weights.",
                                                "aliases": ["--use_peft"]})
    r: int = field(default=16, metadata={"help": "LoRA rank.", "aliases": ["--lora_r"]})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch."})
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        metadata={"help": "Module names that receive LoRA adapters.", "aliases": ["--lora_target_modules"]},
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run the checkpoint's own Python code (auto_map in config.json); review it first."},
    )

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise UsageError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.r < 1:
            raise UsageError(f"r (the LoRA rank) must be a positive integer, got {self.r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise UsageError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")


@dataclass
class DataArguments:
    """Which data, and how it becomes token batches."""

    dataset_args: str = field(
        default="tatsu-lab/alpaca",
        metadata={"help": "Dataset spec: name_or_path[train:N,test:M], '+' mixes sources, e.g. "
                  "examples/data/alpaca_example.json[train:30,test:5] "
                  "(hub ids, local JSON/JSONL/Parquet files or folders).", "aliases": ["--dataset_name"]},
    )
    max_seq_length: int = field(default=1024, metadata={"help": "Longest tokenised row; longer answers are cut.",
                                                        "aliases": ["--max_length"]})
    mask_prompt_loss: bool = field(default=True, metadata={"help": "Train on assistant turns only."})
    train_on_eos_padding: bool = field(
        default=False,
        metadata={"help": "LLaDA recipe: pad answers with attended, trained EOS tokens so the model learns "
                  "where an answer ends on a fixed-length canvas."},
    )
    test_size: float = field(
        default=0.0,
        metadata={"help": "Rows held out for evaluation when the source has no test split and the spec no "
                  "test:M (a fraction < 1 or a count; 0 holds out nothing)."},
    )
    skip_invalid_rows: bool = field(
        default=False, metadata={"help": "Drop malformed rows (counted and logged) instead of stopping."}
    )
    tokenize_once: bool = field(
        default=True,
        metadata={"help": "Tokenise every row once, before training, with datasets.map (the collator then only "
                  "truncates and pads; --train_sampling_strategy group_by_length can batch rows of similar "
                  "length); False tokenises in the collator at every epoch."},
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for that tokenisation (datasets.map num_proc; None: this one)."}
    )
    packing: bool = field(
        default=False,
        metadata={"help": "Pack several conversations into each row of max_seq_length (best-fit decreasing), each "
                  "attending only to itself with its own positions, diffusion time and ELBO weight; the batch "
                  "size then counts packed rows. Text models; implies tokenising once."},
    )

    def __post_init__(self) -> None:
        if self.max_seq_length < 1:
            raise UsageError(f"max_seq_length must be a positive integer, got {self.max_seq_length}")
        if self.packing and self.train_on_eos_padding:
            raise UsageError("--packing and --train_on_eos_padding exclude each other: eos padding trains one answer "
                             "per fixed-length canvas, a packed row holds several answers")
        if self.test_size < 0 or (self.test_size >= 1 and self.test_size != int(self.test_size)):
            raise UsageError(f"test_size must be 0, a fraction in (0, 1) or a whole count, got {self.test_size}")


@dataclass
class PTDataArguments:
    """Which raw text, and how it becomes rows (``dllm pt``): every token is trained, there is no prompt."""

    dataset_args: str | None = field(
        default=None,
        metadata={"help": "Text dataset spec: name_or_path[train:N,test:M] (N, M: documents), '+' mixes sources: .txt "
                  "files, JSON/JSONL/Parquet files with a text column, folders of them (split into train and test by "
                  "file name), hub ids.", "aliases": ["--dataset_name"]},
    )
    text_column: str = field(default="text", metadata={"help": "The column of JSON/JSONL/Parquet/hub rows that holds "
                                                       "the text."})
    txt_documents: str = field(
        default="line", metadata={"help": "What a document of a .txt file is: 'line' (one per line, blank lines "
                                  "skipped), 'paragraph' (blank-line separated) or 'file' (the whole file).",
                                  "choices": ["line", "paragraph", "file"]})
    max_seq_length: int = field(default=1024, metadata={"help": "Tokens per training row; longer documents are split "
                                                        "into pieces of this length (never cut).",
                                                        "aliases": ["--max_length"]})
    packing: str = field(
        default="document",
        metadata={"help": "'document': documents (and the pieces of split ones) packed best-fit into rows, each "
                  "attending only to itself with its own positions and diffusion time, so one is trained as it "
                  "would be alone; 'concat': documents joined with EOS between them and wrapped into rows that "
                  "attend across documents (MDLM on OpenWebText, LLaDA).", "choices": ["document", "concat"]},
    )
    variable_length_fraction: float = field(
        default=0.0,
        metadata={"help": "LLaDA's variable-length trick (1%% there: 0.01): this fraction of rows is cut at a "
                  "uniformly random length, the rest becoming a row of its own (no token is lost)."},
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "Read the data as training goes (datasets' IterableDataset), for corpora larger than "
                  "memory; needs --max_steps. train:N takes the first N documents, test:M holds out the first M."},
    )
    shuffle_buffer_size: int = field(
        default=10000, metadata={"help": "--streaming: rows shuffled through a buffer of this many (0: in order)."})
    test_size: float = field(
        default=0.0,
        metadata={"help": "Documents held out for evaluation when the source has no test split and the spec no "
                  "test:M (a fraction < 1 or a count; 0 holds out nothing; streamed: a count)."},
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for tokenising and packing (datasets.map num_proc)."}
    )
    # What the text collator hook reads (dllm.auto's): rows come tokenised, every token trained, padding untrained.
    mask_prompt_loss: ClassVar[bool] = False
    train_on_eos_padding: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.max_seq_length < 1:
            raise UsageError(f"max_seq_length must be a positive integer, got {self.max_seq_length}")
        if not 0.0 <= self.variable_length_fraction <= 1.0:
            raise UsageError(f"variable_length_fraction must be in [0, 1], got {self.variable_length_fraction}")
        if self.shuffle_buffer_size < 0:
            raise UsageError(f"shuffle_buffer_size must be at least 0, got {self.shuffle_buffer_size}")
        if self.test_size < 0 or (self.test_size >= 1 and self.test_size != int(self.test_size)):
            raise UsageError(f"test_size must be 0, a fraction in (0, 1) or a whole count, got {self.test_size}")
        if self.streaming and 0 < self.test_size < 1:
            raise UsageError(f"test_size {self.test_size} is a fraction, which a stream (--streaming True) has no "
                             "length for; give a count of documents")


@dataclass
class SFTDefaults:
    """The SFT recipe's own training options and its defaults for ``TrainingArguments``' (an objective's config
    class comes after it in the bases: :func:`sft_config_class`)."""

    objective: str = field(
        default="mdlm", metadata={"help": "Training objective: 'mdlm' (one bidirectional pass over the answer) or "
                                  "'bd3lm' (block diffusion: give --block_size after it; the checkpoint decodes block "
                                  "by block with an exact cache).", "choices": list(OBJECTIVES)})
    output_dir: str = field(default="outputs/sft", metadata={"help": "Where checkpoints and the final model go."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak AdamW learning rate."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Passes over the training set."})
    warmup_steps: float = field(
        default=0.03, metadata={"help": "Linear warm-up: steps (>= 1) or a fraction of all steps (< 1)."}
    )
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    save_strategy: str = field(
        default="steps", metadata={"help": "When to write checkpoints: no, steps (every --save_steps), epoch."})
    eval_strategy: str = field(
        default="steps", metadata={"help": "When to evaluate the test split: no, steps (every --eval_steps), epoch. "
                                   "Without a test split nothing is evaluated."})
    eval_steps: float | None = field(default=500, metadata={"help": "Evaluate every N steps (eval_strategy steps)."})
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={"help": "DDP: search for parameters without gradient every step (costs an extra pass; "
                  "every parameter of a dllm model gets a gradient, so off)."},
    )
    gen_length: int = field(
        default=128,
        metadata={"help": "Answer length (tokens) saved with the checkpoint, and with a LoRA adapter, as its sampler "
                  "default (diffusion_generation_config.json): dllm sample, chat, serve and playground start from "
                  "it, their --gen_length overrides it. The other sampler settings are saved at their defaults: one "
                  "token per step, one block, low-confidence remasking."},
    )

    def __post_init__(self) -> None:
        if self.gen_length < 1:
            raise UsageError(f"gen_length must be a positive integer, got {self.gen_length}")
        for name in ("learning_rate", "weight_decay", "warmup_steps", "max_grad_norm", "adam_epsilon"):
            if getattr(self, name) < 0:
                raise UsageError(f"{name} must be at least 0, got {getattr(self, name)}")
        for name in ("logging_steps", "save_steps"):
            if getattr(self, name) <= 0:
                raise UsageError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise UsageError(f"num_train_epochs must be positive (or give --max_steps), got {self.num_train_epochs}")
        super().__post_init__()


_SFT_CONFIGS: dict[str, type] = {}


def sft_config_class(objective: str = "mdlm") -> type:
    """The options class of ``dllm sft --objective NAME``: :class:`SFTDefaults` over the objective's config class
    (its fields, then the SFT defaults win), made once per objective.

    Raises:
        UsageError: an unknown objective.
    """
    if objective not in OBJECTIVES:
        raise UsageError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if objective not in _SFT_CONFIGS:
        base = OBJECTIVES[objective][0]
        name = "SFTConfig" if objective == "mdlm" else f"{base.__name__.removesuffix('Config')}SFTConfig"
        made = dataclass(type(name, (SFTDefaults, base), {
            "__doc__": f"{base.__name__} with the SFT recipe's options and defaults.", "__module__": __name__}))
        # A module attribute of its own name, so pickle finds it (Trainer saves training_args.bin with torch.save).
        _SFT_CONFIGS[objective] = globals()[name] = made
    return _SFT_CONFIGS[objective]


SFTConfig = sft_config_class("mdlm")
"""MDLMConfig with SFT defaults (``dllm sft``'s training options)."""
BD3LMSFTConfig = sft_config_class("bd3lm")
"""BD3LMConfig with SFT defaults (``dllm sft --objective bd3lm``'s training options)."""

