"""Gemma 2 pipeline: the bidirectional masked-LM wrapper (training uses the core MDLMTrainer unchanged)."""

from dllm.pipelines.gemma2.models import Gemma2ForMaskedLM

__all__ = ["Gemma2ForMaskedLM"]
