"""Masked-diffusion SFT of Qwen3-VL (MDLM objective, bidirectional language model, images through the frozen
vision tower). LoRA on the language model by default; ``--lora False`` trains all unfrozen weights.

Single GPU, KoDocumentTableVisualSFT sample:
    accelerate launch --config_file scripts/accelerate_configs/ddp.yaml --num_processes 1 \
        examples/qwen3_vl/sft.py --dataset_args "jp1924/KoDocumentTableVisualSFT[train:100,test:10]" \
        --per_device_train_batch_size 2 --max_seq_length 2048 --bf16 True

Local {messages, images} file (image paths relative to the file), full fine-tuning with the merger trainable:
    python examples/qwen3_vl/sft.py --dataset_args path/to/mllm_demo.json --lora False --freeze_merger False

8 GPUs, FSDP:
    accelerate launch --config_file scripts/accelerate_configs/fsdp.yaml examples/qwen3_vl/sft.py

Every flag: python examples/qwen3_vl/sft.py --help
"""

import sys

from dllm.cli import main

if __name__ == "__main__":  # through the command line: a mistake in the flags or data is one line, exit status 2
    sys.exit(main(["sft", "qwen3_vl", *sys.argv[1:]]))
