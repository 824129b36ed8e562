"""A block's matrices through the machine's shared memory when its worker runs beside the client.

A :class:`~mlaas4hep_lab.cluster.blocks.Block` holds its chunk share's ``X`` and ``mask`` (5 bytes per
event and feature: 162 MB per 100k-event ttH chunk). Sent through Dask, they are pickled, written to a
socket, read and unpickled: several copies and the CPU of both ends, on the cores that also build the
blocks. When a worker shares ``/dev/shm`` with the client (a ``LocalCluster``, or workers started on the
client's machine), it fills ``X`` and ``mask`` straight into a file there (:class:`SharedMatrices`) and
returns only its name; the client maps the file, copies the rows into their shuffled places in the chunk
(which it does anyway) and removes it at once. Elsewhere (another machine, a container with its own
``/dev/shm``) the block travels through Dask as before.

Whether a worker shares the client's ``/dev/shm`` is not guessed from host names: the client creates a
marker file there (:class:`SharedFolder`) and a worker uses shared memory only when it sees that file and it
runs as the marker's owner (:func:`reachable`: a block file is the worker's, mode 0600, and only its owner may
remove it from the sticky ``/dev/shm``; a Dask Gateway cluster may run as another account).
Every file of a stream is named after its marker, so the client removes what a cancelled or repeated task
left behind when the stream closes (:meth:`SharedFolder.close`).
"""

from __future__ import annotations

import glob
import mmap
import os
import uuid
from dataclasses import dataclass

import numpy as np

__all__ = ["SHM", "SharedFolder", "SharedMatrices", "SharedPart", "open_shared", "reachable"]

SHM = "/dev/shm"


@dataclass(frozen=True)
class SharedPart:
    """Where a block's ``X`` (float32) then ``mask`` (bool) lie: a file of ``rows x features x 5`` bytes."""

    path: str
    rows: int
    features: int

    @property
    def nbytes(self) -> int:
        return self.rows * self.features * 5


class SharedMatrices:
    """The ``matrices`` of :meth:`Vectorizer.fill <mlaas4hep_lab.data.vectorize.Vectorizer.fill>` in a new
    file next to ``marker`` (on the worker); :attr:`part` names it once they were made."""

    def __init__(self, marker: str):
        self.marker = marker
        self.part: SharedPart | None = None

    def matrices(self, n: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """``(X, mask)`` of ``[n, width]`` in a new shared-memory file; in plain memory (and :attr:`part`
        None) when ``/dev/shm`` has no room for them: a container's is often 64 MB, and a page written past
        a full tmpfs would kill the worker (SIGBUS), so the file's pages are reserved first."""
        path = f"{self.marker}-{uuid.uuid4().hex}"
        size = n * width * 5
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
            memory = mmap.mmap(fd, size)
        except OSError:
            os.unlink(path)
            return np.empty((n, width), np.float32), np.empty((n, width), np.bool_)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)   # the mapping stays; it is released with the last array that views it
        self.part = SharedPart(path, n, width)
        raw = np.frombuffer(memory, np.uint8)
        values = n * width * 4
        return raw[:values].view(np.float32).reshape(n, width), raw[values:].view(np.bool_).reshape(n, width)


def reachable(marker: str | None) -> bool:
    """Whether this process (a worker) can hand the client blocks beside ``marker``: it sees the file and runs
    as the user who created it (the client)."""
    if not marker:
        return False
    try:
        return os.stat(marker).st_uid == os.getuid()
    except OSError:
        return False


def open_shared(part: SharedPart) -> tuple[np.ndarray, np.ndarray]:
    """``(X, mask)`` of a block in shared memory, read-only, and the file removed (the mapping stays
    until the arrays are dropped)."""
    fd = os.open(part.path, os.O_RDONLY)
    try:
        memory = mmap.mmap(fd, part.nbytes, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
        os.unlink(part.path)
    raw = np.frombuffer(memory, np.uint8)
    values = part.rows * part.features * 4
    return (raw[:values].view(np.float32).reshape(part.rows, part.features),
            raw[values:].view(np.bool_).reshape(part.rows, part.features))


class SharedFolder:
    """The client's marker in ``/dev/shm`` (``marker``: its path, None where there is no ``/dev/shm`` to
    write to): workers that see it write their blocks' matrices beside it."""

    def __init__(self, folder: str = SHM):
        self.marker: str | None = None
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            return
        marker = os.path.join(folder, f"mlaas4hep-blocks-{uuid.uuid4().hex}")
        try:
            with open(marker, "x"):
                pass
        except OSError:
            return
        self.marker = marker

    def close(self) -> int:
        """Remove the marker and any block file a task left (cancelled, repeated); the number removed."""
        if self.marker is None:
            return 0
        removed = 0
        for path in [self.marker, *glob.glob(glob.escape(self.marker) + "-*")]:
            try:
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                pass
        self.marker = None
        return removed
