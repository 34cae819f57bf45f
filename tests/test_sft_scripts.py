"""The example SFT scripts end to end on a tiny saved checkpoint and a fixture dataset (subprocesses)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, Gemma2ForCausalLM, LlamaForCausalLM, PreTrainedTokenizerFast

from dllm.core.models import is_bidirectional
from dllm.pipelines.gemma2 import Gemma2ForMaskedLM
from dllm.pipelines.llama3 import Llama3ForMaskedLM
from tests.conftest import tiny_gemma2_config, tiny_llama_config

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def alpaca_fixture(path: Path, n: int = 24) -> Path:
    rows = [{"instruction": f"Repeat {i}", "input": "" if i % 2 else "twice", "output": f"{i} {i}"} for i in range(n)]
    path.write_text(json.dumps(rows))
    return path


def checkpoint_without_mask_token(tmp_path, char_tokenizer, causal_cls, config):
    """A causal checkpoint whose tokenizer has no mask token (like LLaMA 3): the script must add one."""
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=char_tokenizer.backend_tokenizer, bos_token="<|bos|>",
                                        eos_token="<|eos|>", pad_token="<|pad|>")
    tokenizer.chat_template = char_tokenizer.chat_template
    torch.manual_seed(0)
    path = tmp_path / "base"
    causal_cls(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, len(tokenizer)


def run_script(script: str, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / script), *flags], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


COMMON = ["--max_steps", "4", "--per_device_train_batch_size", "4", "--logging_steps", "1", "--use_cpu", "True",
          "--report_to", "none", "--save_strategy", "no", "--learning_rate", "1e-3", "--max_seq_length", "64"]


@pytest.mark.parametrize("family", ["llama3", "gemma2"])
@pytest.mark.parametrize("lora", [False, True])
def test_sft_script_trains_and_saves_loadable_checkpoint(tmp_path, char_tokenizer, family, lora):
    causal_cls, masked_cls, config = {
        "llama3": (LlamaForCausalLM, Llama3ForMaskedLM, tiny_llama_config),
        "gemma2": (Gemma2ForCausalLM, Gemma2ForMaskedLM, tiny_gemma2_config),
    }[family]
    base, vocab = checkpoint_without_mask_token(tmp_path, char_tokenizer, causal_cls,
                                                config(vocab_size=len(char_tokenizer) - 1))
    data = alpaca_fixture(tmp_path / "alpaca.json")
    out = tmp_path / "out"
    flags = ["--model_name_or_path", str(base), "--dataset_args", f"{data}[train:20,test:4]",
             "--output_dir", str(out), "--eval_strategy", "steps", "--eval_steps", "2", *COMMON]
    if lora:
        flags += ["--lora", "True", "--r", "4", "--lora_alpha", "8", "--target_modules", "q_proj", "v_proj"]
    run_script(f"examples/{family}/sft.py", *flags)

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = masked_cls.from_pretrained(out)
    assert tokenizer.mask_token_id is not None and model.config.mask_token_id == tokenizer.mask_token_id
    assert model.get_input_embeddings().weight.shape[0] > tokenizer.mask_token_id  # resized for the new token
    assert is_bidirectional(model)
    base_model = causal_cls.from_pretrained(base)
    moved = [not torch.equal(a, b) for (_, a), (_, b) in
             zip(sorted(base_model.state_dict().items()), sorted(model.state_dict().items())) if a.shape == b.shape]
    assert any(moved)  # training changed weights (merged LoRA changes attention projections)
    if lora:
        assert (out / "adapter" / "adapter_config.json").exists()


def test_sft_script_logs_losses_and_eval(tmp_path, char_tokenizer):
    base, _ = checkpoint_without_mask_token(tmp_path, char_tokenizer, LlamaForCausalLM,
                                            tiny_llama_config(vocab_size=len(char_tokenizer) - 1))
    data = alpaca_fixture(tmp_path / "alpaca.json")
    result = run_script("examples/llama3/sft.py", "--model_name_or_path", str(base), "--dataset_args",
                        f"{data}[train:20,test:4]", "--output_dir", str(tmp_path / "o"), "--eval_strategy", "steps",
                        "--eval_steps", "2", *COMMON)
    text = result.stdout + result.stderr
    assert "'masked_fraction'" in text and "'eval_loss'" in text


@pytest.mark.parametrize("script", ["examples/llama3/sft.py", "examples/gemma2/sft.py"])
def test_help(script):
    result = run_script(script, "--help")
    for flag in ["--model_name_or_path", "--dataset_args", "--lora", "--r", "--lora_alpha", "--target_modules",
                 "--max_seq_length", "--per_device_train_batch_size", "--gradient_accumulation_steps",
                 "--gradient_checkpointing", "--bf16", "--num_train_epochs", "--output_dir", "--schedule",
                 "--loss_normalization"]:
        assert flag in result.stdout, flag


def test_cli_dispatches_sft_help():
    from dllm.cli import main

    assert main(["sft", "nope"]) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["sft", "llama3", "--help"])
    assert exit_info.value.code == 0
