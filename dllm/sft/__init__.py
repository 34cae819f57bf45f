"""The supervised fine-tuning recipe (:mod:`dllm.sft.recipe`) and its options (:mod:`dllm.sft.config`)."""
