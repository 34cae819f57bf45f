"""The example SFT scripts end to end on a tiny saved checkpoint and a fixture dataset: every run of the module in
one fresh interpreter (the scripts as ``__main__``, the ``dllm`` verbs through its ``main``), started once."""

import math
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer, Gemma2ForCausalLM, LlamaForCausalLM, Qwen3ForCausalLM

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
    run_cases,
    tiny_gemma2_config,
    tiny_llama_config,
    tiny_qwen3_config,
)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


COMMON = ["--max_steps", "4", "--per_device_train_batch_size", "4", "--logging_steps", "1", "--use_cpu", "True",
          "--report_to", "none", "--save_strategy", "no", "--learning_rate", "1e-3", "--max_seq_length", "64"]
COMMON_128 = [flag if flag != "64" else "128" for flag in COMMON]  # --max_seq_length 128
FAMILIES = {"llama3": (LlamaForCausalLM, Llama3ForMaskedLM, tiny_llama_config),
            "gemma2": (Gemma2ForCausalLM, Gemma2ForMaskedLM, tiny_gemma2_config)}
MISTAKE_SCRIPTS = ["examples/llama3/sft.py", "examples/gemma2/sft.py", "examples/qwen3_vl/sft.py"]
HELP_SCRIPTS = ["examples/llama3/sft.py", "examples/gemma2/sft.py"]


def _cases(tmp: Path, char_tokenizer) -> dict[str, tuple[str | None, list[str]]]:
    """Every run of this module: ``(script under the repository or None for dllm, flags)``, with its inputs."""
    bases = {}
    for name, causal_cls, config in [("llama3", LlamaForCausalLM, tiny_llama_config),
                                     ("gemma2", Gemma2ForCausalLM, tiny_gemma2_config),
                                     ("qwen3", Qwen3ForCausalLM, tiny_qwen3_config)]:
        (tmp / name).mkdir()
        bases[name], _ = checkpoint_without_mask_token(tmp / name, char_tokenizer, causal_cls,
                                                       config(vocab_size=len(char_tokenizer) - 1))
    data = alpaca_fixture(tmp / "alpaca.json")
    tiny_llama_config().save_pretrained(tmp / "config_only")  # the family is read from it before the options
    cases: dict[str, tuple[str | None, list[str]]] = {
        **{f"mistake {script}": (script, ["--model_name_or_path", str(tmp / "nope")]) for script in MISTAKE_SCRIPTS},
        **{f"help {script}": (script, ["--help"]) for script in HELP_SCRIPTS},
        "unknown family": (None, ["sft", "nope"]),
        "missing model": (None, ["sft", "--max_steps", "1"]),
        "unknown verb": (None, ["fly"]),
        "packing with eos padding": (None, ["sft", "--model_name_or_path", str(tmp / "config_only"), "--packing",
                                            "True", "--train_on_eos_padding", "True"]),
    }
    for family in FAMILIES:
        for lora in (False, True):
            flags = ["--model_name_or_path", str(bases[family]), "--dataset_args", f"{data}[train:20,test:4]",
                     "--output_dir", str(tmp / f"{family}-{lora}"), "--eval_strategy", "steps", "--eval_steps", "2",
                     "--gen_length", "12", *COMMON]
            if lora:
                flags += ["--lora", "True", "--r", "4", "--lora_alpha", "8", "--target_modules", "q_proj", "v_proj"]
            cases[f"train {family} lora={lora}"] = (f"examples/{family}/sft.py", flags)
    cases["logs"] = ("examples/llama3/sft.py", [
        "--model_name_or_path", str(bases["llama3"]), "--dataset_args", f"{data}[train:20,test:4]", "--output_dir",
        str(tmp / "logs"), "--eval_strategy", "steps", "--eval_steps", "2", "--train_sampling_strategy",
        "group_by_length", *COMMON])  # the lengths of the rows tokenised once
    cases["packing"] = ("examples/gemma2/sft.py", [
        "--model_name_or_path", str(bases["gemma2"]), "--dataset_args", f"{data}[train:20,test:4]", "--output_dir",
        str(tmp / "packing"), "--eval_strategy", "steps", "--eval_steps", "2", "--packing", "True",
        "--loss_normalization", "sequence", *COMMON_128])
    cases["qwen3"] = (None, ["sft", "--model_name_or_path", str(bases["qwen3"]), "--dataset_args",
                             f"{data}[train:20]", "--output_dir", str(tmp / "qwen3-out"), *COMMON])
    cases["bd3lm"] = (None, ["sft", "--model_name_or_path", str(bases["llama3"]), "--dataset_args",
                             f"{data}[train:20]", "--output_dir", str(tmp / "bd3lm"), "--gen_length", "12",
                             "--objective", "bd3lm", "--block_size", "4", "--packing", "True", "--lora", "True",
                             "--r", "4", "--lora_alpha", "8", "--target_modules", "q_proj", "v_proj", *COMMON_128])
    return cases, bases


@pytest.fixture(scope="module")
def scripts(tmp_path_factory):
    """Every run of the module, one after another in ONE fresh interpreter (the scripts as ``__main__``, the
    ``dllm`` verbs through ``dllm.cli.main``): ``{"tmp", "bases", "runs": {case: (status, stdout, stderr)}}``."""
    from dllm.demo.tokenizer import build_char_tokenizer

    tmp = tmp_path_factory.mktemp("sft_scripts")
    cases, bases = _cases(tmp, build_char_tokenizer())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    scripted = {name: (str(ROOT / script) if script else None, flags) for name, (script, flags) in cases.items()}
    return {"tmp": tmp, "bases": bases, "runs": run_cases(scripted, env, ROOT)}


