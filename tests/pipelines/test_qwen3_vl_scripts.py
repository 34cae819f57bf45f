"""The Qwen3-VL setup check and example script run offline on a tiny random Qwen3-VL."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torchvision", reason="Qwen3-VL's image processor needs torchvision")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_setup_script_passes():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "test_qwen3_vl_setup.py")], capture_output=True,
                            text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4/4 passed" in result.stdout and "FAIL " not in result.stdout


@pytest.mark.parametrize("lora", ["True", "False"])
def test_example_sft_trains_and_saves_a_loadable_checkpoint(tmp_path, lora):
    from transformers import AutoProcessor

    from dllm.auto import AutoModelForMaskedDiffusion
    from dllm.pipelines.qwen3_vl.testing import build_tiny_qwen3_vl
    from tests.helpers import write_vl_rows

    base = tmp_path / "base"
    model, processor = build_tiny_qwen3_vl()
    model.save_pretrained(base)
    processor.save_pretrained(base)
    data = write_vl_rows(tmp_path)
    spec = importlib.util.spec_from_file_location("qwen3_vl_sft", ROOT / "examples" / "qwen3_vl" / "sft.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    out = tmp_path / "out"
    flags = ["--model_name_or_path", str(base), "--dataset_args", f"{data}", "--output_dir", str(out),
             "--lora", lora, "--max_steps", "2", "--per_device_train_batch_size", "2", "--use_cpu", "True",
             "--report_to", "none", "--save_strategy", "no", "--dtype", "float32", "--r", "4", "--gen_length", "16"]
    if lora == "True":  # the example runs `dllm sft qwen3_vl` (one-line errors)
        assert module.main(["sft", "qwen3_vl", *flags]) == 0
    else:  # `dllm sft --model_name_or_path` picks the Qwen3-VL recipe from the checkpoint's model_type
        from dllm.cli import main as cli_main

        assert cli_main(["sft", *flags]) == 0
    loaded = AutoModelForMaskedDiffusion.from_pretrained(str(out))
    reprocessor = AutoProcessor.from_pretrained(out)
    assert loaded.config.text_config.mask_token_id == reprocessor.tokenizer.mask_token_id is not None
    # the sampler defaults every verb starts from go with the checkpoint (and with the adapter under LoRA)
    from dllm.core.sampling import DiffusionGenerationConfig

    assert DiffusionGenerationConfig.from_pretrained(out) == DiffusionGenerationConfig(gen_length=16)
    if lora == "True":
        assert DiffusionGenerationConfig.from_pretrained(out / "adapter") == DiffusionGenerationConfig(gen_length=16)
