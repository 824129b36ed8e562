"""A block's matrices through the machine's shared memory when its worker runs beside the client.

A :class:`~mlaas4hep_lab.cluster.blocks.Block` holds its chunk share's ``X`` and ``mask`` (5 bytes per
event and feature: 162 MB per 100k-event ttH chunk). Sent through Dask, they are pickled, written to a
socket, read and unpickled: several copies and the CPU of both ends, on the cores that also build the
blocks. When a worker shares ``/dev/shm`` with the client (a ``LocalCluster``, or workers started on the
client's machine), it fills ``X`` and ``mask`` straight into a segment there (:class:`SharedMatrices`) and
returns only its name; the client maps it (once per segment), copies the rows into their shuffled places in
the chunk (which it does anyway) and hands the segment back (:meth:`SharedFolder.release`), and the worker
fills it again for a later block. Reused segments matter: fresh shared pages are zeroed and faulted in on
both sides, ~4x the cost of writing pages already mapped (80 MB: 46 ms against 9 ms here), which was a
quarter of the workers' extra CPU. Elsewhere (another machine, a container with its own ``/dev/shm``) the
block travels through Dask as before.

A segment starts with a header whose first byte says who holds it: 0, the worker (filling it, or the client
not done with it); 1, free again (written by the client after its copy). So a worker never writes a segment
the client still reads. A worker keeps its segments mapped (:data:`_POOLS`, per stream) until the stream
closes (:func:`drop_segments`, through ``client.run``); only free segments too small for a block are replaced.

Whether a worker shares the client's ``/dev/shm`` is not guessed from host names: the client creates a
marker file there (:class:`SharedFolder`) and a worker uses shared memory only when it sees that file and it
runs as the marker's owner (:func:`reachable`: a segment is the worker's, mode 0600, and only its owner may
remove it from the sticky ``/dev/shm``; a Dask Gateway cluster may run as another account).
Every segment of a stream is named after its marker, so the client removes them all when the stream closes
(:meth:`SharedFolder.close`), those of cancelled or repeated tasks included. A client killed before it could
(SIGKILL, out of memory) leaves them behind; so a client holds a lock (``flock``) on its marker while its
stream is open, and a new client first removes the markers no live client holds, with their segments
(:func:`sweep`).
"""

from __future__ import annotations

import fcntl
import glob
import logging
import math
import mmap
import os
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["SHM", "SharedFolder", "SharedMatrices", "SharedPart", "drop_segments", "reachable", "sweep"]

SHM = "/dev/shm"
HEADER = 64            # bytes before X: byte 0 says who holds the segment (0: the worker, 1: free again)
_GRAIN = 1 << 20       # segments are sized in MiB, with room for blocks a little larger than the first
_SLACK = 1.05
_MAPPED = 16           # segments the client keeps mapped (a few per worker are in use at a time)
_PREFIX = "mlaas4hep-blocks-"   # markers: _PREFIX + 32 hex digits; their segments: marker + "-" + 32 hex digits


@dataclass(frozen=True)
class SharedPart:
    """Where a block's ``X`` (float32) then ``mask`` (bool) lie: after the header of a segment file of
    ``size`` bytes."""

    path: str
    rows: int
    features: int
    size: int

    @property
    def nbytes(self) -> int:
        return self.rows * self.features * 5


def _views(memory, rows: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    values = rows * width * 4
    raw = np.frombuffer(memory, np.uint8, rows * width * 5, HEADER)
    return raw[:values].view(np.float32).reshape(rows, width), raw[values:].view(np.bool_).reshape(rows, width)


class _Segment:
    def __init__(self, path: str, memory: mmap.mmap):
        self.path, self.memory = path, memory

    @property
    def size(self) -> int:
        return len(self.memory)

    def free(self) -> bool:
        return self.memory[0] == 1

    def close(self) -> None:
        _close(self.memory)


_POOLS: dict[str, list[_Segment]] = {}   # on a worker: the client's marker -> this process's segments
_POOL_LOCK = threading.Lock()


def _new_segment(marker: str, size: int) -> _Segment | None:
    """A segment of ``size`` bytes, its pages reserved first: a container's ``/dev/shm`` is often 64 MB, and
    a page written past a full tmpfs would kill the worker (SIGBUS). None when there is no room."""
    path = f"{marker}-{uuid.uuid4().hex}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
        memory = mmap.mmap(fd, size)
    except OSError:
        os.unlink(path)
        return None
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)   # the mapping stays
    return _Segment(path, memory)


