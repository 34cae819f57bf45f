"""Gemma 2 pipeline: the bidirectional masked-LM wrapper (training uses the core MDLMTrainer unchanged)."""

from dllm.core.models import register_masked_lm
from dllm.pipelines.gemma2.models import Gemma2ForMaskedLM

register_masked_lm("gemma2", Gemma2ForMaskedLM)

__all__ = ["Gemma2ForMaskedLM"]
