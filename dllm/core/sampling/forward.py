"""Running the model for one block: the whole canvas every step, or cached keys/values (Fast-dLLM).

Fast-dLLM (arXiv 2505.22618) reuses keys and values across the steps that refine one block:

- ``none``: every step runs the whole canvas [B, T]. Exact: the logits are the model's for the current canvas.
- ``prefix``: the first step of a block runs the whole canvas and keeps the keys/values of the prefix (prompt and
  finished blocks) in a :class:`transformers.DynamicCache`; later steps of the block run only the block and the
  masked suffix after it, attending to the cached prefix. After each step ``DynamicCache.crop`` drops the new
  positions again, so the cache always holds the prefix alone.
- ``dual``: the suffix is cached as well, so later steps run only the block [B, block_size].

When is this exact? The first step of every block is (it is the whole-canvas forward). In a later step the block
(and for ``prefix`` the suffix) are recomputed from the current canvas, but the cached keys/values are those of
the block start. In the first layer a position's key/value depend only on its own token and position, so they
are still right; in deeper layers they depend, through bidirectional attention, on every position, including the
block tokens committed since the block start, so they are stale. Hence, for dllm's bidirectional models:

- ``prefix`` and ``dual`` are exact when every block is decoded in a single step (``steps`` equal to the number of
  blocks, or a ``threshold`` met by the whole block at once) or when the model has a single layer;
- otherwise they are approximations, ``dual`` more so (its suffix is stale too). A single block covering the whole
  answer does *not* make ``prefix`` exact: the cached prompt's deeper keys/values depend on the answer tokens,
  which change every step. Caching would only be exact in general for a block-causal model, whose prefix never
  attends to later positions (BD3-LM, Fast-dLLM v2), which these models are not.

Cache order. ``DynamicCache`` appends new keys at the end, so a ``dual`` refinement step sees keys in the order
prefix, suffix, block (the block-start forward is run in that order, with the true ``position_ids``). Full
attention without a causal mask does not depend on key order (RoPE is applied from ``position_ids`` before
caching), so this changes nothing there; sliding-window masks are built from cache indices, so ``dual`` is
refused when a sliding window is shorter than the canvas (``prefix`` keeps the canvas order and is fine).

Extra model inputs (``model_kwargs``, e.g. a vision model's) follow one convention, so every cache mode can feed
them (:func:`split_model_kwargs`):

- *per position*: a tensor whose last two dimensions are the canvas [B, T] (multimodal rotary ``position_ids``
  [3, B, T], token types [B, T]). Every forward gets it gathered along the last dimension at the columns it feeds,
  in the order it feeds them, like the positions.
- *prompt-level*: anything else (``pixel_values`` [patches, D], ``image_grid_thw`` [images, 3]). It has no column
  to slice, so only a forward that feeds every canvas column gets it: every step with ``none``, the block-start
  forward with ``prefix`` and ``dual``. The prompt's cached keys/values then carry its effect (an image's
  features, added at its placeholder tokens) into the later steps, which feed no prompt column. Such an input must
  therefore concern prompt columns only (before the first block); a prompt-level tensor that happens to end in
  [B, T] would be sliced, so a model with one cannot use this convention.

Encoders (BERT, RoBERTa, ModernBERT: ``takes_kv_cache = False``, see :mod:`dllm.core.models.encoder`) keep no
keys/values, so ``prefix`` and ``dual`` fall back to ``none`` on them, with one log line (:func:`usable_cache`).

The guidance (``cfg_scale``) pass masks the prompt; it gets the positions alone (:class:`GuidedForward`).

Block diffusion. A block-diffusion model (``config.dllm_objective == "bd3lm"``, trained by
:class:`~dllm.core.trainers.BD3LMTrainer`) builds its block-causal mask in every forward: a block sees itself and
the blocks before it, never a later one. Its cache is therefore exact:

- ``block``: the keys/values of the prompt and of every finished block are kept across blocks in one
  :class:`transformers.DynamicCache`. A step feeds the current block only; the first step of a block also feeds what
  was committed since the cache was filled (the prompt, or the block just finished), which appends it, so committing
  a block costs no forward of its own. After each step ``crop`` drops the current block again. Nothing after the
  current block is fed, so the canvas past it is never read (the answer is open-ended up to ``gen_length``).
- ``none`` on such a model is the reference: the whole sequence up to the current block, recomputed every step
  (later columns would change nothing: no earlier block sees them). ``prefix`` is exact as well (its suffix is
  invisible); ``dual`` reorders keys, which the model's mask (built from key positions) cannot follow: refused.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel

from dllm.core.models.masked_lm import block_diffusion_size, text_config
from dllm.core.sampling.config import DiffusionGenerationConfig
from dllm.core.sampling.decisions import guide
from dllm.core.sampling.lean import LeanCache, lean_decoder, lean_logits

logger = logging.getLogger(__name__)

def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """``cumsum(attention_mask) - 1`` clamped at 0 [B, T]: each row counts from its first real token, so a
    left-padded prompt gets the positions it would have alone (padding gets 0 and is never attended)."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp_min(0)


