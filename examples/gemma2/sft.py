"""Masked-diffusion SFT of Gemma 2 (MDLM objective, bidirectional attention, eager attention for logit softcapping).

Single process (one GPU, or CPU with --use_cpu True):
    accelerate launch --config_file scripts/accelerate_configs/ddp.yaml --num_processes 1 \
        examples/gemma2/sft.py --lora True --per_device_train_batch_size 4

8 GPUs, FSDP:
    accelerate launch --config_file scripts/accelerate_configs/fsdp.yaml examples/gemma2/sft.py --lora True

Slurm, 2 nodes x 8 GPUs:
    sbatch --nodes=2 --gres=gpu:8 scripts/train.slurm.sh --accelerate_config fsdp \
        --script_path examples/gemma2/sft.py --lora True

Local data and a quick check:
    python examples/gemma2/sft.py --model_name_or_path /path/to/gemma2 \
        --dataset_args "examples/data/alpaca_example.json[train:30,test:5]" --max_steps 10

Every flag: python examples/gemma2/sft.py --help  (the same as `dllm sft gemma2 --help`).
"""

import sys

from dllm.cli import main

if __name__ == "__main__":  # through the command line: a mistake in the flags or data is one line, exit status 2
    sys.exit(main(["sft", "gemma2", *sys.argv[1:]]))
