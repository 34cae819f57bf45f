"""Qwen3-VL pipeline: the bidirectional masked-LM wrapper with vision freezing (:class:`Qwen3VLForMaskedLM`), the
multimodal collator (:mod:`dllm.pipelines.qwen3_vl.collator`, re-exported by ``utils``) and the trainer hook
that places vision tensors and computes multimodal rotary positions (:mod:`dllm.pipelines.qwen3_vl.trainer`).

Only the model is imported here, so ``import dllm.auto`` needs neither PIL nor torchvision.
"""

from dllm.pipelines.qwen3_vl.models import Qwen3VLForMaskedLM

__all__ = ["Qwen3VLForMaskedLM"]
