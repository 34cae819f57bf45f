"""The sampler: one step function and the short loop around it, for generation and infilling.

Generation starts from the prompt followed by ``gen_length`` mask tokens (MDLM arXiv 2406.07524; LLaDA arXiv
2502.09992). The answer is split into blocks decoded left to right; each step of a block predicts its masked
positions, scores them (see :func:`~dllm.core.sampling.decisions.confidence`) and commits the best ``k`` of every row
(``k`` spreads the block's positions evenly over its steps), plus, with a threshold, every position scoring above
it. Committed tokens are never masked again. Infilling runs the same loop on a given canvas whose masked
positions are filled; the other tokens never change.

Prompts are left-padded (``attention_mask`` marks real tokens, ``position_ids`` skip the padding), so every row's
block occupies the same columns and a prompt's output at temperature 0 does not depend on its batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dllm.core.models.masked_lm import block_diffusion_size
from dllm.core.sampling.config import DiffusionGenerationConfig
from dllm.core.sampling.decisions import confidence, sample_tokens, select_commits
from dllm.core.sampling.forward import GuidedForward, position_ids
from dllm.core.sampling.schedule import block_bounds, commit_counts, steps_per_block

Spans = list[tuple[int, int]]


@dataclass
class StepRecord:
    """What one step did, on the CPU: ``committed`` [B, T] bool, ``tokens`` [B, T] the canvas after the step,
    ``confidence`` [B, T] the score of each committed position (NaN elsewhere)."""

    block: int
    step: int
    committed: torch.Tensor
    tokens: torch.Tensor
    confidence: torch.Tensor


BlockCallback = Callable[[int, torch.Tensor, list[StepRecord]], None]
"""``on_block(index, x, steps)``: called by :func:`denoise` (and :func:`generate`) after block ``index`` is finished,
from the thread running the sampler, with the canvas ``x`` [B, T] (on the model's device; later masked
positions are still masks, or EOS in rows that finished) and that block's :class:`StepRecord` list (empty
unless ``config.record_history``). It must not modify ``x``."""


@dataclass
class GenerationOutput:
    """``sequences`` [B, T] (prompt and answer, or the filled canvas), the number of model forward passes, and the
    per-step history when ``config.record_history`` is set (else ``None``)."""

    sequences: torch.Tensor
    forward_passes: int
    history: list[StepRecord] | None = None


def denoise_step(forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                 block: tuple[int, int], steps_left: int, config: DiffusionGenerationConfig,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step on the block columns ``[a, b)`` of the canvas ``x`` [B, T]: logits of the columns still masked in
    some row (``forward(x, cols)``, the head runs only there), a token and a score for each, then per row the
    ``ceil(masked / steps_left)`` best plus those over the threshold are committed.

    Returns the new canvas, the committed positions [B, T] and their scores [B, T] (NaN elsewhere).
    """
    cols = masked_columns(x, block, config)
    x, commit, score = commit_step(forward, x, cols, steps_left, config, generator)
    return (x, *step_record(x, cols, commit, score))


def masked_columns(x: torch.Tensor, block: tuple[int, int], config: DiffusionGenerationConfig) -> torch.Tensor:
    """The columns [C] of the block ``[a, b)`` of ``x`` [B, T] still masked in some row (empty: block done)."""
    a, b = block
    return (x[:, a:b] == config.mask_token_id).any(dim=0).nonzero().squeeze(-1) + a  # [C]


