"""DiffusionGRPOTrainer on a tiny checkpoint: groups stay whole, a step moves the estimated log-likelihood of
each completion in the direction of its advantage (both estimators), trl's metrics are logged, the reference
follows beta and LoRA, and `dllm grpo` runs end to end and refuses mistakes in one line."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer

from dllm.auto import AutoModelForMaskedDiffusion
from dllm.rl.grpo import DiffusionGRPOConfig, DiffusionGRPOTrainer, GroupSampler
from dllm.rl.rewards import exact_match, format_reward
from tests.helpers import save_tiny_masked_lm

ROWS = [{"prompt": f"sort {a}{b}", "answer": "".join(sorted(f"{a}{b}"))} for a in range(4) for b in range(4)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_masked_lm(tmp_path_factory.mktemp("ckpt") / "tiny", gen_length=3)


def first_char_code(prompts, completions, **columns):
    """A reward that varies within every group of a random model: the first character's code mod 7."""
    return [(ord(c[0]) % 7) / 6 if c else 0.0 for c in completions]


def make_trainer(checkpoint, tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, num_generations=4, max_steps=2,
                  learning_rate=0.05, optim="sgd", logging_steps=1, report_to="none", use_cpu=True, seed=0,
                  save_strategy="no", disable_tqdm=True, beta=0.0)
    values.update(overrides)
    model = AutoModelForMaskedDiffusion.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    return DiffusionGRPOTrainer(model, [exact_match, first_char_code], DiffusionGRPOConfig(**values),
                                Dataset.from_list(ROWS), tokenizer)


def test_group_sampler_keeps_groups_and_repeats_windows():
    indices = list(GroupSampler(10, 3, 2, window=2, repeats=2, seed=0))
    assert len(indices) == 2 * 4 * 3 * 2  # two windows of 4 prompts, 3 generations, 2 iterations
    first = indices[:12]
    assert indices[12:24] == first  # the window again, for the second iteration
    assert all(len(set(first[i:i + 3])) == 1 for i in range(0, 12, 3))


@pytest.mark.parametrize("loss_type", ["elbo", "diffu_grpo"])
def test_a_step_raises_the_likelihood_of_completions_with_positive_advantage(checkpoint, tmp_path, loss_type):
    trainer = make_trainer(checkpoint, tmp_path, loss_type=loss_type, num_iterations=2, max_steps=1,
                           num_elbo_samples=8, learning_rate=0.5)
    trainer.train()
    r = trainer._buffer[0]
    assert r.advantages.abs().sum() > 0, "the rollouts need some reward spread for this test"
    with torch.no_grad():
        after = trainer._logps(trainer.model, r, r.noise[0])
    delta = after - r.old_logps[0]  # the same noise before and after the step
    if delta.dim() == 2:
        delta = delta.mean(dim=1)
    assert (delta * r.advantages).sum() > 0
    assert torch.corrcoef(torch.stack([delta, r.advantages]))[0, 1] > 0.3


def test_metrics_are_logged_with_trl_names_and_the_reference_follows_beta(checkpoint, tmp_path):
    trainer = make_trainer(checkpoint, tmp_path, beta=0.1)
    assert trainer.reference.copy is not None  # a full model: a frozen copy
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    for key in ("reward", "reward_std", "rewards/exact_match/mean", "rewards/first_char_code/std", "kl",
                "clip_ratio/region_mean", "completions/mean_length", "sampler/forward_passes", "frac_reward_zero_std"):
        assert key in logs[0], key
    assert logs[0]["sampler/forward_passes"] == 3  # one token per step on a 3-token canvas
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    copy_params = list(trainer.reference.copy.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, copy_params))  # the reference never moves
    assert make_trainer(checkpoint, tmp_path, beta=0.0).reference.needed is False


