from dllm.pipelines.gemma2.models.modeling_gemma2 import Gemma2ForMaskedLM

__all__ = ["Gemma2ForMaskedLM"]
