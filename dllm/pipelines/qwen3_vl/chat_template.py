"""Qwen's special tokens and Qwen3-VL's chat template reduced to what SFT and sampling need, for the offline
tokenizers built in-process (:mod:`dllm.pipelines.qwen3_vl.testing`: the tiny Qwen3-VL of the tests and of the visual
demo); a hub checkpoint brings its own."""

from __future__ import annotations

# Qwen's special tokens, in the id order of the offline tokenizers (after their unknown token).
QWEN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                       "<|image_pad|>", "<|video_pad|>"]

# Qwen3-VL's template, reduced: string or [{"type": "image"|"text"}] content; an image renders as Qwen3-VL's
# ``<|vision_start|><|image_pad|><|vision_end|>``, which the processor expands to the image's tokens.
QWEN3_VL_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
