"""Tiny saved checkpoints, built once: a text one (LLaMA masked LM, char tokenizer, saved sampler settings
gen_length=8) and a vision-language one (Qwen3-VL with its processor). Their weights are random: enough to drive
every interface offline in seconds and to compare what it shows with the sampler's own answers, which is what the
tests check. The README's screenshots need answers a reader can check, so the tests that write them
(``DLLM_WRITE_SCREENSHOTS=1``) use a trained demo checkpoint instead (:func:`screenshot_checkpoint`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import save_tiny_masked_lm, save_tiny_vl

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint folder named ``tiny-dllm``. ``initializer_range=0.2``: a random model at the default 0.02
    gives the same few answers to most prompts, this one answers each of 32 test prompts differently."""
    return save_tiny_masked_lm(tmp_path_factory.mktemp("checkpoints") / "tiny-dllm", gen_length=8,
                               initializer_range=0.2)


@pytest.fixture(scope="session")
def tiny_vl_checkpoint(tmp_path_factory):
    """A tiny random Qwen3-VL folder named ``tiny-vl`` with its processor and mask token, and saved sampler settings
    (8 answer positions, 2 blocks of 4, 4 steps). Skips without torchvision (Qwen3-VL's image processor)."""
    pytest.importorskip("torchvision", reason="Qwen3-VL's image processor needs torchvision")
    return save_tiny_vl(tmp_path_factory.mktemp("checkpoints") / "tiny-vl", gen_length=8, block_size=4, steps=4)


@pytest.fixture(scope="session")
def short_demo_checkpoint(tmp_path_factory):
    """What ``dllm demo`` writes (its recipe, character tokenizer, chat template and saved sampler settings), from a
    run of 300 steps at a tiny size (seconds): the checkpoint the interfaces are promised to serve with no flags.
    Its answers are non-empty but mostly wrong, so tests compare them with the sampler's, not with the task's."""
    from dllm.demo.run import main as demo_main

    out = tmp_path_factory.mktemp("checkpoints") / "demo"
    demo_main(["--output_dir", str(out), "--max_steps", "300", "--train_minutes", "5", "--num_eval_per_task", "2",
               "--num_hidden_layers", "2", "--hidden_size", "32", "--intermediate_size", "64",
               "--per_device_train_batch_size", "8", "--logging_steps", "300", "--no_plot"])
    return out


@pytest.fixture(scope="session")
def screenshot_checkpoint() -> Path:
    """The trained demo checkpoint the README's screenshots (docs/images) show: ``DLLM_SCREENSHOT_CHECKPOINT``, else
    ``outputs/demo`` (what ``make demo`` writes). The tests that use it write their screenshot, and run at all, only
    with ``DLLM_WRITE_SCREENSHOTS=1``; without it they skip and nothing is written."""
    if os.environ.get("DLLM_WRITE_SCREENSHOTS") != "1":
        pytest.skip("writes the README's screenshot into docs/images: set DLLM_WRITE_SCREENSHOTS=1")
    path = Path(os.environ.get("DLLM_SCREENSHOT_CHECKPOINT") or ROOT / "outputs" / "demo")
    if not (path / "config.json").is_file():
        pytest.fail(f"DLLM_WRITE_SCREENSHOTS=1 needs a trained demo checkpoint and {path} holds none: run make demo "
                    "(outputs/demo) or set DLLM_SCREENSHOT_CHECKPOINT=FOLDER")
    return path
