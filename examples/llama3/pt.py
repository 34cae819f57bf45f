"""Masked-diffusion pretraining of LLaMA 3 on raw text (MDLM objective, bidirectional attention, every token noised).

Single process (one GPU, or CPU with --use_cpu True):
    accelerate launch --config_file scripts/accelerate_configs/ddp.yaml --num_processes 1 \
        examples/llama3/pt.py --model_name_or_path meta-llama/Meta-Llama-3-8B \
        --dataset_args "corpus.jsonl[test:100]" --max_seq_length 1024 --per_device_train_batch_size 4

8 GPUs, FSDP, a corpus larger than memory (streamed; --max_steps is then required):
    accelerate launch --config_file scripts/accelerate_configs/fsdp.yaml examples/llama3/pt.py \
        --dataset_args HuggingFaceFW/fineweb-edu --streaming True --max_steps 100000

Block diffusion, LLaDA's concatenated rows and 1% variable-length rows:
    python examples/llama3/pt.py --dataset_args wiki.txt --objective bd3lm --block_size 32 \
        --packing concat --variable_length_fraction 0.01

Every flag: python examples/llama3/pt.py --help  (the same as `dllm pt llama3 --help`).
"""

import sys

from dllm.cli import main

if __name__ == "__main__":  # through the command line: a mistake in the flags or data is one line, exit status 2
    sys.exit(main(["pt", "llama3", *sys.argv[1:]]))
