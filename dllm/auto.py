"""The one table from a model family to its masked-diffusion class, and the loader that reads it.

``AutoModelForMaskedDiffusion.from_pretrained(path_or_hub_id)`` reads the checkpoint's ``config.json`` and
picks the class by ``model_type``:

- a family of :data:`FAMILIES` (LLaMA 3, Gemma 2, Qwen3-VL) gets its own wrapper, with that family's defaults
  (Gemma 2: eager attention, for its logit softcapping; Qwen3-VL: :class:`~dllm.pipelines.qwen3_vl.Qwen3VLForMaskedLM`,
  the vision tower frozen, and its hooks into the one SFT recipe: processor, collator, trainer);
- an encoder with a masked-LM class in transformers (BERT, RoBERTa, ModernBERT, ...) gets the subclass of its
  ``*ForMaskedLM`` class (:func:`dllm.core.models.encoder.encoder_masked_lm_class`), its own head kept or, for a
  headless checkpoint (``architectures: ["BertModel"]``), a new head tied to its word embeddings;
- any other causal LM that transformers knows (Qwen3, Mistral, Phi-3, ...) gets the generic bidirectional
  subclass of its ``*ForCausalLM`` class (:func:`dllm.core.models.masked_lm_class`).

This module sits above :mod:`dllm.core` and the pipelines: the core never imports it (a test checks that
``dllm/core`` imports nothing from the rest of ``dllm``), and a family is added by adding a row here.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from dllm.core.models import masked_lm_class
from dllm.core.models.encoder import (
    EncoderMaskedLMMixin,
    encoder_class_for_config,
    has_masked_lm_head,
    is_encoder_config,
    position_limit,
)
from dllm.core.models.masked_lm import text_config
from dllm.data.chat_templates import ChatTemplateOptions, supply_chat_template
from dllm.data.collator import SFTDataCollator
from dllm.errors import UsageError
from dllm.pipelines.gemma2 import Gemma2ForMaskedLM
from dllm.pipelines.llama3 import Llama3ForMaskedLM
from dllm.pipelines.qwen3_vl import Qwen3VLForMaskedLM
from dllm.pipelines.qwen3_vl.options import Qwen3VLOptions

logger = logging.getLogger(__name__)

# What a hub id looks like ("org/name" or "name"); anything else that is not a folder is a missing folder.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _remote_code_error(name_or_path: str, err: ValueError) -> UsageError | ValueError:
    """transformers' refusal to run a checkpoint's own code (``auto_map``), as a one-line UsageError."""
    if "trust_remote_code" not in str(err):
        return err
    return UsageError(f"{name_or_path}: the checkpoint ships its own Python code (auto_map), which dllm does not run "
                      "unless asked; review that code, then pass --trust_remote_code True")


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why no TCP connection opens to the Hub endpoint (``HF_ENDPOINT``), or to the HTTPS proxy in front of it; None
    when one does. A DNS failure answers at once, a dropped connection after ``timeout`` seconds."""
    import socket
    import urllib.request
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    target = urlsplit(constants.ENDPOINT)
    proxy = urllib.request.getproxies().get(target.scheme)
    if proxy and not urllib.request.proxy_bypass(target.hostname or ""):
        target = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        with socket.create_connection((target.hostname, port), timeout=timeout):
            return None
    except OSError as err:
        return f"{target.hostname}:{port}: {err.strerror or err}"


def check_hub(repo_id: str) -> None:
    """Refuse at once a hub id the Hub cannot serve now, where transformers would retry each file for about 30 s
    and then say the model does not exist: offline mode (``HF_HUB_OFFLINE=1``) without a cached copy, or a Hub that
    cannot be reached (with a cached copy: say that offline mode loads it).

    Raises:
        UsageError: naming the id, offline or unreachable, and whether the local cache has it.
    """
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except HFValidationError as err:
        raise UsageError(f"{repo_id}: no such checkpoint folder, nor a valid Hugging Face Hub id ({err})") from err
    if constants.HF_HUB_OFFLINE:
        if not cached:
            raise UsageError(f"{repo_id}: no such checkpoint folder, nor a model in the local Hugging Face cache (the "
                             "Hub is off: HF_HUB_OFFLINE=1); download it while online, or give a checkpoint folder")
        return
    reason = _hub_unreachable()
    if reason is None:
        return
    if cached:
        raise UsageError(f"{repo_id}: cannot reach the Hugging Face Hub ({reason}); the local cache has the model: "
                         "set HF_HUB_OFFLINE=1 to load it from there")
    raise UsageError(f"{repo_id}: no such checkpoint folder, the Hugging Face Hub cannot be reached ({reason}), and "
                     "the local cache does not have the model; check the network, or give a checkpoint folder")


