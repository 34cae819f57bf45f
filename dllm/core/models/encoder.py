"""Encoder checkpoints (BERT, RoBERTa, ModernBERT, any ``*ForMaskedLM`` transformers knows) as masked diffusion LMs.

An encoder pretrained as a masked LM is most of a diffusion LM already: it attends in both directions (no causal
mask to remove) and predicts masked tokens with its own head. :func:`encoder_masked_lm_class` subclasses its
``*ForMaskedLM`` class so that it takes what dllm's trainers and sampler pass to every model:

- ``logits_mask`` (bool ``[B, L]``, the trainer's masked positions) and ``logits_to_keep`` (the sampler's columns):
  the backbone's last hidden state is cut to the selected positions before the checkpoint's own head runs
  (BERT's transform + tied decoder, RoBERTa's ``lm_head``, ModernBERT's ``head`` + ``decoder``), so the output head
  runs on ``[N, H]`` rather than ``[B, L, H]``: every masked-LM head is position-wise, so the logits are the full
  head's at those positions (tested);
- ``position_ids`` counted from 0 (the sampler's, packed rows' restarting ones): RoBERTa-style embeddings number
  positions from ``pad_token_id + 1`` (fairseq's convention), so :func:`position_offset` is added;
- ``document_ids`` (packed rows): block-diagonal bidirectional attention built by transformers' mask builders for
  eager and SDPA (a 4D mask the encoders take as it is; ModernBERT's sliding-window layers get the window on top),
  see :func:`~dllm.core.models.masked_lm.document_attention_mask`; flash-attention is refused;
- no key/value cache: an encoder has none (``takes_kv_cache = False``), so the sampler computes the whole canvas
  each step (``cache="none"``, exact) when ``prefix`` or ``dual`` is asked for, with one log line.

Absolute position limits are checked: :func:`position_limit` is ``max_position_embeddings`` minus the RoBERTa
offset (512 for BERT and RoBERTa), and a longer input raises a clear error instead of an index error deep inside the
embedding. The checkpoint's state-dict layout is the ``*ForMaskedLM`` class's, so ``save_pretrained`` writes a
checkpoint that transformers' ``AutoModelForMaskedLM`` reads too.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING

from dllm.core.models.masked_lm import _masked_lm_output, document_attention_mask, is_flash_attention


def is_encoder_config(config: PretrainedConfig) -> bool:
    """Whether the checkpoint is an encoder with a masked-LM class in transformers (BERT, RoBERTa, ModernBERT, ...):
    its ``model_type`` has one in ``MODEL_FOR_MASKED_LM_MAPPING`` and it is not an encoder-decoder (BART's masked-LM
    class is its sequence-to-sequence model)."""
    return type(config) in MODEL_FOR_MASKED_LM_MAPPING and not getattr(config, "is_encoder_decoder", False)


@functools.cache
def _offsets_positions(masked_lm_class: type) -> bool:
    """Whether the modeling module of ``masked_lm_class`` numbers positions from ``padding_idx + 1`` (fairseq's
    ``create_position_ids_from_input_ids``, which RoBERTa, XLM-R, CamemBERT, ... copy)."""
    module = sys.modules[masked_lm_class.__module__]
    if hasattr(module, "create_position_ids_from_input_ids"):
        return True
    return any(isinstance(obj, type) and hasattr(obj, "create_position_ids_from_input_ids")
               for obj in vars(module).values())


def position_offset(config: PretrainedConfig) -> int:
    """The position embedding row of position 0: ``pad_token_id + 1`` for RoBERTa-style embeddings, else 0."""
    if not is_encoder_config(config) or not _offsets_positions(MODEL_FOR_MASKED_LM_MAPPING[type(config)]):
        return 0
    return int(config.pad_token_id) + 1


def position_limit(config: PretrainedConfig) -> int | None:
    """How many positions an encoder has: ``max_position_embeddings - position_offset`` (BERT 512, RoBERTa 514 - 2
    = 512, ModernBERT 8192); None when the config does not say."""
    limit = getattr(config, "max_position_embeddings", None)
    return None if limit is None else int(limit) - position_offset(config)


def _cut_hidden(select: Any) -> Any:
    """A forward hook for the backbone that replaces its last hidden state ``[B, L, H]`` by ``select(hidden)``."""

    def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (select(output[0]),) + output[1:]
        output.last_hidden_state = select(output.last_hidden_state)
        return output

    return hook


class EncoderMaskedLMMixin:
    """Makes a ``*ForMaskedLM`` class take dllm's model inputs (put it first in the bases); see the module
    docstring. ``forward`` returns :class:`~transformers.modeling_outputs.MaskedLMOutput` whose loss, with
    ``labels``, is the plain cross-entropy over positions whose label is not -100 (as the decoder wrappers')."""

    takes_kv_cache: bool = False
    """Read by the sampler: an encoder keeps no keys/values between forwards, so prefix/dual caching is off."""

    def __init__(self, config: PretrainedConfig, *args, **kwargs):
        config.is_decoder = False  # a BERT config marked as decoder would get a causal mask
        super().__init__(config, *args, **kwargs)

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, logits_mask: torch.BoolTensor | None = None,
                document_ids: torch.LongTensor | None = None, position_ids: torch.LongTensor | None = None,
                logits_to_keep: int | torch.Tensor = 0, **kwargs) -> MaskedLMOutput:
        """Denoise ``input_ids`` [B, L]. ``logits_mask`` (bool [B, L]): ``logits`` [N, V] of the selected positions,
        in the row-major order of ``logits_mask.nonzero()``, with ``labels`` read there; ``logits_to_keep`` (an
        int: the last columns, or a 1-D index tensor): ``logits`` [B, K, V]; neither: [B, L, V]. ``document_ids``:
        packed rows (no ``attention_mask``; ``position_ids`` restart at 0 for each document).

        Raises:
            ValueError: more positions than the model has, a key/value cache, packing with flash-attention, or
                both ``logits_mask`` and ``logits_to_keep``.
        """
        kwargs.pop("num_items_in_batch", None)
        kwargs.pop("use_cache", None)
        for name in ("past_key_values", "cache"):
            if kwargs.pop(name, None) is not None:
                raise ValueError(f"{type(self).__name__} is an encoder and keeps no key/value cache; sample with "
                                 "cache='none'")
        self._check_length(input_ids if input_ids is not None else kwargs["inputs_embeds"][..., 0])
        if document_ids is not None:
            attention_mask = self._document_mask(document_ids, attention_mask)
        if position_ids is not None:
            position_ids = position_ids + position_offset(self.config)
        select = self._selection(logits_mask, logits_to_keep)
        handle = None if select is None else self.base_model.register_forward_hook(_cut_hidden(select))
        try:
            outputs = super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                      **kwargs)
        finally:
            if handle is not None:
                handle.remove()
        logits = outputs.logits
        if logits_mask is not None:
            logits = logits[0]  # [N, V]: the selected positions ran as one row
            labels = None if labels is None else labels.to(logits_mask.device)[logits_mask]  # [N]
        return _masked_lm_output(logits, labels, outputs)

    def _check_length(self, reference: torch.Tensor) -> None:
        limit = position_limit(self.config)
        if limit is not None and reference.shape[-1] > limit:
            raise ValueError(f"{reference.shape[-1]} positions exceed the {limit} of {type(self).__name__} "
                             f"(max_position_embeddings {self.config.max_position_embeddings}); shorten the input")

    def _document_mask(self, document_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> Any:
        if attention_mask is not None:
            raise ValueError("packed rows (document_ids) take no attention_mask: padding is its own document")
        if is_flash_attention(self.config):
            raise ValueError(f"{type(self).__name__}: packing (document_ids) needs attn_implementation 'sdpa' or "
                             f"'eager' for an encoder, not {self.config._attn_implementation}")
        return document_attention_mask(self.config, document_ids, self.dtype)

    @staticmethod
    def _selection(logits_mask: torch.Tensor | None, keep: int | torch.Tensor) -> Any:
        """What the hook keeps of the hidden states [B, L, H], or None for all of them."""
        if logits_mask is not None:
            if not (isinstance(keep, int) and keep == 0):
                raise ValueError(f"pass either logits_mask or logits_to_keep, not both (got logits_to_keep={keep!r})")
            return lambda hidden: hidden[logits_mask.to(hidden.device)][None]  # [1, N, H]
        if isinstance(keep, torch.Tensor):
            return lambda hidden: hidden[:, keep.to(hidden.device)]  # [B, K, H]
        if keep > 0:
            return lambda hidden: hidden[:, -keep:]  # [B, K, H]
        return None


_ENCODER_CLASSES: dict[type, type] = {}


def encoder_masked_lm_class(masked_lm_cls: type[PreTrainedModel]) -> type[PreTrainedModel]:
    """The dllm subclass of an encoder's ``*ForMaskedLM`` class (created once, then cached):
    ``BertForMaskedLM`` -> ``BertForMaskedDiffusionLM``."""
    if masked_lm_cls not in _ENCODER_CLASSES:
        name = masked_lm_cls.__name__.replace("ForMaskedLM", "") + "ForMaskedDiffusionLM"
        _ENCODER_CLASSES[masked_lm_cls] = type(name, (EncoderMaskedLMMixin, masked_lm_cls), {})
    return _ENCODER_CLASSES[masked_lm_cls]


def encoder_class_for_config(config: PretrainedConfig) -> type[PreTrainedModel]:
    """The dllm class of an encoder config (:func:`is_encoder_config`)."""
    return encoder_masked_lm_class(MODEL_FOR_MASKED_LM_MAPPING[type(config)])


def base_model_class_name(config: PretrainedConfig) -> str | None:
    """The name of the encoder's headless class (``BertModel``), the architecture sentence-embedding checkpoints
    ship; None when transformers has none for it."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    base = MODEL_MAPPING.get(type(config), None)
    return None if base is None else base.__name__


def has_masked_lm_head(config: PretrainedConfig) -> bool:
    """Whether the checkpoint's weights hold an output head: False when every listed architecture is the headless
    base model (``["BertModel"]``), True otherwise (no architectures: assumed, missing weights are still reported)."""
    architectures = getattr(config, "architectures", None) or []
    base = base_model_class_name(config)
    return not architectures or any(name != base for name in architectures)
