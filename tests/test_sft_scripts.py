"""The example SFT scripts end to end on a tiny saved checkpoint and a fixture dataset (subprocesses)."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer, Gemma2ForCausalLM, LlamaForCausalLM

from dllm.core.models import is_bidirectional
from dllm.core.sampling import GENERATION_CONFIG_NAME, DiffusionGenerationConfig
from dllm.inference.loading import CheckpointArguments, load_checkpoint
from dllm.pipelines.gemma2 import Gemma2ForMaskedLM
from dllm.pipelines.llama3 import Llama3ForMaskedLM
from dllm.sft.merge import merge_lora
from dllm.sft.recipe import save_final
from tests.helpers import (
    alpaca_fixture,
    checkpoint_without_mask_token,
    tiny_gemma2_config,
    tiny_llama_config,
    tiny_qwen3_config,
)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run_script(script: str, *flags: str, returncode: int = 0) -> subprocess.CompletedProcess:
    """Run ``script`` (a path under the repository, or ``-m module``) with ``flags`` in a fresh interpreter."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    command = script.split() if script.startswith("-m ") else [str(ROOT / script)]
    result = subprocess.run([sys.executable, *command, *flags], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=600)
    assert result.returncode == returncode, result.stdout[-3000:] + result.stderr[-3000:]
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
             "--output_dir", str(out), "--eval_strategy", "steps", "--eval_steps", "2", "--gen_length", "12", *COMMON]
    if lora:
        flags += ["--lora", "True", "--r", "4", "--lora_alpha", "8", "--target_modules", "q_proj", "v_proj"]
    run_script(f"examples/{family}/sft.py", *flags)

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = masked_cls.from_pretrained(out)
    assert tokenizer.mask_token_id is not None and model.config.mask_token_id == tokenizer.mask_token_id
    assert model.get_input_embeddings().weight.shape[0] > tokenizer.mask_token_id  # resized for the new token
    assert is_bidirectional(model)
    before = causal_cls.from_pretrained(base).state_dict()
    after = model.state_dict()
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name][: before[name].shape[0]])}
    if lora:  # merged adapters change exactly the targeted projections, every one of them
        assert changed == {n for n in before if n.endswith(("q_proj.weight", "v_proj.weight"))}
        assert (out / "adapter" / "adapter_config.json").exists()
    else:  # full fine-tuning moves every tensor
        assert changed == set(before), sorted(set(before) - changed)
    # the sampler defaults, --gen_length included, go with the checkpoint, and every verb starts from them
    assert DiffusionGenerationConfig.from_pretrained(out) == DiffusionGenerationConfig(gen_length=12)
    assert load_checkpoint(str(out), CheckpointArguments(device="cpu")).generation_config.gen_length == 12
    if lora:  # ... and with the adapter, which dllm merge-lora copies to the merged checkpoint
        saved = (out / "adapter" / GENERATION_CONFIG_NAME).read_text()
        assert saved == (out / GENERATION_CONFIG_NAME).read_text()
        merge_lora(str(base), out / "adapter", tmp_path / "merged")
        assert (tmp_path / "merged" / GENERATION_CONFIG_NAME).read_text() == saved


def test_lora_under_deepspeed_saves_the_sampler_defaults_with_the_adapter(tmp_path):
    """Under DeepSpeed/FSDP only the adapter folder is written, by the main process alone."""
    config = DiffusionGenerationConfig(gen_length=12)
    for main_process, folder in ((False, tmp_path / "other"), (True, tmp_path / "main")):
        trainer = SimpleNamespace(save_model=lambda path: Path(path).mkdir(parents=True), is_deepspeed_enabled=True,
                                  is_fsdp_enabled=False, accelerator=SimpleNamespace(is_main_process=main_process))
        save_final(trainer, None, str(folder), lora=True, generation_config=config)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "main", "main/adapter", f"main/adapter/{GENERATION_CONFIG_NAME}", "other", "other/adapter"]
    assert DiffusionGenerationConfig.from_pretrained(tmp_path / "main" / "adapter") == config


