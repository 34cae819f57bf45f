"""Load any Hugging Face decoder as a bidirectional masked-diffusion LM that returns ``MaskedLMOutput``.

MDLM's denoiser sees the whole noisy sequence, so the decoder must attend in both directions. Since
transformers 5.2 a decoder's mask builder honours ``config.is_causal = False`` (on the *text* config for
multimodal models such as Qwen3-VL) and it survives ``save_pretrained``/``from_pretrained``. Attention modules
also carry an ``is_causal`` attribute that some kernels read directly (flash-attention, SDPA without a mask),
so we clear it as well. No modeling file is copied: weights, kernels and PEFT support stay upstream's.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import MaskedLMOutput

from dllm.core.diffusion import IGNORE_INDEX

logger = logging.getLogger(__name__)

DEFAULT_MASK_TOKEN = "<|mdm_mask|>"


def text_config(config: PretrainedConfig) -> PretrainedConfig:
    """The config that describes the language model (itself for text models, ``text_config`` for VLMs)."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def set_bidirectional(config: PretrainedConfig) -> PretrainedConfig:
    """Mark the language model's config non-causal; saved with the checkpoint in ``config.json``."""
    text_config(config).is_causal = False
    return config


def disable_causal_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Clear the ``is_causal`` flag of every attention module (read by flash-attention and maskless SDPA)."""
    for module in model.modules():
        if isinstance(getattr(module, "is_causal", None), bool):
            module.is_causal = False
    return model


def is_bidirectional(model: PreTrainedModel) -> bool:
    """True when both the config and every attention module are non-causal."""
    flags = [m.is_causal for m in model.modules() if isinstance(getattr(m, "is_causal", None), bool)]
    return getattr(text_config(model.config), "is_causal", True) is False and not any(flags)


@functools.cache  # read on every training forward; a class's answer never changes
def _head_is_plain(cls: type) -> bool:
    """Whether ``cls`` declared ``plain_head`` (its causal forward is exactly ``self.model -> lm_head -> optional
    final_logit_softcapping``) and that forward is still transformers' own: a subclass that overrides it (a
    checkpoint's own code, trust_remote_code) may do more than ``lm_head``."""
    if not getattr(cls, "plain_head", False):
        return False
    causal = next(c for c in cls.__mro__ if "forward" in vars(c) and not issubclass(c, BidirectionalMaskedLMMixin))
    return causal.__module__.startswith("transformers.")