def load_config(name_or_path: str, trust_remote_code: bool = False) -> PretrainedConfig:
    """``AutoConfig.from_pretrained`` that names the checkpoint in its errors and never runs checkpoint code
    unless ``trust_remote_code``.

    Raises:
        UsageError: no such folder or hub model, a hub id while offline or with the Hub unreachable
            (:func:`check_hub`), a folder without ``config.json``, or a checkpoint with its own code
            (``auto_map``) without ``trust_remote_code``.
    """
    path = Path(name_or_path)
    if path.is_dir() and not (path / "config.json").is_file():
        raise UsageError(f"{name_or_path}: not a checkpoint folder (no config.json)")
    if not path.is_dir() and not _HUB_ID.match(str(name_or_path)):
        raise UsageError(f"{name_or_path}: no such checkpoint folder")
    if not path.is_dir():
        check_hub(str(name_or_path))
    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except OSError as err:  # transformers' "not found" for folders and hub ids alike
        if path.is_dir():
            raise UsageError(f"{name_or_path}: cannot read config.json ({str(err).splitlines()[0]})") from err
        raise UsageError(f"{name_or_path}: no such checkpoint folder or Hugging Face Hub model") from err
    except ValueError as err:
        raise _remote_code_error(name_or_path, err) from err


# A tokenizer saved by save_pretrained has the first two; older ones may have only their vocabulary files.
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")
_VOCABULARY_GLOBS = ("vocab.*", "*.model", "merges.txt", "*.tiktoken")


def _check_tokenizer_files(folder: Path, what: str) -> None:
    """Refuse a checkpoint folder with no tokenizer file at all, before transformers tries to build one from
    nothing (and blames a missing sentencepiece or tiktoken)."""
    if any((folder / name).is_file() for name in _TOKENIZER_FILES):
        return
    if any(next(folder.glob(pattern), None) is not None for pattern in _VOCABULARY_GLOBS):
        return
    raise UsageError(f"{folder}: cannot load the {what}: the checkpoint folder has no tokenizer files "
                     f"({', '.join(_TOKENIZER_FILES)}); save the tokenizer beside the model "
                     "(tokenizer.save_pretrained(folder)) or copy its files from the model this one came from")


def _load(auto_class: Any, what: str, name_or_path: str, trust_remote_code: bool, **kwargs: Any) -> Any:
    """``auto_class.from_pretrained`` whose errors name the checkpoint (a folder without tokenizer files, a missing
    file: ``cannot load the {what}``; checkpoint code without ``trust_remote_code``: :func:`_remote_code_error`)."""
    if Path(name_or_path).is_dir():
        _check_tokenizer_files(Path(name_or_path), what)  # a processor carries the tokenizer too
    try:
        return auto_class.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kwargs)
    except OSError as err:
        raise UsageError(f"{name_or_path}: cannot load the {what} ({str(err).splitlines()[0]})") from err
    except ValueError as err:
        raise _remote_code_error(name_or_path, err) from err


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, config: PretrainedConfig | None = None) -> Any:
    """``AutoTokenizer.from_pretrained`` with the errors of :func:`load_config` (call that first); ``config``: the
    checkpoint's config when already read (AutoTokenizer then does not read ``config.json`` again)."""
    return _load(AutoTokenizer, "tokenizer", name_or_path, trust_remote_code,
                 **({"config": config} if config is not None else {}))


def load_processor(name_or_path: str, trust_remote_code: bool = False, config: PretrainedConfig | None = None) -> Any:
    """``AutoProcessor.from_pretrained`` (a vision-language checkpoint's processor) with the errors of
    :func:`load_tokenizer`: a processor with its own code (``auto_map``) loads only with ``trust_remote_code``.
    ``config`` is taken for the family hook's signature; AutoProcessor reads the processor's own files."""
    from transformers import AutoProcessor

    return _load(AutoProcessor, "processor", name_or_path, trust_remote_code)


def _weights_error(name_or_path: str, err: SafetensorError) -> UsageError:
    """Name the unreadable ``.safetensors`` file of a local checkpoint (safetensors' own error names none)."""
    for file in sorted(Path(name_or_path).glob("*.safetensors")) if Path(name_or_path).is_dir() else []:
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except SafetensorError as bad:
            return UsageError(f"{file}: corrupt or truncated weights file ({bad}); re-save or re-download it")
    return UsageError(f"{name_or_path}: cannot read the weights ({err}); re-save or re-download them")


