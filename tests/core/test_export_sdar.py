"""``dllm export --format sdar``: the folder has exactly the config fields and weight names SGLang's SDAR loader reads,
and loads back into dllm with identical logits."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer, Qwen3ForCausalLM

from dllm.auto import AutoModelForMaskedDiffusion
from dllm.cli import main as cli_main
from dllm.core.models.masked_lm import block_diffusion_size, masked_lm_class, set_block_diffusion
from dllm.core.sampling import DiffusionGenerationConfig, generation_defaults
from dllm.demo.tokenizer import build_char_tokenizer
from dllm.errors import UsageError
from dllm.export.sdar import ALGORITHM_CONFIG_NAME, export_sdar
from tests.helpers import tiny_llama_config, tiny_qwen3_config

# What SGLang's SDARForCausalLM reads from config.json: python/sglang/srt/models/sdar.py at commit
# 060c48f709115f3b8f1573c7a00c66a457ced8a6 (SDARMLP, SDARAttention, SDARBlock, SDARModel, SDARForCausalLM.__init__);
# (rope_scaling too, with a default of None); DllmConfig.from_server_args (python/sglang/srt/dllm/config.py) reads
# architectures[0], block_size, mask_token_id.
SGLANG_CONFIG_FIELDS = {"hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                        "attention_bias", "rms_norm_eps", "rope_theta", "max_position_embeddings",
                        "vocab_size", "num_hidden_layers", "tie_word_embeddings", "architectures", "block_size",
                        "mask_token_id"}
# The names SDARForCausalLM.load_weights consumes (q/k/v and gate/up stacked by it; lm_head only when untied).
LAYER_WEIGHTS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "self_attn.q_norm",
                 "self_attn.k_norm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm",
                 "post_attention_layernorm")


def sglang_weight_names(layers: int, tied: bool) -> set[str]:
    names = {f"model.layers.{i}.{w}.weight" for i in range(layers) for w in LAYER_WEIGHTS}
    names |= {"model.embed_tokens.weight", "model.norm.weight"}
    return names if tied else names | {"lm_head.weight"}


def block_diffusion_checkpoint(path, family: str = "qwen3", tied: bool = False, block_size: int | None = 4):
    tokenizer = build_char_tokenizer()
    make = tiny_qwen3_config if family == "qwen3" else tiny_llama_config
    config = make(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                  bos_token_id=tokenizer.bos_token_id, mask_token_id=tokenizer.mask_token_id,
                  tie_word_embeddings=tied, rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    torch.manual_seed(0)
    model = AutoModelForMaskedDiffusion.from_config(config)
    if block_size is not None:
        set_block_diffusion(model.config, block_size)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    generation_defaults(model.config, gen_length=12).save_pretrained(path)
    return model.eval(), tokenizer


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_the_export_has_sglangs_names_and_loads_back_with_identical_logits(tmp_path, tied):
    model, tokenizer = block_diffusion_checkpoint(tmp_path / "ckpt", tied=tied)
    out = export_sdar(str(tmp_path / "ckpt"), tmp_path / "sdar")

    config = json.loads((out / "config.json").read_text())
    assert SGLANG_CONFIG_FIELDS <= set(config)
    assert config["architectures"] == ["SDARForCausalLM"] and config["model_type"] == "sdar"
    assert (config["block_size"], config["mask_token_id"], config["rope_theta"]) == (4, tokenizer.mask_token_id, 500.0)
    assert (out / ALGORITHM_CONFIG_NAME).read_text() == f"block_size: 4\nmask_id: {tokenizer.mask_token_id}\n"
    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        assert set(weights.keys()) == sglang_weight_names(2, tied)
    # SGLang reads the config with AutoConfig and trust_remote_code (the folder's configuration_sdar.py)
    sdar = AutoConfig.from_pretrained(out, trust_remote_code=True)
    assert (sdar.model_type, sdar.block_size, sdar.mask_token_id) == ("sdar", 4, tokenizer.mask_token_id)
    assert AutoTokenizer.from_pretrained(out).mask_token_id == tokenizer.mask_token_id

    loaded = masked_lm_class(Qwen3ForCausalLM).from_pretrained(out).eval()
    assert block_diffusion_size(loaded.config) == 4
    ids = torch.randint(5, len(tokenizer), (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert DiffusionGenerationConfig.from_pretrained(out).cache == "block"


def test_other_backbones_and_mdlm_checkpoints_are_one_line_errors(tmp_path, capsys):
    block_diffusion_checkpoint(tmp_path / "llama", family="llama")
    with pytest.raises(UsageError, match="exports Qwen3-backbone checkpoints.*'llama'"):
        export_sdar(str(tmp_path / "llama"), tmp_path / "o1")
    block_diffusion_checkpoint(tmp_path / "mdlm", block_size=None)
    assert cli_main(["export", str(tmp_path / "mdlm"), str(tmp_path / "o2"), "--format", "sdar"]) == 2
    assert "not a block-diffusion checkpoint" in capsys.readouterr().err


def test_an_out_that_is_or_holds_the_checkpoint_is_refused_whatever_overwrite_says(tmp_path):
    from dllm.errors import UsageError
    from dllm.export.sdar import export_sdar

    checkpoint = tmp_path / "ckpt"
    block_diffusion_checkpoint(checkpoint)
    before = sorted(p.name for p in checkpoint.iterdir())
    with pytest.raises(UsageError, match="is the model being read"):
        export_sdar(str(checkpoint), checkpoint, overwrite=True)
    with pytest.raises(UsageError, match="holds the model being read"):
        export_sdar(str(checkpoint), tmp_path, overwrite=True)
    assert sorted(p.name for p in checkpoint.iterdir()) == before