@functools.lru_cache(maxsize=None)
def cache_argument(model_class: type) -> str:
    """The keyword a model's ``forward`` takes its cache by: transformers renamed ``past_key_values`` to ``cache``
    (the old name warns until 5.40), so read the first ``forward`` in the class hierarchy that names either."""
    for cls in model_class.__mro__:
        forward = cls.__dict__.get("forward")
        if forward is not None:
            parameters = inspect.signature(forward).parameters
            for name in ("cache", "past_key_values"):
                if name in parameters:
                    return name
    return "past_key_values"


def model_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 positions: torch.Tensor, keep: torch.Tensor, cache: DynamicCache | None = None,
                 model_kwargs: dict[str, Any] | None = None) -> torch.Tensor:
    """Float32 logits [B, K, V] of the input columns ``keep`` [K] of ``input_ids`` [B, Q].

    ``attention_mask`` covers the cached positions followed by the input ones [B, N + Q] (None: no padding);
    ``positions`` are [B, Q] or, for multimodal rotary embeddings, [3, B, Q]. ``model_kwargs`` (``pixel_values``,
    ...) are passed to the model unchanged (:class:`BlockForward` picks them per forward).
    The output head runs only on ``keep`` through transformers' own ``logits_to_keep`` (a 1-D index tensor, the
    same for every row), rather than a per-row ``[B, L]`` selection: left padding puts every row's block in the
    same columns, every ``*ForCausalLM`` already takes it (so plain causal classes loaded with ``is_causal=False``
    work too) and it slices the hidden states *before* the head, so heads with extra steps (Gemma 2's final logit
    softcapping) stay whole. With a 128k vocabulary the head is most of a step's cost.
    """
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, logits_to_keep=keep,
                use_cache=cache is not None, **{cache_argument(type(model)): cache}, **(model_kwargs or {}))
    logits = out.logits
    if logits.shape[1] != keep.numel():  # a model that ignores logits_to_keep returns every column
        logits = logits[:, keep]
    return logits.float()


def check_sliding_window(model: torch.nn.Module, length: int) -> None:
    """Refuse the ``dual`` cache when a sliding-window layer would see keys out of canvas order."""
    config = getattr(model, "config", None)
    if config is None:
        return
    config = text_config(config)
    window = getattr(config, "sliding_window", None)
    if window is not None and "sliding_attention" in (getattr(config, "layer_types", None) or ()) \
            and length - 1 > window:
        raise ValueError(f"cache='dual' needs the sliding window ({window}) to cover the canvas ({length} "
                         "positions): the cache reorders keys and windows are built from cache indices. "
                         "Use cache='prefix' or 'none'.")


def check_cache_mode(model: torch.nn.Module, cache: str) -> None:
    """Refuse ``block`` on a model that is not block-diffusion and ``dual`` on one that is (see the module
    docstring)."""
    block_diffusion = block_diffusion_size(getattr(model, "config", None)) is not None
    if cache == "block" and not block_diffusion:
        raise ValueError("cache='block' needs a block-diffusion model (config.json dllm_objective 'bd3lm', trained "
                         "with dllm sft --objective bd3lm); this one attends over the whole answer: use 'none', "
                         "'prefix' or 'dual'")
    if cache == "dual" and block_diffusion:
        raise ValueError("cache='dual' reorders the cached keys, which a block-diffusion model's mask cannot "
                         "follow; use cache='block' (exact)")


_FELL_BACK: set[tuple[type, str]] = set()


