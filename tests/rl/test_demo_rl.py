"""`dllm demo-rl` at a tiny size: the short SFT, every method, the table, the curve and the headline line, and
the SFT checkpoint reused by a second run with the same settings."""

from __future__ import annotations

import re

import pytest

from dllm.cli import main as cli_main
from dllm.demo.rl import main

TINY = ["--hidden_size", "16", "--num_hidden_layers", "1", "--intermediate_size", "32", "--num_eval_per_task", "4",
        "--sft_steps", "3", "--rl_max_steps", "2", "--num_train_prompts", "8", "--prompts_per_step", "2",
        "--num_generations", "2", "--dpo_pairs_per_step", "2", "--num_elbo_samples", "1"]


def test_demo_rl_runs_every_method_and_ends_with_the_headline(tmp_path, capsys):
    out = tmp_path / "demo-rl"
    results = main([*TINY, "--output_dir", str(out), "--methods", "elbo", "diffu_grpo", "dpo"])
    assert set(results) == {"elbo", "diffu_grpo", "dpo"}
    assert all(r["steps"] == 2 and 0 <= r["after"] <= 1 for r in results.values())
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"held-out exact match: \d+\.\d% -> \d+\.\d% in \d+ s", lines[-1])
    assert any("+ grpo diffu_grpo" in line for line in lines) and (out / "reward_curve.png").is_file()
    main([*TINY, "--output_dir", str(out), "--methods", "elbo", "--no_plot"])
    assert "reusing the SFT checkpoint" in capsys.readouterr().out


def test_an_unknown_method_is_one_line(tmp_path, capsys):
    assert cli_main(["demo-rl", "--methods", "ppo", "--output_dir", str(tmp_path)]) == 2
    assert "choose among elbo, diffu_grpo, dpo" in capsys.readouterr().err


def test_the_schedule_and_estimator_flags_reach_the_trainers(tmp_path, monkeypatch):
    """Defaults: the learning rate decays linearly to 0 over --rl_max_steps, diffu_grpo keeps the prompt clean
    (README: masking it lowered held-out exact match); each flag is passed through."""
    import dllm.demo.rl as demo_rl

    configs = {}
    for name in ("DiffusionGRPOTrainer", "DiffusionDPOTrainer"):
        def capture(*args, _cls=getattr(demo_rl, name), **kwargs):
            trainer = _cls(*args, **kwargs)
            configs[trainer.args.output_dir.rsplit("/", 1)[-1]] = trainer.args
            return trainer
        monkeypatch.setattr(demo_rl, name, capture)
    out = str(tmp_path / "demo-rl")
    main([*TINY, "--output_dir", out, "--methods", "diffu_grpo", "dpo", "--no_plot"])
    assert configs["diffu_grpo"].lr_scheduler_type == "linear" and configs["dpo"].lr_scheduler_type == "linear"
    assert configs["diffu_grpo"].p_mask_prompt == 0.0 and configs["diffu_grpo"].scale_rewards is True
    assert configs["diffu_grpo"].loss_tokens == "canvas"
    main([*TINY, "--output_dir", out, "--methods", "diffu_grpo", "--no_plot", "--rl_lr_scheduler", "cosine",
          "--p_mask_prompt", "0.3", "--scale_rewards", "False", "--loss_tokens", "first_eos"])
    assert configs["diffu_grpo"].lr_scheduler_type == "cosine" and configs["diffu_grpo"].p_mask_prompt == 0.3
    assert configs["diffu_grpo"].scale_rewards is False and configs["diffu_grpo"].loss_tokens == "first_eos"


def test_each_method_gets_its_own_step_cap_unless_one_is_given(tmp_path, capsys):
    """By default diffu_grpo's cheaper steps get more of them (the 10 minutes hold 2000), elbo and dpo 1200; the
    learning-rate schedule and the budget both read the cap; --rl_max_steps sets every method's; 0 is refused."""
    from dllm.demo.rl import parse, trainer_values

    _, args = parse(["--output_dir", str(tmp_path)])
    assert {m: trainer_values(args, m)["max_steps"] for m in ("elbo", "diffu_grpo", "dpo")} == {
        "elbo": 1200, "diffu_grpo": 2000, "dpo": 1200}
    _, args = parse(["--output_dir", str(tmp_path), "--rl_max_steps", "5"])
    assert {trainer_values(args, m)["max_steps"] for m in ("elbo", "diffu_grpo", "dpo")} == {5}
    assert cli_main(["demo-rl", "--rl_max_steps", "0", "--output_dir", str(tmp_path)]) == 2
    assert "--rl_max_steps 0" in capsys.readouterr().err
