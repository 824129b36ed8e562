"""Score files on a Dask cluster (``predict --dask``): the parts of
:func:`~mlaas4hep_lab.training.predict.file_parts` become tasks, written back by the client in order.

* The bundle travels once: its model files as one tarball, scattered to every worker; each worker process
  unpacks it in its own local directory and loads it once (workers may be on other machines, where the
  client's path means nothing). Only the bundle's backend is imported there: TensorFlow only for a Keras
  bundle.
* One task lists a file's parts on a worker (its cluster boundaries: metadata only), then one task per
  part reads, preprocesses and scores it with the very functions of the local path, and returns its
  output columns (identifiers and scores: ~25 bytes an event, against the hundreds read).
* The client keeps at most ``in_flight`` parts submitted and writes each as soon as it and all the parts
  before it are done: memory stays bounded on both sides, and the files written are the local path's.
* A part that fails is retried by Dask, then its error (the local path's type: ``InputFileError`` for a
  missing or truncated file ...) is raised here, naming the file and entry range.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import shutil
import tarfile
import tempfile
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep_lab.errors import MLaaSError

__all__ = ["score_parts"]

# not needed to score: the plots, and the exports made for other runtimes (ONNX, SavedModel)
_NOT_SENT = ("plots", "inference")


def score_parts(cluster, bundle, files: list[str], tree: str, chunk_size: int, *, retries: int = 2,
                in_flight: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Output columns of every part of ``files``, scored on ``cluster``'s workers with ``bundle``, in
    file order then entry order (what the local path yields). ``retries``: further tries of a failed
    task; ``in_flight``: parts submitted at once (default: 3 per worker, at least 4). Closing the
    generator cancels what is still queued."""
    from mlaas4hep_lab.training.predict import input_branches

    client = cluster.client
    in_flight = in_flight or max(4, 3 * cluster.n_workers)
    payload = bundle_tarball(bundle.path)
    digest = hashlib.sha256(payload).hexdigest()[:16]
    [shipped] = client.scatter([payload], broadcast=True, hash=False)
    del payload
    branches = input_branches(bundle)
    trained_on = bundle.specs.tree
    plans: deque = deque()   # (file index, path, future of its parts), submitted ahead of its parts
    window: deque = deque()  # (future of a part's columns, path, start, stop), in output order
    todo = iter(enumerate(str(f) for f in files))

    def pending_parts() -> Iterator[tuple[int, str, int, int]]:
        while True:
            # list the parts of the next few files ahead: their tasks are ready when their turn comes
            for i, path in itertools.islice(todo, max(0, in_flight - len(plans))):
                plans.append((i, path, client.submit(_plan_task, path, tree, trained_on, branches, chunk_size,
                                                     retries=retries, pure=False)))
            if not plans:
                return
            i, path, future = plans[0]
            for start, stop in _result(future, path, None, None, retries):
                yield i, path, start, stop
            plans.popleft()

    try:
        for i, path, start, stop in pending_parts():
            window.append((client.submit(_score_task, shipped, digest, path, tree, branches, i, start, stop,
                                         retries=retries, pure=False), path, start, stop))
            while len(window) >= in_flight:
                yield _result(*window.popleft(), retries)
        while window:
            yield _result(*window.popleft(), retries)
    finally:
        # on an error or an early close: nothing of this call keeps running or holding memory out there
        leftover = [f for f, *_ in window] + [f for *_, f in plans]
        if leftover:
            client.cancel(leftover)
        window.clear()
        plans.clear()
        shipped.release()
        with contextlib.suppress(Exception):  # best effort: a worker that is gone holds nothing any more
            client.run(_forget_bundle, digest)


