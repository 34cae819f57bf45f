"""The output head on masked positions only (``logits_mask=``) gives the full computation's logits, loss and gradients.

The diffusion loss reads predictions at masked positions only; the masked-LM wrappers run ``lm_head`` (and Gemma 2's
final soft-capping) on those ``N`` hidden states and return ``[N, V]`` logits. Compared here against the ordinary
``[B, L, V]`` forward followed by the loss's own gather, on LLaMA 3 and Gemma 2, tied and untied, full and LoRA.
"""

from __future__ import annotations

import pytest
import torch
from transformers import default_data_collator

from dllm.core.diffusion import chunked_cross_entropy, masked_diffusion_loss
from dllm.pipelines.gemma2 import Gemma2ForMaskedLM
from dllm.pipelines.llama3 import Llama3ForMaskedLM
from tests.helpers import tiny_gemma2_config, tiny_llama_config

VOCAB = 48
FAMILIES = {
    "llama3": (Llama3ForMaskedLM, tiny_llama_config),
    # A small cap so the soft-capping visibly bends the logits of a tiny random model.
    "gemma2": (Gemma2ForMaskedLM, lambda **kw: tiny_gemma2_config(final_logit_softcapping=0.1, **kw)),
}


def build(family: str, tied: bool, lora: bool, seed: int = 0):
    cls, make_config = FAMILIES[family]
    torch.manual_seed(seed)
    model = cls(make_config(vocab_size=VOCAB, tie_word_embeddings=tied))
    assert (model.lm_head.weight is model.get_input_embeddings().weight) is tied
    if lora:
        from peft import LoraConfig, get_peft_model

        # task_type CAUSAL_LM wraps in PeftModelForCausalLM, whose forward names its arguments: logits_mask must
        # still reach the wrapper through its **kwargs. Random B (not zeros) so every adapter gets a gradient; an
        # untied lm_head gets an adapter too (the selected path calls the PEFT-wrapped head).
        targets = ["q_proj", "v_proj"] + ([] if tied else ["lm_head"])
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False,
                                                 task_type="CAUSAL_LM"))
    return model.double()  # float64: the two paths differ only in summation order


def batch(seed: int = 0, batch_size: int = 3, length: int = 10):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (batch_size, length), generator=g)
    labels = input_ids.clone()
    labels[:, :3] = -100  # prompt
    labels[1, 7:] = -100  # a shorter answer
    masked = (torch.rand(batch_size, length, generator=g) < 0.5) & (labels != -100)
    masked[0, 4] = True  # at least one masked position
    noisy = torch.where(masked, torch.full_like(input_ids, 2), input_ids)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0
    weight = torch.tensor([1.0, 2.5, 4.0], dtype=torch.float64)
    return noisy, attention_mask, labels, masked, weight


def loss_and_grads(model, selected: bool, normalization: str, seed: int = 0):
    noisy, attention_mask, labels, masked, weight = batch(seed)
    model.zero_grad()
    extra = {"logits_mask": masked} if selected else {}
    logits = model(input_ids=noisy, attention_mask=attention_mask, **extra).logits
    loss = masked_diffusion_loss(logits, labels, masked, weight, normalization=normalization)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return logits.detach(), loss.detach(), grads


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_selected_head_gives_the_full_loss_logits_and_every_gradient(family, tied, lora):
    model = build(family, tied, lora)
    _, _, _, masked, _ = batch()
    for normalization in ("token", "sequence"):
        full_logits, full_loss, full_grads = loss_and_grads(model, False, normalization)
        logits, loss, grads = loss_and_grads(model, True, normalization)
        assert logits.shape == (int(masked.sum()), VOCAB)
        torch.testing.assert_close(logits, full_logits[masked])
        torch.testing.assert_close(loss, full_loss)
        assert full_loss > 0
        assert grads.keys() == full_grads.keys() and grads
        for name, grad in grads.items():
            torch.testing.assert_close(grad, full_grads[name], msg=name)
            assert grad.abs().sum() > 0, f"{name} got no gradient"


def test_gemma2_softcapping_is_applied_to_the_selected_logits():
    model = build("gemma2", tied=True, lora=False)
    noisy, attention_mask, _, masked, _ = batch()
    with torch.no_grad():
        logits = model(input_ids=noisy, attention_mask=attention_mask, logits_mask=masked).logits
        hidden = model.model(input_ids=noisy, attention_mask=attention_mask).last_hidden_state  # [B, L, H]
        raw = model.lm_head(hidden[masked])  # [N, V]
    assert raw.abs().max() > 0.2  # the cap (0.1) bends on these logits
    assert logits.abs().max() < 0.1
    torch.testing.assert_close(logits, 0.1 * torch.tanh(raw / 0.1))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_an_empty_selection_gives_zero_loss_and_zero_gradients(family):
    model = build(family, tied=False, lora=False)
    noisy, attention_mask, labels, _, weight = batch()
    masked = torch.zeros_like(labels, dtype=torch.bool)
    logits = model(input_ids=noisy, attention_mask=attention_mask, logits_mask=masked).logits
    assert logits.shape == (0, VOCAB)
    loss = masked_diffusion_loss(logits, labels, masked, weight)
    loss.backward()
    assert loss.item() == 0.0
    assert model.lm_head.weight.grad is not None  # the head is still in the graph (DDP sees every parameter used)
    for name, param in model.named_parameters():
        assert param.grad is None or (torch.isfinite(param.grad).all() and not param.grad.any()), name


