"""The sampler's forward on the standard pre-norm decoder (LLaMA, Qwen2, Qwen3), without transformers' plumbing.

Why our own loop: a sampler step on a small or mid-sized model is not mostly arithmetic. transformers' forward
wraps every call in output-capturing decorators, builds a mask, dispatches attention through a registry, and its
``DynamicCache`` concatenates the new keys/values onto the cached ones in every layer and crops them off again
after the step (``benchmarks/sampler_upstream.py`` profiles it: on the 4-layer demo shape most of a step).
This loop calls the model's *own* modules (embeddings, rotary embedding, norms, projections, MLP, head; LoRA
layers inside them keep working) in the order its decoder layer does, and saves three things:

- the plumbing above;
- the copies of the cache: the sampler's cache holds the same columns for a whole block (the prefix, or prefix
  and suffix) and re-feeds the same trailing ones every step (:class:`~dllm.core.sampling.forward.BlockForward`'s
  cache order), so :class:`LeanCache` keeps each layer's keys/values for the whole canvas in that order and
  writes the fed columns into their slots in place: no concatenation, no crop;
- the last layer's work on columns whose logits are not kept: keys and values are needed for every fed column
  (every query attends to them), but the last layer's queries, attention output, MLP and the final norm only for
  the ``keep`` columns, which alone reach the head. Exact: after the last attention no column reads another.
  On a 4-layer model that is about a fifth of a whole-canvas pass; on a 32-layer one about 3%.

What is ours and must match transformers: RoPE applied as ``x cos + rotate_half(x) sin``, Qwen3's per-head query
and key norms before it, and attention as ``scaled_dot_product_attention`` with the module's own ``scaling`` and
the padding mask as a boolean key mask, which is what transformers' SDPA mask is for a bidirectional model
(every query sees every real key). ``tests/core/test_sampling_lean.py`` checks the logits against transformers'
forward, per family, padded or not, in every cache mode, and the sampled tokens against the plain path.

Used only where all of that is known to hold (:func:`lean_decoder`): a dllm bidirectional wrapper of
transformers' own LLaMA, Qwen2 or Qwen3 class (no checkpoint code), SDPA attention, no sliding window, not a
block-diffusion model, in eval mode, under ``no_grad``, without extra model inputs and without forward hooks on
the modules it goes around (the model, its backbone, decoder layers and attention modules: a hook there, a
profiler's or a user's, means transformers' forward, so it runs). Everything else takes transformers' forward
(:func:`~dllm.core.sampling.forward.model_logits`).
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
import torch.nn.modules.module as global_hooks
from transformers.models.llama.modeling_llama import rotate_half

from dllm.core.models.masked_lm import BidirectionalMaskedLMMixin, block_diffusion_size

# model_type -> (the prefix of its transformers classes, whether its attention norms queries and keys per head).
# Their decoder layers are LLaMA's: x + attn(norm(x)), then x + mlp(norm(x)); the causal head is backbone -> lm_head.
LEAN_FAMILIES: dict[str, tuple[str, bool]] = {"llama": ("Llama", False), "qwen2": ("Qwen2", False),
                                              "qwen3": ("Qwen3", True)}

_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _is_transformers_class(obj: object, name: str) -> bool:
    cls = type(obj)
    return cls.__name__ == name and cls.__module__.startswith("transformers.models.")


def _layout_is_known(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a dllm wrapper of transformers' own class of a :data:`LEAN_FAMILIES` family whose
    forward this module reproduces (see the module docstring); checked once per model (SDPA: every time)."""
    config = getattr(model, "config", None)
    family = LEAN_FAMILIES.get(getattr(config, "model_type", None))
    if family is None or not isinstance(model, BidirectionalMaskedLMMixin):
        return False
    prefix, _ = family
    backbone = getattr(model, "model", None)
    layers = getattr(backbone, "layers", None)
    full_attention = all(kind == "full_attention" for kind in (getattr(config, "layer_types", None) or ()))
    return (_is_transformers_class(backbone, f"{prefix}Model") and layers is not None
            and all(_is_transformers_class(layer, f"{prefix}DecoderLayer") for layer in layers)
            and getattr(model, "lm_head", None) is not None
            and getattr(config, "sliding_window", None) is None and full_attention
            and block_diffusion_size(config) is None)