def _result(future, path: str, start: int | None, stop: int | None, retries: int = 0):
    """``future``'s result, or its error raised here with the file and entry range named."""
    try:
        return future.result()
    except Exception as err:
        where = "listing its parts" if start is None else f"entries {start}-{stop}"
        note = f"on a Dask worker ({path}, {where}; {retries + 1} tries)"
        if isinstance(err, MLaaSError) and err.args:
            # the local path's type and message, with where it happened (the message is the first arg)
            err.args = (f"{err.args[0]} [{note}]", *err.args[1:])
        else:
            err.add_note(f"while scoring {note}")
        raise err from None


def bundle_tarball(folder: str | Path) -> bytes:
    """The bundle at ``folder`` as gzipped tar bytes, without what scoring does not need (plots, exports)."""
    folder = Path(folder)
    buffer = io.BytesIO()

    def keep(info: tarfile.TarInfo):
        top = info.name.split("/")[1:2]
        if not (info.isfile() or info.isdir()) or (top and top[0] in _NOT_SENT):
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    # level 1: model files (weights, trees) barely compress, and the bytes may cross a network once
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        tar.add(folder, arcname="bundle", filter=keep)
    return buffer.getvalue()


# -- on the workers ---------------------------------------------------------------------------------
_LOCK = threading.Lock()
# digest -> Bundle, loaded once per worker process for all the parts of a predict; the two last used are
# kept (two clients scoring at once), and a predict drops its own when it ends
_LOADED: dict[str, Any] = {}


def _plan_task(path: str, tree: str, trained_on: str, branches: list[str], chunk_size: int) -> list[tuple[int, int]]:
    from mlaas4hep_lab.training.predict import file_parts, open_checked

    with open_checked(path, tree, trained_on, branches) as reader:
        return file_parts(reader.cluster_boundaries(branches), chunk_size)


def _score_task(payload: bytes, digest: str, path: str, tree: str, branches: list[str], file_index: int,
                start: int, stop: int) -> dict[str, np.ndarray]:
    from mlaas4hep_lab.data._buffers import tune_worker_allocator
    from mlaas4hep_lab.data.reader import share_offsets
    from mlaas4hep_lab.training.predict import open_checked, part_columns

    tune_worker_allocator()
    bundle = _worker_bundle(payload, digest)
    with open_checked(path, tree, bundle.specs.tree, branches) as reader:
        # parts are cut at cluster boundaries: reading exactly the part decodes no basket twice
        arrays = share_offsets(reader.read(branches, start, stop))
    return part_columns(bundle, arrays, file_index, start)


def _worker_bundle(payload: bytes, digest: str):
    """The bundle of ``digest``, unpacked and loaded once per worker process."""
    from mlaas4hep_lab.bundle import Bundle, safe_extract

    with _LOCK:
        bundle = _LOADED.get(digest)
        if bundle is not None:
            _LOADED[digest] = _LOADED.pop(digest)  # the most recently used last
            return bundle
        while len(_LOADED) >= 2:  # the oldest bundle's files and model go
            old = _LOADED.pop(next(iter(_LOADED)))
            shutil.rmtree(old.path.parent, ignore_errors=True)
        base = _local_directory() / "mlaas4hep-bundles"
        base.mkdir(parents=True, exist_ok=True)
        target = Path(tempfile.mkdtemp(prefix=f"{digest}-", dir=base))
        try:
            archive = target / "bundle.tar.gz"
            archive.write_bytes(payload)
            folder = safe_extract(archive, target)
            archive.unlink()
            bundle = Bundle(folder)
            bundle.backend  # noqa: B018  load the model now, under the lock: once per process
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        _LOADED[digest] = bundle
        return bundle


def _forget_bundle(digest: str) -> None:
    """Drop a bundle once its predict is over: the model's memory and the unpacked files."""
    with _LOCK:
        bundle = _LOADED.pop(digest, None)
    if bundle is not None:
        shutil.rmtree(bundle.path.parent, ignore_errors=True)


def _local_directory() -> Path:
    try:
        from distributed import get_worker

        return Path(get_worker().local_directory)
    except (ImportError, ValueError):  # not in a worker (a task run by hand): the system's temporary folder
        return Path(tempfile.gettempdir())
