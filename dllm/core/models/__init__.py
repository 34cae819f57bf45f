"""Bidirectional masked-LM wrappers shared by every model family."""

from dllm.core.models.masked_lm import (
    DEFAULT_MASK_TOKEN,
    BidirectionalMaskedLMMixin,
    add_mask_token,
    block_diffusion_attention_mask,
    block_diffusion_forward,
    block_diffusion_size,
    check_mask_token_id,
    disable_causal_attention,
    is_bidirectional,
    masked_lm_class,
    set_bidirectional,
    set_block_diffusion,
    text_config,
)

__all__ = [
    "DEFAULT_MASK_TOKEN",
    "BidirectionalMaskedLMMixin",
    "add_mask_token",
    "block_diffusion_attention_mask",
    "block_diffusion_forward",
    "block_diffusion_size",
    "check_mask_token_id",
    "disable_causal_attention",
    "is_bidirectional",
    "masked_lm_class",
    "set_bidirectional",
    "set_block_diffusion",
    "text_config",
]
