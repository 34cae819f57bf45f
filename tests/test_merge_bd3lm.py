"""``dllm merge-lora`` of a block-diffusion LoRA adapter saved alone (as DeepSpeed/FSDP runs save it: the adapter
folder, no ``config.json``): the merged checkpoint records the objective, block size and sampler defaults, and its
exact block cache decodes what recomputing everything does."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from dllm.auto import AutoModelForMaskedDiffusion
from dllm.core.models.masked_lm import block_diffusion_size
from dllm.core.sampling import GENERATION_CONFIG_NAME, DiffusionGenerationConfig, generate
from dllm.core.trainers.bd3lm_trainer import OBJECTIVE_FILE
from dllm.errors import UsageError
from dllm.sft.merge import merge_lora
from dllm.sft.recipe import run as sft_main
from tests.helpers import alpaca_fixture, tiny_llama_config

pytestmark = pytest.mark.slow
BLOCK = 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny LLaMA fine-tuned 4 steps with ``--objective bd3lm --block_size 4 --lora True``; ``alone`` is a copy of
    its adapter folder only (what a DeepSpeed/FSDP run leaves)."""
    from dllm.demo.tokenizer import build_char_tokenizer

    tmp = tmp_path_factory.mktemp("bd3lm_lora")
    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    base = tmp / "base"
    LlamaForCausalLM(tiny_llama_config(vocab_size=len(tokenizer))).save_pretrained(base)
    tokenizer.save_pretrained(base)
    out = tmp / "out"
    sft_main(None, ["--model_name_or_path", str(base), "--dataset_args", str(alpaca_fixture(tmp / "a.json")),
                    "--output_dir", str(out), "--max_steps", "4", "--per_device_train_batch_size", "4",
                    "--use_cpu", "True", "--report_to", "none", "--save_strategy", "no", "--learning_rate", "1e-2",
                    "--max_seq_length", "64", "--lora", "True", "--r", "4", "--lora_alpha", "8",
                    "--target_modules", "q_proj", "v_proj", "--dtype", "float32",
                    "--objective", "bd3lm", "--block_size", str(BLOCK)])
    alone = tmp / "alone" / "adapter"
    shutil.copytree(out / "adapter", alone)
    return SimpleNamespace(base=base, out=out, alone=alone, tmp=tmp)


def _copy_adapter(trained, name: str, drop: tuple[str, ...]):
    folder = trained.tmp / name
    shutil.copytree(trained.alone, folder)
    for file in drop:
        (folder / file).unlink()
    return folder


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def test_the_adapter_records_its_objective(trained):
    assert not (trained.alone / "config.json").exists()
    assert json.loads((trained.alone / OBJECTIVE_FILE).read_text()) == {"dllm_objective": "bd3lm",
                                                                         "dllm_block_size": BLOCK}


def test_merged_adapter_alone_is_block_diffusion_and_its_block_cache_is_exact(trained):
    merged_dir = trained.tmp / "merged"
    merge_lora(str(trained.base), trained.alone, merged_dir)
    config = json.loads((merged_dir / "config.json").read_text())
    assert (config["dllm_objective"], config["dllm_block_size"]) == ("bd3lm", BLOCK)
    defaults = DiffusionGenerationConfig.from_pretrained(merged_dir)
    assert (defaults.cache, defaults.block_size) == ("block", BLOCK)

    merged = AutoModelForMaskedDiffusion.from_pretrained(str(merged_dir))
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    # the recipe's own in-memory merge (config marked by the trainer) computes the same block-causal logits
    ids = torch.tensor([tokenizer("Repeat 3 twice")["input_ids"] + [tokenizer.mask_token_id] * 6])  # [1, L]
    torch.testing.assert_close(_logits(merged, ids),
                               _logits(AutoModelForMaskedDiffusion.from_pretrained(str(trained.out)), ids),
                               atol=1e-5, rtol=0)
    prompt = torch.tensor([tokenizer("Repeat 7")["input_ids"], tokenizer("Repeat 8")["input_ids"]])  # [2, P]
    settings = replace(defaults, gen_length=11, temperature=0.0, mask_token_id=tokenizer.mask_token_id)
    cached = generate(merged, prompt, settings)
    reference = generate(merged, prompt, replace(settings, cache="none"))
    assert torch.equal(cached.sequences, reference.sequences)
    assert not (cached.sequences == tokenizer.mask_token_id).any()


def test_an_adapter_saved_before_the_objective_file_is_recognised_by_its_sampler_defaults(trained):
    assert DiffusionGenerationConfig.from_pretrained(trained.alone).cache == "block"
    old = _copy_adapter(trained, "old_adapter", drop=(OBJECTIVE_FILE,))
    merged = merge_lora(str(trained.base), old, trained.tmp / "merged_old")
    assert block_diffusion_size(merged.config) == BLOCK
    # with neither file nothing says block diffusion: an MDLM merge
    plain = _copy_adapter(trained, "plain_adapter", drop=(OBJECTIVE_FILE, GENERATION_CONFIG_NAME))
    assert block_diffusion_size(merge_lora(str(trained.base), plain, trained.tmp / "merged_plain").config) is None


def test_an_adapter_without_sampler_defaults_gets_the_block_cache(trained):
    bare = _copy_adapter(trained, "bare_adapter", drop=(GENERATION_CONFIG_NAME,))
    merge_lora(str(trained.base), bare, trained.tmp / "merged_bare")
    defaults = DiffusionGenerationConfig.from_pretrained(trained.tmp / "merged_bare")
    assert (defaults.cache, defaults.block_size) == ("block", BLOCK)


@pytest.mark.parametrize("content", ["{not json", '{"dllm_objective": "bd3lm", "dllm_block_size": 0}',
                                     '{"dllm_objective": "mdlm", "dllm_block_size": 4}'])
def test_a_broken_objective_file_is_refused_naming_it(trained, content):
    broken = _copy_adapter(trained, f"broken_{abs(hash(content))}", drop=())
    (broken / OBJECTIVE_FILE).write_text(content)
    out = trained.tmp / f"merged_{broken.name}"
    with pytest.raises(UsageError, match=OBJECTIVE_FILE):
        merge_lora(str(trained.base), broken, out)
    assert not out.exists()  # refused before any work
