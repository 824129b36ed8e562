"""Chunks built on Dask workers and assembled here: the chunk stream of ``train(..., dask=...)``.

:class:`DaskChunkStream` is a :class:`~mlaas4hep_lab.data.stream.ChunkStream` whose chunk ``k`` is made of
blocks computed on the workers (:func:`~mlaas4hep_lab.cluster.blocks.build_block`: one task per file with
events in chunk ``k``, or per cluster-aligned part of its share when the files alone would leave the
workers uneven: :mod:`.placement`).
Each block holds one file's kept events, vectorised, in entry order; the client lays them end to end in
file order and applies the local stream's shuffle (``pass_order``), so chunk ``k`` equals the local one
bit for bit (tested). Everything else is the local stream's: the passes, the two-thread pipeline (one
thread waits for the blocks of chunk ``k + 1`` while the other assembles chunk ``k``), the chunk cache of
later passes, the statistics.

A worker on the client's machine fills a block's ``X`` and ``mask`` into a segment of ``/dev/shm`` and
sends only its name (:mod:`.shared`); the client copies the rows into their places and hands the segment
back for a later block. Other workers send their blocks through Dask.

Memory stays bounded on both sides: the blocks of at most ``ahead + 1`` chunks are in flight (submitted,
not yet gathered; :attr:`DaskChunkStream.ahead`: ``max(1, prefetch)``, at least 2 when the files are placed
in units, whose load evens out over two chunks), and a worker keeps only its readers' last decoded
clusters. All the shares in one cluster go to one worker (the file's, or the unit's), so that the cluster
decoded for one chunk serves the next and no basket is decompressed twice.
A block that fails is retried twice (``retries=2``); then the local stream's error is raised, naming the
file, the entry range and the chunk.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from mlaas4hep_lab.cluster import placement
from mlaas4hep_lab.cluster.blocks import Block, BlockJob, BlockSetup, build_block, close_readers
from mlaas4hep_lab.cluster.shared import SharedFolder, drop_segments
from mlaas4hep_lab.data._chunk_cache import ChunkCache, pass_order
from mlaas4hep_lab.data.stream import Chunk, ChunkStream, _Prepared
from mlaas4hep_lab.errors import ConfigError, InputFileError, MLaaSError

__all__ = ["DaskChunkStream", "BlockError", "open_stream", "RETRIES"]

log = logging.getLogger(__name__)

RETRIES = 2          # a failed block is tried this many more times, on any worker, before the run stops
_KEY = "mlaas4hep-block"   # the task prefix the Dask dashboard groups blocks under


class BlockError(MLaaSError, RuntimeError):
    """A block could not be built on the workers for another reason than the file (a worker died)."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path


class _Closed(Exception):
    """The iteration was closed while a thread waited for blocks."""


@dataclass
class _Assembly:
    """What fills a chunk's matrices: its blocks in file order and the shuffle (None: none)."""

    blocks: list[Block]
    order: np.ndarray | None


