"""The demo: its budget-clock learning-rate schedule, its encoder, its start-up checks, and the whole run with a
few training steps (it trains, saves a reloadable checkpoint, its sampler settings and a loss plot, and ends with
the exact-match line)."""

from __future__ import annotations

import json
import re
import sys
import time

import pytest
import torch
from transformers import get_scheduler

from dllm.core.sampling import GENERATION_CONFIG_NAME, DiffusionGenerationConfig
from dllm.demo.run import CharChatEncoder, WallClockBudget, main, on_budget_clock


def schedule_on_budget_clock(name: str, **kwargs):
    """An SGD optimiser (peak lr 1) and Trainer's ``name`` schedule over 100 steps (10 of warm-up), moved onto
    the clock of a 60-second / 100-step budget; also returns the by-step formula for reference."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    by_step = get_scheduler(name, optimizer, num_warmup_steps=10, num_training_steps=100,
                            scheduler_specific_kwargs=kwargs)
    budget = WallClockBudget(seconds=60.0, max_steps=100)
    return optimizer, budget, on_budget_clock(by_step, budget, 100), by_step.lr_lambdas[0]


def lr_after_a_step(optimizer, scheduler) -> float:
    optimizer.step()  # no gradients: nothing moves, but the scheduler sees the order Trainer uses
    scheduler.step()
    return optimizer.param_groups[0]["lr"]


def test_budget_clock_is_trainers_schedule_while_the_steps_bind():
    optimizer, budget, scheduler, by_step = schedule_on_budget_clock("cosine_with_min_lr", min_lr_rate=0.1)
    budget.start = time.time()  # a fresh budget: the step share is far ahead of the time share
    for step in (1, 5, 10, 40, 75, 100):
        budget.step = step
        assert lr_after_a_step(optimizer, scheduler) == pytest.approx(by_step(step)), step
    assert by_step(100) == pytest.approx(0.1)  # the cosine ends at min_lr_rate x peak


def test_budget_clock_completes_the_schedule_when_the_time_cap_binds_first():
    optimizer, budget, scheduler, by_step = schedule_on_budget_clock("cosine_with_min_lr", min_lr_rate=0.1)
    budget.start, budget.step = time.time() - 30.0, 20  # half the time gone, a fifth of the steps
    assert lr_after_a_step(optimizer, scheduler) == pytest.approx(by_step(50), rel=0.01)
    budget.start = time.time() - 60.0  # the time cap: training stops here, and so does the schedule
    assert lr_after_a_step(optimizer, scheduler) == pytest.approx(0.1)
    assert by_step(20) > 0.9  # Trainer's own schedule would still be near its peak at this step


def test_budget_clock_rejects_a_schedule_without_a_step_formula():
    with pytest.raises(ValueError, match="step formula.*ReduceLROnPlateau"):
        schedule_on_budget_clock("reduce_lr_on_plateau")


def test_char_chat_encoder_matches_tokenize_messages():
    from dllm.data.collator import tokenize_messages
    from dllm.demo.tasks import DEMO_ALPHABET, default_tasks, iter_examples, to_messages
    from dllm.demo.tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer(DEMO_ALPHABET)
    encoder = CharChatEncoder(tokenizer, verify=0)
    stream = iter_examples(default_tasks(), seed=0)
    for _ in range(60):
        example = next(stream)
        assert encoder(example) == tokenize_messages(tokenizer, to_messages(example)["messages"])


def test_missing_matplotlib_fails_at_start_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails, as when not installed
    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as exit_info:
        main(["--output_dir", str(out)])
    message = str(exit_info.value.code)
    assert "matplotlib" in message and "--no_plot" in message and "\n" not in message
    assert not out.exists()  # nothing was built or trained


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    from transformers import AutoTokenizer

    from dllm.auto import AutoModelForMaskedDiffusion

    out = tmp_path / "demo"
    result = main(["--output_dir", str(out), "--max_steps", "6", "--train_minutes", "5",
                   "--num_eval_per_task", "4", "--num_hidden_layers", "2", "--hidden_size", "32",
                   "--intermediate_size", "64", "--per_device_train_batch_size", "8", "--logging_steps", "2",
                   "--eval_every_minutes", "0.0001"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"overall exact match: \d+\.\d% \(\d+/12\) in \d+ s", lines[-1]), lines[-1]
    assert result["steps"] == 6 and result["total"] == 12
    logged_steps = [int(m.group(1)) for line in lines if (m := re.match(r"  step +(\d+) \| .* \| loss \d", line))]
    assert logged_steps == [2, 4, 6]  # one progress line per logging step
    assert any(line.startswith("  step ") and "held-out exact match: sort" in line for line in lines)
    assert any(line.startswith("trained 6 steps, ") for line in lines)
    assert (out / "loss.png").stat().st_size > 0
    model = AutoModelForMaskedDiffusion.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "Llama3ForMaskedLM" and model.config.is_causal is False
    assert tokenizer.mask_token_id == 4
    # the sampler defaults every verb starts from: the 7-token canvas (6 + EOS), filled one token per step (every
    # setting written, steps as null)
    assert DiffusionGenerationConfig.from_pretrained(out) == DiffusionGenerationConfig(gen_length=7)
    saved = json.loads((out / GENERATION_CONFIG_NAME).read_text())
    assert saved["gen_length"] == 7 and "steps" in saved and saved["steps"] is None


def test_the_demo_reads_a_config_file_and_refuses_a_bad_flag_in_one_line(tmp_path):
    from dllm.demo.run import parse_arguments
    from dllm.errors import UsageError

    file = tmp_path / "demo.yaml"
    file.write_text("max_steps: 3\nhidden_size: 32\n")
    args, train_args = parse_arguments(["--config", str(file), "--no_plot", "--hidden_size", "48"])
    assert (train_args.max_steps, args.hidden_size) == (3, 48)  # the file's values, the command line wins
    with pytest.raises(UsageError, match="--no_such"):
        parse_arguments(["--no_such", "1"])