class SharedMatrices:
    """The ``matrices`` of :meth:`Vectorizer.fill <mlaas4hep_lab.data.vectorize.Vectorizer.fill>` in a
    shared-memory segment of the stream whose marker is ``marker`` (on the worker): a free one of this
    process when one is large enough, else a new one. :attr:`part` names it once they were made; it stays
    None (plain memory) when ``/dev/shm`` has no room."""

    def __init__(self, marker: str):
        self.marker = marker
        self.part: SharedPart | None = None

    def matrices(self, n: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        need = HEADER + n * width * 5
        with _POOL_LOCK:
            pool = _POOLS.setdefault(self.marker, [])
            free = [s for s in pool if s.free()]
            segment = min((s for s in free if s.size >= need), key=lambda s: s.size, default=None)
            if segment is None:
                for small in free:   # free, but too small for the blocks this stream now makes
                    pool.remove(small)
                    small.close()
                    _unlink(small.path)
            else:
                segment.memory[0] = 0   # the worker's again
        if segment is None:
            segment = _new_segment(self.marker, math.ceil(need * _SLACK / _GRAIN) * _GRAIN)
            if segment is None:
                return np.empty((n, width), np.float32), np.empty((n, width), np.bool_)
            with _POOL_LOCK:
                _POOLS.setdefault(self.marker, []).append(segment)
        self.part = SharedPart(segment.path, n, width, segment.size)
        return _views(segment.memory, n, width)


def drop_segments(marker: str) -> int:
    """On a worker, when the stream closes: unmap its segments (the client removes the files); how many."""
    with _POOL_LOCK:
        pool = _POOLS.pop(marker, [])
    for segment in pool:
        segment.close()
    return len(pool)


def reachable(marker: str | None) -> bool:
    """Whether this process (a worker) can hand the client blocks beside ``marker``: it sees the file and runs
    as the user who created it (the client)."""
    if not marker:
        return False
    try:
        return os.stat(marker).st_uid == os.getuid()
    except OSError:
        return False


def _close(memory: mmap.mmap) -> None:
    try:
        memory.close()
    except BufferError:   # an array still views it: the mapping goes with the array
        pass


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def sweep(folder: str = SHM) -> int:
    """Remove the markers of this user's clients that are gone (no process holds the marker's lock: the
    client was killed before closing its stream) and their segments; the number of files removed. Markers
    of live clients, and other users' files, are left alone."""
    removed = 0
    for marker in glob.glob(os.path.join(glob.escape(folder), _PREFIX + "*")):
        if "-" in os.path.basename(marker)[len(_PREFIX):]:
            continue   # a segment: removed with its marker
        try:
            fd = os.open(marker, os.O_RDONLY)
        except OSError:
            continue
        try:
            if os.fstat(fd).st_uid != os.getuid():
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue   # its client holds it: alive
            segments = glob.glob(glob.escape(marker) + "-*")
            removed += sum(_unlink(path) for path in [*segments, marker])
        finally:
            os.close(fd)
    return removed


class SharedFolder:
    """The client's side: its marker in ``/dev/shm`` (``marker``: its path, None where there is no
    ``/dev/shm`` to write to), locked while the stream is open, which workers that see it write their
    blocks' matrices beside, and the segments it has mapped to read them. What killed clients left there is
    removed first (:func:`sweep`)."""

    def __init__(self, folder: str = SHM):
        self.marker: str | None = None
        self._lock_fd: int | None = None
        self._mapped: OrderedDict[str, mmap.mmap] = OrderedDict()
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            return
        try:
            if sweep(folder):
                log.info("removed the shared-memory blocks of Dask streams whose client was killed")
        except OSError as err:   # a folder that cannot be listed: nothing to clean, nothing lost
            log.debug("no sweep of %s: %s", folder, err)
        name = uuid.uuid4().hex
        # created under another name, locked, then renamed: a sweep never sees the marker unlocked
        fresh, marker = os.path.join(folder, f".mlaas4hep-new-{name}"), os.path.join(folder, _PREFIX + name)
        try:
            fd = os.open(fresh, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(fresh, marker)
        except OSError:
            os.close(fd)
            _unlink(fresh)
            return
        self.marker, self._lock_fd = marker, fd

    def open(self, part: SharedPart) -> tuple[np.ndarray, np.ndarray]:
        """``(X, mask)`` of a block, read-only views of its segment (mapped once); read them, drop them,
        then :meth:`release` the segment."""
        X, mask = _views(self._map(part), part.rows, part.features)
        X.flags.writeable = mask.flags.writeable = False
        return X, mask

    def release(self, part: SharedPart) -> None:
        """The block was read: its worker may fill the segment again."""
        self._map(part)[0] = 1

    def _map(self, part: SharedPart) -> mmap.mmap:
        memory = self._mapped.get(part.path)
        if memory is None or len(memory) != part.size:
            fd = os.open(part.path, os.O_RDWR)
            try:
                memory = mmap.mmap(fd, part.size)
            finally:
                os.close(fd)
            self._mapped[part.path] = memory
            while len(self._mapped) > _MAPPED:   # segments a worker replaced, most likely: mapped again if not
                _close(self._mapped.popitem(last=False)[1])
        self._mapped.move_to_end(part.path)
        return memory

    def close(self) -> int:
        """Unmap the segments, remove the marker and every segment of the stream; the number of files removed."""
        for memory in self._mapped.values():
            _close(memory)
        self._mapped.clear()
        if self.marker is None:
            return 0
        removed = sum(_unlink(path) for path in [*glob.glob(glob.escape(self.marker) + "-*"), self.marker])
        self.marker = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)   # the lock goes with it
            self._lock_fd = None
        return removed