class BidirectionalMaskedLMMixin:
    """Turns a ``*ForCausalLM`` class into a bidirectional masked LM (put it first in the bases).

    The state-dict layout is the causal class's, so ``from_pretrained`` loads an ordinary causal checkpoint
    and ``save_pretrained`` writes one that both this class and ``AutoModelForCausalLM`` can read. ``forward``
    returns :class:`~transformers.modeling_outputs.MaskedLMOutput`; with ``labels`` its loss is the plain
    (unshifted) cross-entropy over positions whose label is not -100.
    """

    plain_head: bool = False
    """A family wrapper sets this when its causal class's forward is ``backbone (self.model) -> lm_head -> optional
    final_logit_softcapping`` (read in transformers 5.24), so the head can run on the selected positions alone;
    other classes (e.g. Cohere's logit_scale) compute full logits and select afterwards: correct, without the
    saving."""

    def __init__(self, config: PretrainedConfig, *args, **kwargs):
        set_bidirectional(config)
        super().__init__(config, *args, **kwargs)
        disable_causal_attention(self)

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, logits_mask: torch.BoolTensor | None = None,
                document_ids: torch.LongTensor | None = None, relaxed_attention: torch.BoolTensor | None = None,
                **kwargs) -> MaskedLMOutput:
        """Denoise ``input_ids``; with ``logits_mask`` (bool ``[B, L]``) only the selected positions get logits.

        Packed rows pass ``document_ids`` (``[B, L]``, equal ids = one document; padding is a document of its own)
        with ``position_ids`` that restart at 0 for each document and no ``attention_mask``: each position then
        attends to its own document only, in both directions (see :func:`document_attention_mask`).

        Without ``logits_mask`` the logits are ``[B, L, V]``, the causal class's. With it the backbone runs as usual
        and the output head (and Gemma 2's final soft-capping) is applied to the ``N`` selected hidden states only:
        ``logits`` is ``[N, V]``, its rows in the row-major order of ``logits_mask.nonzero()`` (that of
        ``full_logits[logits_mask]``). The diffusion loss needs predictions at masked positions only, so this
        skips ``(B L - N) V`` output-head work and keeps the ``[B, L, V]`` tensor (and its float32 copy in the
        loss) out of memory. ``labels`` are then read at the selected positions too.

        ``relaxed_attention`` (bool ``[L, L]``, attention annealing) makes attention causal plus the key-after-query
        entries it marks, within documents and over real keys (:func:`annealed_attention_mask`).
        """
        kwargs.setdefault("use_cache", False)  # a denoiser re-reads the whole sequence every step
        kwargs.pop("num_items_in_batch", None)
        if relaxed_attention is not None:
            attention_mask = self._annealed_mask(relaxed_attention, attention_mask, document_ids)
            document_ids = None  # the annealed mask keeps documents apart itself
        if document_ids is not None:
            if attention_mask is not None:
                raise ValueError("packed rows (document_ids) take no attention_mask: padding is its own document")
            if getattr(self.config, "vision_config", None) is not None:
                raise ValueError(f"{type(self).__name__}: packing (document_ids) is for text models; multimodal "
                                 "rows keep one conversation each")
            if is_flash_attention(self.config) and block_diffusion_size(self.config) is None:
                return self._flash_packed_forward(input_ids, labels, logits_mask, kwargs)
            if block_diffusion_size(self.config) is None:
                attention_mask = document_attention_mask(self.config, document_ids, self.dtype)
        if block_diffusion_size(self.config) is not None and (attention_mask is None or (
                isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2)):
            attention_mask = self._block_causal_mask(input_ids, attention_mask, document_ids, kwargs)
        columns = labels is None and isinstance(kwargs.get("logits_to_keep"), torch.Tensor)  # the sampler's head
        if not _head_is_plain(type(self)) or (logits_mask is None and not columns):
            outputs = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            logits = outputs.logits  # [B, L, V]
            if logits_mask is not None:  # a family whose head does more than lm_head: select afterwards
                logits = logits[logits_mask.to(logits.device)]  # [N, V]
                labels = None if labels is None else labels.to(logits_mask.device)[logits_mask]  # [N]
        else:
            logits, labels, outputs = self._plain_head_forward(input_ids, attention_mask, labels, logits_mask, kwargs)
        return _masked_lm_output(logits, labels, outputs)

    def _plain_head_forward(self, input_ids: torch.Tensor | None, attention_mask: Any, labels: torch.Tensor | None,
                            logits_mask: torch.Tensor | None, kwargs: dict[str, Any]) -> tuple[torch.Tensor, Any, Any]:
        """``(logits, labels, backbone outputs)`` with the head on ``logits_mask``'s positions [N, V] or, without
        it, on the columns of an index tensor ``logits_to_keep`` [K] ([B, K, V], the sampler's head)."""
        keep = kwargs.pop("logits_to_keep", 0)  # the causal head's own slicing; not the backbone's argument
        columns = logits_mask is None
        if not columns and not (isinstance(keep, int) and keep == 0):
            raise ValueError(f"pass either logits_mask or logits_to_keep, not both (got logits_to_keep={keep!r})")
        # The causal classes' forward is backbone -> lm_head (-> soft-capping); the backbone is `self.model`
        # for the text families (LlamaModel, Gemma2Model) and for Qwen3-VL (Qwen3VLModel, vision included).
        # The columns `logits_to_keep` are sliced as that forward slices them, [B, K, H] before the head; calling
        # the backbone directly skips the causal forward's wrappers, which on a small model are about a tenth of a
        # sampler step (benchmarks/sampler_upstream.py).
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden = outputs.last_hidden_state  # [B, L, H]
        logits = self.lm_head(hidden[:, keep] if columns else hidden[logits_mask.to(hidden.device)])  # [B, K | N, V]
        cap = getattr(text_config(self.config), "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        if labels is not None:
            labels = labels.to(logits_mask.device)[logits_mask]  # [N]
        return logits, labels, outputs

    def _annealed_mask(self, relaxed: torch.Tensor, attention_mask: torch.Tensor | None,
                       document_ids: torch.Tensor | None) -> torch.Tensor | dict | Any:
        """:func:`annealed_attention_mask` for this model, refusing what it cannot take (one line each)."""
        if block_diffusion_size(self.config) is not None:
            raise ValueError("attention annealing is for MDLM models: a block-diffusion model's mask is block-causal")
        if is_flash_attention(self.config):
            raise ValueError(f"attention annealing needs a partly causal attention mask, which "
                             f"{self.config._attn_implementation} does not take: load the model with "
                             "attn_implementation 'sdpa', 'eager' or 'flex_attention'")
        if getattr(self.config, "vision_config", None) is not None:
            raise ValueError(f"{type(self).__name__}: attention annealing is for text models")
        if attention_mask is not None and (document_ids is not None or not isinstance(attention_mask, torch.Tensor)
                                           or attention_mask.dim() != 2):
            raise ValueError("relaxed_attention takes a 2D padding attention_mask or packed rows' document_ids")
        device = (document_ids if document_ids is not None else relaxed).device
        return annealed_attention_mask(self.config, relaxed.to(device), self.dtype, documents=document_ids,
                                       padding=attention_mask)

    def _block_causal_mask(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
                           document_ids: torch.Tensor | None, kwargs: dict[str, Any]) -> torch.Tensor | dict | Any:
        """The block-causal mask of a block-diffusion model's forward over the cached keys and ``input_ids``.

        Key positions (hence blocks) come from the ``position_ids`` of a forward without cache, else from the 2D
        ``attention_mask`` over cache and input (``cumsum - 1``: left padding skipped, keys in sequence order, as
        the sampler keeps them), else they count from 0.
        """
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        past = cache.get_seq_length() if cache is not None else 0
        reference = input_ids if input_ids is not None else kwargs["inputs_embeds"]
        batch, q_length = reference.shape[:2]
        positions = kwargs.get("position_ids")
        if positions is None or positions.dim() != 2 or past > 0:
            if attention_mask is not None:
                positions = (attention_mask.long().cumsum(dim=-1) - 1).clamp_min(0)  # [B, past + Q]
            else:
                positions = torch.arange(past + q_length, device=reference.device).expand(batch, -1)
        return block_diffusion_attention_mask(self.config, positions.to(reference.device), self.dtype,
                                              q_length=q_length, documents=document_ids, padding=attention_mask)

    def _flash_packed_forward(self, input_ids, labels, logits_mask, kwargs) -> MaskedLMOutput:
        """Packed rows through flash-attention's variable-length kernel: transformers finds the documents from
        ``position_ids`` that restart, in a batch of one row, so the ``[B, L]`` rows run as one ``[1, B L]`` row
        (padding restarts its positions too, so it stays a document of its own). Row-major flattening keeps the
        order of ``logits_mask``'s positions; full logits are reshaped back to ``[B, L, V]``."""
        batch, length = input_ids.shape
        if "position_ids" not in kwargs:
            raise ValueError("packed rows (document_ids) need position_ids that restart at each document")
        kwargs["position_ids"] = kwargs["position_ids"].reshape(1, batch * length)
        flat = lambda x: None if x is None else x.reshape(1, batch * length)  # noqa: E731
        outputs = self.forward(input_ids=flat(input_ids), labels=flat(labels), logits_mask=flat(logits_mask), **kwargs)
        if logits_mask is None:
            outputs.logits = outputs.logits.reshape(batch, length, -1)  # [B, L, V]
        return outputs


def _masked_lm_output(logits: torch.Tensor, labels: torch.Tensor | None, outputs) -> MaskedLMOutput:
    """``MaskedLMOutput`` with the plain (unshifted) cross-entropy where ``labels`` is not -100."""
    loss = None
    if labels is not None:
        loss = F.cross_entropy(
            logits.flatten(0, -2).float(), labels.flatten().to(logits.device), ignore_index=IGNORE_INDEX
        )
    return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                          attentions=outputs.attentions)


