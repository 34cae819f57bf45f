"""One sampler call in a thread of its own, for the interfaces that show an answer while it is computed: ``dllm chat``
(the terminal), ``dllm playground`` (a web page) and ``dllm serve``'s batcher (the event loop).

:class:`SamplerThread` runs ``call(on_block)`` (a function that calls the sampler with that ``on_block``) and hands
each finished block over: to a callback (run in the sampler's thread; the batcher's schedules it on the event loop) or
through a queue that :meth:`SamplerThread.blocks` reads. :meth:`SamplerThread.stop` ends the call at its next model
forward pass (a forward pre-hook raises :class:`SamplerStopped` in the sampler's thread) and waits for the thread:
Ctrl-C in ``dllm chat`` or a page closed in the playground never leaves a sampler running into the interpreter's
exit, which aborted the process ("terminate called without an active exception", status 134).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

import torch

T = TypeVar("T")
_DONE = object()


class SamplerStopped(Exception):
    """Raised in the sampler's thread at its next forward pass after :meth:`SamplerThread.stop`."""


class SamplerThread(Generic[T]):
    """``call(on_block)`` running in a new thread; its result in :attr:`future` (and :meth:`result`).

    ``on_block``: called in the sampler's thread with the sampler's ``on_block`` arguments; without it they go on a
    queue for :meth:`blocks`. ``model``: the module whose forward passes :meth:`stop` interrupts (``None``: a call
    that is not a model's, which runs to its end).
    """

    def __init__(self, model: torch.nn.Module | None, call: Callable[[Callable[..., None]], T],
                 on_block: Callable[..., None] | None = None, name: str = "dllm-sampler"):
        self.future: Future[T] = Future()
        self._blocks: queue.Queue[Any] = queue.Queue()
        self._on_block, self._stop = on_block, threading.Event()
        self._thread = threading.Thread(target=self._work, args=(model, call), name=name, daemon=True)
        self._thread.start()

    def _work(self, model: torch.nn.Module | None, call: Callable[[Callable[..., None]], T]) -> None:
        hook = None if model is None else model.register_forward_pre_hook(self._check_stop)
        try:
            result = call(self._block)
        except BaseException as err:  # noqa: BLE001 - not a fallback: handed to whoever reads the result
            self.future.set_exception(err)
        else:
            self.future.set_result(result)
        finally:
            if hook is not None:
                hook.remove()
            self._blocks.put(_DONE)

    def _check_stop(self, _module: torch.nn.Module, _args: Any) -> None:
        # only this run's own forwards: another thread may sample from the same model meanwhile
        if self._stop.is_set() and threading.current_thread() is self._thread:
            raise SamplerStopped("the sampler was stopped")

    def _block(self, *args: Any) -> None:
        if self._on_block is not None:
            self._on_block(*args)
        else:
            self._blocks.put(args)

    def blocks(self) -> Iterator[tuple]:
        """The arguments of each ``on_block`` call as the sampler makes it, until the call ends (without an
        ``on_block`` callback)."""
        while (item := self._blocks.get()) is not _DONE:
            yield item

    def result(self) -> T:
        """The call's result once the thread ended (its exception re-raised)."""
        self._thread.join()
        return self.future.result()

    def stop(self) -> None:
        """End the call at its next forward pass and wait for the thread (its result is then
        :class:`SamplerStopped`, unless it had finished)."""
        self._stop.set()
        self._thread.join()

    async def wait(self) -> T:
        """:meth:`result` without blocking the event loop."""
        return await asyncio.wrap_future(self.future)