def _hooked(model: torch.nn.Module) -> bool:
    """Whether a forward hook would be skipped: on the model, its backbone, a decoder layer or its attention (the
    modules whose ``forward`` the lean loop replaces), or a global one."""
    if global_hooks._global_forward_hooks or global_hooks._global_forward_pre_hooks:
        return True
    layers = model.model.layers
    modules = [model, model.model, *layers, *(layer.self_attn for layer in layers)]
    return any(module._forward_hooks or module._forward_pre_hooks for module in modules)


def lean_decoder(model: torch.nn.Module, model_kwargs: dict | None = None) -> bool:
    """Whether the sampler may run ``model`` through :func:`lean_logits` (module docstring: when it is exact).
    A model with forward hooks on the modules the loop goes around takes transformers' forward, so they run."""
    if model_kwargs or model.training or torch.is_grad_enabled():
        return False
    if model not in _CHECKED:
        _CHECKED[model] = _layout_is_known(model)
    # The attention implementation can be switched on a loaded model (set_attn_implementation): read every time.
    sdpa = getattr(model.config, "_attn_implementation", None) == "sdpa"
    return _CHECKED[model] and sdpa and not _hooked(model)


class LeanCache:
    """Every layer's keys and values [B, H_kv, N, D] over the canvas in cache order (cached columns, then fed).
    The first forward of a block feeds every column and stores them; later ones feed the trailing columns from
    ``skip`` on and overwrite exactly those slots, so the buffer always holds N columns."""

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def update(self, layer: int, keys: torch.Tensor, values: torch.Tensor, skip: int) -> tuple[torch.Tensor, ...]:
        if layer == len(self.keys):  # the block-start forward: every column
            if skip:
                raise ValueError(f"LeanCache: layer {layer} is empty, its first forward must feed every column")
            self.keys.append(keys.contiguous())
            self.values.append(values.contiguous())
        else:
            self.keys[layer][:, :, skip:].copy_(keys)
            self.values[layer][:, :, skip:].copy_(values)
        return self.keys[layer], self.values[layer]


def _heads(projection: torch.nn.Module, x: torch.Tensor, head_dim: int, norm: torch.nn.Module | None) -> torch.Tensor:
    """``projection(x)`` [B, Q, H D] as heads [B, H, Q, D], normed per head first where the family does (Qwen3)."""
    states = projection(x).view(*x.shape[:-1], -1, head_dim)
    if norm is not None:
        states = norm(states)
    return states.transpose(1, 2)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' ``apply_rotary_pos_emb`` for one tensor [B, H, Q, D] (``cos``/``sin`` [B, Q, D])."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (x * cos) + (rotate_half(x) * sin)


def lean_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                positions: torch.Tensor, keep: torch.Tensor, cache: LeanCache | None = None,
                skip: int = 0) -> torch.Tensor:
    """The logits [B, K, V] of the input columns ``keep`` [K] of ``input_ids`` [B, Q] (at ``positions`` [B, Q]),
    as the model's forward computes them; ``attention_mask`` [B, N] covers the keys (the cache's ``skip`` columns
    and the input's; None: no padding). With a ``cache`` the input is the canvas in cache order from ``skip`` on."""
    backbone = model.model
    qk_norm = LEAN_FAMILIES[model.config.model_type][1]
    hidden = backbone.embed_tokens(input_ids)  # [B, Q, H]
    cos, sin = backbone.rotary_emb(hidden, positions)  # [B, Q, D]
    key_mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # [B, 1, 1, N]
    layers = backbone.layers[: model.config.num_hidden_layers]
    for index, layer in enumerate(layers):
        attention = layer.self_attn
        normed = layer.input_layernorm(hidden)
        last = index == len(layers) - 1
        rows, row_cos, row_sin = (normed[:, keep], cos[:, keep], sin[:, keep]) if last else (normed, cos, sin)
        head_dim = attention.head_dim
        queries = _rope(_heads(attention.q_proj, rows, head_dim, attention.q_norm if qk_norm else None),
                        row_cos, row_sin)
        keys = _rope(_heads(attention.k_proj, normed, head_dim, attention.k_norm if qk_norm else None), cos, sin)
        values = _heads(attention.v_proj, normed, head_dim, None)
        if cache is not None:
            keys, values = cache.update(index, keys, values, skip)
        out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=key_mask, scale=attention.scaling,
                                             enable_gqa=attention.num_key_value_groups > 1)  # [B, heads, R, D]
        out = attention.o_proj(out.transpose(1, 2).reshape(*rows.shape[:-1], -1))
        hidden = (hidden[:, keep] if last else hidden) + out
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return model.lm_head(backbone.norm(hidden))