def is_flash_attention(config: PretrainedConfig) -> bool:
    """True for flash-attention kernels (``flash_attention_2``, ``flash_attention_3``, hub kernels of that kind)."""
    return "flash" in str(getattr(config, "_attn_implementation", "") or "")


def document_attention_mask(config: PretrainedConfig, document_ids: torch.Tensor,
                            dtype: torch.dtype) -> torch.Tensor | dict[str, torch.Tensor] | Any:
    """The attention mask of packed rows: query ``i`` sees key ``j`` iff both lie in the same document.

    ``document_ids`` ``[B, L]``: equal ids within a row mark one document (padding gets an id of its own, so no query
    is left with nothing to attend to). transformers finds packed documents from ``position_ids`` only for causal
    masks (its bidirectional builder ignores them), so the rule is given here as a mask function and built by
    transformers' own builder for the configured attention (``sdpa``: bool ``[B, 1, L, L]``, ``eager``: additive
    float, ``flex_attention``: a ``BlockMask``), which a decoder takes as it is. Models with sliding-window layers
    get their window on top, per layer type (a ``{"full_attention", "sliding_attention"}`` dict, as Gemma 2 and
    Qwen3 take), or on every layer when the config has a window and no layer types (Mistral). Documents are
    contiguous, so index distance within a row is position distance within a document.
    """
    from transformers.masking_utils import packed_sequence_mask_function, sliding_window_bidirectional_overlay

    batch, length = document_ids.shape
    return _build_masks(config, packed_sequence_mask_function(document_ids), sliding_window_bidirectional_overlay,
                        batch=batch, q_length=length, kv_length=length, dtype=dtype, device=document_ids.device)


