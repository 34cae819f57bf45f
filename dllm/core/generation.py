"""Compatibility module: the sampler lives in :mod:`dllm.core.sampling`; these names are re-exported from it."""

from dllm.core.sampling import (
    DiffusionGenerationConfig,
    GenerationOutput,
    StepRecord,
    TextGenerationOutput,
    answer_ids,
    denoise_step,
    encode_prompt,
    encode_prompts,
    generate,
    generate_text,
    generate_text_output,
    infill,
    infill_text,
    left_pad,
    tokens_per_step,
)

__all__ = [
    "DiffusionGenerationConfig",
    "GenerationOutput",
    "StepRecord",
    "TextGenerationOutput",
    "answer_ids",
    "denoise_step",
    "encode_prompt",
    "encode_prompts",
    "generate",
    "generate_text",
    "generate_text_output",
    "infill",
    "infill_text",
    "left_pad",
    "tokens_per_step",
]
