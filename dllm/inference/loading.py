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

import ast
import inspect
import textwrap
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, make_dataclass, replace
from pathlib import Path
from typing import Any, Literal, NoReturn, Optional

import torch
from transformers import HfArgumentParser, PreTrainedModel
from transformers.utils import cached_file

from dllm.auto import FAMILIES, AutoModelForMaskedDiffusion, load_config, load_tokenizer
from dllm.core.models.masked_lm import check_mask_token_id
from dllm.core.sampling import GENERATION_CONFIG_NAME, DiffusionGenerationConfig, with_tokenizer_ids
from dllm.errors import UsageError
from dllm.inference.engine import check_generation_config

# Per-call display switches of the sampler: the verbs decide them, they are not flags.
_NOT_FLAGS = ("record_history", "progress")


def _field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (the string literal right after each field), one line each."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split()).replace("%", "%%")
    return docs


def _optional_flags(name: str, cls: type, skip: tuple[str, ...]) -> type:
    """A dataclass with ``cls``'s fields (but ``skip``), each ``Optional[...]`` with default ``None``."""
    hints, docs = typing.get_type_hints(cls), _field_docs(cls)
    specs = []
    for f in fields(cls):
        if f.name in skip:
            continue
        kind = hints[f.name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        base = args[0] if type(None) in typing.get_args(kind) and len(args) == 1 else kind
        default = f.default if f.default is not MISSING else None
        help_text = f"{docs.get(f.name, '')} Default: the checkpoint's {GENERATION_CONFIG_NAME}, else {default!r}."
        specs.append((f.name, Optional[base], field(default=None, metadata={"help": help_text.strip()})))
    flags = make_dataclass(name, specs)
    flags.__module__ = __name__  # make_dataclass's own ``module=`` needs Python 3.12
    return flags


SamplerOptions: type = _optional_flags("SamplerOptions", DiffusionGenerationConfig, skip=_NOT_FLAGS)
"""Every :class:`DiffusionGenerationConfig` option as an optional flag (``--steps``, ``--block_size``, ...)."""


def sampler_overrides(options: Any) -> dict[str, Any]:
    """The options that were given (not ``None``), as ``DiffusionGenerationConfig`` keyword arguments."""
    return {name: value for name, value in asdict(options).items() if value is not None}


@dataclass
class CheckpointArguments:
    """How to load the checkpoint (every verb)."""

    device: str | None = field(default=None, metadata={"help": "cuda, cpu, cuda:1, ... Default: cuda if available."})
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="auto", metadata={"help": "Weights dtype; auto keeps the checkpoint's."})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "Run the checkpoint's own Python code (auto_map in config.json); review it first."})


class VerbArgumentParser(HfArgumentParser):
    """An ``HfArgumentParser`` that reports a flag mistake (unknown flag, bad choice, bad value) as one line,
    ``<prog>: <message>``, and exits with status 2 like argparse, without the whole usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {' '.join(message.split())}\n")


def parse_verb_args(prog: str, argv: list[str], dataclass_types: tuple[type, ...],
                    prompts: bool = False) -> tuple[str, list[str], list[Any]]:
    """Parse ``CHECKPOINT [prompts ...] [flags]`` (positionals and flags in any order).

    Returns the checkpoint, the positional prompts (empty unless ``prompts``) and one instance per dataclass.
    """
    parser = VerbArgumentParser(dataclass_types, prog=prog)
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
    """The saved sampler settings (a folder's file, or the hub repo's), with ``overrides`` applied."""
    directory: str | Path = checkpoint
    if not Path(checkpoint).is_dir():
        saved = cached_file(checkpoint, GENERATION_CONFIG_NAME, _raise_exceptions_for_missing_entries=False,
                            _raise_exceptions_for_connection_errors=False)
        directory = Path(saved).parent if saved else checkpoint
    try:
        return DiffusionGenerationConfig.from_pretrained(directory, **overrides)
    except ValueError as err:
        raise UsageError(" ".join(str(err).split())) from err


def _device(name: str | None) -> torch.device:
    return torch.device(name if name else ("cuda" if torch.cuda.is_available() else "cpu"))


def load_checkpoint(checkpoint: str, options: CheckpointArguments | None = None,
                    **overrides: Any) -> LoadedCheckpoint:
    """Load model, tokenizer and sampler settings (``overrides``: ``DiffusionGenerationConfig`` fields).

    The mask token is the saved settings' ``mask_token_id``, else the tokenizer's, else ``config.json``'s.

    Raises:
        UsageError: no such folder or hub model, no ``config.json``, no mask token, invalid saved settings or
            overrides (``steps`` above ``gen_length`` included), checkpoint code (``auto_map``) without
            ``trust_remote_code``, corrupt weights; the message names the checkpoint or the file.
    """
    options = options or CheckpointArguments()
    config = load_config(checkpoint, options.trust_remote_code)
    tokenizer = load_tokenizer(checkpoint, options.trust_remote_code)
    generation = _generation_config(checkpoint, overrides)
    candidates = (generation.mask_token_id, tokenizer.mask_token_id, getattr(config, "mask_token_id", None))
    mask_id = next((c for c in candidates if c is not None), None)
    if mask_id is None:
        raise UsageError(f"{checkpoint}: no mask token (the tokenizer has none and config.json has no "
                         "mask_token_id); is it a masked diffusion checkpoint (dllm sft)?")
    generation = with_tokenizer_ids(replace(generation, mask_token_id=mask_id), tokenizer)
    try:
        check_generation_config(generation)
    except ValueError as err:
        raise UsageError(f"{checkpoint}: {err}") from err
    dtype = options.dtype if options.dtype == "auto" else getattr(torch, options.dtype)
    model = AutoModelForMaskedDiffusion.from_pretrained(checkpoint, dtype=dtype,
                                                        trust_remote_code=options.trust_remote_code)
    try:
        check_mask_token_id(model, mask_id)
    except ValueError as err:
        raise UsageError(f"{checkpoint}: mask token id {mask_id} is not a row of the embedding matrix") from err
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
