"""The loader every verb shares: saved sampler settings, overrides, the mask token, and its refusals; the sampler
flags derived from DiffusionGenerationConfig."""

from __future__ import annotations

import json
import shutil
from dataclasses import fields

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from dllm.auto import AutoModelForMaskedDiffusion
from dllm.core.sampling import GENERATION_CONFIG_NAME, DiffusionGenerationConfig
from dllm.errors import UsageError
from dllm.inference.loading import (
    CheckpointArguments,
    SamplerOptions,
    load_checkpoint,
    parse_verb_args,
    sampler_overrides,
)
from tests.helpers import tiny_llama_config


def test_sampler_flags_mirror_the_config_fields_and_default_to_none():
    names = [f.name for f in fields(SamplerOptions)]
    assert names == [f.name for f in fields(DiffusionGenerationConfig) if f.name not in ("record_history", "progress")]
    assert all(f.default is None for f in fields(SamplerOptions))
    helps = {f.name: f.metadata["help"] for f in fields(SamplerOptions)}
    assert helps["threshold"].startswith("Fast-dLLM parallel decoding")  # the field's docstring, written once
    assert helps["gen_length"].endswith("else 32.")


def test_only_given_flags_override_and_positionals_mix_with_flags():
    checkpoint, prompts, (load_args, options) = parse_verb_args(
        "dllm sample", ["ckpt", "one", "--steps", "4", "two", "--cache", "prefix", "--temperature", "0.5"],
        (CheckpointArguments, SamplerOptions), prompts=True)
    assert (checkpoint, prompts, load_args.dtype) == ("ckpt", ["one", "two"], "auto")
    assert sampler_overrides(options) == {"steps": 4, "cache": "prefix", "temperature": 0.5}
    with pytest.raises(UsageError, match="invalid choice: 'everything'"):  # outside the Literal's choices: one line
        parse_verb_args("dllm sample", ["ckpt", "--cache", "everything"], (SamplerOptions,))


def test_loads_the_saved_settings_then_the_overrides(tiny_checkpoint):
    loaded = load_checkpoint(str(tiny_checkpoint), CheckpointArguments(device="cpu"))
    config = loaded.generation_config
    assert config.gen_length == 8  # saved; the dataclass default is 32
    tokenizer = loaded.tokenizer
    assert (config.mask_token_id, config.eos_token_id, config.pad_token_id) == (
        tokenizer.mask_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert loaded.default_name == "tiny-dllm"
    assert not loaded.model.training
    override = load_checkpoint(str(tiny_checkpoint), CheckpointArguments(device="cpu"), gen_length=4, steps=2)
    assert (override.generation_config.gen_length, override.generation_config.steps) == (4, 2)


def test_mask_token_from_config_json_when_the_tokenizer_has_none(tmp_path, char_tokenizer):
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=char_tokenizer.backend_tokenizer, bos_token="<|bos|>",
                                        eos_token="<|eos|>", pad_token="<|pad|>")
    tokenizer.chat_template = char_tokenizer.chat_template
    config = tiny_llama_config(vocab_size=len(char_tokenizer), mask_token_id=char_tokenizer.mask_token_id)
    AutoModelForMaskedDiffusion.from_config(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = load_checkpoint(str(tmp_path), CheckpointArguments(device="cpu"))
    assert loaded.tokenizer.mask_token_id is None
    assert loaded.generation_config.mask_token_id == char_tokenizer.mask_token_id == 4


def test_refusals_name_the_checkpoint_or_the_settings_file(tmp_path, tiny_checkpoint):
    with pytest.raises(UsageError, match=f"^{tmp_path / 'nope'}: no such checkpoint folder$"):
        load_checkpoint(str(tmp_path / "nope"))
    with pytest.raises(UsageError, match="^no-such-org/no-such-model: no such checkpoint folder, nor a model in the "
                                         r"local Hugging Face cache \(the Hub is off: HF_HUB_OFFLINE=1\)"):
        load_checkpoint("no-such-org/no-such-model")  # tests run offline: said at once
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"empty: not a checkpoint folder \(no config.json\)$"):
        load_checkpoint(str(tmp_path / "empty"))
    broken = shutil.copytree(tiny_checkpoint, tmp_path / "broken")
    (broken / GENERATION_CONFIG_NAME).write_text(json.dumps({"gen_length": 8, "stepz": 2}))
    with pytest.raises(UsageError, match=rf"{GENERATION_CONFIG_NAME}: unknown sampler settings \['stepz'\]"):
        load_checkpoint(str(broken))
    with pytest.raises(UsageError, match=r"^--temperature must be in \[0, 2.0\], got -1.0$"):  # the flag, not the file
        load_checkpoint(str(tiny_checkpoint), temperature=-1.0)


def test_device_and_dtype_options(tiny_checkpoint):
    loaded = load_checkpoint(str(tiny_checkpoint), CheckpointArguments(device="cpu", dtype="bfloat16"))
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


def test_the_config_is_the_only_list_of_sampler_options():
    """Flags, request fields and chat's /settings are built from DiffusionGenerationConfig's fields and their metadata:
    a field added there appears in each (no list of names elsewhere, no source parsed for the help)."""
    from dllm.core.sampling.config import fields_of_kind
    from dllm.inference.chat import SETTINGS

    sampler = fields_of_kind("sampler")
    assert sampler == ("gen_length", "steps", "block_size", "remasking", "temperature", "top_k", "top_p", "threshold",
                       "cfg_scale", "cache")
    assert SETTINGS == sampler
    assert [f.name for f in fields(SamplerOptions)] == list(fields_of_kind("sampler", "token_id"))
    helps = {f.name: f.metadata["help"] for f in fields(SamplerOptions)}
    for f in fields(DiffusionGenerationConfig):
        assert f.name not in helps or helps[f.name].startswith(f.metadata["help"])
    pytest.importorskip("pydantic")
    from dllm.inference.protocol import SAMPLER_FIELDS, ChatCompletionRequest

    assert SAMPLER_FIELDS == {("max_tokens" if name == "gen_length" else name): name for name in sampler}
    assert set(SAMPLER_FIELDS) <= set(ChatCompletionRequest.model_fields)
    assert not set(fields_of_kind("token_id", "per_call")) & set(ChatCompletionRequest.model_fields)


def test_lladas_block_length_is_an_alias_of_block_size():
    from dllm.inference.loading import CheckpointArguments, SamplerOptions, parse_verb_args

    _, _, (options, _) = parse_verb_args("dllm sample", ["ckpt", "--block_length", "4"],
                                         (SamplerOptions, CheckpointArguments))
    assert options.block_size == 4
