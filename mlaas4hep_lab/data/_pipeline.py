"""Two background threads in a row: one reads (decompression, which releases the GIL, in more threads)
while the other computes on what was read before, so that both cores work; bounded hand-overs keep the
memory at a fixed number of items whatever the length of the run. Used by the chunk stream and the
specs pass.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

__all__ = ["pipelined"]

_DONE = object()


class _Stage:
    """A hand-over between threads with ``depth`` places, counting the item being made: a producer
    :meth:`reserve`-s a place before it starts on an item, and the consumer's :meth:`get` frees it. So
    at most ``depth`` items exist beyond those the consumer holds. Everything gives up once ``stop`` is set."""

    def __init__(self, depth: int, stop: threading.Event):
        self.queue: queue.Queue = queue.Queue()
        self.places = threading.Semaphore(max(1, depth))
        self.stop = stop

    def reserve(self) -> bool:
        while not self.stop.is_set():
            if self.places.acquire(timeout=0.1):
                return True
        return False

    def put(self, item) -> None:
        self.queue.put(item)

    def get(self):
        while not self.stop.is_set():
            try:
                item = self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            self.places.release()
            return item
        return _DONE


def pipelined(read: Callable, assemble: Callable, n: int, depth: int) -> Iterator:
    """``assemble(i, read(i))`` for ``i`` in ``0..n-1``, in order, on two background threads: one reads
    (and decompresses) item ``i + 1`` while the other vectorises item ``i``, so both cores work. Memory
    stays at ``depth`` items beyond the one the consumer holds, finished or being assembled, plus the
    read buffers of one item ahead of the assembler. An error in either thread is raised in the
    consumer."""
    stop = threading.Event()
    pieces, done = _Stage(1, stop), _Stage(depth, stop)

    def reader() -> None:
        try:
            for i in range(n):
                if not pieces.reserve():
                    return
                pieces.put((i, read(i)))
            pieces.put(_DONE)
        except BaseException as err:  # handed on to the consumer, which raises it
            pieces.put(err)

    def assembler() -> None:
        try:
            while done.reserve():
                item = pieces.get()
                if item is _DONE or isinstance(item, BaseException):
                    done.put(item)
                    return
                done.put(assemble(*item))
                del item  # the pieces: not kept while waiting for a place
        except BaseException as err:
            done.put(err)

    # both carry the name a user (and the tests) look for to see whether prefetching is still running
    threads = [threading.Thread(target=target, name="mlaas4hep-prefetch", daemon=True)
               for target in (reader, assembler)]
    for thread in threads:
        thread.start()
    try:
        while True:
            item = done.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)
