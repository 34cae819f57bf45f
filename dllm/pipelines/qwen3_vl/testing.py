"""A tiny random Qwen3-VL and its processor, built offline, for tests and ``scripts/test_qwen3_vl_setup.py``.

The tokenizer is character-level (ASCII and every Hangul syllable) with Qwen's special tokens and a chat template
that renders images like Qwen3-VL's (``<|vision_start|><|image_pad|><|vision_end|>``); the image processor is
Qwen3-VL's (patch 16, temporal patch 2, merge 2) with small pixel bounds, so a 64x64 image is 4 LM tokens.
Needs torchvision (the image processor); nothing is downloaded.
"""

from __future__ import annotations

import string
from typing import TYPE_CHECKING

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3VLConfig

from dllm.pipelines.qwen3_vl.chat_template import QWEN3_VL_CHAT_TEMPLATE, QWEN_SPECIAL_TOKENS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase
    from transformers import Qwen3VLProcessor

    from dllm.pipelines.qwen3_vl.models import Qwen3VLForMaskedLM

PATCH, MERGE = 16, 2  # Qwen3-VL's patch size and spatial merge: one LM image token per 32 x 32 pixels
HANGUL = "".join(chr(c) for c in range(0xAC00, 0xD7A4))
TINY_ALPHABET = string.ascii_letters + string.digits + string.punctuation + " \n" + HANGUL


def build_tiny_qwen3_vl_tokenizer() -> PreTrainedTokenizerFast:
    """Character tokenizer with Qwen's special tokens (no mask token: ``add_mask_token`` adds one)."""
    specials = ["<|unk|>"] + QWEN_SPECIAL_TOKENS
    vocab = {tok: i for i, tok in enumerate(specials + list(dict.fromkeys(TINY_ALPHABET)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<|unk|>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=QWEN_SPECIAL_TOKENS[1:], chat_template=QWEN3_VL_CHAT_TEMPLATE,
        padding_side="right",
    )


def build_tiny_qwen3_vl_processor(tokenizer: PreTrainedTokenizerBase | None = None, *, min_pixels: int = 32 * 32,
                                  max_pixels: int = 64 * 64) -> Qwen3VLProcessor:
    """A ``Qwen3VLProcessor`` from parts: ``tokenizer`` (default: the tiny character tokenizer) and Qwen3-VL's image
    processor (patch 16, temporal patch 2, merge 2) with pixel bounds ``min_pixels``..``max_pixels``."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(
        patch_size=PATCH, temporal_patch_size=2, merge_size=MERGE,
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    video_processor = Qwen3VLVideoProcessor(patch_size=PATCH, temporal_patch_size=2, merge_size=MERGE)
    return Qwen3VLProcessor(image_processor=image_processor,
                            tokenizer=tokenizer if tokenizer is not None else build_tiny_qwen3_vl_tokenizer(),
                            video_processor=video_processor, chat_template=QWEN3_VL_CHAT_TEMPLATE)


def tiny_qwen3_vl_config(tokenizer: PreTrainedTokenizerBase, *, tie_word_embeddings: bool = False,
                         vision: dict | None = None, **text_overrides) -> Qwen3VLConfig:
    """A small Qwen3-VL config for ``tokenizer`` (default: hidden 32, vision depth 2 with DeepStack from both vision
    layers into text layers 0 and 1, and a third text layer after them: DeepStack adds only at image positions, so
    features injected into the last layer would never reach an answer token's loss). ``text_overrides`` and
    ``vision`` replace entries of the text and vision configs."""
    ids = tokenizer.convert_tokens_to_ids
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=1024,
                pad_token_id=tokenizer.pad_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1],
                                 "mrope_interleaved": True})
    text.update(text_overrides)
    vision_config = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=text["hidden_size"],
                         patch_size=PATCH, temporal_patch_size=2, spatial_merge_size=MERGE, num_position_embeddings=16,
                         deepstack_visual_indexes=[0, 1])
    vision_config.update(vision or {})
    return Qwen3VLConfig(text_config=text, vision_config=vision_config, image_token_id=ids("<|image_pad|>"),
                         video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                         vision_end_token_id=ids("<|vision_end|>"), tie_word_embeddings=tie_word_embeddings)


def build_tiny_qwen3_vl(processor: Qwen3VLProcessor | None = None, *, seed: int = 0,
                        **config_overrides) -> tuple[Qwen3VLForMaskedLM, Qwen3VLProcessor]:
    """``(model, processor)``: a random tiny :class:`Qwen3VLForMaskedLM` (nothing frozen) and its processor."""
    from dllm.pipelines.qwen3_vl.models import Qwen3VLForMaskedLM

    processor = processor if processor is not None else build_tiny_qwen3_vl_processor()
    torch.manual_seed(seed)
    model = Qwen3VLForMaskedLM(tiny_qwen3_vl_config(processor.tokenizer, **config_overrides))
    return model, processor
