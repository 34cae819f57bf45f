"""The batcher with a stand-in engine: equal settings share a call, different ones never do, nor do prompts with and
without images, every request gets its own rows, the batch size is capped, and a failing call fails only its own
requests."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from dllm.core.sampling import DiffusionGenerationConfig
from dllm.inference.batching import Batcher
from dllm.inference.engine import Completion, VisionPrompt

BASE = DiffusionGenerationConfig(gen_length=4, mask_token_id=9)


class RecordingEngine:
    """Answers a prompt with its ids reversed plus the call's gen_length; records every call."""

    def __init__(self):
        self.calls: list[tuple[list[list[int]], DiffusionGenerationConfig, bool]] = []

    model = None  # no module: the batcher cannot stop its calls early

    def run(self, prompts, config, history=False):
        self.calls.append((prompts, config, history))
        if config.cfg_scale == 7.0:
            raise RuntimeError("sampler failed")
        ids = [p.messages[0]["content"] if isinstance(p, VisionPrompt) else p for p in prompts]
        return [Completion(prompt[::-1] + [config.gen_length], True, len(prompts)) for prompt in ids]


def run(coroutine_factory, engine, **batcher_args):
    async def main():
        batcher = Batcher(engine, **batcher_args)
        await batcher.start()
        try:
            return await coroutine_factory(batcher)
        finally:
            await batcher.stop()

    return asyncio.run(main())


def test_equal_settings_share_a_call_and_each_request_gets_its_rows():
    engine = RecordingEngine()
    longer = replace(BASE, gen_length=6)

    async def requests(batcher):
        return await asyncio.gather(
            batcher.submit([[1, 2], [3]], BASE), batcher.submit([[4, 5, 6]], longer),
            batcher.submit([[7]], BASE, history=True), batcher.submit([[8, 9]], longer))

    results = run(requests, engine, window_s=0.05)
    assert [[c.ids for c in r] for r in results] == [[[2, 1, 4], [3, 4]], [[6, 5, 4, 6]], [[7, 4]], [[9, 8, 6]]]
    calls = sorted((len(prompts), config.gen_length, history) for prompts, config, history in engine.calls)
    assert calls == [(2, 6, False), (3, 4, True)]  # one call per setting; history if any job wants it


def test_prompts_with_images_never_share_a_call_with_token_ids():
    engine = RecordingEngine()
    vision = VisionPrompt([{"role": "user", "content": [5, 6]}])  # the stand-in engine reads these as ids

    async def requests(batcher):
        return await asyncio.gather(batcher.submit([[1, 2]], BASE), batcher.submit([vision, vision], BASE),
                                    batcher.submit([[3]], BASE))

    results = run(requests, engine, window_s=0.05)
    assert [[c.ids for c in r] for r in results] == [[[2, 1, 4]], [[6, 5, 4], [6, 5, 4]], [[3, 4]]]
    kinds = sorted([isinstance(p, VisionPrompt) for p in prompts] for prompts, _, _ in engine.calls)
    assert kinds == [[False, False], [True, True]]


def test_batches_are_capped_and_a_failure_stays_in_its_batch():
    engine = RecordingEngine()
    failing = replace(BASE, cfg_scale=7.0)

    async def requests(batcher):
        return await asyncio.gather(batcher.submit([[i] for i in range(5)], BASE), batcher.submit([[1]], failing),
                                    return_exceptions=True)

    good, bad = run(requests, engine, window_s=0.05, max_batch_size=2)
    assert [c.ids for c in good] == [[i, 4] for i in range(5)]
    assert sorted(len(prompts) for prompts, config, _ in engine.calls if config == BASE) == [1, 2, 2]
    assert isinstance(bad, RuntimeError)


def test_submit_before_start_is_refused():
    with pytest.raises(RuntimeError, match="start"):
        asyncio.run(Batcher(RecordingEngine()).submit([[1]], BASE))