def _build_masks(config: PretrainedConfig, rule: Callable, window_overlay: Callable[[int], Callable], *, batch: int,
                 q_length: int, kv_length: int, dtype: torch.dtype, device: torch.device,
                 always: Callable | None = None) -> torch.Tensor | dict[str, torch.Tensor] | Any:
    """``rule`` built by transformers' builder for the configured attention, with ``window_overlay(window)`` added
    on sliding layers (per layer type, or on every layer of a windowed config without layer types), and
    ``always`` (or-ed last) exempt from the window. Queries are the last ``q_length`` of the ``kv_length`` keys."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, and_masks, or_masks

    build = ALL_MASK_ATTENTION_FUNCTIONS[config._attn_implementation]

    def materialise(function: Callable) -> torch.Tensor | Any:
        function = function if always is None else or_masks(function, always)
        return build(batch_size=batch, q_length=q_length, kv_length=kv_length, q_offset=kv_length - q_length,
                     kv_offset=0, mask_function=function, attention_mask=None, allow_is_causal_skip=False,
                     allow_is_bidirectional_skip=False, dtype=dtype, config=config, use_vmap=False, device=device)

    text = text_config(config)
    window = getattr(text, "sliding_window", None)
    layer_types = set(getattr(text, "layer_types", None) or ())
    if window is not None and "sliding_attention" in layer_types:
        return {"full_attention": materialise(rule),
                "sliding_attention": materialise(and_masks(rule, window_overlay(window)))}
    if window is not None and not layer_types:
        return materialise(and_masks(rule, window_overlay(window)))
    return materialise(rule)


# ---- attention annealing (DiffuLLaMA, arXiv 2410.17891) ----------------------------------------------------------
def annealed_attention_fraction(step: int, annealing_steps: int) -> float:
    """Fraction ``r`` of the entries a causal mask hides (key after query) that attention sees at optimizer step
    ``step`` while annealing over ``N = annealing_steps`` steps: ``r = min(1, step / N)``, 0 at step 0 (the
    autoregressive model's attention exactly), 1 from step ``N`` on (bidirectional).

    DiffuLLaMA (Gong et al. 2024, arXiv 2410.17891, Sec. 3.2, "attention mask annealing"; ``get_anneal_attn_mask`` of
    its LLaMA-Factory ``ddm`` trainer) takes ``min(1, (step + 1) / N)``: the same line one step earlier, so that its
    first step already opens ``1/N``.
    """
    if not (isinstance(annealing_steps, int) and annealing_steps >= 1):
        raise ValueError(f"annealing_steps must be a positive integer, got {annealing_steps!r}")
    return min(1.0, max(step, 0) / annealing_steps)


def draw_relaxed_attention(length: int, fraction: float, *, generator: torch.Generator | None = None,
                           device: torch.device | str | None = None) -> torch.Tensor:
    """The key-after-query entries opened for one forward, bool ``[L, L]`` (strictly above the diagonal): each
    independently with probability ``fraction``, as DiffuLLaMA's ``get_anneal_attn_mask`` (one Bernoulli draw
    ``causal | Bernoulli(r)`` shared by the rows and heads of a batch)."""
    uniforms = torch.rand((length, length), generator=generator, device=device)  # [L, L]
    return torch.triu(uniforms < fraction, diagonal=1)


def relaxed_causal_rule(relaxed: torch.Tensor) -> Callable:
    """Mask function of annealed attention: query ``i`` sees key ``j`` iff ``j <= i`` (causal) or ``relaxed[i, j]``."""
    def visible(batch_idx: torch.Tensor, head_idx: torch.Tensor, q_idx: torch.Tensor,
                kv_idx: torch.Tensor) -> torch.Tensor:
        return (kv_idx <= q_idx) | relaxed[q_idx, kv_idx]

    return visible


def annealed_attention_mask(config: PretrainedConfig, relaxed: torch.Tensor, dtype: torch.dtype, *,
                            documents: torch.Tensor | None = None,
                            padding: torch.Tensor | None = None) -> torch.Tensor | dict[str, torch.Tensor] | Any:
    """The attention mask of a forward during attention annealing, rows ``[B, L]``, ``relaxed`` ``[L, L]``.

    :func:`relaxed_causal_rule` and-ed with packing's document rule (``documents`` ``[B, L]``: nothing crosses a
    document) and the padding rule (``padding`` ``[B, L]``, True on real tokens: no query sees padding); every query
    also sees itself, so a left-padding query is never left with nothing to attend to (SDPA would give NaN).
    ``relaxed`` all False is the causal model's mask, all True the bidirectional one. Built by transformers' builder
    for the configured attention, with the sliding window on top per layer type, as :func:`document_attention_mask`
    (documents and padding are contiguous, so index distance is position distance): :func:`annealed_window`.
    """
    from transformers.masking_utils import and_masks, packed_sequence_mask_function, padding_mask_function

    length = relaxed.shape[0]
    reference = documents if documents is not None else padding
    batch = 1 if reference is None else reference.shape[0]
    if relaxed.shape != (length, length) or (reference is not None and reference.shape[1] != length):
        raise ValueError(f"relaxed_attention must be [L, L] over rows of L tokens, got {tuple(relaxed.shape)} for "
                         f"rows {None if reference is None else tuple(reference.shape)}")
    rules = [relaxed_causal_rule(relaxed)]
    if documents is not None:
        rules.append(packed_sequence_mask_function(documents))
    if padding is not None:
        rules.append(padding_mask_function(padding.bool()))
    return _build_masks(config, and_masks(*rules), annealed_window, batch=batch,
                        q_length=length, kv_length=length, dtype=dtype, device=relaxed.device,
                        always=lambda batch_idx, head_idx, q_idx, kv_idx: q_idx == kv_idx)


def annealed_window(size: int) -> Callable:
    """Sliding window of annealed attention: behind the query the causal model's (``q - kv < size``, transformers'
    ``sliding_window_overlay``), so step 0 is that model exactly; ahead of it the bidirectional model's
    (``kv - q <= size``, ``sliding_window_bidirectional_overlay``). The bidirectional window also sees the key at
    distance ``size`` behind, which annealed attention gains only at step ``N``, with the model's own mask."""
    def inside(batch_idx: torch.Tensor, head_idx: torch.Tensor, q_idx: torch.Tensor,
               kv_idx: torch.Tensor) -> torch.Tensor:
        return ((kv_idx <= q_idx) & (q_idx - kv_idx < size)) | ((kv_idx > q_idx) & (kv_idx - q_idx <= size))

    return inside