def test_sft_script_logs_losses_and_eval(tmp_path, char_tokenizer):
    base, _ = checkpoint_without_mask_token(tmp_path, char_tokenizer, LlamaForCausalLM,
                                            tiny_llama_config(vocab_size=len(char_tokenizer) - 1))
    data = alpaca_fixture(tmp_path / "alpaca.json")
    result = run_script("examples/llama3/sft.py", "--model_name_or_path", str(base), "--dataset_args",
                        f"{data}[train:20,test:4]", "--output_dir", str(tmp_path / "o"), "--eval_strategy", "steps",
                        "--eval_steps", "2", "--train_sampling_strategy", "group_by_length",  # lengths of the rows
                        *COMMON)                                                               # tokenised once
    text = result.stdout + result.stderr
    assert "'masked_fraction'" in text and "'eval_loss'" in text


def test_sft_script_packs_conversations(tmp_path, char_tokenizer):
    """--packing: the 20 Alpaca rows (about 40 tokens each) share rows of 128; training and evaluation run on packs,
    per-document sequence normalisation included; Gemma 2 takes the per-layer-type (sliding window) masks."""
    base, _ = checkpoint_without_mask_token(tmp_path, char_tokenizer, Gemma2ForCausalLM,
                                            tiny_gemma2_config(vocab_size=len(char_tokenizer) - 1))
    data = alpaca_fixture(tmp_path / "alpaca.json")
    common = [flag if flag != "64" else "128" for flag in COMMON]  # --max_seq_length 128
    result = run_script("examples/gemma2/sft.py", "--model_name_or_path", str(base), "--dataset_args",
                        f"{data}[train:20,test:4]", "--output_dir", str(tmp_path / "o"), "--eval_strategy", "steps",
                        "--eval_steps", "2", "--packing", "True", "--loss_normalization", "sequence", *common)
    text = result.stdout + result.stderr
    packed = re.search(r"packing train: 20 conversations in (\d+) rows of 128 tokens", text)
    assert packed and int(packed.group(1)) <= 10, text[-3000:]
    losses = [float(v) for v in re.findall(r"'loss': '?([0-9.e+-]+|nan)", text)]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses) and "'eval_loss'" in text


def test_packing_with_eos_padding_is_a_one_line_error(tmp_path):
    tiny_llama_config().save_pretrained(tmp_path)  # the family is read from it before the options
    result = run_script("-m dllm.cli", "sft", "--model_name_or_path", str(tmp_path), "--packing", "True",
                        "--train_on_eos_padding", "True", returncode=2)
    assert result.stderr.strip() == ("dllm sft: --packing and --train_on_eos_padding exclude each other: eos padding "
                                     "trains one answer per fixed-length canvas, a packed row holds several answers")


@pytest.mark.parametrize("script", ["examples/llama3/sft.py", "examples/gemma2/sft.py", "examples/qwen3_vl/sft.py"])
def test_example_scripts_print_one_line_for_a_user_mistake(tmp_path, script):
    result = run_script(script, "--model_name_or_path", str(tmp_path / "nope"), returncode=2)
    assert result.stderr.strip() == f"dllm sft: {tmp_path / 'nope'}: no such checkpoint folder"


@pytest.mark.parametrize("script", ["examples/llama3/sft.py", "examples/gemma2/sft.py"])
def test_help(script):
    result = run_script(script, "--help")
    for flag in ["--model_name_or_path", "--dataset_args", "--lora", "--r", "--lora_alpha", "--target_modules",
                 "--max_seq_length", "--per_device_train_batch_size", "--gradient_accumulation_steps",
                 "--gradient_checkpointing", "--bf16", "--num_train_epochs", "--output_dir", "--schedule",
                 "--loss_normalization"]:
        assert flag in result.stdout, flag


def test_cli_dispatches_sft_help(capsys):
    from dllm.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["sft", "llama3", "--help"])
    assert exit_info.value.code == 0
    assert "--model_name_or_path" in capsys.readouterr().out


