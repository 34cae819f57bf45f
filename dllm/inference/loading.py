"""One loader for every verb that uses a trained checkpoint, and the command-line options they share.

A checkpoint is a folder (or hub id) holding ``config.json``, the weights, the tokenizer and, optionally, the
sampler settings it was trained for (``diffusion_generation_config.json``, written by
:meth:`DiffusionGenerationConfig.save_pretrained`). Every verb starts from those settings; command-line flags,
and in ``dllm serve`` request fields, override them.

The sampler flags are derived from :class:`DiffusionGenerationConfig` itself (:data:`SamplerOptions`): same
names, the field's docstring as help text, every default ``None`` so that only the flags given override the
checkpoint's settings.
"""

from __future__ import annotations

import json
import logging
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, make_dataclass, replace
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import PreTrainedModel
from transformers.utils import cached_file

from dllm.auto import FAMILIES, AutoModelForMaskedDiffusion, load_config, load_tokenizer
from dllm.core.models.encoder import is_encoder_config
from dllm.core.models.masked_lm import check_mask_token_id, find_mask_token_id
from dllm.core.sampling import GENERATION_CONFIG_NAME, DiffusionGenerationConfig, with_tokenizer_ids
from dllm.core.sampling.config import SamplerSettingError, fields_of_kind
from dllm.core.sampling.forward import check_cache_mode
from dllm.data.chat_templates import supply_chat_template
from dllm.errors import UsageError
from dllm.options import DTYPES, OptionParser, torch_dtype
from dllm.inference.engine import ContextLengthError, check_fits

logger = logging.getLogger(__name__)


def _optional_flags(name: str, cls: type, skip: tuple[str, ...]) -> type:
    """A dataclass with ``cls``'s fields (but ``skip``), each ``Optional[...]`` with default ``None``, its help the
    field's ``metadata["help"]``."""
    hints = typing.get_type_hints(cls)
    specs = []
    for f in fields(cls):
        if f.name in skip:
            continue
        kind = hints[f.name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        base = args[0] if type(None) in typing.get_args(kind) and len(args) == 1 else kind
        default = f.default if f.default is not MISSING else None
        help_text = f"{f.metadata['help']} Default: the checkpoint's {GENERATION_CONFIG_NAME}, else {default!r}."
        metadata = {"help": help_text.replace("%", "%%")}
        if f.metadata.get("aliases"):
            metadata["aliases"] = f.metadata["aliases"]
        specs.append((f.name, Optional[base], field(default=None, metadata=metadata)))
    flags = make_dataclass(name, specs)
    flags.__module__ = __name__  # make_dataclass's own ``module=`` needs Python 3.12
    return flags


SamplerOptions: type = _optional_flags("SamplerOptions", DiffusionGenerationConfig, skip=fields_of_kind("per_call"))
"""Every :class:`DiffusionGenerationConfig` option as an optional flag (``--steps``, ``--block_size``, ...)."""


def sampler_overrides(options: Any) -> dict[str, Any]:
    """The options that were given (not ``None``), as ``DiffusionGenerationConfig`` keyword arguments."""
    return {name: value for name, value in asdict(options).items() if value is not None}


# One thread: measured in docs/benchmarks.md (benchmarks/sampler_threads.py), the gain of a second thread on free
# cores is small, the loss on busy cores large.
DEFAULT_NUM_THREADS = 1


def flag_error(err: SamplerSettingError) -> UsageError:
    """A sampler value a flag gave, refused: ``--steps must be ...``."""
    return UsageError(f"--{err.field} {err.message}")


@dataclass
class CheckpointArguments:
    """How to load the checkpoint (every verb)."""

    device: str | None = field(default=None, metadata={"help": "cuda, cpu, cuda:1, ... Default: cuda if available."})
    dtype: str = field(default="auto", metadata={"help": "Weights dtype; auto keeps the checkpoint's.",
                                                 "choices": list(DTYPES)})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "Run the checkpoint's own Python code (auto_map in config.json); review it first."})
    num_threads: int = field(default=DEFAULT_NUM_THREADS, metadata={
        "help": "CPU threads torch uses for one forward pass (torch.set_num_threads). Default "
                f"{DEFAULT_NUM_THREADS}: on cores other programs share, more threads than free cores made sampling "
                "up to 100x slower (see docs/benchmarks.md); raise it on a machine of your own for a large model "
                "on the CPU. 0: torch's default (one per core)."})


