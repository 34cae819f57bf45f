"""The one table from a model family to its masked-diffusion class, and the loader that reads it.

``AutoModelForMaskedDiffusion.from_pretrained(path_or_hub_id)`` reads the checkpoint's ``config.json`` and
picks the class by ``model_type``:

- a family of :data:`FAMILIES` (LLaMA 3, Gemma 2) gets its own wrapper, with that family's defaults (Gemma 2:
  eager attention, for its logit softcapping);
- any other causal LM that transformers knows (Qwen3, Mistral, Phi-3, ...) gets the generic bidirectional
  subclass of its ``*ForCausalLM`` class (:func:`dllm.core.models.masked_lm_class`).

This module sits above :mod:`dllm.core` and the pipelines: the core never imports it (a test checks that
``dllm/core`` imports nothing from the rest of ``dllm``), and a family is added by adding a row here.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import AutoConfig, PretrainedConfig, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from dllm.core.models import masked_lm_class
from dllm.pipelines.gemma2 import Gemma2ForMaskedLM
from dllm.pipelines.llama3 import Llama3ForMaskedLM


@dataclass(frozen=True)
class ModelFamily:
    """A model family with its own wrapper.

    Attributes:
        name: the name users type (``dllm sft llama3``, ``examples/llama3/sft.py``).
        model_type: ``config.model_type`` of its checkpoints.
        model_class: the bidirectional masked-LM class.
        default_checkpoint: hub id used when no ``--model_name_or_path`` is given.
    """

    name: str
    model_type: str
    model_class: type[PreTrainedModel]
    default_checkpoint: str


FAMILIES: dict[str, ModelFamily] = {
    family.name: family
    for family in (
        ModelFamily("llama3", "llama", Llama3ForMaskedLM, "meta-llama/Meta-Llama-3-8B-Instruct"),
        ModelFamily("gemma2", "gemma2", Gemma2ForMaskedLM, "google/gemma-2-2b-it"),
    )
}
_BY_MODEL_TYPE: dict[str, ModelFamily] = {family.model_type: family for family in FAMILIES.values()}


def family_for_model_type(model_type: str) -> ModelFamily | None:
    """The family whose checkpoints have this ``model_type``, or None (the generic wrapper serves it)."""
    return _BY_MODEL_TYPE.get(model_type)


class AutoModelForMaskedDiffusion:
    """Load any decoder checkpoint as a bidirectional masked diffusion LM (like ``AutoModelForCausalLM``).

    Example::

        model = AutoModelForMaskedDiffusion.from_pretrained("meta-llama/Meta-Llama-3-8B-Instruct", dtype="auto")
    """

    def __init__(self) -> None:
        raise OSError("use AutoModelForMaskedDiffusion.from_pretrained(...) or .from_config(...)")

    @staticmethod
    def class_for_config(config: PretrainedConfig, source: str = "config") -> type[PreTrainedModel]:
        """The masked-LM class for a config: the family's own, else the generic subclass of its causal LM.

        Raises:
            ValueError: transformers has no causal-LM class for this ``model_type`` (naming ``source``).
        """
        family = family_for_model_type(config.model_type)
        if family is not None:
            return family.model_class
        if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
            raise ValueError(
                f"{source}: model_type {config.model_type!r} has no causal-LM class in transformers, so it "
                "cannot be loaded as a masked diffusion LM"
            )
        return masked_lm_class(MODEL_FOR_CAUSAL_LM_MAPPING[type(config)])

    @classmethod
    def from_config(cls, config: PretrainedConfig, **kwargs) -> PreTrainedModel:
        """A randomly initialised model of the class :meth:`class_for_config` picks."""
        return cls.class_for_config(config)(config, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, trust_remote_code: bool = False, **kwargs) -> PreTrainedModel:
        """Load a checkpoint (hub id or local folder); ``kwargs`` go to ``from_pretrained`` (``dtype``,
        ``attn_implementation``, ...)."""
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        model_class = cls.class_for_config(config, source=str(name_or_path))
        return model_class.from_pretrained(name_or_path, **kwargs)
