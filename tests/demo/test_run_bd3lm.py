"""``dllm demo --objective bd3lm``: trains with blocks of 8 by default, and the checkpoint decodes with its block
cache; the MDLM demo's defaults are untouched."""

from __future__ import annotations

import json
import re

from dllm.core.sampling import DiffusionGenerationConfig
from dllm.demo.run import main, parse_arguments


def test_the_demo_defaults_blocks_of_8_for_bd3lm_only():
    args, train_args = parse_arguments(["--objective", "bd3lm", "--no_plot"])
    assert (args.objective, train_args.block_size, args.train_minutes) == ("bd3lm", 8, 16.0)
    args, _ = parse_arguments(["--objective", "bd3lm", "--no_plot", "--train_minutes", "3"])
    assert args.train_minutes == 3.0  # a given cap wins over the objective's default
    args, train_args = parse_arguments(["--no_plot"])
    assert (args.objective, args.train_minutes, train_args.max_steps) == ("mdlm", 8.0, 8000)


def test_the_bd3lm_demo_saves_a_block_diffusion_checkpoint(tmp_path, capsys):
    out = tmp_path / "demo"
    result = main(["--objective", "bd3lm", "--no_plot", "--output_dir", str(out), "--max_steps", "4",
                   "--train_minutes", "5", "--num_eval_per_task", "4", "--num_hidden_layers", "1",
                   "--hidden_size", "32", "--intermediate_size", "64", "--per_device_train_batch_size", "8",
                   "--eval_every_minutes", "0"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"overall exact match: \d+\.\d% \(\d+/12\) in \d+ s", lines[-1]), lines[-1]
    assert "objective bd3lm (blocks of 8)" in lines[0]
    assert result["steps"] == 4
    config = json.loads((out / "config.json").read_text())
    assert (config["dllm_objective"], config["dllm_block_size"]) == ("bd3lm", 8)
    defaults = DiffusionGenerationConfig.from_pretrained(out)
    assert (defaults.cache, defaults.block_size, defaults.gen_length) == ("block", 8, 7)