def parse_verb_args(prog: str, argv: list[str], dataclass_types: tuple[type, ...],
                    prompts: bool = False) -> tuple[str, list[str], list[Any]]:
    """Parse ``CHECKPOINT [prompts ...] [flags]`` (positionals and flags in any order).

    Returns the checkpoint, the positional prompts (empty unless ``prompts``) and one instance per dataclass.
    """
    parser = OptionParser(dataclass_types, prog=prog, config_file=False)
    parser.add_argument("checkpoint", help="A checkpoint folder or hub id (a dllm sft or dllm demo output).")
    if prompts:
        parser.add_argument("prompts", nargs="*", help="Prompts, each one user turn of the chat template.")
    namespace = parser.parse_intermixed_args(argv)
    parsed = [cls(**{f.name: getattr(namespace, f.name) for f in fields(cls) if f.init}) for cls in dataclass_types]
    return namespace.checkpoint, list(getattr(namespace, "prompts", [])), parsed


@dataclass
class LoadedCheckpoint:
    """A checkpoint ready to sample from: ``generation_config`` holds the saved settings with the overrides
    applied and the mask, EOS and pad ids filled in."""

    name_or_path: str
    model: PreTrainedModel
    tokenizer: Any
    generation_config: DiffusionGenerationConfig
    trust_remote_code: bool = False
    processor: Any = None
    """The image processor of a vision-language checkpoint, once :meth:`image_processor` has loaded it."""

    @property
    def default_name(self) -> str:
        """The name it is served under by default: a folder's name, or the hub id."""
        path = Path(self.name_or_path)
        return path.resolve().name if path.is_dir() else self.name_or_path

    @property
    def takes_images(self) -> bool:
        """Whether the checkpoint answers questions about images (its ``model_type`` is a vision-language one)."""
        return self.model.config.model_type in IMAGE_MODEL_TYPES

    def image_processor(self, what: str = "an image") -> Any:
        """The checkpoint's ``AutoProcessor``, loaded on first use.

        Raises:
            UsageError: the checkpoint takes no images (naming ``what`` was given), or its processor cannot be
                loaded.
        """
        if self.processor is None:
            check_takes_images(self.name_or_path, self.model.config.model_type, what)
            self.processor = _auto_processor(self.name_or_path, self.trust_remote_code)
        return self.processor


def _generation_config(checkpoint: str, overrides: dict[str, Any]) -> DiffusionGenerationConfig:
    """The saved sampler settings (a folder's file, or the hub repo's), with ``overrides`` (flags) applied: a bad
    saved value names the file, a bad override its flag."""
    directory: str | Path = checkpoint
    if not Path(checkpoint).is_dir():
        saved = cached_file(checkpoint, GENERATION_CONFIG_NAME, _raise_exceptions_for_missing_entries=False,
                            _raise_exceptions_for_connection_errors=False)
        directory = Path(saved).parent if saved else checkpoint
    try:
        config = DiffusionGenerationConfig.from_pretrained(directory)
    except ValueError as err:
        raise UsageError(" ".join(str(err).split())) from err
    try:
        return replace(config, **overrides)
    except SamplerSettingError as err:
        raise flag_error(err) from err


def _device(name: str | None) -> torch.device:
    return torch.device(name if name else ("cuda" if torch.cuda.is_available() else "cpu"))


def set_num_threads(num_threads: int) -> None:
    """``torch.set_num_threads`` (0 keeps torch's default).

    Raises:
        UsageError: a negative count.
    """
    if num_threads < 0:
        raise UsageError(f"--num_threads must be at least 0 (0: torch's default), got {num_threads}")
    if num_threads:
        torch.set_num_threads(num_threads)


def check_port(port: int) -> None:
    """Refuse a TCP port outside 0-65535 (0: any free port) before anything loads.

    Raises:
        UsageError: naming ``--port``.
    """
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be a TCP port number, 0 to 65535, got {port}")


def check_not_adapter(checkpoint: str) -> None:
    """Refuse a LoRA adapter folder (``adapter_config.json``, no ``config.json``) in one line that says how to merge
    it: the verbs sample from a whole checkpoint (``dllm merge-lora`` makes one, with the mask token the adapter
    was trained with).

    Raises:
        UsageError: ``checkpoint`` is an adapter folder.
    """
    folder = Path(checkpoint)
    if not (folder / "adapter_config.json").is_file() or (folder / "config.json").is_file():
        return
    try:
        base = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (ValueError, AttributeError):  # unreadable JSON, or not an object: the message names no base
        base = None
    raise UsageError(f"{checkpoint}: a LoRA adapter (adapter_config.json), not a whole checkpoint; merge it into its "
                     f"base first: dllm merge-lora {base or 'BASE'} {checkpoint} OUT, then use OUT")


def note_builtin_class(checkpoint: str, config: Any, trust_remote_code: bool) -> None:
    """Say in one log line that a checkpoint naming its own code (``auto_map``) for a ``model_type`` transformers
    knows is loaded with the built-in classes (its code is not run without ``trust_remote_code``)."""
    auto_map = getattr(config, "auto_map", None)
    if auto_map and not trust_remote_code:
        logger.warning("%s: config.json names the checkpoint's own code (auto_map), which is not run; using "
                       "transformers' built-in %s classes for model_type %r (--trust_remote_code True runs its code)",
                       checkpoint, type(config).__name__.removesuffix("Config"), config.model_type)