class AutoModelForMaskedDiffusion:
    """Load any decoder checkpoint as a bidirectional masked diffusion LM (like ``AutoModelForCausalLM``), or any
    encoder with a masked-LM class (BERT, RoBERTa, ModernBERT) with its own head (a new tied one if it has none).

    Example::

        model = AutoModelForMaskedDiffusion.from_pretrained("meta-llama/Meta-Llama-3-8B-Instruct", dtype="auto")
        model = AutoModelForMaskedDiffusion.from_pretrained("answerdotai/ModernBERT-large")
    """

    def __init__(self) -> None:
        raise OSError("use AutoModelForMaskedDiffusion.from_pretrained(...) or .from_config(...)")

    @staticmethod
    def class_for_config(config: PretrainedConfig, source: str = "config",
                         trust_remote_code: bool = False) -> type[PreTrainedModel]:
        """The masked-LM class for a config: the family's own, else an encoder's ``*ForMaskedLM`` subclass
        (:func:`~dllm.core.models.encoder.encoder_masked_lm_class`), else the generic subclass of its causal LM. With
        ``trust_remote_code``, a config whose ``auto_map`` names an ``AutoModelForCausalLM`` class gets the
        generic subclass of that class, the checkpoint's own code read from ``source`` (as transformers'
        ``AutoModelForCausalLM`` prefers it).

        Raises:
            ValueError: transformers has no causal-LM (nor encoder masked-LM) class for this ``model_type`` (naming
                ``source``).
        """
        remote = (getattr(config, "auto_map", None) or {}).get("AutoModelForCausalLM")
        if trust_remote_code and remote:
            from transformers.dynamic_module_utils import get_class_from_dynamic_module

            return masked_lm_class(get_class_from_dynamic_module(remote, source))
        family = family_for_model_type(config.model_type)
        if family is not None:
            return family.model_class
        if is_encoder_config(config):
            return encoder_class_for_config(config)
        if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
            raise UsageError(
                f"{source}: model_type {config.model_type!r} has no causal-LM class in transformers (nor a "
                "masked-LM one, as encoders have), so it cannot be loaded as a masked diffusion LM"
            )
        return masked_lm_class(MODEL_FOR_CAUSAL_LM_MAPPING[type(config)])

    @classmethod
    def from_config(cls, config: PretrainedConfig, **kwargs) -> PreTrainedModel:
        """A randomly initialised model of the class :meth:`class_for_config` picks."""
        return cls.class_for_config(config)(config, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, trust_remote_code: bool = False,
                        config: PretrainedConfig | None = None, **kwargs) -> PreTrainedModel:
        """Load a checkpoint (hub id or local folder); ``kwargs`` go to ``from_pretrained`` (``dtype``,
        ``attn_implementation``, ...). A checkpoint's own code (``auto_map``) runs only with ``trust_remote_code``.
        ``config``: the checkpoint's config when the caller has read it already (:func:`load_config`), so
        ``config.json`` is not read again.

        Raises:
            UsageError: no such checkpoint, checkpoint code without ``trust_remote_code``, corrupt weights.
        """
        if config is None:
            config = load_config(name_or_path, trust_remote_code=trust_remote_code)
        model_class = cls.class_for_config(config, source=str(name_or_path), trust_remote_code=trust_remote_code)
        try:
            if issubclass(model_class, EncoderMaskedLMMixin):
                return _load_encoder(model_class, name_or_path, config, kwargs)
            return model_class.from_pretrained(name_or_path, config=config, **kwargs)
        except SafetensorError as err:
            raise _weights_error(name_or_path, err) from err


# transformers' loggers that report missing weights (a table, and a line per tied pair): an encoder's new head is
# expected, and reported in one line instead.
_LOADING_LOGGERS = ("transformers.modeling_utils", "transformers.utils.loading_report")


def _load_encoder(model_class: type[PreTrainedModel], name_or_path: str, config: PretrainedConfig,
                  kwargs: dict[str, Any]) -> PreTrainedModel:
    """An encoder checkpoint as ``model_class``: a headless one (``architectures: ["BertModel"]``, as
    sentence-embedding checkpoints ship) gets the masked-LM head, its output layer tied to the word embeddings
    (transformers initialises the rest); any weight the checkpoint lacks is named in one log line."""
    headless = not has_masked_lm_head(config)
    if headless:
        text_config(config).tie_word_embeddings = True
    # A filter, not a level: transformers checks more (its tensor-parallel plan) when its logger's level is raised.
    loggers = [logging.getLogger(name) for name in _LOADING_LOGGERS]
    quiet = lambda record: record.levelno >= logging.ERROR  # noqa: E731
    for log in loggers:
        log.addFilter(quiet)
    try:
        model, info = model_class.from_pretrained(name_or_path, config=config, output_loading_info=True, **kwargs)
    finally:
        for log in loggers:
            log.removeFilter(quiet)
    parameters = dict(model.named_parameters())
    new = sorted(name for name in info["missing_keys"] if name in parameters)
    if new:
        tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
        logger.warning("%s: %s; new parameters (random until trained): %s%s", name_or_path,
                       f"no masked-LM head (architectures {config.architectures}), so {model_class.__name__} adds one"
                       if headless else f"the checkpoint lacks weights of {model_class.__name__}", ", ".join(new),
                       "; its output layer is tied to the word embeddings" if tied else "")
    return model


