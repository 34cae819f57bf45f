"""LLaMA 3 pipeline: the bidirectional masked-LM wrapper (training uses the core MDLMTrainer unchanged)."""

from dllm.pipelines.llama3.models import Llama3ForMaskedLM

__all__ = ["Llama3ForMaskedLM"]
