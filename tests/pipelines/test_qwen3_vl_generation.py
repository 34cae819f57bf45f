"""Answering a question about an image by iterative denoising, on a tiny random Qwen3-VL (offline).

Properties: every answer position is filled, temperature 0 is deterministic, a prompt's answer does not depend on
its batch (left padding), the image changes the logits, every forward receives the vision inputs and the
multimodal positions, the first step's logits are the model's own for the prepared canvas; with the prefix and
dual caches a refinement step gets the sliced positions and token types and no pixels, its logits are the
uncached ones on the same canvas, and the caches give the uncached answers wherever they are exact (one step per
block; a one-layer model); guidance's unconditional pass sees the prompt masked, no image, the same positions.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

pytest.importorskip("torchvision", reason="Qwen3-VL's image processor needs torchvision")

from dllm.core.sampling import (  # noqa: E402
    BlockForward,
    DiffusionGenerationConfig,
    generate,
    guide,
    with_tokenizer_ids,
)
from dllm.pipelines.qwen3_vl.generation import (  # noqa: E402
    answer_image_question,
    answer_image_questions,
    prepare_generation_inputs,
)
from tests.helpers import noise_image  # noqa: E402

GEN_LENGTH = 8


@pytest.fixture
def vl(tiny_vl):
    model, processor = tiny_vl
    config = with_tokenizer_ids(DiffusionGenerationConfig(gen_length=GEN_LENGTH, steps=4, block_size=4),
                                processor.tokenizer)
    return model.eval(), processor, config


def _chat(image, question):
    content = ([{"type": "image", "image": image}] if image is not None else []) + [{"type": "text", "text": question}]
    return [{"role": "user", "content": content}]


class ForwardSpy:
    """Records the keyword arguments and the logits of every model forward."""

    def __init__(self, model):
        self.kwargs, self.logits = [], []
        self.handles = [model.register_forward_pre_hook(self._pre, with_kwargs=True),
                        model.register_forward_hook(self._post)]

    def _pre(self, _module, _args, kwargs):
        self.kwargs.append(dict(kwargs))

    def _post(self, _module, _args, output):
        self.logits.append(output.logits.detach().clone())

    def remove(self):
        for handle in self.handles:
            handle.remove()


def _generate(model, processor, conversations, config, spy=False):
    ids, mask, kwargs = prepare_generation_inputs(model, processor, conversations, config.gen_length)
    recorder = ForwardSpy(model) if spy else None
    try:
        out = generate(model, ids, config, attention_mask=mask, model_kwargs=kwargs)
    finally:
        if recorder is not None:
            recorder.remove()
    return ids, mask, kwargs, out, recorder


def test_every_answer_position_is_filled(vl, image):
    model, processor, config = vl
    config = replace(config, eos_token_id=None)  # no early stop: the sampler itself must fill all 8 positions
    ids, _, _, out, _ = _generate(model, processor, [_chat(image, "What is it?")], config)
    answer = out.sequences[:, ids.shape[1]:]  # [1, G]
    assert answer.shape == (1, GEN_LENGTH)
    assert not (answer == config.mask_token_id).any()
    assert isinstance(answer_image_question(model, processor, image, "What is it?", config), str)


def test_temperature_zero_is_deterministic(vl, image):
    model, processor, config = vl
    first = _generate(model, processor, [_chat(image, "What is it?")], config)[3].sequences
    second = _generate(model, processor, [_chat(image, "What is it?")], config)[3].sequences
    assert torch.equal(first, second)


def test_answers_do_not_depend_on_batch_or_padding(vl):
    model, processor, config = vl
    config = replace(config, eos_token_id=None)  # compare all 8 positions
    chats = [_chat(noise_image(1), "Hi?"), _chat(noise_image(2), "A much longer question about it?")]
    batch_ids, batch_mask, _, batched, batch_spy = _generate(model, processor, chats, config, spy=True)
    assert (batch_mask[0] == 0).any(), "the shorter prompt must be left-padded"
    for row, chat in enumerate(chats):
        ids, _, _, alone, alone_spy = _generate(model, processor, [chat], config, spy=True)
        assert torch.equal(batched.sequences[row, -GEN_LENGTH:], alone.sequences[0, -GEN_LENGTH:])
        assert torch.equal(batched.sequences[row, -ids.shape[1] - GEN_LENGTH:], alone.sequences[0])
        # the first step's answer logits agree too, not only their argmax
        torch.testing.assert_close(batch_spy.logits[0][row], alone_spy.logits[0][0], atol=1e-4, rtol=1e-4)


def test_the_image_changes_the_first_step_logits(vl):
    model, processor, config = vl
    first = _generate(model, processor, [_chat(noise_image(1), "What is it?")], config, spy=True)[4].logits[0]
    again = _generate(model, processor, [_chat(noise_image(1), "What is it?")], config, spy=True)[4].logits[0]
    other = _generate(model, processor, [_chat(noise_image(2), "What is it?")], config, spy=True)[4].logits[0]
    torch.testing.assert_close(first, again)
    assert (first - other).abs().max() > 1e-3


def test_vision_inputs_and_positions_reach_every_forward(vl, image):
    model, processor, config = vl
    ids, mask, kwargs, out, spy = _generate(model, processor, [_chat(image, "What is it?"), _chat(None, "Hm?")],
                                            config, spy=True)
    assert len(spy.kwargs) == out.forward_passes == config.steps
    width = ids.shape[1] + GEN_LENGTH
    assert kwargs["position_ids"].shape == (3, 2, width)
    assert kwargs["mm_token_type_ids"].shape == (2, width)
    assert kwargs["mm_token_type_ids"][:, ids.shape[1]:].eq(0).all()  # the answer is text
    assert kwargs["mm_token_type_ids"].sum() == (ids == model.config.image_token_id).sum() > 0
    # the image's rows (height/width) of the rotary positions differ from the temporal row
    assert not torch.equal(kwargs["position_ids"][1, 0], kwargs["position_ids"][0, 0])
    for call in spy.kwargs:
        for name in ("pixel_values", "image_grid_thw", "mm_token_type_ids", "position_ids"):
            assert torch.equal(call[name], kwargs[name]), name
        assert call["input_ids"].shape == (2, width)
        assert torch.equal(call["attention_mask"][:, :ids.shape[1]], mask)


def test_first_step_logits_are_the_models_own(vl, image):
    """Oracle: the sampler's first forward equals a direct model call on the prepared canvas."""
    model, processor, config = vl
    ids, mask, kwargs, _, spy = _generate(model, processor, [_chat(image, "What is it?")], config, spy=True)
    canvas = torch.cat([ids, torch.full((1, GEN_LENGTH), config.mask_token_id)], dim=1)  # [1, P + G]
    with torch.no_grad():
        direct = model(input_ids=canvas, attention_mask=torch.ones_like(canvas), **kwargs).logits  # [1, P + G, V]
    torch.testing.assert_close(spy.logits[0][0], direct[0, ids.shape[1]:ids.shape[1] + 4], atol=1e-5, rtol=1e-5)