def run_script(scripts, case: str, returncode: int = 0) -> SimpleNamespace:
    """The run ``case`` of :func:`scripts`, which must have exited with ``returncode``."""
    status, stdout, stderr = scripts["runs"][case]
    assert status == returncode, stdout[-3000:] + stderr[-3000:]
    return SimpleNamespace(stdout=stdout, stderr=stderr)


@pytest.mark.parametrize("family", ["llama3", "gemma2"])
@pytest.mark.parametrize("lora", [False, True])
def test_sft_script_trains_and_saves_loadable_checkpoint(scripts, tmp_path, family, lora):
    causal_cls, masked_cls, _ = FAMILIES[family]
    base, out = scripts["bases"][family], scripts["tmp"] / f"{family}-{lora}"
    run_script(scripts, f"train {family} lora={lora}")

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


def test_sft_script_logs_losses_and_eval(scripts):
    result = run_script(scripts, "logs")  # --train_sampling_strategy group_by_length
    text = result.stdout + result.stderr
    assert "'masked_fraction'" in text and "'eval_loss'" in text


def test_sft_script_packs_conversations(scripts):
    """--packing: the 20 Alpaca rows (about 40 tokens each) share rows of 128; training and evaluation run on packs,
    per-document sequence normalisation included; Gemma 2 takes the per-layer-type (sliding window) masks."""
    result = run_script(scripts, "packing")
    text = result.stdout + result.stderr
    packed = re.search(r"packing train: 20 conversations in (\d+) rows of 128 tokens", text)
    assert packed and int(packed.group(1)) <= 10, text[-3000:]
    losses = [float(v) for v in re.findall(r"'loss': '?([0-9.e+-]+|nan)", text)]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses) and "'eval_loss'" in text


def test_packing_with_eos_padding_is_a_one_line_error(scripts):
    result = run_script(scripts, "packing with eos padding", returncode=2)
    assert result.stderr.strip() == ("dllm sft: --packing and --train_on_eos_padding exclude each other: eos padding "
                                     "trains one answer per fixed-length canvas, a packed row holds several answers")


@pytest.mark.parametrize("script", MISTAKE_SCRIPTS)
def test_example_scripts_print_one_line_for_a_user_mistake(scripts, script):
    result = run_script(scripts, f"mistake {script}", returncode=2)
    assert result.stderr.strip() == f"dllm sft: {scripts['tmp'] / 'nope'}: no such checkpoint folder"


@pytest.mark.parametrize("script", HELP_SCRIPTS)
def test_help(scripts, script):
    result = run_script(scripts, f"help {script}")
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


def test_cli_user_mistakes_print_one_line_and_exit_2(scripts):
    unknown = run_script(scripts, "unknown family", returncode=2)
    from dllm.auto import FAMILIES as REGISTERED

    assert unknown.stderr.strip().splitlines() == [
        f"dllm sft: unknown family 'nope'; choose one of {', '.join(sorted(REGISTERED))}, or give "
        "--model_name_or_path alone"]
    missing = run_script(scripts, "missing model", returncode=2)
    assert missing.stderr.strip().splitlines()[-1].startswith("dllm sft: give --model_name_or_path")
    assert "Traceback" not in missing.stderr
    verb = run_script(scripts, "unknown verb", returncode=2)
    from dllm.cli import COMMANDS

    assert verb.stderr.strip().splitlines() == [
        f"dllm: unknown command 'fly'; choose one of {', '.join([*COMMANDS, 'version'])}"]
    assert {"sft", "demo"} <= set(COMMANDS)


def test_dllm_sft_picks_the_class_from_model_type_for_any_causal_lm(scripts):
    """A Qwen3 checkpoint (no family of its own) trains through `dllm sft --model_name_or_path` and reloads."""
    from dllm.auto import AutoModelForMaskedDiffusion

    base, out = scripts["bases"]["qwen3"], scripts["tmp"] / "qwen3-out"
    result = run_script(scripts, "qwen3")
    assert "'masked_fraction'" in result.stdout + result.stderr
    model = AutoModelForMaskedDiffusion.from_pretrained(str(out))
    assert isinstance(model, Qwen3ForCausalLM) and is_bidirectional(model)
    assert model.config.mask_token_id == AutoTokenizer.from_pretrained(out).mask_token_id
    before = Qwen3ForCausalLM.from_pretrained(base).state_dict()
    assert not torch.equal(before["model.layers.0.self_attn.q_proj.weight"],
                           model.state_dict()["model.layers.0.self_attn.q_proj.weight"])


def test_dllm_sft_objective_bd3lm_trains_block_diffusion_with_lora_and_packing(scripts):
    """--objective bd3lm --block_size 4: the merged checkpoint records its objective and block size, its sampler
    defaults are the block cache, and dllm's loader decodes it with them."""
    from dllm.core.models.masked_lm import block_diffusion_size

    out = scripts["tmp"] / "bd3lm"
    result = run_script(scripts, "bd3lm")
    losses = [float(v) for v in re.findall(r"'loss': '?([0-9.e+-]+|nan)", result.stdout + result.stderr)]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert block_diffusion_size(Llama3ForMaskedLM.from_pretrained(out).config) == 4
    defaults = DiffusionGenerationConfig(gen_length=12, cache="block", block_size=4)
    assert DiffusionGenerationConfig.from_pretrained(out) == defaults
    loaded = load_checkpoint(str(out), CheckpointArguments(device="cpu")).generation_config
    assert (loaded.cache, loaded.block_size, loaded.gen_length) == ("block", 4, 12)
