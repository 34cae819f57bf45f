"""Concurrent requests share sampler calls: an asyncio queue, a short window, one worker, one model thread.

A request puts one job per prompt on the queue and awaits their futures. The worker takes the first job, waits
``window_s`` for more to arrive, then groups what came by sampler settings (equal
:class:`~dllm.core.sampling.DiffusionGenerationConfig` values, the answer length included), by the kind of
prompt (token ids, or a :class:`~dllm.inference.engine.VisionPrompt` with images) and by request when it is seeded,
and runs each group, at most ``max_batch_size`` prompts at a time, as one :meth:`Engine.run` call in a model thread
(:class:`~dllm.inference.background.SamplerThread`, one call at a time), so the event loop keeps accepting requests
meanwhile. Each job's future gets its own row of the result; jobs whose
request went away (a cancelled future) are dropped before the call. Requests arriving while a call runs wait on
the queue and form the next batch.

Live streaming: a request's ``on_block(row, block, ids)`` is called on the event loop after each block the
sampler finishes (the model thread hands it over with ``loop.call_soon_threadsafe``), while the call still runs.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial

from dllm.core.sampling import DiffusionGenerationConfig
from dllm.core.sampling.config import fields_of_kind
from dllm.inference.background import SamplerThread
from dllm.inference.engine import Completion, Engine, VisionPrompt

_SUBMISSIONS = itertools.count()


def batch_key(config: DiffusionGenerationConfig) -> tuple:
    """Jobs whose configs have equal keys can share one sampler call (display switches do not change answers; a
    batch records history if one of its jobs needs it)."""
    per_call = fields_of_kind("per_call")
    return tuple(sorted((k, v) for k, v in asdict(config).items() if k not in per_call))


@dataclass
class _Job:
    prompt: list[int] | VisionPrompt
    config: DiffusionGenerationConfig
    history: bool
    future: asyncio.Future
    on_block: Callable[[int, list[int]], None] | None = None  # (block, this row's answer ids), on the event loop
    seed: tuple[int, int] | None = None  # (seed, submission): a seeded request's rows are batched alone


class Batcher:
    """Batches concurrent :meth:`submit` calls into :meth:`Engine.run` calls (see the module docstring)."""

    def __init__(self, engine: Engine, window_s: float = 0.01, max_batch_size: int = 64):
        self.engine, self.window_s, self.max_batch_size = engine, window_s, max_batch_size
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None
        self._running: SamplerThread | None = None

    async def start(self) -> None:
        """Start the worker on the running event loop."""
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._work())

    async def stop(self) -> None:
        """Stop the worker; a sampler call in progress stops at its next forward pass."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        if self._running is not None:
            await asyncio.to_thread(self._running.stop)

    async def submit(self, prompts: list[list[int] | VisionPrompt], config: DiffusionGenerationConfig,
                     history: bool = False, on_block: Callable[[int, int, list[int]], None] | None = None,
                     seed: int | None = None) -> list[Completion]:
        """The completions of ``prompts`` (token ids or vision prompts), in order, once their batches have run.

        ``on_block(row, block, ids)``: called on the event loop as soon as the sampler finishes a block of
        ``prompts[row]``, with that answer's ids so far (cut before EOS). ``seed``: the prompts are answered in
        sampler calls of their own with a generator seeded so (the same request and seed give the same answers,
        whatever else is queued).
        """
        if self._queue is None:
            raise RuntimeError("Batcher.start() was not called")
        loop = asyncio.get_running_loop()
        group = None if seed is None else (seed, next(_SUBMISSIONS))
        jobs = [_Job(prompt, config, history, loop.create_future(),
                     None if on_block is None else partial(on_block, row), group)
                for row, prompt in enumerate(prompts)]
        for job in jobs:
            self._queue.put_nowait(job)
        return list(await asyncio.gather(*(job.future for job in jobs)))

    async def _work(self) -> None:
        while True:
            jobs = [await self._queue.get()]
            await asyncio.sleep(self.window_s)  # let concurrent requests join this batch
            while not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            groups: dict[tuple, list[_Job]] = {}
            for job in jobs:
                kind = isinstance(job.prompt, VisionPrompt)  # one sampler call takes one kind of prompt
                groups.setdefault((kind, batch_key(job.config), job.seed), []).append(job)
            for group in groups.values():
                for start in range(0, len(group), self.max_batch_size):
                    await self._run(group[start:start + self.max_batch_size])

    async def _run(self, jobs: list[_Job]) -> None:
        jobs = [job for job in jobs if not job.future.done()]  # requests that went away
        if not jobs:
            return
        history = any(job.history for job in jobs)
        loop = asyncio.get_running_loop()
        call = partial(self.engine.run, [job.prompt for job in jobs], jobs[0].config, history)
        if jobs[0].seed is not None:  # engines without seeds need not take one
            call = partial(call, seed=jobs[0].seed[0])
        streaming = any(job.on_block is not None for job in jobs)  # engines without streaming need not take it
        self._running = SamplerThread(self.engine.model,
                                      lambda on_block: call(on_block=on_block) if streaming else call(),
                                      on_block=partial(_hand_over, loop, jobs))
        try:
            results = await self._running.wait()
        except Exception as err:  # noqa: BLE001 - not a fallback: every request of the batch gets the error
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(err)
            return
        for job, result in zip(jobs, results):
            if not job.future.done():
                job.future.set_result(result)


def _hand_over(loop: asyncio.AbstractEventLoop, jobs: list[_Job], block: int, rows: list[list[int]]) -> None:
    """In the model thread: schedule each streaming job's ``on_block`` with its row on the event loop."""
    for job, ids in zip(jobs, rows):
        if job.on_block is not None:
            loop.call_soon_threadsafe(job.on_block, block, ids)