# ---- block diffusion (BD3-LMs, arXiv 2503.09573) ------------------------------------------------------------------
BLOCK_DIFFUSION = "bd3lm"
# Keys of config.json (on the text config) that make a checkpoint block-diffusion: every forward then builds the
# block-causal mask, and the sampler decodes block after block with an exact cache.
OBJECTIVE_KEY, BLOCK_SIZE_KEY = "dllm_objective", "dllm_block_size"


def set_block_diffusion(config: PretrainedConfig, block_size: int) -> PretrainedConfig:
    """Record in the config (saved in ``config.json``) that the model is a block-diffusion LM with blocks of
    ``block_size`` positions: ``dllm_objective = "bd3lm"``, ``dllm_block_size = block_size``."""
    if not (isinstance(block_size, int) and block_size >= 1):
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    for target in {id(config): config, id(text_config(config)): text_config(config)}.values():
        setattr(target, OBJECTIVE_KEY, BLOCK_DIFFUSION)
        setattr(target, BLOCK_SIZE_KEY, block_size)
    return config


def block_diffusion_size(config: PretrainedConfig | None) -> int | None:
    """The block size of a block-diffusion model's config, ``None`` for a (whole-answer) MDLM one."""
    text = None if config is None else text_config(config)
    if getattr(text, OBJECTIVE_KEY, None) != BLOCK_DIFFUSION:
        return None
    return int(getattr(text, BLOCK_SIZE_KEY))


