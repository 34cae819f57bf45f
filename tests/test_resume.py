"""Interruption and resume, the diffusion noise, and Trainer's checkpoint management.

The noise (``t`` and the masks) of a micro-batch comes from a generator seeded by its position (seed, optimizer
step, micro-batch within the accumulation window; evaluation: batch index), so it does not depend on anything
else that draws from the global RNG and comes back identical after a resume. The end-to-end tests kill
``examples/llama3/sft.py`` with SIGKILL between two checkpoints, resume it with ``--resume_from_checkpoint``, and
compare the final weights with an uninterrupted run: bit-exact in one process, within 1e-6 under 2-process DDP.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import LlamaForCausalLM, TrainerCallback, default_data_collator

from dllm.core.diffusion import mask_tokens, sample_t
from dllm.core.trainers.mdlm_trainer import MDLMConfig, MDLMTrainer, noise_seed
from dllm.demo.tokenizer import build_char_tokenizer
from dllm.pipelines.llama3 import Llama3ForMaskedLM
from tests.helpers import tiny_llama_config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "llama3" / "sft.py"
DDP_CONFIG = ROOT / "scripts" / "accelerate_configs" / "ddp.yaml"
MASK_ID, VOCAB = 4, 32


# ---- in-process: the noise ------------------------------------------------------------------------


def copy_task_dataset(n=32, length=12, prompt=4, seed=0):
    """Random prompts, two-token answers of 2..6 tokens (as in tests/core/test_trainer.py)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        ids = torch.cat([torch.randint(5, VOCAB, (prompt,), generator=g),
                         torch.randint(7, 9, (length - prompt,), generator=g)])
        labels = ids.clone()
        labels[:prompt] = -100
        labels[prompt + 2 + i % 5:] = -100
        rows.append({"input_ids": ids.tolist(), "labels": labels.tolist(), "attention_mask": [1] * length})
    return Dataset.from_list(rows)


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    model = Llama3ForMaskedLM(tiny_llama_config(vocab_size=VOCAB, **overrides))
    model.config.mask_token_id = MASK_ID
    return model


def config(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=3e-3,
                  max_steps=6, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=0,
                  data_seed=0, warmup_steps=0, lr_scheduler_type="constant", dataloader_drop_last=True)
    values.update(overrides)
    return MDLMConfig(**values)


