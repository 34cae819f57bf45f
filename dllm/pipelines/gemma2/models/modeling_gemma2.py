"""Gemma 2 as a bidirectional masked diffusion LM."""

from __future__ import annotations

from transformers import Gemma2ForCausalLM

from dllm.core.models import BidirectionalMaskedLMMixin


class Gemma2ForMaskedLM(BidirectionalMaskedLMMixin, Gemma2ForCausalLM):
    """``Gemma2ForCausalLM`` with bidirectional attention, returning ``MaskedLMOutput``.

    - Sliding-window layers become a symmetric window: with ``is_causal=False`` transformers builds the
      bidirectional sliding mask ``|q - k| <= sliding_window`` instead of the causal one.
    - Attention-logit and final-logit softcapping are kept (they are part of the pretrained function).
    - Attention defaults to ``eager``: PyTorch SDPA cannot apply softcapping, and transformers refuses it. This
      is the one place that default is set (``dllm.auto`` and the SFT recipe load through this class).
    """

    plain_head = True  # Gemma2ForCausalLM.forward: self.model -> lm_head -> final_logit_softcapping


    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, *args, **kwargs) -> Gemma2ForMaskedLM:
        kwargs.setdefault("attn_implementation", "eager")
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
