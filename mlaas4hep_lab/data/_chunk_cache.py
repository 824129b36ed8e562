"""The vectorised chunks of a pass kept on local disk for the passes after it (params ``chunk_cache``).

Chunk ``k`` holds the same events in every pass; only their shuffled order changes (a permutation seeded by
``(seed, epoch, k)``). Reading, decompressing, preprocessing and vectorising it again each pass is the cost
of a streamed epoch that a model fed from memory does not pay. So when a run makes more than one pass,
every chunk is written once, as built (its matrices and bookkeeping arrays, raw ``.npy`` files), to a
scratch folder, and later passes read it back in their own order: row ``r`` of pass ``e`` is row
``inverse(order_w)[order_e][r]`` of the written pass ``w``. The result is the same chunk, value for value,
as building it again (tested); remote files are not read again either.

Memory stays bounded: a cached chunk is gathered from a memory map straight into the stream's reusable
matrices (:class:`~mlaas4hep_lab.data._buffers.Buffers`), the map closed right after. The disk use is about
``5 x events x features`` bytes (float32 values and a bool mask); ``"auto"`` caches only when that takes at
most half the free space of the temporary folder, and the folder goes when the passes end.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["ChunkCache", "open_cache", "pass_order"]

log = logging.getLogger(__name__)

_FIELDS = ("y", "split", "file_index", "entry", "weight")
_ROW_BYTES = 32  # bookkeeping per event: label, split, file, entry, weight (ids come on top)


def pass_order(seed: int, epoch: int, k: int, n: int) -> np.ndarray:
    """The permutation that shuffles chunk ``k`` of pass ``epoch`` (``ChunkStream.prepare`` uses it)."""
    return np.random.default_rng([seed, epoch, k]).permutation(n)


def open_cache(setting: str, events: int, width: int, passes: int) -> ChunkCache | None:
    """A cache for a run of ``passes`` passes over ``events`` events of ``width`` features, or None when the
    setting is ``"off"``, there is one pass, or (``"auto"``) the chunks would take more than half the free
    space of the temporary folder. Any other setting is the folder to write in (created when missing)."""
    if setting == "off" or passes < 2 or events <= 0:
        return None
    need = events * (5 * width + _ROW_BYTES)
    parent = Path(tempfile.gettempdir()) if setting == "auto" else Path(setting).expanduser()
    try:
        parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(parent).free
    except OSError as err:
        log.warning("chunk_cache: %s cannot be used (%s); every pass builds its chunks again", parent, err)
        return None
    if need > free // 2:
        how = log.info if setting == "auto" else log.warning
        how("chunk_cache: the chunks of one pass take ~%.0f MB, more than half the %.0f MB free in %s; every pass "
            "builds its chunks again (give chunk_cache a folder with more room to cache them)", need / 1e6,
            free / 1e6, parent)
        return None
    folder = Path(tempfile.mkdtemp(prefix="mlaas4hep-chunks-", dir=parent))
    log.info("chunk_cache: the chunks of the first pass (~%.0f MB) are kept in %s for the %d passes after it "
             '("chunk_cache": "off" builds them again each pass)', need / 1e6, folder, passes - 1)
    return ChunkCache(folder)


class ChunkCache:
    """Chunks written once (:meth:`put`) and read back in any pass's order (:meth:`get`) from ``folder``."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._written: dict[int, int] = {}  # chunk -> the pass it was written in

    def has(self, k: int) -> bool:
        return k in self._written

    def put(self, k: int, epoch: int, chunk) -> None:
        """Write chunk ``k`` as pass ``epoch`` built it; a failure (disk full) only stops caching it."""
        tmp = self.folder / f"{k}.part"
        try:
            tmp.mkdir()
            arrays = {"X": chunk.X, "mask": chunk.mask, **{f: getattr(chunk, f) for f in _FIELDS
                                                          if getattr(chunk, f) is not None}}
            arrays.update({f"id{i}": v for i, v in enumerate(chunk.ids.values())})
            for name, value in arrays.items():
                np.save(tmp / f"{name}.npy", value, allow_pickle=False)
            (tmp / "chunk.json").write_text(json.dumps({"read_events": int(chunk.read_events),
                                                         "ids": list(chunk.ids)}))
            os.replace(tmp, self.folder / str(k))
        except (OSError, ValueError) as err:  # ValueError: an id branch of Python objects
            log.warning("chunk_cache: chunk %d could not be written (%s); it is built again each pass", k, err)
            shutil.rmtree(tmp, ignore_errors=True)
            return
        self._written[k] = epoch

    def get(self, k: int, epoch: int, seed: int, shuffle: bool, buffers, head):
        """Chunk ``k`` in the order of pass ``epoch``: ``head`` (a :class:`~mlaas4hep_lab.data.stream.Chunk`
        to fill) with its arrays, the matrices in the memory of ``buffers``."""
        folder = self.folder / str(k)
        X_map = np.load(folder / "X.npy", mmap_mode="r")
        n, width = X_map.shape
        rows = None
        if shuffle and n:
            written = pass_order(seed, self._written[k], k, n)
            inverse = np.empty(n, np.int64)
            inverse[written] = np.arange(n, dtype=np.int64)
            rows = inverse[pass_order(seed, epoch, k, n)]
        X, mask = buffers.matrices(n, width)
        mask_map = np.load(folder / "mask.npy", mmap_mode="r")
        for target, mapped in ((X, X_map), (mask, mask_map)):
            if rows is None:
                target[...] = mapped
            else:
                np.take(mapped, rows, axis=0, out=target)
        del X_map, mask_map

        def load(name: str) -> np.ndarray | None:
            path = folder / f"{name}.npy"
            if not path.exists():
                return None
            value = np.load(path, allow_pickle=False)
            return value if rows is None else value[rows]

        head.X, head.mask = X, mask
        for f in _FIELDS:
            setattr(head, f, load(f))
        info = json.loads((folder / "chunk.json").read_text())
        head.ids = {name: load(f"id{i}") for i, name in enumerate(info["ids"])}
        head.index = k
        head.read_events = info["read_events"]
        return head

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self._written.clear()
