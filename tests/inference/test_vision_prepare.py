"""A conversation with images goes through the processor once: counting its tokens (the positions check, usage) and
answering it, in whatever batch it joins and for each of its ``n`` answers, reuse that one encoding; the answers
equal those of conversations processed in the batch."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dllm.inference.engine import Engine, VisionPrompt, sampler_inputs
from dllm.inference.loading import CheckpointArguments, load_checkpoint
from tests.helpers import noise_image


class CountingProcessor:
    """The checkpoint's processor, counting its calls (each call resizes and patches a conversation's images)."""

    def __init__(self, processor):
        self.processor, self.calls = processor, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.processor(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.processor, name)


def conversation(seed: int, question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "image": noise_image(seed)},
                                         {"type": "text", "text": question}]}]


@pytest.fixture(scope="module")
def loaded(tiny_vl_checkpoint):
    return load_checkpoint(str(tiny_vl_checkpoint), CheckpointArguments(device="cpu"))


def test_prompts_counted_then_batched_are_processed_once_each(loaded):
    processor = CountingProcessor(loaded.image_processor())
    engine = Engine(loaded.model, loaded.tokenizer, loaded.generation_config, processor)
    prompts = [VisionPrompt(conversation(1, "What?")), VisionPrompt(conversation(2, "And this one, what is it?"))]
    lengths = [engine.prompt_length(prompt) for prompt in prompts]
    assert processor.calls == 2
    rows = [prompts[0], prompts[0], prompts[1]]  # n=2 answers of the first: the same prompt twice
    completions = engine.run(rows)
    assert processor.calls == 2  # nothing processed again: not for the batch, not for the second answer
    fresh = Engine(loaded.model, loaded.tokenizer, loaded.generation_config, loaded.image_processor())
    again = fresh.run([VisionPrompt(p.messages) for p in rows])  # processed in the batch itself
    assert [c.ids for c in completions] == [c.ids for c in again]
    ids, mask, _ = sampler_inputs(loaded.model, [VisionPrompt(p.messages) for p in prompts], 8,
                                  loaded.generation_config.pad_token_id, loaded.image_processor())
    assert lengths == mask.sum(dim=1).tolist() and lengths[0] != lengths[1]  # placeholders counted, left padding


def test_a_prepared_prompt_fits_any_answer_length(loaded):
    processor = CountingProcessor(loaded.image_processor())
    engine = Engine(loaded.model, loaded.tokenizer, loaded.generation_config, processor)
    prompt = VisionPrompt(conversation(3, "What?"))
    engine.prompt_length(prompt)
    short = replace(loaded.generation_config, gen_length=4, block_size=4)
    completion = engine.run([prompt], short)[0]
    fresh = Engine(loaded.model, loaded.tokenizer, short, loaded.image_processor())
    assert completion.ids == fresh.run([VisionPrompt(prompt.messages)], short)[0].ids
    assert processor.calls == 1