def test_cli_user_mistakes_print_one_line_and_exit_2():
    unknown = run_script("-m dllm.cli", "sft", "nope", returncode=2)
    from dllm.auto import FAMILIES

    assert unknown.stderr.strip().splitlines() == [
        f"dllm sft: unknown family 'nope'; choose one of {', '.join(sorted(FAMILIES))}, or give "
        "--model_name_or_path alone"]
    missing = run_script("-m dllm.cli", "sft", "--max_steps", "1", returncode=2)
    assert missing.stderr.strip().splitlines()[-1].startswith("dllm sft: give --model_name_or_path")
    assert "Traceback" not in missing.stderr
    verb = run_script("-m dllm.cli", "fly", returncode=2)
    from dllm.cli import COMMANDS

    assert verb.stderr.strip().splitlines() == [
        f"dllm: unknown command 'fly'; choose one of {', '.join([*COMMANDS, 'version'])}"]
    assert {"sft", "demo"} <= set(COMMANDS)


def test_dllm_sft_picks_the_class_from_model_type_for_any_causal_lm(tmp_path, char_tokenizer):
    """A Qwen3 checkpoint (no family of its own) trains through `dllm sft --model_name_or_path` and reloads."""
    from transformers import Qwen3ForCausalLM

    from dllm.auto import AutoModelForMaskedDiffusion

    config = tiny_qwen3_config(len(char_tokenizer) - 1)
    base, _ = checkpoint_without_mask_token(tmp_path, char_tokenizer, Qwen3ForCausalLM, config)
    data = alpaca_fixture(tmp_path / "alpaca.json")
    out = tmp_path / "out"
    result = run_script("-m dllm.cli", "sft", "--model_name_or_path", str(base), "--dataset_args",
                        f"{data}[train:20]", "--output_dir", str(out), *COMMON)
    assert "'masked_fraction'" in result.stdout + result.stderr
    model = AutoModelForMaskedDiffusion.from_pretrained(str(out))
    assert isinstance(model, Qwen3ForCausalLM) and is_bidirectional(model)
    assert model.config.mask_token_id == AutoTokenizer.from_pretrained(out).mask_token_id
    before = Qwen3ForCausalLM.from_pretrained(base).state_dict()
    assert not torch.equal(before["model.layers.0.self_attn.q_proj.weight"],
                           model.state_dict()["model.layers.0.self_attn.q_proj.weight"])


def test_dllm_sft_objective_bd3lm_trains_block_diffusion_with_lora_and_packing(tmp_path, char_tokenizer):
    """--objective bd3lm --block_size 4: the merged checkpoint records its objective and block size, its sampler
    defaults are the block cache, and dllm's loader decodes it with them."""
    from dllm.core.models.masked_lm import block_diffusion_size

    base, _ = checkpoint_without_mask_token(tmp_path, char_tokenizer, LlamaForCausalLM,
                                            tiny_llama_config(vocab_size=len(char_tokenizer) - 1))
    data = alpaca_fixture(tmp_path / "alpaca.json")
    out = tmp_path / "out"
    common = [flag if flag != "64" else "128" for flag in COMMON]  # --max_seq_length 128
    result = run_script("-m dllm.cli", "sft", "--model_name_or_path", str(base), "--dataset_args",
                        f"{data}[train:20]", "--output_dir", str(out), "--gen_length", "12", "--objective", "bd3lm",
                        "--block_size", "4", "--packing", "True", "--lora", "True", "--r", "4", "--lora_alpha", "8",
                        "--target_modules", "q_proj", "v_proj", *common)
    losses = [float(v) for v in re.findall(r"'loss': '?([0-9.e+-]+|nan)", result.stdout + result.stderr)]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert block_diffusion_size(Llama3ForMaskedLM.from_pretrained(out).config) == 4
    defaults = DiffusionGenerationConfig(gen_length=12, cache="block", block_size=4)
    assert DiffusionGenerationConfig.from_pretrained(out) == defaults
    loaded = load_checkpoint(str(out), CheckpointArguments(device="cpu")).generation_config
    assert (loaded.cache, loaded.block_size, loaded.gen_length) == ("block", 4, 12)