def _auto_model(checkpoint: str, load_kwargs: dict[str, Any], options: Any = None) -> PreTrainedModel:
    """A text family's model: the class :class:`AutoModelForMaskedDiffusion` picks from the checkpoint's config."""
    return AutoModelForMaskedDiffusion.from_pretrained(checkpoint, **load_kwargs)


def _text_collator(tokenizer: PreTrainedTokenizerBase, data_args: Any, options: Any = None) -> SFTDataCollator:
    """A text family's collator: chat rows (or rows tokenised once) to padded ``input_ids`` / ``labels`` batches."""
    return SFTDataCollator(tokenizer, max_seq_length=data_args.max_seq_length,
                           mask_prompt_loss=data_args.mask_prompt_loss,
                           train_on_eos_padding=data_args.train_on_eos_padding)


def _same_trainer(trainer_class: type) -> type:
    return trainer_class


def _on_use(module: str, name: str) -> Callable[..., Any]:
    """``module.name``, imported at its first call: training and image code (``transformers.Trainer``, the image
    processor, PIL) stays out of ``import dllm.auto``, which every verb does."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


@dataclass(frozen=True)
class ModelFamily:
    """A model family: its class and default checkpoint, and the hooks through which the one SFT recipe
    (:mod:`dllm.sft.recipe`) trains it. The defaults serve every text decoder; a family that needs more (Qwen3-VL:
    a processor, frozen vision, a multimodal collator and trainer hook) supplies its own.

    Attributes:
        name: the name users type (``dllm sft llama3``, ``examples/llama3/sft.py``).
        model_type: ``config.model_type`` of its checkpoints.
        model_class: the bidirectional masked-LM class.
        default_checkpoint: hub id used when no ``--model_name_or_path`` is given.
        options: the family's own options dataclass, parsed beside the recipe's (``None``: none).
        option_defaults: the family's defaults for recipe options (Qwen3-VL: ``lora=True``).
        load_processing: ``(checkpoint, trust_remote_code, config) -> tokenizer or processor`` (``config``: the
            checkpoint's, already read).
        build_model: ``(checkpoint, from_pretrained kwargs, family options) -> model``.
        build_collator: ``(tokenizer or processor, data options, family options) -> collator``.
        trainer_for: ``(objective's trainer class) -> the class that trains this family`` (raises UsageError for an
            objective the family does not support).
        text_rows: rows are text only, so they can be tokenised once and packed.
        image_inputs: for families that answer questions about images, ``(model, processor, conversations,
            gen_length) -> (prompt_ids, attention_mask, model_kwargs)`` for the sampler (a conversation may come
            already through ``encode_images``); None for text models.
        encode_images: ``(processor, conversation) -> encoded conversation`` (its ``len()`` is its tokens), the
            costly part of ``image_inputs`` done once per prompt, whatever batch it joins.
    """

    name: str
    model_type: str
    model_class: type[PreTrainedModel] | None = None
    default_checkpoint: str | None = None
    options: type | None = None
    option_defaults: Mapping[str, Any] = field(default_factory=dict)
    load_processing: Callable[[str, bool, PretrainedConfig | None], Any] = load_tokenizer
    build_model: Callable[[str, dict[str, Any], Any], PreTrainedModel] = _auto_model
    build_collator: Callable[[Any, Any, Any], Any] = _text_collator
    trainer_for: Callable[[type], type] = _same_trainer
    text_rows: bool = True
    image_inputs: Callable[..., Any] | None = None
    encode_images: Callable[[Any, list[dict[str, Any]]], Any] | None = None


_QWEN3_VL_HOOKS = "dllm.pipelines.qwen3_vl.hooks"
_QWEN3_VL_GENERATION = "dllm.pipelines.qwen3_vl.generation"
FAMILIES: dict[str, ModelFamily] = {
    family.name: family
    for family in (
        ModelFamily("llama3", "llama", Llama3ForMaskedLM, "meta-llama/Meta-Llama-3-8B-Instruct"),
        ModelFamily("gemma2", "gemma2", Gemma2ForMaskedLM, "google/gemma-2-2b-it"),
        ModelFamily("qwen3_vl", "qwen3_vl", Qwen3VLForMaskedLM, "Qwen/Qwen3-VL-2B-Instruct",
                    options=Qwen3VLOptions, option_defaults={"lora": True}, load_processing=load_processor,
                    build_model=_on_use(_QWEN3_VL_HOOKS, "build_model"),
                    build_collator=_on_use(_QWEN3_VL_HOOKS, "build_collator"),
                    trainer_for=_on_use(_QWEN3_VL_HOOKS, "trainer_for"), text_rows=False,
                    image_inputs=_on_use(_QWEN3_VL_GENERATION, "prepare_generation_inputs"),
                    encode_images=_on_use(_QWEN3_VL_GENERATION, "encode_conversation")),
    )
}
_BY_MODEL_TYPE: dict[str, ModelFamily] = {family.model_type: family for family in FAMILIES.values()}
GENERIC_FAMILY = ModelFamily("generic", "*")
"""Any other causal LM transformers knows (Qwen3, Mistral, ...): the text hooks, the generic bidirectional class."""


def load_encoder_tokenizer(name_or_path: str, trust_remote_code: bool = False,
                           config: PretrainedConfig | None = None) -> Any:
    """An encoder's tokenizer (:func:`load_tokenizer`) with an end-of-turn token and a chat template where it has
    none (:func:`dllm.data.chat_templates.supply_chat_template`); its own ``[MASK]`` / ``<mask>`` is the mask
    token."""
    return supply_chat_template(load_tokenizer(name_or_path, trust_remote_code, config))


def _encoder_collator(tokenizer: PreTrainedTokenizerBase, data_args: Any,
                      options: ChatTemplateOptions | None = None) -> SFTDataCollator:
    """The text collator, after ``--chat_template`` (when given) replaced the tokenizer's template: the rows are
    rendered (and the checkpoint's tokenizer saved) with it."""
    if options is not None and options.chat_template is not None:
        supply_chat_template(tokenizer, options.chat_template)
    return _text_collator(tokenizer, data_args)


def _encoder_trainer(trainer_class: type) -> type:
    """Encoders train with the whole-answer objectives; block diffusion samples with a key/value cache of finished
    blocks, which an encoder does not keep."""
    from dllm.core.trainers import BD3LMTrainer

    if issubclass(trainer_class, BD3LMTrainer):
        raise UsageError("--objective bd3lm: block diffusion decodes with a key/value cache of finished blocks, which "
                         "an encoder (BERT, RoBERTa, ModernBERT) does not keep; use --objective mdlm")
    return trainer_class


ENCODER_FAMILY = ModelFamily("encoder", "*", options=ChatTemplateOptions, load_processing=load_encoder_tokenizer,
                             build_collator=_encoder_collator, trainer_for=_encoder_trainer)
"""Any encoder with a masked-LM class (BERT, RoBERTa, ModernBERT, ...): the text hooks, with a chat template
supplied where the tokenizer has none (``--chat_template`` replaces it) and block diffusion refused."""


def family_for_model_type(model_type: str) -> ModelFamily | None:
    """The family whose checkpoints have this ``model_type``, or None (the generic wrapper serves it)."""
    return _BY_MODEL_TYPE.get(model_type)


def recipe_family(config: PretrainedConfig) -> ModelFamily:
    """The family whose hooks train a checkpoint of this config: its own, else :data:`ENCODER_FAMILY` for an
    encoder, else :data:`GENERIC_FAMILY`."""
    family = family_for_model_type(config.model_type)
    if family is not None:
        return family
    return ENCODER_FAMILY if is_encoder_config(config) else GENERIC_FAMILY


def check_sequence_length(config: PretrainedConfig, length: int | None, source: str,
                          flag: str = "--max_seq_length") -> None:
    """Refuse, before any work, rows longer than an encoder's absolute positions (BERT 512; RoBERTa's
    ``max_position_embeddings`` 514 less its padding offset); decoders (rotary positions) are not limited here.

    Raises:
        UsageError: naming ``flag``, the checkpoint and its limit.
    """
    limit = position_limit(config) if is_encoder_config(config) else None
    if length is None or limit is None or length <= limit:
        return
    offset = config.max_position_embeddings - limit
    raise UsageError(f"{flag} {length} exceeds the {limit} positions of {source} (max_position_embeddings "
                     f"{config.max_position_embeddings}" + (f" less its padding offset {offset}" if offset else "")
                     + f"); use {flag} {limit} or less")
