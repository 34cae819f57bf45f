"""`dllm demo-rl` at a tiny size: the short SFT, every method, the table, the curve and the headline line, and
the SFT checkpoint reused by a second run with the same settings."""

from __future__ import annotations

import re

import pytest

from dllm.cli import main as cli_main
from dllm.demo.rl import main

UNCAPPED = ["--hidden_size", "16", "--num_hidden_layers", "1", "--intermediate_size", "32", "--num_eval_per_task",
            "4", "--sft_steps", "3", "--num_train_prompts", "8", "--prompts_per_step", "2", "--num_generations", "2",
            "--dpo_pairs_per_step", "2", "--num_elbo_samples", "1"]
TINY = [*UNCAPPED, "--rl_max_steps", "2"]


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
    """Defaults: the learning rate decays linearly to 0 over the budget, diffu_grpo keeps the prompt clean
    (README: masking it lowered held-out exact match); each flag is passed through."""
    import dllm.demo.rl as demo_rl

    configs = {}
    for name in ("BudgetClockGRPOTrainer", "BudgetClockDPOTrainer"):
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


def test_without_a_step_cap_the_minutes_bind_and_the_schedule_ends_with_them(tmp_path, monkeypatch, capsys):
    """By default no step cap: the run stops at --rl_minutes and the linear schedule, on the budget's clock,
    has decayed to about 0 by then (on Trainer's step clock over the uncapped steps it would still be at the
    peak); --rl_max_steps caps every method; 0, a warm-up in steps without a cap and a target above 1 are
    refused in one line."""
    import dllm.demo.rl as demo_rl
    from dllm.demo.rl import UNCAPPED_STEPS, parse, trainer_values

    _, args = parse(["--output_dir", str(tmp_path)])
    assert {trainer_values(args, m)["max_steps"] for m in ("elbo", "diffu_grpo", "dpo")} == {UNCAPPED_STEPS}
    _, args = parse(["--output_dir", str(tmp_path), "--rl_max_steps", "5"])
    assert {trainer_values(args, m)["max_steps"] for m in ("elbo", "diffu_grpo", "dpo")} == {5}
    trainers = []

    def capture(*args, _cls=demo_rl.BudgetClockGRPOTrainer, **kwargs):
        trainers.append(_cls(*args, **kwargs))
        return trainers[-1]

    monkeypatch.setattr(demo_rl, "BudgetClockGRPOTrainer", capture)
    results = main([*UNCAPPED, "--output_dir", str(tmp_path / "run"), "--methods", "elbo", "--no_plot",
                    "--rl_minutes", "0.05"])
    assert 2 <= results["elbo"]["steps"] < UNCAPPED_STEPS and results["elbo"]["seconds"] < 10
    rates = [h["learning_rate"] for h in trainers[0].state.log_history if "learning_rate" in h]
    assert rates[0] > 0.5e-4 and rates[-1] < 0.2e-4
    for flags, said in ((["--rl_max_steps", "0"], "--rl_max_steps 0"),
                        (["--rl_warmup_steps", "10"], "--rl_warmup_steps 10"),
                        (["--sft_target", "1.5"], "--sft_target 1.5")):
        assert cli_main(["demo-rl", *flags, "--output_dir", str(tmp_path)]) == 2
        assert said in capsys.readouterr().err


def test_the_short_sft_stops_at_its_target_on_training_prompts(tmp_path, monkeypatch, capsys):
    """--sft_target: checked every SFT_CHECK_EVERY steps on training-split prompts only (none held out); the SFT
    stops at the first check that reaches it, and the checkpoint's step count is kept for a later run."""
    import dllm.demo.rl as demo_rl
    from dllm.tasks import is_heldout

    checks, real = [], demo_rl.evaluate
    monkeypatch.setattr(demo_rl, "SFT_CHECK_EVERY", 2)

    def evaluate(model, tokenizer, rows, gen_length, batch_size):
        if len(rows) != 3 * demo_rl.SFT_CHECK_PROMPTS:
            return real(model, tokenizer, rows, gen_length, batch_size)
        checks.append(rows)  # an oracle from the third check on (step 6)
        answers = [r["answer"] if len(checks) >= 3 else "" for r in rows]
        return answers, {}

    monkeypatch.setattr(demo_rl, "evaluate", evaluate)
    out = tmp_path / "demo-rl"
    args = [*TINY, "--sft_steps", "20"]  # the last value of a flag wins
    main([*args, "--output_dir", str(out), "--methods", "elbo", "--no_plot", "--sft_target", "0.9"])
    text = capsys.readouterr().out
    assert len(checks) == 3 and "SFT stopped at step 6: 100.0%" in text and "sft (6 steps)" in text
    tasks = {task.name: task for task in demo_rl.build_tasks(demo_rl.parse(args)[0], 42).tasks}
    assert not any(is_heldout(tasks[r["task"]].split_key(r), 0.1) for r in checks[0])
    main([*args, "--output_dir", str(out), "--methods", "elbo", "--no_plot", "--sft_target", "0.9"])
    assert "reusing the SFT checkpoint" in (text := capsys.readouterr().out) and "sft (6 steps)" in text


def test_post_training_and_the_sft_check_draw_outside_the_heldout_fraction_given():
    """--heldout_fraction 0.3: no training prompt of post-training (or of the SFT check) is in the held-out 30%
    (a split at the default 10% would hand it prompts from the 10-30% band)."""
    from dllm.demo.rl import build_tasks, parse, training_rows
    from dllm.tasks import is_heldout

    demo_args, args = parse(["--heldout_fraction", "0.3", "--num_train_prompts", "200"])
    demo = build_tasks(demo_args, args.seed)
    tasks = {task.name: task for task in demo.tasks}
    for offset in (1, 2, 3):
        rows = training_rows(demo, args, offset)
        assert len(rows) == 600 and not any(is_heldout(tasks[r["task"]].split_key(r), 0.3) for r in rows)
