from dllm.pipelines.llama3.models.modeling_llama3 import Llama3ForMaskedLM

__all__ = ["Llama3ForMaskedLM"]