def load_checkpoint(checkpoint: str, options: CheckpointArguments | None = None,
                    **overrides: Any) -> LoadedCheckpoint:
    """Load model, tokenizer and sampler settings (``overrides``: ``DiffusionGenerationConfig`` fields), after
    setting torch's thread count (``options.num_threads``).

    The mask token is the saved settings' ``mask_token_id``, else the tokenizer's, else ``config.json``'s.

    Raises:
        UsageError: no such folder or hub model, a LoRA adapter folder, no ``config.json``, no mask token, invalid
            saved settings (naming the file) or overrides (naming the flag), an answer length beyond the model's
            positions, checkpoint code (``auto_map``) without ``trust_remote_code``, corrupt weights.
    """
    options = options or CheckpointArguments()
    set_num_threads(options.num_threads)
    check_not_adapter(checkpoint)
    config = load_config(checkpoint, options.trust_remote_code)
    note_builtin_class(checkpoint, config, options.trust_remote_code)
    tokenizer = load_tokenizer(checkpoint, options.trust_remote_code)
    if is_encoder_config(config):  # a hub encoder's tokenizer may have no chat template yet (a trained one has)
        tokenizer = supply_chat_template(tokenizer)
    generation = _generation_config(checkpoint, overrides)
    mask_id = find_mask_token_id(generation.mask_token_id, tokenizer, config)
    if mask_id is None:
        raise UsageError(f"{checkpoint}: no mask token (the tokenizer has none and config.json has no "
                         "mask_token_id); is it a masked diffusion checkpoint (dllm sft)?")
    generation = with_tokenizer_ids(replace(generation, mask_token_id=mask_id), tokenizer)
    try:
        check_fits(config, 1, generation.gen_length)  # a prompt has a token at least; before the weights load
    except ContextLengthError as err:
        raise UsageError(f"{checkpoint}: gen_length {err.gen_length} leaves no room for a prompt in the model's "
                         f"{err.limit} positions (max_position_embeddings)") from err
    model = AutoModelForMaskedDiffusion.from_pretrained(checkpoint, dtype=torch_dtype(options.dtype),
                                                        trust_remote_code=options.trust_remote_code)
    try:
        check_mask_token_id(model, mask_id)
    except ValueError as err:
        raise UsageError(f"{checkpoint}: mask token id {mask_id} is not a row of the embedding matrix") from err
    try:  # a cache this model cannot use (block on a whole-answer model, dual on a block-diffusion one)
        check_cache_mode(model, generation.cache)
    except ValueError as err:
        raise UsageError(f"{checkpoint}: {err} (--cache, else the checkpoint's {GENERATION_CONFIG_NAME})") from err
    return LoadedCheckpoint(checkpoint, model.to(_device(options.device)).eval(), tokenizer, generation,
                            options.trust_remote_code)


IMAGE_MODEL_TYPES = tuple(f.model_type for f in FAMILIES.values() if f.image_inputs is not None)
"""``config.json`` model types whose checkpoints answer questions about images (``dllm sample --image``, ...)."""


def check_takes_images(checkpoint: str, model_type: str, what: str) -> None:
    """Refuse an image (``what``: ``--image``, ``/image``...) for a checkpoint whose model type takes none.

    Raises:
        UsageError: one line naming the checkpoint, its model type and the ones that take images.
    """
    if model_type not in IMAGE_MODEL_TYPES:
        kinds = " or ".join(repr(t) for t in IMAGE_MODEL_TYPES)
        raise UsageError(f"{checkpoint}: {what} needs a vision-language checkpoint (model_type {kinds}); this one "
                         f"is model_type {model_type!r} and takes text only")


def _auto_processor(checkpoint: str, trust_remote_code: bool) -> Any:
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(checkpoint, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UsageError(f"{checkpoint}: cannot load the image processor ({str(err).splitlines()[0]})") from err


def load_image_processor(checkpoint: str, options: CheckpointArguments | None = None) -> Any:
    """The ``AutoProcessor`` of a checkpoint that takes images (a Qwen3-VL folder saved with its processor),
    checked before any weights are read (``dllm sample --image`` fails fast).

    Raises:
        UsageError: the checkpoint is not of an image model type, or its processor cannot be loaded.
    """
    options = options or CheckpointArguments()
    check_takes_images(checkpoint, load_config(checkpoint, options.trust_remote_code).model_type, "--image")
    return _auto_processor(checkpoint, options.trust_remote_code)
