"""The memory of the chunks a consumer has dropped, handed to the next chunks.

A fresh ``[100k, 319]`` float32 matrix and its mask cost their page faults on first write: the kernel
zeroes 160 MB, sometimes after compacting memory for huge pages. Measured on one chunk of the ttH-like
example: filling a fresh matrix took 125-296 ms, filling a reused one 117 ms every time. The stream
therefore keeps the buffers it lent and reuses one as soon as nothing refers to it any more: no chunk,
and no view of one (a batch sliced from ``X`` keeps its buffer lent), so a consumer never sees its data
change. Nothing is reused while the consumer holds on to its chunks; then each chunk gets fresh memory.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

__all__ = ["Buffers"]


class Buffers:
    """Matrices of at most ``rows`` x ``width`` (float32 values and a bool mask) backed by reusable memory.

    Args:
        rows, width: the largest matrix asked for (the chunk size and the number of features).
        spare: how many unused buffers of each kind to keep (more are given back to the system).
    """

    def __init__(self, rows: int, width: int, spare: int = 1):
        self.size, self.spare = max(1, rows * width), spare
        self._lent: dict[str, list[np.ndarray]] = {"values": [], "mask": []}
        self._lock = threading.Lock()

    def matrices(self, n: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """``(X, mask)`` of shape ``[n, width]``, uninitialised."""
        if n * width > self.size:  # larger than announced: plain memory
            return np.empty((n, width), np.float32), np.empty((n, width), bool)
        return (self._buffer("values", np.float32)[: n * width].reshape(n, width),
                self._buffer("mask", np.bool_)[: n * width].reshape(n, width))

    def _buffer(self, kind: str, dtype) -> np.ndarray:
        with self._lock:
            lent = self._lent[kind]
            # a free buffer is referred to by the list alone (plus getrefcount's own argument)
            free = [i for i in range(len(lent)) if sys.getrefcount(lent[i]) == 2]
            for i in reversed(free[1 + self.spare:]):
                del lent[i]  # more free buffers than wanted: let them go
            if free:
                return lent[free[0]]
            buf = np.empty(self.size, dtype)
            lent.append(buf)
            return buf