def block_causal_rule(blocks: torch.Tensor, clean: torch.Tensor | None = None) -> Callable:
    """Mask function of block diffusion over per-position block ids ``blocks`` ``[B, K]``.

    Without ``clean``: one sequence, block-causal: a query sees its own block (both directions) and every earlier
    block. With ``clean`` (bool ``[B, K]``) the rows hold the noisy and the clean copy side by side, ``x_t ⊕ x_0``
    (BD3-LMs Sec. 3.3, ``M_BD | M_OBC | M_BC``): a noisy query of block ``k`` sees its own noisy block and the clean
    blocks ``< k``; a clean query of block ``k`` sees the clean blocks ``<= k``; nothing sees a noisy block of
    another block, nothing clean sees a noisy token.
    """
    def visible(batch_idx: torch.Tensor, head_idx: torch.Tensor, q_idx: torch.Tensor,
                kv_idx: torch.Tensor) -> torch.Tensor:
        q_block, kv_block = blocks[batch_idx, q_idx], blocks[batch_idx, kv_idx]
        if clean is None:
            return kv_block <= q_block
        q_clean, kv_clean = clean[batch_idx, q_idx], clean[batch_idx, kv_idx]
        same_block = (q_block == kv_block) & (q_clean == kv_clean)
        return same_block | (kv_clean & (kv_block < q_block))

    return visible


