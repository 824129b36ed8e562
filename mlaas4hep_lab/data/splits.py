"""Whether an event is for training, validation or test: a hash of (file name, entry, seed), the same on
every run, every chunk and every pass (the specs pass counts the splits with it, the stream assigns them)."""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence

import numpy as np

__all__ = ["SPLITS", "split_of"]

SPLITS = ("train", "validation", "test")


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a fast, well-mixed 64-bit hash of each element."""
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def split_of(file_key: str, entries: np.ndarray, fractions: Sequence[float], seed: int = 0) -> np.ndarray:
    """0 (train), 1 (validation) or 2 (test) for each entry of the file named ``file_key``."""
    salt = (zlib.crc32(os.path.basename(file_key).encode()) << 32) ^ (int(seed) & 0xFFFFFFFF)
    with np.errstate(over="ignore"):
        h = _mix64(np.asarray(entries, dtype=np.uint64) + np.uint64(salt) * np.uint64(0x9E3779B97F4A7C15))
    u = (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    edges = np.cumsum(fractions)[:-1]
    return np.searchsorted(edges, u, side="right").astype(np.uint8)
