"""Dynamic batching: concurrent requests for one model share one forward pass.

Each served model version has a :class:`Batcher`. ``await batcher.submit(X)`` queues the rows (a bounded
asyncio queue: when it is full the request is refused with 503 instead of waiting without end); one
worker task takes what is queued, up to ``max_batch`` rows, optionally waiting up to ``max_delay_ms``
for more, runs one forward pass in a worker thread and hands each request its own slice of the scores
(rows are events: ``float32[N]`` scores or the ``float32[N, W]`` values of a multi-output model are
concatenated and split along the first axis alike).

While a pass runs, new requests gather in the queue, so under load batches grow on their own even with
``max_delay_ms = 0``; an idle server answers a lone request without waiting. A request larger than
``max_batch`` rows is run as a batch of its own. Optionally (``inline_rows``, for tiny models), a small
request that finds the model idle (nothing queued, no pass running) is scored at once on the event loop:
for a lone client a thread hop costs more than the pass. Under concurrent load that would serialise
everything on the event loop; passes in the threads overlap with the HTTP work instead (measured on 2
cores: ~9k vs ~7k single-event requests/s), so it is off by default. :class:`Direct` is the same interface without batching
(``--no-batching``).

Both time what they do for the statistics (:mod:`.stats`) and hand it to ``on_batch(rows, requests,
queue_ns, input_ns, infer_ns, output_ns)`` after each pass: the nanoseconds the pass's requests waited in
the queue (summed over them), then of the pass itself: gathering its rows and handing them to a thread,
the runtime's prediction, and handing each request its slice. A few clock reads per pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

from mlaas4hep_lab.serving import Unavailable

__all__ = ["Batcher", "Direct", "QueueFull", "timed"]

log = logging.getLogger(__name__)
Predict = Callable[[np.ndarray], np.ndarray]
OnBatch = Callable[[int, int, int, int, int, int], None]
_clock = time.perf_counter_ns  # one clock for all threads (a pass's start is read in its worker thread)


def timed(predict: Callable[..., np.ndarray], *args) -> tuple[np.ndarray, int, int]:
    """``predict(*args)`` with the clock (``time.perf_counter_ns``) before and after it, read in the thread
    that runs it."""
    start = _clock()
    out = predict(*args)
    return out, start, _clock()


async def _one_pass(owner: Direct | Batcher, X: np.ndarray) -> np.ndarray:
    """One request as its own pass, for ``owner`` (its predict, executor, inline_rows, on_batch, passes):
    in a worker thread, or on the event loop when small enough or without threads."""
    owner.passes += 1
    begin = _clock()
    if len(X) <= owner.inline_rows or owner.executor is None:
        out, start, end = timed(owner.predict, X)
    else:
        out, start, end = await asyncio.get_running_loop().run_in_executor(owner.executor, timed, owner.predict, X)
    if owner.on_batch is not None:
        owner.on_batch(len(X), 1, 0, start - begin, end - start, _clock() - end)
    return out


class QueueFull(Unavailable):
    """The model's request queue is full (503): the client should retry later."""


class Direct:
    """No batching: each request is its own forward pass (in a worker thread, or inline when small)."""

    def __init__(self, predict: Predict, executor: Executor | None = None, inline_rows: int = 0,
                 on_batch: OnBatch | None = None):
        self.predict, self.executor, self.inline_rows, self.on_batch = predict, executor, inline_rows, on_batch
        self.passes = 0

    async def submit(self, X: np.ndarray) -> np.ndarray:
        return await _one_pass(self, X)

    def close(self) -> None:
        pass


