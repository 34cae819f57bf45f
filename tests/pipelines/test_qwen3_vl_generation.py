"""Answering a question about an image by iterative denoising, on a tiny random Qwen3-VL (offline).

Properties: every answer position is filled, temperature 0 is deterministic, a prompt's answer does not depend on
its batch (left padding), the image changes the logits, every forward receives the vision inputs and the
multimodal positions, the first step's logits are the model's own for the prepared canvas, and the sampler refuses
cached or guided sampling with images.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

pytest.importorskip("torchvision", reason="Qwen3-VL's image processor needs torchvision")

from dllm.core.sampling import DiffusionGenerationConfig, generate, with_tokenizer_ids  # noqa: E402
from dllm.pipelines.qwen3_vl.generation import (  # noqa: E402
    answer_image_question,
    answer_image_questions,
    prepare_generation_inputs,
)
from tests.pipelines.conftest import noise_image  # noqa: E402

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


@pytest.mark.parametrize("change", [{"cache": "prefix"}, {"cache": "dual"}, {"cfg_scale": 1.0}])
def test_cached_or_guided_sampling_with_images_is_refused(vl, image, change):
    model, processor, config = vl
    ids, mask, kwargs = prepare_generation_inputs(model, processor, [_chat(image, "What?")], GEN_LENGTH)
    with pytest.raises(ValueError, match="model_kwargs .*pixel_values"):
        generate(model, ids, replace(config, **change), attention_mask=mask, model_kwargs=kwargs)


def test_position_ids_of_the_wrong_width_are_refused(vl, image):
    model, processor, config = vl
    ids, mask, kwargs = prepare_generation_inputs(model, processor, [_chat(image, "What?")], GEN_LENGTH + 1)
    with pytest.raises(ValueError, match="position_ids"):
        generate(model, ids, config, attention_mask=mask, model_kwargs=kwargs)


def _run_sample(*args: str):
    import subprocess
    import sys
    from pathlib import Path

    return subprocess.Popen([sys.executable, "-m", "dllm.cli", "sample", *args], text=True,
                            cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_dllm_sample_answers_about_an_image(tmp_path, tiny_vl):
    """``dllm sample CKPT --image PATH "question"`` on a saved tiny Qwen3-VL (with processor and mask token) gives
    the in-process answer; ``--image`` with a text checkpoint, a missing file or a cache is one line, status 2."""
    import json

    from transformers import AutoProcessor

    from dllm.auto import AutoModelForMaskedDiffusion
    from tests.helpers import save_tiny_masked_lm

    model, processor = tiny_vl
    ckpt = tmp_path / "vl"
    model.save_pretrained(ckpt)
    processor.save_pretrained(ckpt)
    text_ckpt = save_tiny_masked_lm(tmp_path / "text", gen_length=8)
    image_path = tmp_path / "cat.png"
    noise_image(5).save(image_path)
    out_file = tmp_path / "out.jsonl"
    questions = ["What is it?", "Which colour is the top left corner?"]
    flags = ["--gen_length", "8", "--steps", "4", "--block_size", "4", "--device", "cpu"]
    runs = {  # started together: each pays the interpreter's start-up, not one after another
        "ok": _run_sample(str(ckpt), "--image", str(image_path), *questions, *flags, "--output", str(out_file)),
        f"{text_ckpt}: --image needs a Qwen3-VL checkpoint (model_type 'qwen3_vl'), got model_type 'llama'":
            _run_sample(str(text_ckpt), "--image", str(image_path), "hi"),
        f"{tmp_path / 'missing.png'}: no such image file":
            _run_sample(str(ckpt), "--image", str(tmp_path / "missing.png"), "hi"),
        "--image needs --cache none and --cfg_scale 0 (got cache='prefix', cfg_scale=0.0)":
            _run_sample(str(ckpt), "--image", str(image_path), "hi", *flags, "--cache", "prefix"),
    }
    for message, process in runs.items():
        out, err = process.communicate(timeout=300)
        if message == "ok":
            assert process.returncode == 0, err
            continue
        assert (process.returncode, err.splitlines(), out) == (2, [f"dllm sample: {message}"], ""), message

    loaded = AutoModelForMaskedDiffusion.from_pretrained(ckpt).eval()
    reprocessor = AutoProcessor.from_pretrained(ckpt)
    config = with_tokenizer_ids(DiffusionGenerationConfig(gen_length=8, steps=4, block_size=4),
                                reprocessor.tokenizer)
    from PIL import Image

    expected = answer_image_questions(loaded, reprocessor, [Image.open(image_path).convert("RGB")] * 2, questions,
                                      config)
    rows = [json.loads(line) for line in out_file.read_text(encoding="utf-8").splitlines()]
    assert [row["prompt"] for row in rows] == questions
    assert [row["completion"] for row in rows] == expected
    assert all(row["forward_passes"] == 4 for row in rows)


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