def test_labels_with_a_selection_give_the_cross_entropy_at_the_selected_positions():
    model = build("llama3", tied=False, lora=False)
    noisy, attention_mask, labels, masked, _ = batch()
    full = model(input_ids=noisy, attention_mask=attention_mask, labels=torch.where(masked, labels, -100))
    selected = model(input_ids=noisy, attention_mask=attention_mask, labels=labels, logits_mask=masked)
    torch.testing.assert_close(selected.loss, full.loss)


def test_chunked_cross_entropy_equals_one_chunk_and_its_gradient():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(37, 11, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (37,), generator=g)
    weights = torch.rand(37, generator=g, dtype=torch.float64)
    one = chunked_cross_entropy(logits, targets)
    (grad_one,) = torch.autograd.grad((one * weights).sum(), logits)
    chunked = chunked_cross_entropy(logits, targets, chunk_elements=5 * 11)  # 8 chunks, the last of 2 rows
    (grad_chunked,) = torch.autograd.grad((chunked * weights).sum(), logits)
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, one)
    torch.testing.assert_close(grad_chunked, grad_one)


def test_selected_logits_of_the_wrong_length_are_an_error():
    _, _, labels, masked, weight = batch()
    with pytest.raises(ValueError, match=r"\[N, V\] with N = \d+ masked positions"):
        masked_diffusion_loss(torch.zeros(int(masked.sum()) + 1, VOCAB), labels, masked, weight)


def test_trainer_passes_the_masked_positions_and_keeps_the_loss(tmp_path):
    """compute_loss through a LoRA model gives the loss of the full [B, L, V] computation on the same noise."""
    from dllm.core.trainers.mdlm_trainer import MDLMConfig, MDLMTrainer

    model = build("gemma2", tied=True, lora=True).float()
    model.config.mask_token_id = 2
    seen = []
    model.base_model.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("logits_mask")), with_kwargs=True)
    args = MDLMConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", time_eps=0.5)
    trainer = MDLMTrainer(model=model, args=args, data_collator=default_data_collator)
    noisy, attention_mask, labels, _, _ = batch()
    inputs = {"input_ids": noisy, "attention_mask": attention_mask, "labels": labels}
    model.train()
    loss = trainer.compute_loss(model, inputs)
    (masked,) = seen
    assert masked.dtype == torch.bool and masked.any() and not masked[labels == -100].any()

    class FullLogits(torch.nn.Module):  # drops logits_mask: the model returns [B, L, V]
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, logits_mask=None, **kwargs):
            return self.inner(**kwargs)

    trainer._train_noise_position = (-1, 0)  # the same noise again
    full = trainer.compute_loss(FullLogits(model).train(), inputs)
    torch.testing.assert_close(loss, full)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_head_sees_only_the_selected_hidden_states(family):
    """The point of the selection: lm_head multiplies N rows, not B L."""
    model = build(family, tied=False, lora=False)
    noisy, attention_mask, _, masked, _ = batch()
    rows = []
    model.lm_head.register_forward_hook(lambda module, args, out: rows.append(args[0].shape))
    model(input_ids=noisy, attention_mask=attention_mask, logits_mask=masked)
    assert rows == [torch.Size([int(masked.sum()), model.config.hidden_size])]


def test_qwen3_vl_selected_head_gives_the_full_loss_and_every_gradient():
    """Qwen3-VL's backbone (self.model) takes the image: logits, loss and every gradient, vision tower included."""
    pytest.importorskip("torchvision", reason="Qwen3-VL's image processor needs torchvision")
    from PIL import Image

    from dllm.pipelines.qwen3_vl.testing import build_tiny_qwen3_vl
    from dllm.pipelines.qwen3_vl.utils import create_qwen3_vl_collator

    model, processor = build_tiny_qwen3_vl()
    model = model.double()
    g = torch.Generator().manual_seed(0)
    image = Image.fromarray(torch.randint(0, 256, (64, 64, 3), generator=g, dtype=torch.uint8).numpy(), "RGB")
    rows = [{"messages": [{"role": "user", "content": "<image>What is it?"},
                          {"role": "assistant", "content": "A cat on a mat."}], "images": [image]}]
    inputs = create_qwen3_vl_collator(processor)(rows)
    labels = inputs.pop("labels")
    inputs["pixel_values"] = inputs["pixel_values"].double()
    masked = (torch.rand(labels.shape, generator=g) < 0.5) & (labels != -100)
    masked[0, int((labels[0] != -100).nonzero()[0])] = True
    noisy = torch.where(masked, torch.zeros_like(labels), inputs.pop("input_ids"))
    weight = torch.tensor([3.0], dtype=torch.float64)
    results = []
    for extra in ({}, {"logits_mask": masked}):
        model.zero_grad()
        logits = model(input_ids=noisy, **inputs, **extra).logits
        loss = masked_diffusion_loss(logits, labels, masked, weight)
        loss.backward()
        results.append((logits.detach(), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (full_logits, full_loss, full_grads), (logits, loss, grads) = results
    torch.testing.assert_close(logits, full_logits[masked])
    torch.testing.assert_close(loss, full_loss)
    assert any(n.startswith("model.visual.") and g.any() for n, g in grads.items())  # the image reached the loss
    for name, grad in grads.items():
        torch.testing.assert_close(grad, full_grads[name], msg=name)


def test_logits_mask_with_logits_to_keep_is_an_error():
    model = build("llama3", tied=False, lora=False)
    noisy, attention_mask, _, masked, _ = batch()
    with pytest.raises(ValueError, match="either logits_mask or logits_to_keep"):
        model(input_ids=noisy, attention_mask=attention_mask, logits_mask=masked, logits_to_keep=1)