class Spy(torch.nn.Module):
    """Wraps a model and records the noisy input_ids it is called with."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config, self.seen = inner, inner.config, []

    def forward(self, input_ids, **kwargs):
        self.seen.append(input_ids.clone())
        return self.inner(input_ids=input_ids, **kwargs)


def test_noise_is_the_closed_form_of_its_position_and_ranks_slice_one_draw(tmp_path):
    """Rank r of 2 at (seed, step 0, micro-batch 0) masks with slice r of one global draw from the generator
    seeded by noise_seed(seed, "train", 0, 0), whatever the global RNG state; the next micro-batch differs."""

    class TwoProcesses(MDLMConfig):
        rank = 0
        world_size = property(lambda self: 2)
        process_index = property(lambda self: self.rank)

    rows = copy_task_dataset(4, length=40)
    batch = default_data_collator([rows[i] for i in range(4)])
    generator = torch.Generator().manual_seed(noise_seed(0, "train", 0, 0))
    t = sample_t(8, eps=1e-3, antithetic=True, generator=generator)  # [2 B], the global antithetic grid
    uniforms = torch.rand((2, 4, 40), generator=generator)  # [world, B, L]
    for rank in (0, 1):
        model = tiny_model()
        trainer = MDLMTrainer(model=model, args=config(tmp_path), data_collator=default_data_collator)
        trainer.args = TwoProcesses(**{k: v for k, v in vars(config(tmp_path)).items()
                                       if k in {f.name for f in MDLMConfig.__dataclass_fields__.values() if f.init}})
        trainer.args.rank = rank
        spy = Spy(model)
        torch.manual_seed(1000 + rank)  # the global RNG plays no part
        trainer.compute_loss(spy, batch)
        trainer.compute_loss(spy, batch)  # the second micro-batch of the window
        expected, _ = mask_tokens(batch["input_ids"], batch["labels"],
                                  trainer.schedule.mask_probability(t[rank * 4:(rank + 1) * 4]), MASK_ID,
                                  uniforms=uniforms[rank])
        assert torch.equal(spy.seen[0], expected)
        assert not torch.equal(spy.seen[1], spy.seen[0])


class DrawFromGlobalRNG(TrainerCallback):
    """Another consumer of the global torch RNG, before every step."""

    def on_step_begin(self, args, state, control, **kwargs):
        torch.rand(7)


def test_training_does_not_depend_on_other_global_rng_draws(tmp_path):
    """Extra global draws before every step and an evaluation every 2 steps (whose noise draws would shift a
    global-RNG stream) leave the trained weights bit-identical: the noise depends on its position only."""
    weights = []
    for disturbed in (False, True):
        model = tiny_model(seed=1)
        extra = dict(eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=4) if disturbed else {}
        trainer = MDLMTrainer(model=model, args=config(tmp_path, gradient_accumulation_steps=2, **extra),
                              train_dataset=copy_task_dataset(), eval_dataset=copy_task_dataset(8, seed=1),
                              data_collator=default_data_collator,
                              callbacks=[DrawFromGlobalRNG()] if disturbed else None)
        trainer.train()
        weights.append({n: p.detach().clone() for n, p in model.named_parameters()})
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name


def test_evaluation_noise_is_the_same_at_every_evaluation(tmp_path):
    """Each evaluation restarts its noise: the same weights give the same eval_loss (common random numbers,
    so checkpoints are compared on equal noise), however many training draws happened in between."""
    trainer = MDLMTrainer(model=tiny_model(), args=config(tmp_path), eval_dataset=copy_task_dataset(8, seed=1),
                          data_collator=default_data_collator)
    first = trainer.evaluate()["eval_loss"]
    torch.rand(5)
    assert trainer.evaluate()["eval_loss"] == first


# ---- in-process: save_total_limit, load_best_model_at_end -----------------------------------------


@pytest.mark.parametrize("greater_is_better", [False, True])
def test_best_checkpoint_by_eval_loss_is_loaded_and_old_ones_rotated(tmp_path, greater_is_better):
    """Evaluate and save every 2 steps for 10 steps with save_total_limit=2: Trainer keeps at most 2 checkpoints
    (the best among them), picks the best by eval_loss, and loads its weights at the end. greater_is_better
    picks the worst loss instead, an early checkpoint, so loading really replaces the final weights."""
    model = tiny_model()
    args = config(tmp_path, max_steps=10, eval_strategy="steps", eval_steps=2, save_strategy="steps",
                  save_steps=2, save_total_limit=2, load_best_model_at_end=True, metric_for_best_model="eval_loss",
                  greater_is_better=greater_is_better, per_device_eval_batch_size=8)
    trainer = MDLMTrainer(model=model, args=args, train_dataset=copy_task_dataset(),
                          eval_dataset=copy_task_dataset(16, seed=1), data_collator=default_data_collator)
    trainer.train()

    evals = {e["step"]: e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e}
    assert sorted(evals) == [2, 4, 6, 8, 10]
    best_step = (max if greater_is_better else min)(evals, key=evals.get)
    assert trainer.state.best_global_step == best_step
    assert trainer.state.best_model_checkpoint == str(tmp_path / "out" / f"checkpoint-{best_step}")
    remaining = sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*"))
    # Rotation keeps exactly save_total_limit=2: the best and the last (the last two when the last is the best).
    kept = {f"checkpoint-{best_step}", "checkpoint-10"} if best_step != 10 else {"checkpoint-8", "checkpoint-10"}
    assert len(remaining) == 2 and remaining == sorted(kept)
    saved = load_file(tmp_path / "out" / f"checkpoint-{best_step}" / "model.safetensors")
    for name, param in model.state_dict().items():
        assert torch.equal(param, saved[name]), name
    if greater_is_better:
        assert best_step != 10  # a non-final checkpoint was loaded


class Stream(torch.utils.data.IterableDataset):
    """An endless stream with no length, deterministic in its seed (like the demo's TaskStream)."""

    def __iter__(self):
        rows = copy_task_dataset(64)
        while True:
            yield from rows


@pytest.mark.parametrize("ignore_data_skip", [False, True])
def test_a_streamed_dataset_resumes_by_skipping_the_batches_already_seen(tmp_path, ignore_data_skip):
    """An IterableDataset cannot seek: on resume Trainer restarts it and discards the batches already trained on
    (global_step x accumulation), so the resumed run equals the uninterrupted one. ignore_data_skip=True starts
    the stream over instead: the resumed run trains on rows it has seen, and ends elsewhere."""
    def trainer_for(out, **extra):
        args = config(tmp_path, output_dir=str(tmp_path / out), max_steps=6, gradient_accumulation_steps=2,
                      save_strategy="steps", save_steps=2, ignore_data_skip=ignore_data_skip, **extra)
        return MDLMTrainer(model=tiny_model(seed=1), args=args, train_dataset=Stream(),
                           data_collator=default_data_collator)

    reference = trainer_for("reference")
    reference.train()  # also writes checkpoint-2
    # --resume_from_checkpoint is read by MDLMTrainer.train() itself (plain Trainer leaves it to the script).
    resumed = trainer_for("resumed", resume_from_checkpoint=str(tmp_path / "reference" / "checkpoint-2"))
    resumed.train()
    assert resumed.state.global_step == 6
    assert len([e for e in resumed.state.log_history if "loss" in e]) == 6  # 2 from the checkpoint, 4 trained
    same = all(torch.equal(p, q) for p, q in zip(resumed.model.parameters(), reference.model.parameters()))
    assert same is not ignore_data_skip


# ---- subprocess: SIGKILL between checkpoints, then --resume_from_checkpoint ------------------------

# Sleeps after every optimizer step (before Trainer saves), so the poller below reliably kills the run between
# two checkpoints. It changes no computation; only the run that is killed uses it.
SLOW_SCRIPT = textwrap.dedent("""\
    import sys, time
    from transformers import TrainerCallback
    import dllm.sft.recipe as recipe

    class Sleep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            time.sleep(0.5)

    config_class, trainer_class = recipe.OBJECTIVES["mdlm"]

    class SlowTrainer(trainer_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(Sleep())

    recipe.OBJECTIVES["mdlm"] = (config_class, SlowTrainer)
    recipe.run("llama3", sys.argv[1:])
    """)


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": path,
            "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny LLaMA with attention dropout (another consumer of the global RNG) whose tokenizer has a mask
    token, and 28 Alpaca rows: 24 to train on, 4 to evaluate on."""
    tmp = tmp_path_factory.mktemp("resume")
    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    base = tmp / "base"
    LlamaForCausalLM(tiny_llama_config(vocab_size=len(tokenizer), attention_dropout=0.1)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    rows = [{"instruction": f"Repeat {i} {'twice' if i % 3 else ''}", "input": "", "output": f"{i} " * (1 + i % 4)}
            for i in range(28)]
    data = tmp / "alpaca.json"
    data.write_text(json.dumps(rows))
    return {"tmp": tmp, "base": base, "slow": _write(tmp / "slow_sft.py", SLOW_SCRIPT),
            "data": f"{data}[train:24,test:4]"}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def run_flags(workspace, out: Path, max_steps: int) -> list[str]:
    """Batch 2 x accumulation 2 per process; evaluation and a checkpoint every 2 steps; cosine schedule with
    warm-up (its state must come back too); the runs cross an epoch boundary."""
    return ["--model_name_or_path", str(workspace["base"]), "--dataset_args", workspace["data"],
            "--test_size", "4", "--output_dir", str(out), "--per_device_train_batch_size", "2",
            "--per_device_eval_batch_size", "2", "--gradient_accumulation_steps", "2", "--max_steps", str(max_steps),
            "--learning_rate", "1e-2", "--lr_scheduler_type", "cosine", "--warmup_steps", "2",
            "--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "steps", "--eval_steps", "2",
            "--logging_steps", "1", "--report_to", "none", "--use_cpu", "True", "--max_seq_length", "64",
            "--seed", "0"]


def launcher(num_processes: int) -> list[str]:
    if num_processes == 1:
        return [sys.executable]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP_CONFIG),
            "--main_process_port", "0", "--num_processes", str(num_processes), "--mixed_precision", "no"]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return finish_run(start_run(cmd))


def start_run(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)


def finish_run(process: subprocess.Popen) -> subprocess.CompletedProcess:
    """Wait for ``process`` (started by :func:`start_run`), which must exit 0."""
    try:
        stdout, stderr = process.communicate(timeout=600)
    finally:
        process.kill()  # only if the wait timed out or was interrupted: exited processes ignore it
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def complete_checkpoints(out: Path, num_processes: int) -> list[int]:
    """Steps of the checkpoints whose last files are written (every rank's RNG state, a parseable state)."""
    steps = []
    for folder in out.glob("checkpoint-*"):
        rng = ["rng_state.pth"] if num_processes == 1 else [f"rng_state_{r}.pth" for r in range(num_processes)]
        try:
            json.loads((folder / "trainer_state.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        if all((folder / name).exists() for name in rng):
            steps.append(int(folder.name.split("-")[1]))
    return sorted(steps)


def run_killed_between_checkpoints(cmd: list[str], out: Path, num_processes: int, max_steps: int) -> int:
    """Start ``cmd``, poll ``out`` until a complete checkpoint exists, SIGKILL the whole process group (launcher
    and every rank), and return the step of the latest complete checkpoint."""
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT,
                               start_new_session=True)
    deadline = time.monotonic() + 600
    try:
        while not complete_checkpoints(out, num_processes):
            assert process.poll() is None, process.stdout.read().decode()[-4000:]
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.05)
        time.sleep(0.1)  # let the last writes of a file land (the run sleeps 0.5 s after each step)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        process.stdout.close()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "model.safetensors").exists()  # killed before the end
    step = complete_checkpoints(out, num_processes)[-1]
    assert 0 < step < max_steps
    return step


def logged_losses(result: subprocess.CompletedProcess) -> list[str]:
    """The training-loss values of Trainer's printed log dicts (``{'loss': '6.682', ...}``), one per step."""
    return re.findall(r"\{'loss': '([-+0-9.eE]+)'", result.stdout + result.stderr)


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("num_processes", [1, 2])
def test_sigkill_then_resume_matches_uninterrupted_run(workspace, num_processes):
    """One process: the resumed run's final weights are bit-identical to the uninterrupted run's. Two DDP
    processes (gloo, CPU): within 1e-6 (measured: identical, see docs/distributed.md)."""
    tmp, max_steps = workspace["tmp"], 8 if num_processes == 1 else 6
    tag = f"x{num_processes}"
    reference = tmp / f"reference_{tag}"
    # The uninterrupted run trains while the other one is started, sleeps between steps and is killed.
    uninterrupted = start_run([*launcher(num_processes), str(SCRIPT), *run_flags(workspace, reference, max_steps)])
    interrupted = tmp / f"interrupted_{tag}"
    flags = run_flags(workspace, interrupted, max_steps)
    try:
        step = run_killed_between_checkpoints([*launcher(num_processes), str(workspace["slow"]), *flags],
                                              interrupted, num_processes, max_steps)
    finally:
        ref_result = finish_run(uninterrupted)
    assert "eval_loss" in ref_result.stdout + ref_result.stderr

    resumed = run([*launcher(num_processes), str(SCRIPT), *flags,
                   "--resume_from_checkpoint", str(interrupted / f"checkpoint-{step}")])
    # It really resumed: only the remaining steps were trained (a run from scratch would end at the same weights,
    # since the noise depends on the step only, and would pass the comparison below).
    assert len(logged_losses(resumed)) == max_steps - step
    assert len(logged_losses(ref_result)) == max_steps

    got, want = final_weights(interrupted), final_weights(reference)
    start = load_file(workspace["base"] / "model.safetensors")
    assert got.keys() == want.keys()
    diff = max((got[n] - want[n]).abs().max().item() for n in want)
    print(f"{tag}: resumed from checkpoint-{step}; max |resumed - uninterrupted| = {diff:.3g}")
    if num_processes == 1:
        for name in want:
            assert torch.equal(got[name], want[name]), name
    else:
        assert diff <= 1e-6
    assert max((want[n] - start[n]).abs().max().item() for n in start if start[n].shape == want[n].shape) > 1e-3