def block_diffusion_attention_mask(config: PretrainedConfig, positions: torch.Tensor, dtype: torch.dtype, *,
                                   q_length: int | None = None, clean: torch.Tensor | None = None,
                                   documents: torch.Tensor | None = None,
                                   padding: torch.Tensor | None = None) -> torch.Tensor | dict[str, torch.Tensor] | Any:
    """The block-diffusion attention mask over ``K`` keys whose queries are the last ``q_length`` (default ``K``).

    Per key ``[B, K]``: ``positions`` (block of a position = ``position // block_size``, so blocks are aligned to
    each sequence's, or packed document's, start, as in BD3-LMs and SDAR), optionally ``clean`` (the ``x_t ⊕ x_0``
    training layout, see :func:`block_causal_rule`), ``documents`` (packed rows: nothing crosses a document) and
    ``padding`` (bool, True on real tokens: padding is seen by no query). Every query also sees itself, so a padding
    query is never left with nothing to attend to (SDPA would give NaN). Sliding-window layers add
    ``|position_q - position_kv| <= window``: distance in positions, since the two copies repeat them.

    Built by transformers' builder for the configured attention (eager, SDPA, flex), like
    :func:`document_attention_mask`. Flash-attention takes no mask of this shape: refused.
    """
    from transformers.masking_utils import (
        and_masks,
        packed_sequence_mask_function,
        padding_mask_function,
        remap_positions_for_packed_sequence,
        sliding_window_bidirectional_overlay,
    )

    if is_flash_attention(config):
        raise ValueError(f"block diffusion needs a block-causal attention mask, which {config._attn_implementation} "
                         "does not take: load the model with attn_implementation 'sdpa', 'eager' or 'flex_attention'")
    block_size = block_diffusion_size(config)
    if block_size is None:
        raise ValueError("the model's config is not block-diffusion: call set_block_diffusion(config, block_size)")
    batch, kv_length = positions.shape
    rules = [block_causal_rule(positions // block_size, clean)]
    if documents is not None:
        rules.append(packed_sequence_mask_function(documents))
    if padding is not None:
        rules.append(padding_mask_function(padding.bool()))

    def window(size: int) -> Callable:
        return remap_positions_for_packed_sequence(sliding_window_bidirectional_overlay(size), positions)

    return _build_masks(config, and_masks(*rules), window, batch=batch, q_length=q_length or kv_length,
                        kv_length=kv_length, dtype=dtype, device=positions.device,
                        always=lambda batch_idx, head_idx, q_idx, kv_idx: q_idx == kv_idx)


def block_diffusion_forward(model: torch.nn.Module, base: PreTrainedModel, noisy_ids: torch.Tensor,
                            clean_ids: torch.Tensor, inputs: dict[str, Any],
                            masked: torch.Tensor | None = None) -> MaskedLMOutput:
    """The block-diffusion denoiser's forward: the noisy ``x_t`` and the clean ``x_0`` (both [B, L]) side by side
    in one pass, ``x_t ⊕ x_0``, with the mask of :func:`block_causal_rule`; logits of the noisy copy only.

    ``model`` is what is called (it may be wrapped: PEFT, DDP); ``base`` is the unwrapped model, whose config
    (block size, attention kernel) and dtype build the mask. ``inputs`` holds the other model inputs
    (``attention_mask``, ``position_ids``, ``document_ids`` of packed rows, ...); the clean copy repeats the noisy
    copy's positions. With ``masked`` [B, L] the output head runs on the noisy copy's masked positions alone
    (``logits`` [N, V] in the row-major order of ``masked``), and the noisy copy starts at the first block holding a
    masked position (:func:`first_noisy_column`): an earlier block's noisy copy would be read by nothing (no loss,
    and no query sees another block's noisy tokens); and the clean copy stops where the block holding the last masked
    position begins (:func:`clean_context_end`): a noisy block reads only the clean blocks before it, so later clean
    tokens would be read by no query that has a loss. Without it, ``logits`` is [B, L, V].
    """
    inputs = dict(inputs)
    documents = inputs.pop("document_ids", None)  # [B, L] packed rows
    attention = inputs.pop("attention_mask", None)  # [B, L] padding
    positions = inputs.pop("position_ids", None)  # [B, L] packed rows restart them per document
    if positions is None:
        positions = torch.arange(noisy_ids.shape[1], device=noisy_ids.device).expand_as(noisy_ids) \
            if attention is None else (attention.long().cumsum(dim=-1) - 1).clamp_min(0)  # [B, L]
    start, stop = 0, noisy_ids.shape[1]
    if masked is not None:
        block_size = block_diffusion_size(base.config)
        start = first_noisy_column(masked, positions, block_size)
        stop = clean_context_end(masked, positions, block_size)
    both = lambda x: None if x is None else torch.cat([x[:, start:], x[:, :stop]], dim=1)  # noqa: E731  [B, L' + S]
    clean = torch.cat([torch.zeros_like(noisy_ids[:, start:], dtype=torch.bool),
                       torch.ones_like(noisy_ids[:, :stop], dtype=torch.bool)], dim=1)  # [B, L' + S], True on x_0
    mask = block_diffusion_attention_mask(base.config, both(positions), base.dtype, clean=clean,
                                          documents=both(documents), padding=both(attention))
    if masked is not None:
        inputs["logits_mask"] = torch.cat([masked[:, start:], torch.zeros_like(masked[:, :stop])],
                                          dim=1)  # [B, L' + S]
    outputs = model(input_ids=torch.cat([noisy_ids[:, start:], clean_ids[:, :stop]], dim=1), attention_mask=mask,
                    position_ids=both(positions), **inputs)
    if masked is None:
        outputs.logits = outputs.logits[:, : noisy_ids.shape[1]]  # [B, L, V]
    return outputs


def first_noisy_column(masked: torch.Tensor, positions: torch.Tensor, block_size: int) -> int:
    """The first column of the earliest block, over the rows of ``masked`` [B, L], that holds a masked position
    (blocks of ``positions // block_size``); 0 when nothing is masked. One host sync."""
    has = masked.any(dim=1)  # [B]
    first = masked.long().argmax(dim=1)  # [B]: the first masked column (argmax returns the first maximum)
    opens = first - positions.gather(1, first[:, None]).squeeze(1) % block_size  # [B]: where its block begins
    return int(torch.where(has, opens, masked.shape[1]).min()) if bool(has.any()) else 0


def clean_context_end(masked: torch.Tensor, positions: torch.Tensor, block_size: int) -> int:
    """The first column of the latest block, over the rows of ``masked`` [B, L], that holds a masked position: the
    clean context a masked position reads ends there (blocks of ``positions // block_size``); 0 when nothing is
    masked. One host sync."""
    has = masked.any(dim=1)  # [B]
    last = masked.shape[1] - 1 - masked.flip(1).long().argmax(dim=1)  # [B]: the last masked column
    opens = last - positions.gather(1, last[:, None]).squeeze(1) % block_size  # [B]: where its block begins
    return int(torch.where(has, opens, 0).max())


_MASKED_LM_CLASSES: dict[type, type] = {}


def masked_lm_class(causal_cls: type[PreTrainedModel]) -> type[PreTrainedModel]:
    """The bidirectional masked-LM subclass of a ``*ForCausalLM`` class (created once, then cached)."""
    if causal_cls not in _MASKED_LM_CLASSES:
        name = causal_cls.__name__.replace("ForCausalLM", "") + "ForMaskedDiffusionLM"
        _MASKED_LM_CLASSES[causal_cls] = type(name, (BidirectionalMaskedLMMixin, causal_cls), {})
    return _MASKED_LM_CLASSES[causal_cls]


def add_mask_token(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, mask_token: str = DEFAULT_MASK_TOKEN
) -> int:
    """Give the tokenizer a mask token and make sure the model can embed it; returns its id.

    The tokenizer's own mask token is reused when it has one; otherwise ``mask_token`` is added as a special
    token and the embeddings are resized (transformers draws the new row from a normal fitted to the old
    embeddings' mean and covariance: seed first for a reproducible row). The id is stored as
    ``config.mask_token_id`` so a saved checkpoint and tokenizer reload with the same mask id.
    """
    if tokenizer.mask_token_id is None:
        tokenizer.add_special_tokens({"mask_token": mask_token})
    mask_id = tokenizer.mask_token_id
    num_rows = model.get_input_embeddings().weight.shape[0]
    if mask_id >= num_rows:
        # transformers warns on every mean-and-covariance resize; adding the mask row is the expected path here,
        # so its warning is replaced by one INFO line that says what happened.
        modeling_logger = logging.getLogger("transformers.modeling_utils")
        level = modeling_logger.level
        modeling_logger.setLevel(logging.ERROR)
        try:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        finally:
            modeling_logger.setLevel(level)
        logger.info("added the mask token %s as id %d; embedding rows %d -> %d (new rows drawn from the old rows' "
                    "mean and covariance)", tokenizer.mask_token, mask_id, num_rows, len(tokenizer))
    for config in {id(model.config): model.config, id(text_config(model.config)): text_config(model.config)}.values():
        config.mask_token_id = mask_id
    check_mask_token_id(model, mask_id)
    return mask_id


def check_mask_token_id(model: PreTrainedModel, mask_token_id: int | None) -> int:
    """Raise a clear error unless ``mask_token_id`` indexes a row of the model's input embeddings."""
    num_rows = model.get_input_embeddings().weight.shape[0]
    if mask_token_id is None or not 0 <= mask_token_id < num_rows:
        raise ValueError(
            f"mask token id {mask_token_id} is not a row of the embedding matrix ({num_rows} rows); "
            "call dllm.core.models.add_mask_token(model, tokenizer) before training"
        )
    return mask_token_id


def find_mask_token_id(explicit: int | None = None, tokenizer: Any = None,
                       config: PretrainedConfig | None = None) -> int | None:
    """The mask token id, the one lookup every caller uses: ``explicit`` (an argument, a saved sampler setting), else
    the tokenizer's (a processor's tokenizer), else the config's (``text_config`` first, as
    :func:`add_mask_token` writes both), else None."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a multimodal processor wraps a tokenizer
    candidates = [explicit, getattr(tokenizer, "mask_token_id", None)]
    if config is not None:
        candidates += [getattr(text_config(config), "mask_token_id", None), getattr(config, "mask_token_id", None)]
    return next((c for c in candidates if c is not None), None)