class DaskChunkStream(ChunkStream):
    """A :class:`~mlaas4hep_lab.data.stream.ChunkStream` whose chunks are built on a Dask cluster.

    Args:
        files, labels, params, specs, preproc, readers: as for ``ChunkStream`` (the files are opened here
            only for their entries and branches; the workers read the events).
        dask: what :func:`~mlaas4hep_lab.cluster.connect.connect` accepts (an address, a
            ``distributed.Client`` or a ``Cluster``); a cluster opened here is closed by :meth:`close`.

    Example::

        with DaskChunkStream(files, labels, params, specs, dask="local:2") as stream:
            for chunk in stream: ...    # the same chunks as ChunkStream(files, labels, params, specs)
    """

    def __init__(self, files: Sequence[str], labels: Sequence[float], params, specs, preproc=None,
                 readers=None, *, dask=None):
        from mlaas4hep_lab.cluster.connect import connect

        super().__init__(files, labels, params, specs, preproc, readers)
        self._cluster = None
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._token = uuid.uuid4().hex[:8]
        self._order = itertools.count()
        self._workers: list[str] = []
        self._home: list[int] = []
        self._units: list | None = None   # cluster-aligned units and their workers (.placement)
        self._budget = params.read_buffer_mb * 1e6
        self._clusters: dict[int, np.ndarray] = {}
        # the iteration under way: the chunk read at each position, the next position, what is in flight
        self._upcoming: list[int] = []
        self._at = 0
        self._read_before: set[int] = set()
        self._inflight: dict[int, list] = {}   # position in _upcoming -> [(job, future), ...]
        self._cache: ChunkCache | None = None
        self._shared = SharedFolder()          # blocks of workers on this machine come through /dev/shm
        self.max_in_flight = 0                 # most chunks seen in flight at once (tests, benchmarks)
        self.max_pending_blocks = 0            # and their blocks (futures submitted, not yet gathered)
        self.stats.update(blocks=0, bytes=0, shared_bytes=0)
        try:
            self._cluster = connect(dask)
            if self._cluster is None:
                raise ConfigError("a DaskChunkStream needs a cluster: give dask= an address (local:2, "
                                  "tcp://HOST:PORT, gateway) or a distributed.Client", "dask")
            self.client = self._cluster.client
            # sent once to every worker; the tasks refer to it
            self._setup = self.client.scatter(BlockSetup.of(self), broadcast=True, hash=False)
        except BaseException:
            self.close()
            raise

    # -- where the blocks run ---------------------------------------------------------------------
    def _place(self) -> None:
        """Place the blocks (:mod:`.placement`), again when the workers changed: each file on one worker
        (largest first, to the least loaded) while that keeps the workers even, else cluster-aligned units
        of the files to the least loaded worker as the chunks reach them."""
        workers = sorted(self.client.scheduler_info().get("workers", {}))
        if workers == self._workers or not workers:
            return
        self._workers = workers
        self._home, load = placement.by_files(self.entries, len(workers))
        self._units = None
        if placement.uneven(load):
            edges = [self._boundaries(i) if n > 0 else None for i, n in enumerate(self.entries)]
            self._units = placement.by_units(self.entries, self.n_chunks, edges, len(workers))
        if self._units is not None:
            per_worker = placement.files_per_worker(self._units, len(workers))
        else:
            per_worker = max(np.bincount([h for h, n in zip(self._home, self.entries) if n > 0],
                                         minlength=1))
        # the decoded clusters a worker keeps stay within read_buffer_mb, as in one process
        self._budget = self.params.read_buffer_mb * 1e6 / max(1, per_worker)

    def _boundaries(self, i: int) -> np.ndarray:
        if i not in self._clusters:
            self._clusters[i] = self.readers[i].cluster_boundaries(self.plan.read)
        return self._clusters[i]

    @property
    def ahead(self) -> int:
        """Chunks whose blocks are in flight beyond the one read: ``max(1, prefetch)``; at least 2 when the
        files are placed in units (:mod:`.placement`), where one chunk may keep one worker busy and the next
        the other: with a single chunk ahead the idle worker would wait for the next submission. As placed
        by the last submission (placing asks the scheduler for its workers: not once more per chunk)."""
        return max(1 if self._units is None else 2, self.params.prefetch)

    def _parts(self, i: int, start: int, stop: int, n: int, spread: bool) -> list[tuple[int, int]]:
        """``[start, stop)`` cut into up to ``n`` ranges at the file's cluster boundaries (so that no basket is
        decompressed twice), or, with ``spread``, evenly where the share holds no boundary."""
        if n <= 1 or stop - start < 2:
            return [(start, stop)]
        edges = self._boundaries(i)
        inner = edges[(edges > start) & (edges < stop)]
        wanted = start + (stop - start) * np.arange(1, n) // n
        if len(inner):
            cuts = inner[np.abs(inner[None, :] - wanted[:, None]).argmin(axis=1)]
        elif spread:
            cuts = wanted
        else:
            return [(start, stop)]
        bounds = [start, *np.unique(cuts).tolist(), stop]
        return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]

    def jobs(self, k: int, spread: bool = False) -> list[tuple[BlockJob, str]]:
        """The blocks of chunk ``k``, each with the worker it is meant for, in file and entry order.
        ``spread``: every file's share in one part per worker (XGBoost: each worker then holds events of
        every file, so of every class)."""
        self._place()
        out, W = [], len(self._workers)
        for i, (start, stop) in enumerate(self.bounds(k)):
            if stop <= start:
                continue
            if spread:
                parts = [(a, b, (self._home[i] + j) % W)
                         for j, (a, b) in enumerate(self._parts(i, start, stop, W, True))]
            elif self._units is not None:
                parts = placement.pieces(self._units[i], start, stop)
            else:
                parts = [(start, stop, self._home[i])]
            for a, b, w in parts:
                job = BlockJob(self.readers[i].path, i, float(self.labels[i]), a, b, self._budget)
                out.append((job, self._workers[w % W]))
        return out

    def submit(self, k: int) -> list:
        """Submit the blocks of chunk ``k``: ``[(job, future), ...]`` in file order."""
        priority = -next(self._order)   # earlier chunks first
        return [(job, self.client.submit(build_block, self._setup, job, self._shared.marker, workers=[worker],
                                         allow_other_workers=True,
                                         retries=RETRIES, priority=priority,
                                         key=f"{_KEY}-{self._token}-{uuid.uuid4().hex}"))
                for job, worker in self.jobs(k)]

    # -- reading: the blocks of chunk k, with the next ones in flight -------------------------------
    def read(self, k: int) -> list[Block]:
        """The blocks of chunk ``k`` (built on the workers), submitting those of the chunks the iteration
        reads next so that :attr:`ahead` chunks are in flight beyond this one."""
        with self._lock:
            at = next((p for p in range(self._at, len(self._upcoming)) if self._upcoming[p] == k), None)
            futures = None
            if at is not None:
                self._at = at + 1
                futures = self._inflight.pop(at, None)
                self._read_before.add(k)
            if futures is None:
                futures = self.submit(k)
            if at is not None:
                self._submit_ahead(at)
            self.max_in_flight = max(self.max_in_flight, len(self._inflight) + 1)
            pending = len(futures) + sum(map(len, self._inflight.values()))
            self.max_pending_blocks = max(self.max_pending_blocks, pending)
        return self._gather(k, futures)

    def _will_read(self, k: int) -> bool:
        """Whether the iteration reads chunk ``k`` again (not from the chunk cache)."""
        return self._cache is None or not (self._cache.has(k) or k in self._read_before)

    def _submit_ahead(self, at: int) -> None:
        # lazily: past the end of the first pass every chunk may come from the cache
        later = (p for p in range(at + 1, len(self._upcoming)) if self._will_read(self._upcoming[p]))
        ahead = list(itertools.islice(later, self.ahead))
        for p in [p for p in self._inflight if p not in ahead]:   # the iteration went elsewhere
            self._cancel(self._inflight.pop(p))
        for p in ahead:
            if p not in self._inflight:
                self._inflight[p] = self.submit(self._upcoming[p])

    def _gather(self, k: int, futures: list) -> list[Block]:
        from distributed import wait

        pending = [f for _, f in futures]
        while True:
            if self._closing.is_set():
                raise _Closed()
            try:
                with self.client.as_current():  # wait() takes the default client: a Gateway one is not
                    wait(pending, timeout=0.5)
                break
            except TimeoutError:
                failed = [(job, f) for job, f in futures if f.status == "error"]
                if failed:   # one block failed for good: no need to wait for the others
                    break
        for job, future in futures:
            if future.status in ("error", "cancelled"):
                err = future.exception() if future.status == "error" else None
                self._cancel(futures)
                raise self._failure(job, k, err) from err
        return self.client.gather(pending)

    @staticmethod
    def _failure(job: BlockJob, k: int, err: BaseException | None) -> Exception:
        """The local stream's error for a block that failed on every try, naming the file and entries."""
        what = f"{job.where()} (chunk {k})"
        if err is None:
            return BlockError(f"{what}: the Dask task was cancelled (the cluster closed or lost its workers)",
                              job.path)
        tries = f"failed on the Dask workers after {1 + RETRIES} attempts"
        if isinstance(err, InputFileError):
            try:   # the same class (RemoteReadError stays one), the file and entries in front
                return type(err)(f"{what} {tries}: {err}", job.path)
            except TypeError:
                return InputFileError(f"{what} {tries}: {err}", job.path)
        if isinstance(err, MLaaSError):
            return err   # a setting or data error: the same as the local stream raises
        return BlockError(f"{what} {tries}: {type(err).__name__}: {err}; a worker that died while reading may "
                          "have run out of memory (a smaller chunk_size or read_buffer_mb helps)", job.path)

    def _cancel(self, futures: list) -> None:
        if futures:
            self.client.cancel([f for _, f in futures])

    # -- assembling: the local stream's order and shuffle -------------------------------------------
    def prepare(self, blocks: list[Block], k: int, epoch: int = 0) -> _Prepared:
        """Chunk ``k`` of pass ``epoch`` but its matrices, from its blocks: laid end to end in file order,
        then shuffled by the local stream's permutation (``pass_order``)."""
        if not blocks:
            return super().prepare([], k, epoch)
        t0 = time.perf_counter()
        entry = np.concatenate([b.entry for b in blocks])
        file_index = np.concatenate([np.full(len(b), b.file, np.int16) for b in blocks])
        split = np.concatenate([b.split for b in blocks])
        y = np.concatenate([b.y for b in blocks])
        weight = np.concatenate([b.weight for b in blocks]) if blocks[0].weight is not None else None
        ids = {name: np.concatenate([b.ids[name] for b in blocks]) for name in blocks[0].ids}
        order = None
        if self.params.shuffle and len(entry):
            order = pass_order(self.params.seed, epoch, k, len(entry))
            entry, file_index, split, y = entry[order], file_index[order], split[order], y[order]
            weight = None if weight is None else weight[order]
            ids = {name: value[order] for name, value in ids.items()}
        head = Chunk(np.zeros((0, 0), np.float32), np.zeros((0, 0), bool), y, split, file_index, entry, weight,
                     ids, k, sum(b.read for b in blocks), self.layout)
        return _Prepared(head, _Assembly(blocks, order), time.perf_counter() - t0)

    def _finish(self, prepared: _Prepared) -> Chunk:
        assembly = prepared.columns
        if not isinstance(assembly, _Assembly):
            return super()._finish(prepared)
        t0 = time.perf_counter()
        chunk, blocks = prepared.chunk, assembly.blocks
        X, mask = self._buffers.matrices(len(chunk), self.vectorizer.n_features)
        dest = None
        if assembly.order is not None:   # row r holds event order[r]: each block's rows go to their places
            dest = np.empty(len(chunk), np.int64)
            dest[assembly.order] = np.arange(len(chunk), dtype=np.int64)
        at = 0
        for b in blocks:
            bx, bmask = (b.X, b.mask) if b.shared is None else self._shared.open(b.shared)
            rows = slice(at, at + len(b)) if dest is None else dest[at: at + len(b)]
            X[rows], mask[rows] = bx, bmask
            at += len(b)
            del bx, bmask
            if b.shared is not None:
                self._shared.release(b.shared)   # its worker fills the segment again
        chunk.X, chunk.mask = X, mask
        prepared.columns = None
        self.stats["read"] += chunk.read_events
        self.stats["kept"] += len(chunk)
        self.stats["blocks"] += len(blocks)
        self.stats["bytes"] += sum(b.nbytes for b in blocks)
        self.stats["shared_bytes"] += sum(b.shared.nbytes for b in blocks if b.shared is not None)
        self.stats["seconds"] += prepared.seconds + time.perf_counter() - t0
        return chunk

    # -- passes -------------------------------------------------------------------------------------
    def iterate_passes(self, passes: int, start_epoch: int = 0, start: int = 0) -> Iterator[tuple[int, Chunk]]:
        """As :meth:`ChunkStream.iterate_passes`, the blocks of the next chunks in flight meanwhile."""
        upcoming = [k for e in range(start_epoch, passes) for k in range(start if e == start_epoch else 0,
                                                                           self.n_chunks)]
        with self._lock:
            self._release()
            self._upcoming, self._at, self._read_before = upcoming, 0, set()
        inner = super().iterate_passes(passes, start_epoch, start)
        try:
            # a plain loop, not ``yield from``: closing this generator must not close ``inner`` before the
            # reader thread has been told to stop waiting for blocks (``_closing``)
            for item in inner:  # noqa: UP028
                yield item
        finally:
            # the reader thread may wait for blocks: it gives up, then the pipeline's threads end
            self._closing.set()
            inner.close()
            with self._lock:
                self._release()
                self._upcoming, self._cache = [], None
            self._closing.clear()

    def _open_cache(self, passes: int) -> ChunkCache | None:
        self._cache = super()._open_cache(passes)
        return self._cache

    def _release(self) -> None:
        for futures in self._inflight.values():
            self._cancel(futures)
        self._inflight.clear()

    def close(self) -> None:
        """Cancel what is in flight, close the cluster when it was opened here, close the files (once: the
        trainer closes its stream, and so may the caller that opened it)."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        try:
            if self._cluster is not None:
                with self._lock:
                    self._release()
                self._setup = None
                try:   # the workers keep no file of this stream open, nor its decoded clusters or segments
                    self.client.run(close_readers, [r.path for r in self.readers])
                    if self._shared.marker is not None:
                        self.client.run(drop_segments, self._shared.marker)
                except Exception as err:  # noqa: BLE001  a cluster already gone has nothing to close
                    log.debug("closing the workers' readers failed: %s", err)
                self._cluster.close()
        finally:
            if getattr(self, "_shared", None) is not None:   # what cancelled or repeated blocks left in /dev/shm
                self._shared.close()
            super().close()


def open_stream(inputs, specs, cluster=None) -> ChunkStream:
    """The chunk stream of ``inputs`` (a :class:`~mlaas4hep_lab.pipeline.Inputs`): built on ``cluster``
    (a :class:`~mlaas4hep_lab.cluster.connect.Cluster`, a client or an address) when given, else here."""
    if cluster is None:
        return ChunkStream(inputs.files, inputs.labels, inputs.params, specs, inputs.preproc)
    return DaskChunkStream(inputs.files, inputs.labels, inputs.params, specs, inputs.preproc, dask=cluster)
