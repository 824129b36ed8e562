"""The specs pass on a Dask cluster: one task per part of a file (small parts share one: :func:`task_groups`),
the partial statistics merged here.

Each task opens its files on the worker (``root://``, ``https://`` or a path the workers see), reads its
parts chunk by chunk (memory bounded by the chunk size, as in this process), applies the preprocessing
and returns a :class:`~mlaas4hep_lab.data._partial.PartStats`: a few numbers per branch. The parts are
those of the local pass and are merged in the same order whatever order they finish in, so the specs
are the same, to the bit, as without a cluster (:mod:`mlaas4hep_lab.data._partial` says why).

The settings (params, preprocessing, plan: a few kB) are pickled once and go with every task (a task
depending on another that holds them would be sent where that one ran: every part on one worker).
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import logging
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence

from mlaas4hep_lab.errors import MLaaSError

__all__ = ["run_parts", "task_groups", "ClusterTaskError", "RETRIES"]

log = logging.getLogger(__name__)

RETRIES = 2  # a task that fails is tried this many times more (a worker lost, a flaky server) before we report


class ClusterTaskError(MLaaSError, RuntimeError):
    """A Dask task failed for a reason of the cluster's (a worker died, a task was lost), not an error the
    pass raises by itself in this process (those keep their type: InputFileError, ConfigError, ...)."""


_SETTINGS: dict[str, tuple] = {}  # on a worker: digest -> (params, preproc, plan) of the last few passes


def _settings(digest: str, blob: bytes) -> tuple:
    settings = _SETTINGS.get(digest)
    if settings is None:  # unpickled (compiled expressions and all) once per worker and pass, not per part
        import pickle

        settings = pickle.loads(blob)
        while len(_SETTINGS) >= 4:
            _SETTINGS.pop(next(iter(_SETTINGS)))
        _SETTINGS[digest] = settings
    return settings


_OPEN: OrderedDict[tuple, tuple] = OrderedDict()  # on a worker: (pass, path, tree) -> (TreeReader, lock), the last few
_OPEN_LOCK = threading.Lock()
_MAX_OPEN = 16


def _reader(run: str, path: str, tree: str, retries: int) -> tuple:
    """The worker's open reader of ``path`` for the pass ``run`` (opening a file and listing its branches is
    tens of ms, a few percent of a part: paid once per file, worker and pass, not once per part; a later pass
    opens the file afresh, as the client does, so a file changed in between is read as it is now)."""
    from mlaas4hep_lab.data.reader import TreeReader

    key = (run, path, tree)
    with _OPEN_LOCK:
        if key in _OPEN:
            _OPEN.move_to_end(key)
            return _OPEN[key]
    opened = (TreeReader(path, tree, retries=retries), threading.Lock())
    with _OPEN_LOCK:
        opened = _OPEN.setdefault(key, opened)
        while len(_OPEN) > _MAX_OPEN:
            _close(_OPEN.popitem(last=False)[1])
    return opened


def _close(opened: tuple) -> None:
    reader, lock = opened
    with lock:   # after the part reading through it, if any
        reader.close()


def _close_readers(run: str) -> int:
    """On a worker, at the end of the pass ``run``: close its readers."""
    with _OPEN_LOCK:
        items = [_OPEN.pop(key) for key in list(_OPEN) if key[0] == run]
    for opened in items:
        _close(opened)
    return len(items)


def _parts_task(digest: str, blob: bytes, run: str, items: tuple) -> list:
    """On a worker: the statistics of each part ``(path, start, stop)`` of ``items``, in their order."""
    from mlaas4hep_lab.data._buffers import tune_worker_allocator
    from mlaas4hep_lab.data._partial import read_part

    tune_worker_allocator()

    params, preproc, plan = _settings(digest, blob)
    out = []
    for path, start, stop in items:
        try:   # opening the file (gone, unreachable from the worker) or reading the part
            reader, lock = _reader(run, path, params.branch, params.retries)
            with lock:   # one part at a time through one reader (a worker may run several threads)
                out.append(read_part(reader, plan, params, preproc, start, stop))
        except Exception as err:
            with contextlib.suppress(AttributeError):   # an exception type without a __dict__ is reported as is
                err.mlaas4hep_part = (path, start, stop)   # which of the task's parts, for the report
            raise
    return out


def task_groups(sizes: Sequence[int], most: int = 8) -> list[list[int]]:
    """The parts (their entries: ``sizes``) grouped into tasks, largest first: a part of at least half the
    largest one is a task of its own; smaller ones (a file's last part, the parts of small files) share a
    task, up to the largest part's entries and ``most`` parts (best fit, largest first: O(n log n) for the
    thousands of parts of a large dataset). The tasks are then of about one size, so the workers end together
    however the scheduler breaks ties among them: the Higgs-like example's 9 parts of 100k and 2 of 50k ended
    one worker 40 ms after the other in half of the passes on 2 workers, as 10 tasks they do not. No task is
    larger than the largest part, so the pass's shortest possible time is unchanged; the parts (and the
    specs) do not change either."""
    if not sizes:
        return []
    capacity = max(sizes)
    order = sorted(range(len(sizes)), key=lambda p: -sizes[p])   # stable: equal parts keep the files' order
    groups = [[p] for p in order if 2 * sizes[p] > capacity]
    shared: list[list[int]] = []
    rooms: list[int] = []   # sorted: the room left in the shared tasks that may take another part
    which: list[int] = []   # their index in ``shared``, in the same order
    for p in order:
        if 2 * sizes[p] > capacity:
            continue
        i = bisect.bisect_left(rooms, sizes[p])   # the fullest task it fits in
        if i == len(rooms):
            k, room = len(shared), capacity - sizes[p]
            shared.append([p])
        else:
            k, room = which.pop(i), rooms.pop(i) - sizes[p]
            shared[k].append(p)
        if len(shared[k]) < most:
            i = bisect.bisect_left(rooms, room)
            rooms.insert(i, room)
            which.insert(i, k)
    groups += shared
    return sorted(groups, key=lambda g: -sum(sizes[p] for p in g))


def run_parts(dask, paths: Sequence[str], params, preproc, plan, parts: Sequence[tuple[int, int, int]], totals,
              bar) -> str:
    """Compute every part ``(file_index, start, stop)`` on the cluster ``dask`` (whatever
    :func:`~mlaas4hep_lab.cluster.connect.connect` takes) and merge them into ``totals`` in order;
    ``bar`` advances as parts finish. Returns where it ran, for the log."""
    from mlaas4hep_lab.cluster.connect import connect
    from mlaas4hep_lab.data.sources import is_remote
    from mlaas4hep_lab.extras import require

    distributed = require("distributed")
    # a relative path names the client's folder; a worker of this machine starts elsewhere (the split of
    # an event depends on the file's name only, so the path's spelling changes nothing else)
    paths = [p if is_remote(p) else os.path.abspath(p.removeprefix("file://")) for p in paths]
    cluster = connect(dask)
    run = uuid.uuid4().hex[:8]
    try:
        client = cluster.client
        # the settings, pickled once (cloudpickle where pickle fails: the compiled expressions), go with
        # every task: a task that depended on one holding them would run where that one ran, on one worker
        from distributed.protocol import pickle as dask_pickle

        blob = dask_pickle.dumps((params, preproc, plan))
        digest = hashlib.sha256(blob).hexdigest()
        # the largest tasks first, so that the last ones to start are short and the workers end together
        groups = task_groups([b - a for _, a, b in parts])
        items = [tuple((paths[parts[p][0]], parts[p][1], parts[p][2]) for p in g) for g in groups]
        n = len(groups)
        submitted = client.map(_parts_task, [digest] * n, [blob] * n, [run] * n, items,
                               key=[f"mlaas4hep-specs-part-{run}-{rank:06d}" for rank in range(n)],
                               retries=RETRIES, pure=False)
        futures = dict(zip(submitted, zip(groups, items)))
        finished: dict[int, object] = {}
        done: list = []   # fetched, still held by the workers until released (a few kB each)
        merged = 0
        try:
            # as_completed finds its client as Dask's default one: a Gateway client is not (connect)
            with client.as_current():
                # the results are fetched on Dask's event loop as the parts finish
                completed = distributed.as_completed(futures, with_results=True, raise_errors=False)
            for future, result in completed:
                group, task = futures.pop(future)
                if future.status != "finished":
                    try:
                        future.result()
                    except Exception as err:
                        raise _reported(err, task) from err
                done.append(future)
                if len(done) >= _RELEASE_EVERY:
                    _release(done)
                for p, stats in zip(group, result):
                    finished[p] = stats
                    bar.update(parts[p][2] - parts[p][1])
                while merged in finished:  # in the parts' order: fixed sums, whatever finished first
                    totals.merge(parts[merged][0], finished.pop(merged))
                    merged += 1
        except BaseException:
            client.cancel(list(futures))  # the parts not yet done: an error, or ^C
            raise
        finally:
            _release(done)
        # the workers' count is a request to the scheduler: asked only for a log that shows it
        workers = f", {cluster.n_workers} workers" if log.isEnabledFor(logging.INFO) else ""
        return f"on Dask ({cluster.address}{workers}, {len(parts)} parts in {len(groups)} tasks)"
    finally:
        if not cluster.owned:   # the caller's cluster, used again: close without waiting for the workers
            threading.Thread(target=_close_quietly, args=(cluster.client, run), name="mlaas4hep-close-readers",
                             daemon=True).start()
        elif cluster.cluster is None:   # a scheduler's workers outlive the client closed below
            _close_quietly(cluster.client, run)
        cluster.close()  # only what connect opened here (a LocalCluster's workers exit with their readers)


# The results the workers hold are released in batches: released one by one as the tasks finished (each a
# message to the scheduler, which then tells the worker to drop the key while it runs its next task), the
# client's process spent 63-68 ms of CPU per 10-task pass on 2 local workers, 59 with one release at the end
_RELEASE_EVERY = 64


def _release(futures: list) -> None:
    for future in futures:
        future.release()
    futures.clear()


def _close_quietly(client, run: str) -> None:
    """Close the pass's readers on every worker. On the caller's cluster this runs beside the next steps
    instead of before them (a round trip, a few ms of a short pass): the results are already here, and a
    later pass opens readers of its own."""
    try:
        client.run(_close_readers, run)
    except Exception as err:  # noqa: BLE001  a cluster already gone has nothing left open
        log.debug("closing the workers' readers failed: %s", err)


def _reported(err: Exception, items: Sequence[tuple[str, int, int]]) -> Exception:
    """The task's error as the local pass would raise it (same type), saying where it happened: the part
    it names, or (a worker lost) every part of the task."""
    err_dict = dict(err.__dict__)
    part = err_dict.pop("mlaas4hep_part", None)
    parts = [tuple(part)] if part else items
    places = "; ".join(f"{path}, entries {start}-{stop}" for path, start, stop in parts)
    where = f"[on a Dask worker: {places}, tried {RETRIES + 1} times]"
    if isinstance(err, MLaaSError):
        from mlaas4hep_lab.errors import _restore_error

        # same class and attributes (path, key, ...), so that callers catch what they catch locally
        return _restore_error(type(err), (f"{err} {where}", *err.args[1:]), err_dict)
    hint = ""
    if type(err).__name__ == "KilledWorker":
        hint = (" A worker died while reading it: a worker's memory may be too small for the chunk size "
                "(params 'chunk_size') or the file's clusters; see the worker's log.")
    return ClusterTaskError(f"the specs pass failed {where}: {type(err).__name__}: {err}.{hint}")
