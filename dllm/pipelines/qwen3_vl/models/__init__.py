from dllm.pipelines.qwen3_vl.models.modeling_qwen3_vl import Qwen3VLForMaskedLM

__all__ = ["Qwen3VLForMaskedLM"]
