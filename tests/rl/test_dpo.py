"""Diffusion DPO: identical policy and reference give exactly log 2 under the shared noise, a step raises the
chosen answer's ELBO and lowers the rejected one's, the trainer logs trl's metrics, and `dllm dpo` runs with a
LoRA reference (no copy) and refuses rows without the preference columns."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer

from dllm.auto import AutoModelForMaskedDiffusion
from dllm.core.policy import dpo_loss, draw_elbo_noise, sequence_elbo
from dllm.rl.dpo import DiffusionDPOConfig, DiffusionDPOTrainer, PreferenceCollator
from tests.helpers import save_tiny_masked_lm

ROWS = [{"prompt": f"sort {a}{b}", "chosen": "".join(sorted(f"{a}{b}")), "rejected": "xyz"[a % 3] + "uvw"[b % 3]}
        for a in range(4) for b in range(4)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_masked_lm(tmp_path_factory.mktemp("ckpt") / "tiny", gen_length=4)


def test_identical_models_give_log_2_and_a_step_prefers_the_chosen_answer(checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    policy = AutoModelForMaskedDiffusion.from_pretrained(checkpoint)
    reference = copy.deepcopy(policy).requires_grad_(False)
    batch = PreferenceCollator(tokenizer, canvas_length=4)(ROWS[:4])
    args = [batch[k] for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")]
    noise = draw_elbo_noise(batch["completion_mask"], 8, generator=torch.Generator().manual_seed(0))
    mask = tokenizer.mask_token_id
    logps, ref = sequence_elbo(policy, *args, noise, mask), sequence_elbo(reference, *args, noise, mask)
    loss, margin = dpo_loss(logps[:4], logps[4:], ref[:4], ref[4:], beta=0.1)
    assert torch.equal(margin, torch.zeros(4)) and torch.allclose(loss, torch.full((4,), math.log(2)), atol=0)
    loss.mean().backward()
    with torch.no_grad():
        for p in policy.parameters():
            p -= 0.2 * p.grad
        after = sequence_elbo(policy, *args, noise, mask)
    # The gradient is -beta/2 grad(margin): every margin grows; chosen answers rise and rejected ones fall overall
    # (each one alone need not: the answers share weights).
    assert (after[:4] - after[4:] > logps[:4] - logps[4:]).all()
    assert after[:4].sum() > logps[:4].sum() and after[4:].sum() < logps[4:].sum()


def test_trainer_logs_trl_metrics_and_starts_at_log_2(checkpoint, tmp_path):
    args = DiffusionDPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3,
                              learning_rate=0.05, optim="sgd", logging_steps=1, report_to="none", use_cpu=True,
                              save_strategy="no", max_completion_length=4, gradient_accumulation_steps=2)
    trainer = DiffusionDPOTrainer(AutoModelForMaskedDiffusion.from_pretrained(checkpoint), args,
                                  Dataset.from_list(ROWS), AutoTokenizer.from_pretrained(checkpoint))
    assert trainer.reference.copy is not None
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert logs[0]["rewards/margins"] == 0 and logs[-1]["rewards/margins"] > 0
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "logps/rejected"):
        assert key in logs[-1]


def test_dllm_dpo_with_lora_and_one_line_errors(checkpoint, tmp_path, capsys):
    from dllm.cli import main

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "dpo"
    common = ["--per_device_train_batch_size", "4", "--report_to", "none", "--use_cpu", "True", "--output_dir",
              str(out), "--save_strategy", "no", "--max_steps", "1", "--num_elbo_samples", "2"]
    assert main(["dpo", str(checkpoint), "--dataset_args", str(data), "--lora", "True", "--target_modules", "q_proj",
                 *common]) == 0
    assert (out / "adapter").is_dir() and (out / "config.json").is_file()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "chosen": "y"}) + "\n")
    assert main(["dpo", str(checkpoint), "--dataset_args", str(bad), *common]) == 2
    assert "no column 'rejected'" in capsys.readouterr().err


def test_rpo_alpha_adds_the_chosen_answers_negative_elbo_per_token(checkpoint, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    batch = PreferenceCollator(tokenizer, canvas_length=4)(ROWS[:4])
    losses = {}
    for alpha in (None, 0.5):
        args = DiffusionDPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, report_to="none",
                                  use_cpu=True, max_completion_length=4, num_elbo_samples=2, rpo_alpha=alpha)
        trainer = DiffusionDPOTrainer(AutoModelForMaskedDiffusion.from_pretrained(checkpoint), args,
                                      Dataset.from_list(ROWS), tokenizer)
        losses[alpha] = trainer.compute_loss(trainer.model, batch)
    trainer._calls = 0  # the same (seeded) draws as the compute_loss calls above
    noise = trainer._noise(batch["completion_mask"])
    parts = [batch[k] for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")]
    elbo = sequence_elbo(trainer.model, *parts, noise, tokenizer.mask_token_id)[:4]  # the chosen answers
    expected = -(elbo / batch["completion_mask"][:4].sum(dim=1)).mean()
    assert losses[None].item() == pytest.approx(math.log(2), abs=1e-6)
    assert (losses[0.5] - losses[None]).item() == pytest.approx(0.5 * expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="rpo_alpha"):
        DiffusionDPOConfig(output_dir=str(tmp_path), rpo_alpha=-1.0)
