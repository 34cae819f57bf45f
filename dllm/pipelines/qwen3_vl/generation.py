"""Answering questions about images by iterative denoising with a Qwen3-VL masked diffusion model.

The core sampler (:func:`dllm.core.sampling.generate`) takes the extra model inputs as ``model_kwargs``; what is
Qwen3-VL specific is prepared here, once, for the whole canvas (prompt and ``gen_length`` masked answer positions):

- ``pixel_values`` and ``image_grid_thw`` from the processor's image processor (prompt-level inputs);
- ``mm_token_type_ids`` [B, P + G]: 1 on image placeholders, 0 elsewhere (the answer is text);
- ``position_ids`` [3, B, P + G]: the multimodal rotary positions of ``model.model.get_rope_index``. Mask tokens
  are text tokens, so these positions hold for every denoising step, whatever tokens get committed.

Prompts are left-padded, as everywhere in the sampler. Every sampler setting works with images
(:mod:`dllm.core.sampling.forward` has the convention): with ``cache="prefix"`` or ``"dual"`` the block-start
forward runs the whole canvas with the image (vision tower, DeepStack features at the placeholders) and caches the
prompt's keys/values; later steps feed only the block (and suffix) with the matching slices of ``position_ids``
and ``mm_token_type_ids`` and no ``pixel_values``. With ``cfg_scale > 0`` the unconditional pass masks the whole
prompt, text and image placeholders alike, and gets no image and no token types, only the same positions: the
standard unconditional input of a vision-language model (the image dropped), at the answer's own positions.

Example::

    model = Qwen3VLForMaskedLM.from_pretrained(checkpoint).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    config = with_tokenizer_ids(DiffusionGenerationConfig(gen_length=32), processor.tokenizer)
    print(answer_image_question(model, processor, Image.open("table.png"), "What is in row 2?", config))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from dllm.core.sampling import DiffusionGenerationConfig, answer_ids, generate, left_pad

if TYPE_CHECKING:
    from transformers import ProcessorMixin
    from PIL.Image import Image as PILImage

Conversation = list[dict[str, Any]]


def conversation_images(messages: Conversation) -> list[Any]:
    """The images of a conversation in order: each ``{"type": "image", "image": ...}`` content part's image."""
    return [part["image"] for message in messages if not isinstance(message["content"], str)
            for part in message["content"] if part.get("type") == "image"]


@dataclass
class EncodedConversation:
    """One conversation through the processor: the costly part of preparing a prompt (the chat template, resizing
    and patching its images), kept so that a prompt counted for its length, or asked for ``n`` answers, is not
    processed again; it fits any batch and any ``gen_length``. ``len()`` is its tokens, image placeholders
    included."""

    input_ids: list[int]
    pixel_values: torch.Tensor | None = None  # [patches, D]
    image_grid_thw: torch.Tensor | None = None  # [images, 3]

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_conversation(processor: ProcessorMixin, messages: Conversation) -> EncodedConversation:
    """``messages`` (answered after the generation prompt) through the checkpoint's processor."""
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    images = conversation_images(messages)
    encoded = processor(text=[text], images=images or None, return_tensors="pt")
    if not images:
        return EncodedConversation(encoded["input_ids"][0].tolist())
    return EncodedConversation(encoded["input_ids"][0].tolist(), encoded["pixel_values"], encoded["image_grid_thw"])


def prepare_generation_inputs(model: torch.nn.Module, processor: ProcessorMixin,
                              conversations: list[Conversation | EncodedConversation], gen_length: int,
                              ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """``(prompt_ids [B, P], attention_mask [B, P], model_kwargs)`` for :func:`~dllm.core.sampling.generate`.

    ``conversations``: chat messages whose content is a string or Qwen parts (``{"type": "image", "image":
    PIL image}``, ``{"type": "text", "text": ...}``), answered after the generation prompt, or such conversations
    already through :func:`encode_conversation` (not processed again). Prompts are left-padded with the tokenizer's
    pad token; ``model_kwargs`` hold ``position_ids`` [3, B, P + gen_length] and, when any conversation has images,
    ``mm_token_type_ids`` [B, P + gen_length], ``pixel_values`` (in the vision tower's dtype) and
    ``image_grid_thw``, all on the model's device. Rows with and without images mix in one batch; every sampler
    setting (caches, guidance) takes these inputs.
    """
    rows = [c if isinstance(c, EncodedConversation) else encode_conversation(processor, c) for c in conversations]
    pixels = [row.pixel_values for row in rows if row.pixel_values is not None]
    grids = [row.image_grid_thw for row in rows if row.image_grid_thw is not None]
    device = model.device
    prompt_ids, attention_mask = left_pad([row.input_ids for row in rows], processor.tokenizer.pad_token_id)  # [B, P]
    prompt_ids, attention_mask = prompt_ids.to(device), attention_mask.to(device)
    image_token_id = model.config.image_token_id
    types = (prompt_ids == image_token_id).long() & attention_mask.long()  # [B, P], 1 on image placeholders
    types = torch.nn.functional.pad(types, (0, gen_length))  # [B, P + G], the answer is text
    canvas_mask = torch.nn.functional.pad(attention_mask, (0, gen_length), value=1)  # [B, P + G]
    canvas = torch.nn.functional.pad(prompt_ids, (0, gen_length))  # only its shape matters to get_rope_index
    kwargs: dict[str, torch.Tensor] = {}
    if pixels:  # text-only batches need only the positions
        kwargs["mm_token_type_ids"] = types
        kwargs["pixel_values"] = torch.cat(pixels).to(device=device, dtype=model.model.visual.dtype)
        kwargs["image_grid_thw"] = torch.cat(grids).to(device)
    positions, _ = model.model.get_rope_index(canvas, mm_token_type_ids=types,
                                              image_grid_thw=kwargs.get("image_grid_thw"),
                                              attention_mask=canvas_mask)  # [3, B, P + G]
    kwargs["position_ids"] = positions
    return prompt_ids, attention_mask, kwargs


def answer_image_questions(model: torch.nn.Module, processor: ProcessorMixin, images: list[PILImage | None],
                           questions: list[str],
                           config: DiffusionGenerationConfig, generator: torch.Generator | None = None) -> list[str]:
    """Answer each ``question`` about its image (``None``: text only) in one batch; the answers are decoded up to
    the first EOS, special tokens skipped. ``config`` needs ``mask_token_id`` (and ``eos_token_id`` to stop)."""
    if len(images) != len(questions):
        raise ValueError(f"got {len(images)} images for {len(questions)} questions")
    conversations = [[{"role": "user", "content": ([{"type": "image", "image": image}] if image is not None else [])
                       + [{"type": "text", "text": question}]}] for image, question in zip(images, questions)]
    prompt_ids, attention_mask, kwargs = prepare_generation_inputs(model, processor, conversations,
                                                                   config.gen_length)
    out = generate(model, prompt_ids, config,
                   attention_mask=attention_mask, generator=generator, model_kwargs=kwargs)
    return [processor.tokenizer.decode(ids, skip_special_tokens=True)
            for ids in answer_ids(out.sequences, prompt_ids.shape[1], config.eos_token_id)]


def answer_image_question(model: torch.nn.Module, processor: ProcessorMixin, image: PILImage | None, question: str,
                          config: DiffusionGenerationConfig, generator: torch.Generator | None = None) -> str:
    """The answer to one ``question`` about ``image``, by iterative denoising (see :func:`answer_image_questions`)."""
    return answer_image_questions(model, processor, [image], [question], config, generator)[0]
