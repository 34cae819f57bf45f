"""``dllm.auto``: one table maps a checkpoint's ``model_type`` to its masked-diffusion class."""

from __future__ import annotations

import pytest
import torch
from transformers import Gemma2ForCausalLM, LlamaForCausalLM, Qwen3ForCausalLM

from dllm.auto import FAMILIES, AutoModelForMaskedDiffusion, family_for_model_type
from dllm.core.models import BidirectionalMaskedLMMixin, is_bidirectional
from dllm.pipelines.gemma2 import Gemma2ForMaskedLM
from dllm.pipelines.llama3 import Llama3ForMaskedLM
from tests.helpers import tiny_gemma2_config, tiny_llama_config, tiny_qwen3_config


def saved(tmp_path, causal_cls, config):
    torch.manual_seed(0)
    causal_cls(config).save_pretrained(tmp_path)
    return str(tmp_path)


@pytest.mark.parametrize("causal_cls, config, expected", [
    (LlamaForCausalLM, tiny_llama_config(), Llama3ForMaskedLM),
    (Gemma2ForCausalLM, tiny_gemma2_config(), Gemma2ForMaskedLM),
])
def test_families_get_their_own_class(tmp_path, causal_cls, config, expected):
    model = AutoModelForMaskedDiffusion.from_pretrained(saved(tmp_path, causal_cls, config))
    assert type(model) is expected and is_bidirectional(model)


def test_gemma2_default_attention_is_set_by_its_class(tmp_path):
    model = AutoModelForMaskedDiffusion.from_pretrained(saved(tmp_path, Gemma2ForCausalLM, tiny_gemma2_config()))
    assert model.config._attn_implementation == "eager"


def test_any_other_causal_lm_gets_the_generic_bidirectional_subclass(tmp_path):
    model = AutoModelForMaskedDiffusion.from_pretrained(saved(tmp_path, Qwen3ForCausalLM, tiny_qwen3_config()))
    model.eval()
    assert isinstance(model, Qwen3ForCausalLM) and isinstance(model, BidirectionalMaskedLMMixin)
    assert is_bidirectional(model) and model.config.is_causal is False
    ids = torch.randint(0, 64, (1, 6))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 64
    with torch.no_grad():  # a later token changes the first position's logits
        assert (model(ids).logits[0, 0] - model(changed).logits[0, 0]).abs().max() > 1e-4


def test_from_config_builds_the_same_class():
    assert type(AutoModelForMaskedDiffusion.from_config(tiny_llama_config())) is Llama3ForMaskedLM
    assert isinstance(AutoModelForMaskedDiffusion.from_config(tiny_qwen3_config()), Qwen3ForCausalLM)


def test_a_model_type_without_causal_lm_is_refused_naming_the_checkpoint(tmp_path):
    from transformers import ViTConfig, ViTModel

    path = saved(tmp_path, ViTModel, ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                               intermediate_size=32, image_size=8, patch_size=4))
    with pytest.raises(ValueError, match=rf"{tmp_path}: model_type 'vit' has no causal-LM class"):
        AutoModelForMaskedDiffusion.from_pretrained(path)


def test_table_is_consistent():
    for name, family in FAMILIES.items():
        assert family.name == name and family_for_model_type(family.model_type) is family
    assert family_for_model_type("qwen3") is None
    with pytest.raises(OSError, match="from_pretrained"):
        AutoModelForMaskedDiffusion()