class Batcher:
    """Merge concurrent ``submit`` calls into forward passes of at most ``max_batch`` rows.

    Args:
        predict: ``float32[N, F] -> float32[N]`` or ``float32[N, W]``, thread-safe.
        max_batch: most rows in one pass.
        max_delay_ms: how long the first request of a batch waits for others (0: no wait).
        queue_size: most requests waiting; beyond, :class:`QueueFull`.
        executor: threads for the passes (None: run on the event loop).
        inline_rows: a request of at most this many rows that finds the model idle is scored at once on
            the event loop (lowest latency for a lone client; under load, passes in the threads overlap
            with the event loop's HTTP work and give more throughput, hence the default 0).
        on_batch: called with (rows, requests) after each pass (metrics).

    ``passes`` counts the forward passes made. Use it from one event loop.
    """

    def __init__(self, predict: Predict, *, max_batch: int = 512, max_delay_ms: float = 0.0,
                 queue_size: int = 4096, executor: Executor | None = None, inline_rows: int = 0,
                 on_batch: OnBatch | None = None):
        self.predict = predict
        self.max_batch = max_batch
        self.max_delay = max_delay_ms / 1000.0
        self.queue_size = queue_size
        self.executor = executor
        self.inline_rows = inline_rows
        self.on_batch = on_batch
        self.passes = 0
        self._queue: asyncio.Queue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._queued_rows = 0
        self._filled: asyncio.Future | None = None
        self._closed = False
        self._busy = False  # a batch is being gathered or run

    async def submit(self, X: np.ndarray) -> np.ndarray:
        """Scores of the rows ``X``, computed in a pass shared with other requests."""
        if len(X) <= self.inline_rows and not self._busy and (self._queue is None or self._queue.empty()):
            return self._inline(X)  # an idle tiny model: answer at once, without a task switch
        loop = asyncio.get_running_loop()
        if self._closed:  # a request that found this version just before it was replaced or deleted
            return await self._run(X)
        if self._queue is None or self._loop is not loop:
            self._loop, self._queue = loop, asyncio.Queue(self.queue_size)
            self._task = None
        future = loop.create_future()
        try:
            self._queue.put_nowait((X, future, _clock()))
        except asyncio.QueueFull:
            raise QueueFull(f"the model's queue is full ({self.queue_size} requests waiting); retry later") from None
        self._queued_rows += len(X)
        if self._filled is not None and self._queued_rows >= self.max_batch and not self._filled.done():
            self._filled.set_result(None)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._work(), name="mlaas4hep-batcher")
        return await future

    def close(self) -> None:
        """Stop after the queued requests are answered; later ``submit`` calls run unbatched.
        Thread-safe (the store retires versions from worker threads)."""
        self._closed = True
        loop, queue = self._loop, self._queue
        if loop is not None and queue is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake, queue)

    @staticmethod
    def _wake(queue: asyncio.Queue) -> None:
        try:
            queue.put_nowait(None)  # ends a worker waiting on an empty queue
        except asyncio.QueueFull:
            pass  # the worker is busy and will see the flag once the queue is drained

    async def _work(self) -> None:
        queue = self._queue
        carry = None
        while True:
            if carry is None and self._closed and queue.empty():
                return
            item = carry if carry is not None else await queue.get()
            carry = None
            if item is None:
                continue
            self._busy = True
            batch, rows = [item], len(item[0])
            if rows < self.max_batch and self.max_delay > 0 and self._queued_rows < self.max_batch:
                await self._wait_for_more()
            while rows < self.max_batch:
                try:
                    nxt = queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if nxt is None:
                    continue
                if rows + len(nxt[0]) > self.max_batch:
                    carry = nxt
                    break
                batch.append(nxt)
                rows += len(nxt[0])
            self._queued_rows -= rows
            try:
                await self._run_batch(batch, rows)
            finally:
                self._busy = False

    async def _wait_for_more(self) -> None:
        loop = asyncio.get_running_loop()
        self._filled = loop.create_future()
        handle = loop.call_later(self.max_delay, _resolve, self._filled)
        try:
            await self._filled
        finally:
            handle.cancel()
            self._filled = None

    def _inline(self, X: np.ndarray) -> np.ndarray:
        self.passes += 1
        out, start, end = timed(self.predict, X)
        if self.on_batch is not None:
            self.on_batch(len(X), 1, 0, 0, end - start, 0)
        return out

    async def _run(self, X: np.ndarray) -> np.ndarray:
        return await _one_pass(self, X)

    async def _run_batch(self, batch: list, rows: int) -> None:
        begin = _clock()
        queued = len(batch) * begin - sum(item[2] for item in batch)
        X = batch[0][0] if len(batch) == 1 else np.concatenate([item[0] for item in batch])
        self.passes += 1
        try:
            if rows <= self.inline_rows or self.executor is None:
                out, start, end = timed(self.predict, X)
            else:
                out, start, end = await asyncio.get_running_loop().run_in_executor(
                    self.executor, timed, self.predict, X)
        except Exception as err:
            for item in batch:
                if not item[1].done():
                    item[1].set_exception(err)
            return
        first = 0
        for x, future, _ in batch:
            stop = first + len(x)
            if not future.done():  # the client may have gone away
                future.set_result(out[first:stop])
            first = stop
        if self.on_batch is not None:
            self.on_batch(rows, len(batch), queued, start - begin, end - start, _clock() - end)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