def test_batched_helper_matches_one_at_a_time(vl):
    model, processor, config = vl
    images, questions = [noise_image(3), None], ["What?", "Plain text question"]
    batched = answer_image_questions(model, processor, images, questions, config)
    assert batched == [answer_image_question(model, processor, i, q, config) for i, q in zip(images, questions)]


def test_position_ids_of_the_wrong_width_are_refused(vl, image):
    model, processor, config = vl
    ids, mask, kwargs = prepare_generation_inputs(model, processor, [_chat(image, "What?")], GEN_LENGTH + 1)
    with pytest.raises(ValueError, match="position_ids"):
        generate(model, ids, config, attention_mask=mask, model_kwargs=kwargs)


@pytest.mark.slow
def test_dllm_sample_answers_about_an_image(tmp_path, tiny_vl):
    """``dllm sample CKPT --image PATH "question"`` on a saved tiny Qwen3-VL (with processor and mask token) gives
    the in-process answer, also with the dual cache and guidance; ``--image`` with a text checkpoint, a missing file
    or an http URL is one line, status 2."""
    import json
    import os
    from pathlib import Path

    from transformers import AutoProcessor

    from dllm.auto import AutoModelForMaskedDiffusion
    from tests.helpers import run_dllm_cases, save_tiny_masked_lm

    model, processor = tiny_vl
    ckpt = tmp_path / "vl"
    model.save_pretrained(ckpt)
    processor.save_pretrained(ckpt)
    text_ckpt = save_tiny_masked_lm(tmp_path / "text", gen_length=8)
    image_path = tmp_path / "cat.png"
    noise_image(5).save(image_path)
    questions = ["What is it?", "Which colour is the top left corner?"]
    flags = ["--gen_length", "8", "--steps", "4", "--block_size", "4", "--device", "cpu"]
    settings = {"none": {}, "dual": {"cache": "dual", "cfg_scale": 1.0}}
    runs = {  # one fresh interpreter runs them all: the start-up is paid once, not once per case
        **{name: [str(ckpt), "--image", str(image_path), *questions, *flags,
                  *[f"--{k}={v}" for k, v in change.items()], "--output", str(tmp_path / f"{name}.jsonl")]
           for name, change in settings.items()},
        f"{text_ckpt}: --image needs a vision-language checkpoint (model_type 'qwen3_vl'); this one is model_type "
        "'llama' and takes text only": [str(text_ckpt), "--image", str(image_path), "hi"],
        f"{tmp_path / 'missing.png'}: no such image file": [str(ckpt), "--image", str(tmp_path / "missing.png"), "hi"],
        "http://example.com/cat.png: http URLs are not fetched; send the image inline as a data URL "
        "(data:image/png;base64,...)": [str(ckpt), "--image", "http://example.com/cat.png", "hi"],
    }
    done = run_dllm_cases({message: ["sample", *argv] for message, argv in runs.items()}, dict(os.environ),
                          Path(__file__).resolve().parents[2])
    for message, (status, out, err) in done.items():
        if message in settings:
            assert status == 0, err
            continue
        assert (status, err.splitlines(), out) == (2, [f"dllm sample: {message}"], ""), message

    loaded = AutoModelForMaskedDiffusion.from_pretrained(ckpt).eval()
    reprocessor = AutoProcessor.from_pretrained(ckpt)
    config = with_tokenizer_ids(DiffusionGenerationConfig(gen_length=8, steps=4, block_size=4),
                                reprocessor.tokenizer)
    from PIL import Image

    for name, change in settings.items():
        expected = answer_image_questions(loaded, reprocessor, [Image.open(image_path).convert("RGB")] * 2,
                                          questions, replace(config, **change))
        rows = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
        assert [row["prompt"] for row in rows] == questions
        assert [row["completion"] for row in rows] == expected, name
        assert all(row["forward_passes"] == 4 * (1 + bool(change)) for row in rows)


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_text_only_positions_are_sliced_with_every_cache(vl, cache):
    """Without images the prepared inputs are the rotary positions alone [3, B, T]; the cached paths slice them
    to the fed columns, so the answers equal those of the sampler's own 2-D positions."""
    model, processor, config = vl
    config = replace(config, cache=cache, eos_token_id=None)
    chats = [_chat(None, "Hi?"), _chat(None, "A longer text question")]
    ids, mask, kwargs = prepare_generation_inputs(model, processor, chats, GEN_LENGTH)
    assert list(kwargs) == ["position_ids"] and kwargs["position_ids"].shape == (3, 2, ids.shape[1] + GEN_LENGTH)
    with_positions = generate(model, ids, config, attention_mask=mask, model_kwargs=kwargs)
    plain = generate(model, ids, config, attention_mask=mask)
    assert torch.equal(with_positions.sequences, plain.sequences)