def test_lora_reference_is_the_adapter_switched_off(checkpoint, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(AutoModelForMaskedDiffusion.from_pretrained(checkpoint),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    args = DiffusionGRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=2,
                               max_steps=1, report_to="none", use_cpu=True, beta=0.1, save_strategy="no")
    trainer = DiffusionGRPOTrainer(model, [exact_match], args, Dataset.from_list(ROWS),
                                   AutoTokenizer.from_pretrained(checkpoint),)
    assert trainer.reference.copy is None
    trainer.train()
    r = trainer._buffer[0]
    base = AutoModelForMaskedDiffusion.from_pretrained(checkpoint)
    with torch.no_grad():
        expected = trainer._logps(base, r, r.noise[0])
    assert torch.allclose(r.ref_logps[0], expected, atol=1e-5)


def test_format_reward_and_exact_match_normalise_whitespace():
    assert exact_match(["p"] * 3, [" 12 ", "1 2", [{"role": "assistant", "content": "12"}]],
                       answer=["12", "1  2", "12"]) == [1.0, 1.0, 1.0]
    assert format_reward(["p"] * 3, ["<a>1</a>", "x", "<a>12345</a>"], pattern=r"<a>\d+</a>", max_length=8) == [
        1.0, 0.0, 0.0]


def test_dllm_grpo_end_to_end_and_one_line_errors(checkpoint, tmp_path, capsys):
    from dllm.cli import main

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "grpo"
    common = ["--per_device_train_batch_size", "4", "--num_generations", "2", "--report_to", "none",
              "--use_cpu", "True", "--output_dir", str(out), "--save_strategy", "no"]
    assert main(["grpo", str(checkpoint), "--dataset_args", str(data), "--max_steps", "1", *common]) == 0
    assert (out / "config.json").is_file() and (out / "diffusion_generation_config.json").is_file()
    # the resolved options, read back by --config (here: the same run settings)
    from dllm.rl.grpo import DiffusionGRPOConfig
    from dllm.rl.recipe import parse_rl_args

    _, data_args, args = parse_rl_args(["--config", str(out / "run_config.yaml")], DiffusionGRPOConfig)
    assert (args.num_generations, args.max_steps, data_args.dataset_args) == (2, 1, str(data))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "x"}) + "\n")
    assert main(["grpo", str(checkpoint), "--dataset_args", str(bad), *common]) == 2
    assert "no column 'prompt'" in capsys.readouterr().err
    assert main(["grpo", str(checkpoint), "--dataset_args", str(data), "--reward_funcs", "nosuch:fn", *common]) == 2
    assert "cannot import 'nosuch'" in capsys.readouterr().err
    assert main(["grpo", str(checkpoint), "--dataset_args", str(data), *common[:-4], "--output_dir", str(checkpoint),
                 "--save_strategy", "no"]) == 2
    assert "is the model being read" in capsys.readouterr().err
    assert main(["grpo", str(checkpoint), "--dataset_args", str(data), *common, "--num_generations", "3"]) == 2
    assert "multiple of num_generations" in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_ddp_grpo_keeps_groups_whole_and_finishes(checkpoint, tmp_path):
    """`accelerate launch` over gloo, 2 CPU processes x 4 completions (whole groups per process, see GroupSampler):
    the run finishes with a KL reference, logs the gathered reward metrics and saves the checkpoint."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(root / "scripts" / "accelerate_configs" / "ddp.yaml"), "--num_processes", "2", "--mixed_precision",
           "no", "--main_process_port", "0", "-m", "dllm.cli", "grpo", str(checkpoint), "--dataset_args", str(data),
           "--per_device_train_batch_size", "4", "--num_generations", "2", "--max_steps", "2", "--beta", "0.1",
           "--report_to", "none", "--use_cpu", "True", "--output_dir", str(tmp_path / "out"), "--save_strategy", "no",
           "--logging_steps", "1", "--reward_funcs", "exact_match", "format"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "'rewards/format/mean'" in result.stdout and "'kl'" in result.stdout
    assert (tmp_path / "out" / "config.json").is_file()


def test_first_eos_loss_counts_tokens_through_the_first_eos_over_the_batch(checkpoint, tmp_path):
    """d1's normalisation (--loss_tokens first_eos) against a loop: the tokens up to and including the first EOS
    of each completion, averaged over the micro-batch; 'canvas' averages each whole canvas, then completions."""
    from dataclasses import replace

    from dllm.rl.grpo import through_first_eos

    trainer = make_trainer(checkpoint, tmp_path, loss_type="diffu_grpo", loss_tokens="first_eos")
    eos = trainer.generation_config.eos_token_id
    r = trainer._rollout(ROWS[:2] * 4)
    assert torch.equal(r.loss_mask, through_first_eos(r.completion_ids, eos))
    ids = torch.randint(5, 20, r.completion_ids.shape)
    for row, end in enumerate([0, 1, 2, None, 0, 2, None, 1]):  # where the first EOS is (None: no EOS)
        if end is not None:
            ids[row, end:] = eos  # the EOS-padded canvas the sampler leaves
            ids[row, -1] = eos
    counted = [[1 if (end is None or j <= end) else 0 for j in range(ids.shape[1])]
               for end in [0, 1, 2, None, 0, 2, None, 1]]
    mask = through_first_eos(ids, eos)
    assert mask.tolist() == counted
    advantages = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0, 0.25, -0.5, 2.0])
    r = replace(r, completion_ids=ids, loss_mask=mask, advantages=advantages)
    model = trainer.model
    model.zero_grad()
    loss = trainer.compute_loss(model, r)
    loss.backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logp = trainer._logps(model, r, r.noise[0])  # [B, L]; the ratio is 1, so the loss is -A logp per token
    total, count = 0.0, 0
    for i in range(len(advantages)):
        for j in range(ids.shape[1]):
            if counted[i][j]:
                total = total - advantages[i] * torch.exp(logp[i, j] - logp[i, j].detach())
                count += 1
    expected = total / count
    expected.backward()
    assert torch.allclose(loss, expected, atol=1e-6)
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(got, model.parameters()))
    trainer.args.loss_tokens = "canvas"
    r = replace(r, loss_mask=r.completion_mask)
    assert torch.allclose(trainer.compute_loss(model, r), -advantages.mean(), atol=1e-6)


@pytest.mark.parametrize("loss_type,loss_tokens", [("elbo", "canvas"), ("diffu_grpo", "canvas"),
                                                   ("diffu_grpo", "first_eos")])
def test_zero_advantage_completions_are_skipped_without_changing_the_loss_or_its_gradient(
        checkpoint, tmp_path, loss_type, loss_tokens):
    """beta 0: completions with advantage 0 are not run through the model; the loss, its gradient and the clip
    metric equal those of the whole micro-batch (the slow path: every row through the model), also at a second
    iteration (old log-likelihoods, ratios != 1) and when every advantage is 0."""
    from dataclasses import replace

    from dllm.core.policy import clipped_policy_loss

    trainer = make_trainer(checkpoint, tmp_path, loss_type=loss_type, loss_tokens=loss_tokens, num_iterations=2,
                           num_elbo_samples=2)
    r = trainer._rollout(ROWS[:2] * 4)
    model = trainer.model
    seen = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape[0]), with_kwargs=True)
    for advantages in ([1.0, 0.0, -1.0, 0.0, 0.0, 0.5, 0.0, -0.5], [0.0] * 8):
        for iteration in (0, 1):
            x = replace(r, advantages=torch.tensor(advantages), iteration=iteration)
            model.zero_grad()
            seen.clear()
            loss = trainer.compute_loss(model, x)
            loss.backward()
            got = [p.grad.clone() for p in model.parameters()]
            kept = max(1, sum(a != 0 for a in advantages))
            assert sum(seen) == kept * (2 if loss_type == "elbo" else 1)  # rows x ELBO draws
            model.zero_grad()
            logp = trainer._logps(model, x, x.noise[iteration])  # every row
            old = logp.detach() if iteration == 0 else x.old_logps[iteration]
            if iteration == 1:
                x.old_logps[1] = old + 0.3 * torch.randn_like(old)  # ratios away from 1, some clipped
                old = x.old_logps[1]
                model.zero_grad()
                loss = trainer.compute_loss(model, x)
                loss.backward()
                got = [p.grad.clone() for p in model.parameters()]
                model.zero_grad()
                logp = trainer._logps(model, x, x.noise[iteration])
            per, _ = clipped_policy_loss(logp, old, x.advantages, 0.2, 0.2)
            expected = trainer._reduce(per, x)
            expected.backward()
            assert torch.allclose(loss, expected, atol=1e-6)
            assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(got, model.parameters()))
    hook.remove()
