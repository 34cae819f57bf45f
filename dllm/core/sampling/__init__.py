"""Masked-diffusion sampling: a config, one function per decision, one step function and a short loop.

- :mod:`~dllm.core.sampling.config`: :class:`DiffusionGenerationConfig` (blocks, remasking, temperature / top-k /
  top-p, threshold, classifier-free guidance, cache).
- :mod:`~dllm.core.sampling.schedule`: how many positions a step commits, steps per block.
- :mod:`~dllm.core.sampling.decisions`: guide, filter, sample, score, select.
- :mod:`~dllm.core.sampling.forward`: the model call (head only on the committable columns), the
  prefix / dual key-value caches, with when they are exact, and which extra model inputs (``model_kwargs``, e.g.
  an image's) each forward gets.
- :mod:`~dllm.core.sampling.loop`: :func:`denoise_step`, :func:`generate`, :func:`infill`.
- :mod:`~dllm.core.sampling.text`: chat-templated prompts in, answers out.
"""

from dllm.core.sampling.config import CACHE_MODES, GENERATION_CONFIG_NAME, REMASKING, DiffusionGenerationConfig
from dllm.core.sampling.decisions import confidence, filter_logits, guide, sample_tokens, select_commits
from dllm.core.sampling.forward import BlockForward, GuidedForward, model_logits, position_ids
from dllm.core.sampling.loop import (
    BlockLayout,
    GenerationOutput,
    StepRecord,
    denoise,
    denoise_step,
    finish_at_eos,
    generate,
    generation_defaults,
    infill,
    mask_spans,
)
from dllm.core.sampling.schedule import block_bounds, commit_counts, steps_per_block, tokens_per_step
from dllm.core.sampling.text import (
    TextGenerationOutput,
    answer_ids,
    encode_prompt,
    encode_prompts,
    generate_text,
    generate_text_output,
    infill_text,
    left_pad,
    with_tokenizer_ids,
)

__all__ = [
    "CACHE_MODES",
    "GENERATION_CONFIG_NAME",
    "REMASKING",
    "BlockForward",
    "BlockLayout",
    "DiffusionGenerationConfig",
    "GenerationOutput",
    "GuidedForward",
    "StepRecord",
    "TextGenerationOutput",
    "answer_ids",
    "block_bounds",
    "commit_counts",
    "confidence",
    "denoise",
    "denoise_step",
    "encode_prompt",
    "encode_prompts",
    "filter_logits",
    "finish_at_eos",
    "generate",
    "generate_text",
    "generate_text_output",
    "generation_defaults",
    "guide",
    "infill",
    "infill_text",
    "left_pad",
    "mask_spans",
    "model_logits",
    "position_ids",
    "sample_tokens",
    "select_commits",
    "steps_per_block",
    "tokens_per_step",
    "with_tokenizer_ids",
]
