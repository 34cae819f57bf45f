"""Masked-diffusion SFT of LLaMA 3 (MDLM objective, bidirectional attention).

Single process (one GPU, or CPU with --use_cpu True):
    accelerate launch --config_file scripts/accelerate_configs/ddp.yaml --num_processes 1 \
        examples/llama3/sft.py --lora True --per_device_train_batch_size 4

8 GPUs, FSDP:
    accelerate launch --config_file scripts/accelerate_configs/fsdp.yaml examples/llama3/sft.py --lora True

Slurm, 2 nodes x 8 GPUs:
    sbatch --nodes=2 --gres=gpu:8 scripts/train.slurm.sh --accelerate_config fsdp \
        --script_path examples/llama3/sft.py --lora True

Local data and a quick check:
    python examples/llama3/sft.py --model_name_or_path /path/to/llama3 \
        --dataset_args "examples/data/alpaca_example.json[train:30,test:5]" --max_steps 10

Every flag: python examples/llama3/sft.py --help  (the same as `dllm sft llama3 --help`).
"""

import sys

from dllm.cli import main

if __name__ == "__main__":  # through the command line: a mistake in the flags or data is one line, exit status 2
    sys.exit(main(["sft", "llama3", *sys.argv[1:]]))
