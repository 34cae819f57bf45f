"""Qwen3VLForMaskedLM: freezing flags, bidirectional attention with an image, the loss, dllm.auto, mask token."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("torchvision", reason="Qwen3-VL's image processor needs torchvision")

from transformers import AutoProcessor, Qwen3VLForConditionalGeneration  # noqa: E402
from transformers.modeling_outputs import MaskedLMOutput  # noqa: E402

from dllm.auto import FAMILIES, AutoModelForMaskedDiffusion  # noqa: E402
from dllm.core.models import add_mask_token  # noqa: E402
from dllm.core.models.masked_lm import is_bidirectional  # noqa: E402
from dllm.pipelines.qwen3_vl import Qwen3VLForMaskedLM  # noqa: E402
from dllm.pipelines.qwen3_vl.testing import build_tiny_qwen3_vl  # noqa: E402
from dllm.pipelines.qwen3_vl.utils import create_qwen3_vl_collator  # noqa: E402


def _batch(processor, image, question="<image>What is it?", answer="A cat."):
    rows = [{"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
             "images": [image]}]
    return create_qwen3_vl_collator(processor)(rows)


def _frozen(model):
    return {n for n, p in model.named_parameters() if not p.requires_grad}


@pytest.mark.parametrize("freeze_vision,freeze_merger", [(True, True), (True, False), (False, True), (False, False)])
def test_each_flag_freezes_exactly_its_parameters(tiny_vl, freeze_vision, freeze_merger):
    model, _ = tiny_vl
    names = [n for n, _ in model.named_parameters()]
    mergers = {n for n in names if n.startswith(("model.visual.merger.", "model.visual.deepstack_merger_list."))}
    tower = {n for n in names if n.startswith("model.visual.")} - mergers
    assert mergers and tower and any("deepstack_merger_list" in n for n in mergers)
    model.freeze_vision_components(freeze_vision=freeze_vision, freeze_merger=freeze_merger)
    expected = (tower if freeze_vision else set()) | (mergers if freeze_merger else set())
    assert _frozen(model) == expected


def test_from_pretrained_freezes_vision_and_mergers_by_default(tiny_vl, tmp_path):
    model, processor = tiny_vl
    model.save_pretrained(tmp_path)
    loaded = Qwen3VLForMaskedLM.from_pretrained(tmp_path)
    assert _frozen(loaded) == {n for n, _ in loaded.named_parameters() if n.startswith("model.visual.")}
    only_tower = Qwen3VLForMaskedLM.from_pretrained(tmp_path, freeze_merger=False)
    assert not any("merger" in n for n in _frozen(only_tower)) and _frozen(only_tower)


def test_later_text_token_changes_earlier_logits_with_an_image(tiny_vl, image):
    model, processor = tiny_vl
    model.eval()
    assert model.config.text_config.is_causal is False and is_bidirectional(model)
    batch = _batch(processor, image)
    batch.pop("labels")
    changed = dict(batch, input_ids=batch["input_ids"].clone())
    last = int(batch["attention_mask"].sum()) - 3  # an answer token near the end
    changed["input_ids"][0, last] = processor.tokenizer.convert_tokens_to_ids("Z")
    image_end = int((batch["mm_token_type_ids"][0] == 1).nonzero().max())
    early = slice(0, image_end + 2)  # the prompt, the image tokens and one text token after them
    with torch.no_grad():
        before, after = model(**batch).logits, model(**changed).logits
    assert not torch.allclose(before[0, early], after[0, early])
    # Control: the same weights under upstream's causal class do not see the later token.
    config = copy.deepcopy(model.config)
    config.text_config.is_causal = True
    causal = Qwen3VLForConditionalGeneration(config)
    causal.load_state_dict(model.state_dict())
    causal.eval()
    with torch.no_grad():
        c_before, c_after = causal(**batch).logits, causal(**changed).logits
    assert torch.allclose(c_before[0, early], c_after[0, early], atol=1e-6)


def test_forward_returns_masked_lm_output_with_unshifted_loss(tiny_vl, image):
    model, processor = tiny_vl
    batch = _batch(processor, image)
    out = model(**batch)
    assert isinstance(out, MaskedLMOutput)
    expected = F.cross_entropy(out.logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
    assert torch.allclose(out.loss, expected)  # upstream's causal loss would shift the labels by one


def test_auto_picks_the_qwen3_vl_class(tiny_vl, tmp_path):
    model, _ = tiny_vl
    assert FAMILIES["qwen3_vl"].model_class is Qwen3VLForMaskedLM
    assert FAMILIES["qwen3_vl"].default_checkpoint == "Qwen/Qwen3-VL-2B-Instruct"
    model.save_pretrained(tmp_path)
    loaded = AutoModelForMaskedDiffusion.from_pretrained(str(tmp_path))
    assert type(loaded) is Qwen3VLForMaskedLM and is_bidirectional(loaded)


def test_mask_token_resizes_embeddings_and_untied_head_and_survives_reload(processor, image, tmp_path):
    model, processor = build_tiny_qwen3_vl(processor)
    assert not model.config.tie_word_embeddings
    rows = model.get_input_embeddings().weight.shape[0]
    assert processor.tokenizer.mask_token_id is None
    mask_id = add_mask_token(model, processor.tokenizer)
    assert mask_id == rows
    assert model.get_input_embeddings().weight.shape[0] == rows + 1
    assert model.get_output_embeddings().weight.shape[0] == rows + 1
    assert model.config.text_config.vocab_size == rows + 1 and model.config.text_config.mask_token_id == mask_id
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = Qwen3VLForMaskedLM.from_pretrained(tmp_path)
    reprocessor = AutoProcessor.from_pretrained(tmp_path)
    assert reprocessor.tokenizer.mask_token_id == mask_id == reloaded.config.text_config.mask_token_id
    batch = _batch(reprocessor, image)
    batch["input_ids"][0, -3] = mask_id
    model.eval(), reloaded.eval()
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, reloaded(**batch).logits, atol=1e-5)
