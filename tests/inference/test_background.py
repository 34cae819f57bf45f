"""The one helper that runs a sampler call off-thread (chat, playground, the server's batcher): blocks handed over as
they finish, the result or the error handed back, and a stop that ends the call at its next forward pass."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from dllm.inference.background import SamplerStopped, SamplerThread


class Gate(torch.nn.Module):
    """A model whose every forward waits for ``go``: the test decides when each forward happens."""

    def __init__(self):
        super().__init__()
        self.go, self.forwards = threading.Semaphore(0), 0

    def forward(self, x):
        self.go.acquire()
        self.forwards += 1
        return x


def loop(model, on_block, blocks=3):
    """A stand-in sampler: one forward per block, ``on_block`` after each."""
    for index in range(blocks):
        model(torch.zeros(1))
        on_block(index, f"block {index}")
    return "done"


def test_blocks_arrive_in_order_then_the_result():
    model = Gate()
    run = SamplerThread(model, lambda on_block: loop(model, on_block))
    for _ in range(3):
        model.go.release()
    assert list(run.blocks()) == [(0, "block 0"), (1, "block 1"), (2, "block 2")]
    assert run.result() == "done" and not model._forward_pre_hooks  # the stop hook is removed


def test_stop_ends_the_call_at_its_next_forward():
    model = Gate()
    run = SamplerThread(model, lambda on_block: loop(model, on_block, blocks=100))
    model.go.release()
    assert next(iter(run.blocks())) == (0, "block 0")
    releaser = threading.Timer(0.2, lambda: [model.go.release() for _ in range(100)])
    releaser.start()
    run.stop()  # returns once the thread ended
    releaser.join()
    assert model.forwards <= 2  # the one in progress may finish; no later one runs
    with pytest.raises(SamplerStopped):
        run.result()
    assert not model._forward_pre_hooks  # the next call on this model is not stopped


def test_errors_reach_the_caller_and_callbacks_run_in_the_sampler_thread():
    model, threads = Gate(), []

    def failing(on_block):
        on_block(0)
        raise RuntimeError("sampler failed")

    run = SamplerThread(model, failing, on_block=lambda index: threads.append(threading.current_thread().name),
                        name="sampler-x")
    with pytest.raises(RuntimeError, match="sampler failed"):
        asyncio.run(run.wait())
    assert threads == ["sampler-x"]