def commit_step(forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, cols: torch.Tensor,
                steps_left: int, config: DiffusionGenerationConfig, generator: torch.Generator | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`denoise_step` on the masked columns ``cols`` [C]: the new canvas, which of them were committed
    [B, C] and their scores [B, C]. The [B, T] record is built only when asked for (:func:`step_record`): the
    loop without history does not pay two canvas-sized tensors a step."""
    logits = forward(x, cols)  # [B, C, V]
    logits[..., config.mask_token_id] = float("-inf")  # a committed position must not hold the mask token
    tokens = sample_tokens(logits, config.temperature, config.top_k, config.top_p, generator)  # [B, C]
    score = confidence(logits, tokens, config.remasking, generator)  # [B, C]
    current = x[:, cols]  # [B, C]
    masked = current == config.mask_token_id  # [B, C]
    commit = select_commits(score, masked, commit_counts(masked.sum(dim=-1), steps_left), config.threshold)
    x = x.clone()
    x[:, cols] = torch.where(commit, tokens, current)
    return x, commit, score


def step_record(x: torch.Tensor, cols: torch.Tensor, commit: torch.Tensor,
                score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The committed positions [B, T] and their scores [B, T] (NaN elsewhere) of a step on ``cols``."""
    committed = torch.zeros_like(x, dtype=torch.bool)
    committed[:, cols] = commit
    scores = torch.full(x.shape, float("nan"), device=x.device)
    scores[:, cols] = torch.where(commit, score, float("nan"))
    return committed, scores


def finish_at_eos(x: torch.Tensor, start: int, end: int, config: DiffusionGenerationConfig,
                  given: torch.Tensor | None = None) -> tuple[torch.Tensor, bool]:
    """After the blocks up to ``end`` are done: rows whose answer ``[start, end)`` holds EOS are finished and their
    masked positions after ``end`` become EOS. ``given`` [B, T] marks prompt tokens inside the blocks (a
    block-diffusion canvas), whose EOS does not count. Returns the canvas and whether every row is finished."""
    eos = x[:, start:end] == config.eos_token_id  # [B, end - start]
    if given is not None:
        eos &= ~given[:, start:end]
    finished = eos.any(dim=-1)  # [B]
    rest = x[:, end:]  # [B, T - end]
    fill = finished[:, None] & (rest == config.mask_token_id)
    x[:, end:] = rest.masked_fill(fill, config.eos_token_id)
    return x, bool(finished.all())


@torch.no_grad()
def denoise(model: torch.nn.Module, x: torch.Tensor, attention_mask: torch.Tensor, config: DiffusionGenerationConfig,
            start: int, conditioning: torch.Tensor, stop_at_eos: bool = False,
            generator: torch.Generator | None = None, on_block: BlockCallback | None = None,
            model_kwargs: dict[str, Any] | None = None) -> GenerationOutput:
    """Fill the masked positions of columns ``[start, T)`` of ``x`` [B, T], block by block.

    ``conditioning`` [B, T] marks what the unconditional (guidance) pass masks out. With ``stop_at_eos`` the loop
    ends once every row has finished a block holding EOS. ``on_block(index, x, steps)`` is called after each
    finished block (see :data:`BlockCallback`), so a caller can show or stream an answer while the loop runs.
    ``model_kwargs``: see :func:`generate`.
    """
    extra = dict(model_kwargs or {})
    positions = extra.pop("position_ids", None)  # [..., B, T], e.g. multimodal rotary positions [3, B, T]
    if positions is None:
        positions = position_ids(attention_mask)  # [B, T]
    elif positions.shape[-2:] != x.shape:
        raise ValueError(f"model_kwargs['position_ids'] must end in the canvas shape [B, T] = {list(x.shape)}, "
                         f"got {list(positions.shape)}")
    blocks = block_bounds(start, x.shape[1], config.block_size)
    budgets = steps_per_block(config.steps, [b - a for a, b in blocks])
    history, passes = [], 0
    bar = tqdm(total=sum(budgets), unit="step", leave=False, disable=not config.progress)
    forward = None
    for index, (block, budget) in enumerate(zip(blocks, budgets)):
        forward, first = GuidedForward(model, config, attention_mask, positions, block, conditioning,
                                       extra or None, previous=forward), len(history)
        for step in range(budget):
            cols = masked_columns(x, block, config)
            if not len(cols):
                break  # done early: the threshold, or an infilled block with fewer masks than steps
            x, commit, score = commit_step(forward, x, cols, budget - step, config, generator)
            if config.record_history:
                committed, scores = step_record(x, cols, commit, score)
                history.append(StepRecord(index, step, committed.cpu(), x.cpu(), scores.cpu()))
            bar.update()
        passes += forward.calls
        done = False
        if stop_at_eos and config.eos_token_id is not None:
            x, done = finish_at_eos(x, start, block[1], config, conditioning)
        if on_block is not None:
            on_block(index, x, history[first:])
        if done:
            break
    bar.close()
    return GenerationOutput(x, passes, history if config.record_history else None)


def _mask_token_id(config: DiffusionGenerationConfig) -> int:
    if config.mask_token_id is None:
        raise ValueError("DiffusionGenerationConfig.mask_token_id is required")
    return config.mask_token_id


@torch.no_grad()
def generate(model: torch.nn.Module, prompt_ids: torch.Tensor, config: DiffusionGenerationConfig,
             attention_mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
             on_block: BlockCallback | None = None,
             model_kwargs: dict[str, Any] | None = None) -> GenerationOutput:
    """Fill ``config.gen_length`` masked positions after the left-padded ``prompt_ids`` [B, P].

    ``attention_mask`` [B, P] marks real prompt tokens (1) and left padding (0). ``sequences`` is [B, P + G] with
    no mask token left in the answer (a finished row's tail is EOS). ``on_block``: see :data:`BlockCallback`.

    ``model_kwargs``: extra model inputs over the canvas [B, P + G] (a vision model's ``pixel_values``,
    ``image_grid_thw``, ``mm_token_type_ids``...), for every cache mode and guidance. ``position_ids`` among them
    (``[..., B, P + G]``, e.g. multimodal rotary positions [3, B, P + G]) replaces the positions derived from
    ``attention_mask``; mask tokens are text, so positions never change while denoising. Other tensors ending in
    [B, P + G] are per position, sliced to the columns each forward feeds; the rest (``pixel_values``) concern the
    prompt and go only to forwards that feed the whole canvas, the caches keep their effect; the guidance pass
    masks the prompt and gets the positions alone (see :mod:`dllm.core.sampling.forward`). Model-specific
    preparation (rotary positions, token types over the answer) lives in the pipelines, e.g.
    :func:`dllm.pipelines.qwen3_vl.generation.prepare_generation_inputs`.
    """
    mask_id = _mask_token_id(config)
    if config.steps is not None and config.steps > config.gen_length:
        raise ValueError(f"steps must be in [1, gen_length={config.gen_length}], got {config.steps}")
    if attention_mask is None:
        attention_mask = torch.ones_like(prompt_ids)
    block = block_diffusion_size(getattr(model, "config", None))
    if block is not None:
        return _generate_blocks(model, prompt_ids, attention_mask, config, block, generator, on_block, model_kwargs)
    batch, prompt_len = prompt_ids.shape
    answer = torch.full((batch, config.gen_length), mask_id, dtype=prompt_ids.dtype, device=prompt_ids.device)
    x = torch.cat([prompt_ids, answer], dim=1)  # [B, P + G]
    attention = torch.cat([attention_mask, torch.ones_like(answer)], dim=1)  # [B, P + G]
    conditioning = F.pad(attention_mask.bool(), (0, config.gen_length))  # [B, P + G], the real prompt
    return denoise(model, x, attention, config, prompt_len, conditioning, stop_at_eos=True, generator=generator,
                   on_block=on_block, model_kwargs=model_kwargs)


@dataclass
class BlockLayout:
    """Where a left-padded batch of prompts sits on a block-diffusion canvas: every row's position 0 at a multiple
    of the block size, so blocks (``position // block_size``, aligned to the sequence start as in training) share
    their columns across rows.

    Row ``r`` with ``P_r`` prompt tokens has ``floor(P_r / B)`` whole prompt blocks, which end at column ``start``
    in every row (``offset[r]`` = its column of position 0, a multiple of ``B``); its remaining ``P_r mod B`` prompt
    tokens open the first decoded block ``[start, start + B)``, followed by its ``gen_length`` answer positions.
    Columns past a row's answer (in the last block) are padding.
    """

    start: int
    offset: torch.Tensor  # [B]
    lengths: torch.Tensor  # [B]
    gen_length: int
    width: int

    @classmethod
    def of(cls, attention_mask: torch.Tensor, block_size: int, gen_length: int) -> BlockLayout:
        lengths = attention_mask.long().sum(dim=1)  # [B]
        whole = lengths // block_size * block_size  # [B]
        start = int(whole.max())
        blocks = -(-(int((lengths - whole).max()) + gen_length) // block_size)
        return cls(start, start - whole, lengths, gen_length, start + blocks * block_size)

    def canvas(self, prompt_ids: torch.Tensor,
               config: DiffusionGenerationConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x, attention_mask, given)`` [B, width]: prompts, answer masks and padding; ``given`` marks prompts."""
        index = torch.arange(self.width, device=prompt_ids.device) - self.offset[:, None]  # [B, W] position
        given = (index >= 0) & (index < self.lengths[:, None])
        answer = (index >= self.lengths[:, None]) & (index < self.lengths[:, None] + self.gen_length)
        source = (index + prompt_ids.shape[1] - self.lengths[:, None]).clamp(0, prompt_ids.shape[1] - 1)
        x = torch.where(given, prompt_ids.gather(1, source), config.pad_token_id)
        x = x.masked_fill(answer, config.mask_token_id)
        return x, (given | answer).long(), given

    def to_caller(self, prompt_part: torch.Tensor, canvas: torch.Tensor) -> torch.Tensor:
        """``prompt_part`` [B, P] followed by each row's answer columns of ``canvas`` [B, width]: [B, P + G]."""
        columns = (self.offset + self.lengths)[:, None] + torch.arange(self.gen_length, device=canvas.device)
        return torch.cat([prompt_part.to(canvas.dtype), canvas.gather(1, columns)], dim=1)

    def record(self, prompt_ids: torch.Tensor, step: StepRecord) -> StepRecord:
        """A step's record in the caller's layout (prompt columns: not committed, no score)."""
        nothing = torch.zeros(prompt_ids.shape, dtype=torch.bool)
        return StepRecord(step.block, step.step, self.to_caller(nothing, step.committed.cpu()),
                          self.to_caller(prompt_ids.cpu(), step.tokens.cpu()),
                          self.to_caller(torch.full(prompt_ids.shape, float("nan")), step.confidence.cpu()))


def _generate_blocks(model: torch.nn.Module, prompt_ids: torch.Tensor, attention_mask: torch.Tensor,
                     config: DiffusionGenerationConfig, block_size: int, generator: torch.Generator | None,
                     on_block: BlockCallback | None, model_kwargs: dict[str, Any] | None) -> GenerationOutput:
    """:func:`generate` for a block-diffusion model: blocks of the model's own size, aligned to each sequence's
    start (:class:`BlockLayout`), decoded left to right until every row has EOS or ``gen_length`` answer tokens.
    Returns the caller's layout, ``[B, P + G]`` (history and ``on_block`` canvases too). ``steps`` is spread over
    the canvas's blocks, whose number depends on where the batch's prompts end inside a block; with ``steps=None``
    (one token per step) or a threshold alone, a prompt's answer does not depend on its batch."""
    if model_kwargs:
        raise ValueError("block-diffusion decoding takes text prompts only (no model_kwargs)")
    if config.block_size not in (None, block_size):
        raise ValueError(f"block_size={config.block_size}, but the model is block-diffusion with blocks of "
                         f"{block_size}: leave block_size unset or set it to {block_size}")
    config = replace(config, block_size=block_size)
    layout = BlockLayout.of(attention_mask, block_size, config.gen_length)
    x, attention, given = layout.canvas(prompt_ids, config)
    caller = None if on_block is None else lambda index, canvas, steps: on_block(
        index, layout.to_caller(prompt_ids, canvas), [layout.record(prompt_ids, step) for step in steps])
    out = denoise(model, x, attention, config, layout.start, given, stop_at_eos=True, generator=generator,
                  on_block=caller)
    history = None if out.history is None else [layout.record(prompt_ids, step) for step in out.history]
    return GenerationOutput(layout.to_caller(prompt_ids, out.sequences), out.forward_passes, history)


def generation_defaults(model_config: Any, **values: Any) -> DiffusionGenerationConfig:
    """The sampler settings a checkpoint saves with ``model_config``: ``values``, plus ``cache="block"`` and the
    model's ``block_size`` for a block-diffusion model (its exact cache; blocks must be the trained ones)."""
    block = block_diffusion_size(model_config)
    if block is not None:
        values = {"cache": "block", "block_size": block, **values}
    return DiffusionGenerationConfig(**values)


def mask_spans(input_ids: torch.Tensor, spans: Spans | list[Spans], mask_token_id: int,
               attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """A copy of ``input_ids`` [B, L] with mask tokens on ``(start, length)`` spans, counted from each row's first
    real token (left padding skipped); one list of spans for every row, or one list per row."""
    per_row = spans if spans and isinstance(spans[0][0], (list, tuple)) else [spans] * len(input_ids)
    if len(per_row) != len(input_ids):
        raise ValueError(f"got span lists for {len(per_row)} rows, input_ids has {len(input_ids)}")
    lengths = (attention_mask.sum(dim=1) if attention_mask is not None
               else torch.full((len(input_ids),), input_ids.shape[1])).tolist()
    out = input_ids.clone()
    for row, (row_spans, length) in enumerate(zip(per_row, lengths)):
        offset = input_ids.shape[1] - length
        for start, size in row_spans:
            if start < 0 or size < 0 or start + size > length:
                raise ValueError(f"span (start={start}, length={size}) of row {row} is outside its {length} tokens")
            out[row, offset + start: offset + start + size] = mask_token_id
    return out


@torch.no_grad()
def infill(model: torch.nn.Module, input_ids: torch.Tensor, config: DiffusionGenerationConfig,
           attention_mask: torch.Tensor | None = None, spans: Spans | list[Spans] | None = None,
           generator: torch.Generator | None = None) -> GenerationOutput:
    """Fill the mask tokens of the left-padded ``input_ids`` [B, L] (or the ``spans``, see :func:`mask_spans`).

    Every other token is kept. Blocks start at the first masked column; ``gen_length`` is not used, ``steps`` is
    spread over the blocks and is an upper bound (rows with fewer masked positions finish earlier).
    """
    mask_id = _mask_token_id(config)
    if block_diffusion_size(getattr(model, "config", None)) is not None:
        raise ValueError("infilling needs a model that sees both sides of a gap; a block-diffusion model sees only "
                         "earlier blocks: use generate")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if spans is not None:
        input_ids = mask_spans(input_ids, spans, mask_id, attention_mask)
    masked = (input_ids == mask_id) & attention_mask.bool()  # [B, L]
    if not masked.any():
        return GenerationOutput(input_ids.clone(), 0, [] if config.record_history else None)
    start = int(masked.any(dim=0).nonzero()[0, 0])
    conditioning = attention_mask.bool() & ~masked  # the given tokens
    return denoise(model, input_ids.clone(), attention_mask, config, start, conditioning, generator=generator)
