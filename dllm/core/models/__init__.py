"""Bidirectional masked-LM wrappers shared by every model family."""

from dllm.core.models.masked_lm import (
    DEFAULT_MASK_TOKEN,
    BidirectionalMaskedLMMixin,
    add_mask_token,
    check_mask_token_id,
    disable_causal_attention,
    is_bidirectional,
    masked_lm_class,
    set_bidirectional,
    text_config,
)

__all__ = [
    "DEFAULT_MASK_TOKEN",
    "BidirectionalMaskedLMMixin",
    "add_mask_token",
    "check_mask_token_id",
    "disable_causal_attention",
    "is_bidirectional",
    "masked_lm_class",
    "set_bidirectional",
    "text_config",
]