MIXED = [("What is it?", 1), ("A longer text question, no image", None), ("Hm?", 2)]  # (question, image seed)


def _mixed_chats():
    return [_chat(None if seed is None else noise_image(seed), question) for question, seed in MIXED]


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_refinement_step_feeds_sliced_inputs_and_gives_the_uncached_logits(vl, cache):
    """A middle block of a mixed batch: the block-start forward (whole canvas, in cache order) gets the image; the
    refinement step on the unchanged canvas feeds only the block (and suffix) with the positions and token types of
    those columns and no pixels, and its logits equal the uncached forward's: the cached prompt keys/values carry
    the image (and its DeepStack features)."""
    model, processor, config = vl
    ids, mask, kwargs = prepare_generation_inputs(model, processor, _mixed_chats(), GEN_LENGTH)
    x = torch.cat([ids, torch.full((len(ids), GEN_LENGTH), config.mask_token_id)], dim=1)  # [B, T]
    attention = torch.cat([mask, torch.ones(len(ids), GEN_LENGTH, dtype=mask.dtype)], dim=1)  # [B, T]
    start, end = ids.shape[1] + 2, ids.shape[1] + 6  # prefix and suffix both non-empty
    cols = torch.arange(start, end)
    extra = {k: v for k, v in kwargs.items() if k != "position_ids"}
    spy = ForwardSpy(model)
    try:
        with torch.no_grad():
            reference = model(input_ids=x, attention_mask=attention, **kwargs).logits[:, cols]  # [B, C, V]
            forward = BlockForward(model, cache, attention, kwargs["position_ids"], start, end, extra)
            first, again = forward(x, cols), forward(x, cols)
    finally:
        spy.remove()
    torch.testing.assert_close(first, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, reference, atol=1e-5, rtol=1e-5)
    fed = torch.arange(start, x.shape[1]) if cache == "prefix" else cols  # the refinement step's columns
    block_start, refine = spy.kwargs[1], spy.kwargs[2]
    assert torch.equal(block_start["pixel_values"], kwargs["pixel_values"])
    assert "pixel_values" not in refine and "image_grid_thw" not in refine
    assert torch.equal(refine["input_ids"], x[:, fed])
    assert torch.equal(refine["position_ids"], kwargs["position_ids"][..., fed])
    assert torch.equal(refine["mm_token_type_ids"], kwargs["mm_token_type_ids"][:, fed])