def usable_cache(model: torch.nn.Module, cache: str) -> str:
    """``cache``, or ``"none"`` for ``prefix`` / ``dual`` on a model that keeps no keys and values (an encoder:
    ``takes_kv_cache = False``), logged once per model class and mode: ``none`` computes exactly what those caches
    approximate, so the answers are the exact ones, only without the saving (and every verb, a sweep over cache
    modes, a served request naming a cache, keeps working)."""
    if cache not in ("prefix", "dual") or getattr(model, "takes_kv_cache", True):
        return cache
    if (type(model), cache) not in _FELL_BACK:
        _FELL_BACK.add((type(model), cache))
        logger.warning("cache=%r needs a key/value cache, which %s (an encoder) does not keep: sampling with "
                       "cache='none' (exact; each step runs the whole canvas)", cache, type(model).__name__)
    return "none"


def split_model_kwargs(model_kwargs: dict[str, Any] | None,
                       canvas: torch.Size | tuple[int, int]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(per_position, prompt_level)``: the entries of ``model_kwargs`` that are tensors ending in the ``canvas``
    shape [B, T] (sliced per forward), and the others (only for forwards that feed every column); see the module
    docstring."""
    per_position, prompt_level = {}, {}
    for name, value in (model_kwargs or {}).items():
        ends_in_canvas = isinstance(value, torch.Tensor) and tuple(value.shape[-2:]) == tuple(canvas)
        (per_position if ends_in_canvas else prompt_level)[name] = value
    return per_position, prompt_level


class BlockForward:
    """Logits of columns of the current block ``[start, end)`` under one cache setting; one instance per block.

    ``order`` lists the canvas columns in cache order: those kept in the cache, then those fed every step.
    ``positions`` [..., B, T] and the per-position ``model_kwargs`` are sliced along the last dimension to the fed
    columns; prompt-level ``model_kwargs`` go only to the calls that feed every column (see the module docstring).
    With ``cache="block"`` the cache is carried over from the ``previous`` block's instance.

    A forward feeds ``order[skip:]`` for one of at most a few ``skip`` values per block (0: every column; the
    cached count: the fed ones), so its inputs other than the canvas (attention mask, positions, where each canvas
    column sits in the input) are sliced once per ``skip`` and reused: on a small model those slices, not the
    matmuls, are much of a step (``benchmarks/sampler_upstream.py``).
    """

    def __init__(self, model: torch.nn.Module, cache: str, attention_mask: torch.Tensor, positions: torch.Tensor,
                 start: int, end: int, model_kwargs: dict[str, Any] | None = None,
                 previous: BlockForward | None = None):
        columns = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # [T]
        block_diffusion = block_diffusion_size(getattr(model, "config", None)) is not None
        if block_diffusion:
            columns = columns[:end]  # a block-causal model: later columns are never seen
        self.fed = {"none": columns, "prefix": columns[start:], "dual": columns[start:end],
                    "block": columns[start:end]}[cache]
        cached = torch.cat([columns[:start], columns[end:]]) if cache == "dual" else columns[:start]
        self.order = self.fed if cache == "none" else torch.cat([cached, self.fed])  # [T]
        self.model, self.attention_mask, self.positions = model, attention_mask, positions
        self.use_cache, self.cache, self.calls = cache != "none", None, 0
        self.carried = cache == "block"
        if self.carried:
            self.cache = previous.cache if previous is not None else DynamicCache()
        self.per_position, self.prompt_level = split_model_kwargs(model_kwargs, attention_mask.shape)
        # Without padding a transformers model gets no mask: it drops an all-ones mask itself (SDPA) or adds zeros
        # (eager), so the logits are the same, minus the mask builder's checks in every forward. A block-diffusion
        # model builds its block-causal mask from this one, and a model with extra inputs, or any other module,
        # may read it: kept there.
        self.maskless = (isinstance(model, PreTrainedModel) and not block_diffusion and not model_kwargs
                         and bool(attention_mask.all()))
        self._inputs: dict[int, tuple] = {}
        # transformers' own LLaMA / Qwen2 / Qwen3 run through dllm's lean loop (same modules, same logits; no
        # per-forward plumbing, a cache written in place): see dllm.core.sampling.lean for why and when.
        self.lean = lean_decoder(model, model_kwargs)

    def inputs(self, skip: int) -> tuple[torch.Tensor | slice, torch.Tensor, torch.Tensor | None, torch.Tensor,
                                         dict[str, Any]]:
        """``(take, where, attention_mask, positions, kwargs)`` of a forward feeding ``order[skip:]``: ``take``
        picks those canvas columns (a slice when they are contiguous: a view, no copy), ``where`` maps a canvas
        column to its input index (-1: not fed). Built once per ``skip``."""
        if skip not in self._inputs:
            columns = self.order[skip:]  # [Q]
            where = torch.full_like(self.order, -1)
            where[columns] = torch.arange(len(columns), device=columns.device)  # canvas column -> input index
            first = int(columns[0]) if len(columns) else 0
            contiguous = bool((columns == torch.arange(first, first + len(columns), device=columns.device)).all())
            take = slice(first, first + len(columns)) if contiguous else columns
            kwargs = {name: value[..., take] for name, value in self.per_position.items()}  # [..., B, Q]
            if len(columns) == len(self.order):  # every canvas column is fed: the prompt's own inputs too
                kwargs.update(self.prompt_level)
            mask = None if self.maskless else self.attention_mask[:, self.order]
            self._inputs[skip] = (take, where, mask, self.positions[..., take], kwargs)
        return self._inputs[skip]

    def __call__(self, x: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Logits [B, C, V] of canvas columns ``cols`` [C] (inside the block) for the canvas ``x`` [B, T]."""
        first = self.use_cache and self.cache is None
        if first:  # block start: the whole canvas, in cache order, fills the cache
            self.cache = LeanCache() if self.lean else DynamicCache()
        skip = 0 if first else len(self.order) - len(self.fed)
        if self.carried:  # what was committed since the cache was filled, then the block
            skip = self.cache.get_seq_length()
        take, where, mask, positions, kwargs = self.inputs(skip)
        # Under no_grad (the sampler's loop) the model runs in inference mode: no version counters or view
        # tracking on the hundreds of small tensors of a pass (about 7% of a tiny model's step). Only the logits
        # leave it, cloned into an ordinary tensor; the cache's tensors are only ever used inside it.
        inference = not torch.is_grad_enabled()
        with torch.inference_mode(inference):
            if self.lean:  # its cache rewrites the fed columns' slots in place: nothing to crop
                logits = lean_logits(self.model, x[:, take], mask, positions, where[cols], self.cache, skip).float()
            else:
                logits = model_logits(self.model, x[:, take], mask, positions, where[cols], self.cache, kwargs)
                if self.cache is not None:
                    self.cache.crop(-len(self.fed))  # keep the cached columns only (negative: portable across 5.x)
        self.calls += 1
        return logits.clone() if inference else logits


class GuidedForward:
    """The block's logits with classifier-free guidance: a second, unconditional :class:`BlockForward` (own cache)
    sees the canvas with the ``conditioning`` positions [B, T] (the prompt) replaced by mask tokens.

    The unconditional pass keeps the positions (the answer sits where it does in the conditional pass, as in
    LLaDA's text guidance) and gets no ``model_kwargs``: they describe the prompt's content, which is masked. For a
    vision model that is the standard unconditional input: text and image placeholders masked, no image.
    """

    def __init__(self, model: torch.nn.Module, config: DiffusionGenerationConfig, attention_mask: torch.Tensor,
                 positions: torch.Tensor, block: tuple[int, int], conditioning: torch.Tensor,
                 model_kwargs: dict[str, Any] | None = None, previous: GuidedForward | None = None):
        check_cache_mode(model, config.cache)
        cache = usable_cache(model, config.cache)
        if cache == "dual":
            check_sliding_window(model, attention_mask.shape[1])
        self.cond = BlockForward(model, cache, attention_mask, positions, *block, model_kwargs,
                                 previous=None if previous is None else previous.cond)
        self.uncond = BlockForward(model, cache, attention_mask, positions, *block,
                                   previous=None if previous is None else previous.uncond) \
            if config.cfg_scale > 0 else None
        self.conditioning, self.config = conditioning, config

    @property
    def calls(self) -> int:
        """Model forward passes so far (two per step with guidance)."""
        return self.cond.calls + (self.uncond.calls if self.uncond is not None else 0)

    def __call__(self, x: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        logits = self.cond(x, cols)  # [B, C, V]
        if self.uncond is None:
            return logits
        uncond = self.uncond(x.masked_fill(self.conditioning, self.config.mask_token_id), cols)  # [B, C, V]
        return guide(logits, uncond, self.config.cfg_scale)
