"""The memory of the chunks a consumer has dropped, handed to the next chunks.

A fresh ``[100k, 319]`` float32 matrix and its mask cost their page faults on first write: the kernel
zeroes 160 MB, sometimes after compacting memory for huge pages. Measured on one chunk of the ttH-like
example: filling a fresh matrix took 125-296 ms, filling a reused one 117 ms every time. The stream
therefore keeps the buffers it lent and reuses one as soon as nothing refers to it any more: no chunk,
and no view of one (a batch sliced from ``X`` keeps its buffer lent), so a consumer never sees its data
change. Nothing is reused while the consumer holds on to its chunks; then each chunk gets fresh memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import threading

import numpy as np

__all__ = ["ALIGNMENT", "Buffers", "aligned", "return_large_frees", "tune_worker_allocator"]

log = logging.getLogger(__name__)
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameters
_M_TRIM_THRESHOLD = -1
_ALLOCATOR_SET = False
_WORKER_SET = False
_DASK_TRIM = "65536"    # distributed.nanny.pre-spawn-environ's MALLOC_TRIM_THRESHOLD_ (Dask's default)


def return_large_frees(threshold: int = 1 << 20) -> None:
    """Have glibc give every freed block of ``threshold`` bytes or more back to the system at once.

    By default glibc raises its mmap threshold to the size of the largest block freed so far (up to
    32 MiB): after the first chunk, the decoded baskets and the normalised columns (1-30 MB arrays) come
    from the heap, and what the heap once held stays resident after it is freed, by each thread's
    arena. Measured on the ttH-like example at 608 features: the peak RSS of chunk creation falls by
    50-70 MiB (5-8%) with the read rate unchanged. Process-wide and idempotent; left alone where the user
    chose a threshold (``MALLOC_MMAP_THRESHOLD_``) or the C library is not glibc."""
    global _ALLOCATOR_SET
    if _ALLOCATOR_SET or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    _ALLOCATOR_SET = True
    libc = _libc()
    if libc is not None and not libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)):
        log.debug("mallopt(M_MMAP_THRESHOLD) refused")


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        log.debug("no C library to tune", exc_info=True)
        return None
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return None   # not glibc
    return libc


def tune_worker_allocator(threshold: int = 1 << 20, trim: int = 64 << 20) -> None:
    """In a Dask worker process, before its first task: the allocator of this process's engine.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (to hand freed memory back to the
    system at once), and any such variable freezes glibc's mmap threshold at 128 KiB: every array of 128 KiB
    or more (decoded baskets, normalised columns, a block's rows) then comes from fresh pages, zeroed and
    faulted in each time. Measured on the ttH-like example (1M events, one worker): the specs pass took 829k
    page faults and 5.0 s of CPU, against 164k and 4.0 s for the same parts in a plain process. This sets
    the local engine's mmap threshold (``threshold``, as :func:`return_large_frees`) and lets the heap keep
    up to ``trim`` bytes free before trimming it: 4.1 s and ~120k faults; on ``local:2`` the specs pass went
    from 345-353k to 410-447k events/s and chunk creation from 257-263k to 304-322k. Values the user set
    (``MALLOC_MMAP_THRESHOLD_``, a ``MALLOC_TRIM_THRESHOLD_`` other than Dask's) are left alone. Process-wide,
    idempotent, cheap after the first call (the tasks call it)."""
    global _WORKER_SET
    if _WORKER_SET:
        return
    _WORKER_SET = True
    return_large_frees(threshold)
    libc = _libc()
    if libc is not None and os.environ.get("MALLOC_TRIM_THRESHOLD_", _DASK_TRIM) == _DASK_TRIM \
            and not libc.mallopt(_M_TRIM_THRESHOLD, int(trim)):
        log.debug("mallopt(M_TRIM_THRESHOLD) refused")


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
        """``(X, mask)`` of shape ``[n, width]``, uninitialised, each starting on a 64-byte boundary (so
        that TensorFlow can take ``X`` without a copy: :func:`mlaas4hep_lab.backends._keras_feed.tensor`)."""
        if n * width > self.size:  # larger than announced: plain memory
            return aligned((n, width), np.float32), aligned((n, width), np.bool_)
        return (self._buffer("values", np.float32, n * width).reshape(n, width),
                self._buffer("mask", np.bool_, n * width).reshape(n, width))

    def _buffer(self, kind: str, dtype, n: int) -> np.ndarray:
        with self._lock:
            lent = self._lent[kind]
            # a free buffer is referred to by the list alone (plus getrefcount's own argument); the list
            # holds the allocations themselves, which every view lent from them names as its base
            free = [i for i in range(len(lent)) if sys.getrefcount(lent[i]) == 2]
            for i in reversed(free[1 + self.spare:]):
                del lent[i]  # more free buffers than wanted: let them go
            if free:
                raw = lent[free[0]]
            else:
                raw = np.empty(self.size * np.dtype(dtype).itemsize + ALIGNMENT, np.uint8)
                lent.append(raw)
            return _aligned_view(raw, dtype, n)


ALIGNMENT = 64   # bytes: a cache line, and what TensorFlow requires of memory it shares (EIGEN_MAX_ALIGN_BYTES)


def _aligned_view(raw: np.ndarray, dtype, n: int) -> np.ndarray:
    offset = -raw.ctypes.data % ALIGNMENT
    return raw[offset: offset + n * np.dtype(dtype).itemsize].view(dtype)


def aligned(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised C-contiguous array of ``shape`` starting on a 64-byte boundary."""
    n = int(np.prod(shape))
    return _aligned_view(np.empty(n * np.dtype(dtype).itemsize + ALIGNMENT, np.uint8), dtype, n).reshape(shape)