@pytest.mark.parametrize("cfg_scale", [0.0, 1.0])
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_caches_with_images_equal_no_cache_with_one_step_per_block(vl, cache, cfg_scale):
    """Exact by construction (every step is a block start); the mixed batch runs every block's image forward."""
    model, processor, config = vl
    config = replace(config, steps=2, eos_token_id=None, cfg_scale=cfg_scale)  # 2 blocks of 4, one step each
    ids, _, kwargs, exact, _ = _generate(model, processor, _mixed_chats(), config)
    _, _, _, cached, spy = _generate(model, processor, _mixed_chats(), replace(config, cache=cache), spy=True)
    assert torch.equal(cached.sequences, exact.sequences)
    with_pixels = [call for call in spy.kwargs if "pixel_values" in call]
    assert len(with_pixels) == 2  # the conditional block starts; guidance's pass never gets the image


@pytest.fixture(scope="module")
def one_layer_vl():
    """A one-layer tiny Qwen3-VL: first-layer keys/values depend only on their own token, position and image
    features, so cached steps are exact however many steps a block takes."""
    from dllm.core.models import add_mask_token
    from dllm.pipelines.qwen3_vl.testing import build_tiny_qwen3_vl

    model, processor = build_tiny_qwen3_vl(num_hidden_layers=1)
    add_mask_token(model, processor.tokenizer)
    config = with_tokenizer_ids(DiffusionGenerationConfig(gen_length=GEN_LENGTH, block_size=4), processor.tokenizer)
    return model.eval(), processor, replace(config, eos_token_id=None, record_history=True)


@pytest.mark.parametrize("cfg_scale", [0.0, 1.0])
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_caches_with_images_are_exact_for_a_one_layer_model(one_layer_vl, cache, cfg_scale):
    """One token per step, so refinement steps (sliced inputs, no pixels) decide most tokens: a mixed batch gives
    the uncached tokens and confidences."""
    model, processor, config = one_layer_vl
    config = replace(config, cfg_scale=cfg_scale)
    _, _, _, exact, _ = _generate(model, processor, _mixed_chats(), config)
    _, _, _, cached, spy = _generate(model, processor, _mixed_chats(), replace(config, cache=cache), spy=True)
    assert torch.equal(cached.sequences, exact.sequences)
    for a, b in zip(exact.history, cached.history):
        torch.testing.assert_close(a.confidence.nan_to_num(), b.confidence.nan_to_num(), atol=1e-5, rtol=1e-5)
    assert sum("pixel_values" in call for call in spy.kwargs) == 2  # once per block
    assert len(spy.kwargs) == (1 + (cfg_scale > 0)) * GEN_LENGTH  # refinement steps ran


def test_guidance_masks_text_and_image_and_keeps_the_positions(vl):
    """The unconditional pass: every prompt token (image placeholders included) masked, no vision inputs or token
    types, the conditional pass's positions; the step's logits are LLaDA's guidance of the two direct forwards."""
    model, processor, config = vl
    config = replace(config, cfg_scale=2.0, eos_token_id=None)
    ids, mask, kwargs, _, spy = _generate(model, processor, _mixed_chats(), config, spy=True)
    cond, uncond = spy.kwargs[0], spy.kwargs[1]
    prompt = mask.bool()  # [B, P], the real prompt tokens
    assert "pixel_values" in cond and not {"pixel_values", "image_grid_thw", "mm_token_type_ids"} & set(uncond)
    assert uncond["input_ids"][:, :ids.shape[1]][prompt].eq(config.mask_token_id).all()
    assert torch.equal(uncond["input_ids"][:, :ids.shape[1]][~prompt], ids[~prompt])  # padding stays padding
    assert torch.equal(uncond["position_ids"], kwargs["position_ids"])
    canvas = torch.cat([ids, torch.full((len(ids), GEN_LENGTH), config.mask_token_id)], dim=1)
    attention = torch.cat([mask, torch.ones_like(canvas[:, ids.shape[1]:])], dim=1)
    masked = canvas.masked_fill(torch.nn.functional.pad(prompt, (0, GEN_LENGTH)), config.mask_token_id)
    with torch.no_grad():
        direct_cond = model(input_ids=canvas, attention_mask=attention, **kwargs).logits
        direct_uncond = model(input_ids=masked, attention_mask=attention,
                              position_ids=kwargs["position_ids"]).logits
    block = slice(ids.shape[1], ids.shape[1] + 4)
    guided = guide(direct_cond[:, block], direct_uncond[:, block], 2.0)
    torch.testing.assert_close(guide(spy.logits[0], spy.logits[1], 2.0), guided, atol=1e-4, rtol=1e-4)
    assert (direct_uncond[:, block] - direct_cond[:, block]).abs().max() > 1e-3  # the prompt mattered
