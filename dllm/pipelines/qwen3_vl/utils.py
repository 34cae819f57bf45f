"""The Qwen3-VL collator under the name the user guide uses (``dllm.pipelines.qwen3_vl.utils``)."""

from dllm.pipelines.qwen3_vl.collator import (
    IMAGE_PLACEHOLDER,
    ImageTruncationError,
    Qwen3VLDataCollator,
    create_qwen3_vl_collator,
    load_image,
)

__all__ = ["IMAGE_PLACEHOLDER", "ImageTruncationError", "Qwen3VLDataCollator", "create_qwen3_vl_collator",
           "load_image"]
