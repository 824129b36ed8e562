"""The worker side of chunks built on a Dask cluster: one file's share of a chunk, read, preprocessed and
vectorised where the task runs, returned as a :class:`Block` of float32 rows.

A block holds the events of one entry range of one file that pass the cuts, in entry order (the client
mixes and shuffles the blocks of a chunk: :class:`~mlaas4hep_lab.cluster.stream.DaskChunkStream`). It is
made by the engine's own code: the chunk stream's reading and preparing
(:meth:`ChunkStream.read <mlaas4hep_lab.data.stream.ChunkStream.read>` and ``prepare``) run on a one-file,
unshuffled view of the stream (:class:`_OneFile`), so a row here is bit for bit the row the local stream
makes of that event: normalisation is per value, the split a hash of (file, entry, seed), the label the
file's or the truth's.

Each worker process keeps its readers open between tasks (:func:`_open_reader`, a few per process): a
file is opened once, and the rest of the cluster decoded for one chunk serves the next chunk's share.
Nothing here imports Dask: these functions run inside Dask tasks, and are plain functions for the tests.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np

from mlaas4hep_lab.cluster.shared import SharedMatrices, SharedPart, reachable
from mlaas4hep_lab.data._buffers import tune_worker_allocator
from mlaas4hep_lab.data.plan import Plan
from mlaas4hep_lab.data.reader import BlockReader, TreeReader
from mlaas4hep_lab.data.stream import ChunkStream
from mlaas4hep_lab.data.vectorize import Vectorizer
from mlaas4hep_lab.params import Params

__all__ = ["Block", "BlockJob", "BlockSetup", "build_block", "close_readers"]

# readers kept open per worker process; a worker usually serves a few files (the client places every
# file's shares on one worker), and each reader holds at most its share of params read_buffer_mb decoded
_MAX_READERS = 16
_MAX_ENGINES = 4


@dataclass
class BlockSetup:
    """What every block of a stream needs: small, sent to every worker once (``client.scatter``).

    The preprocessing travels as its JSON and the truth expressions are compiled again on the worker from
    the params: compiled expressions are closures that pickle cannot carry."""

    params: Params
    specs: object                  # Specs
    plan: Plan                     # the client's plan, without its compiled truth
    preproc: str | None = None     # Preproc.to_json(), or None
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def of(cls, stream: ChunkStream) -> BlockSetup:
        """The setup of a (client-side) chunk stream."""
        preproc = None if stream.preproc is None else stream.preproc.to_json(indent=None)
        return cls(stream.params, stream.specs, replace(stream.plan, truth=None), preproc)


@dataclass(frozen=True)
class BlockJob:
    """One task: entries ``[start, stop)`` of the file at position ``file`` of the file list."""

    path: str
    file: int
    label: float
    start: int
    stop: int
    block_bytes: float = 64e6      # decoded bytes this file may keep between tasks on its worker

    def where(self) -> str:
        return f"entries {self.start}-{self.stop} of {self.path}"


@dataclass
class Block:
    """The kept events of one job, unshuffled, row-aligned (the fields of a
    :class:`~mlaas4hep_lab.data.stream.Chunk` but ``file_index``: every row is of file ``file``)."""

    X: np.ndarray | None           # float32[n, F] (None: in ``shared``)
    mask: np.ndarray | None        # bool[n, F] (None: in ``shared``)
    y: np.ndarray                  # float32[n] or [n, T]
    split: np.ndarray              # uint8[n]
    entry: np.ndarray              # int64[n]
    weight: np.ndarray | None
    ids: dict[str, np.ndarray]
    read: int                      # entries read (before cuts)
    file: int
    start: int
    stop: int
    shared: SharedPart | None = None   # X and mask in the machine's shared memory (:mod:`.shared`)

    def __len__(self) -> int:
        return len(self.entry)

    @property
    def nbytes(self) -> int:
        """The bytes that travel through Dask (X and mask not, when they are in shared memory)."""
        arrays = [self.y, self.split, self.entry, *self.ids.values()]
        if self.shared is None:
            arrays += [self.X, self.mask]
        return sum(a.nbytes for a in arrays) + (0 if self.weight is None else self.weight.nbytes)


@dataclass
class _Engine:
    params: Params                 # with shuffle off: a block is in entry order
    specs: object
    plan: Plan
    preproc: object
    vectorizer: Vectorizer


class _Open:
    """A reader kept open on a worker, with the block reader that keeps its last decoded cluster."""

    def __init__(self, path: str, tree: str, branches: list[str], retries: int, block_bytes: float):
        self.reader = TreeReader(path, tree, retries=retries)
        self.blocks = BlockReader(self.reader, branches, block_bytes)
        self.lock = threading.Lock()   # one task at a time reads through it (a worker may run several)


_ENGINES: OrderedDict[str, _Engine] = OrderedDict()
_READERS: OrderedDict[tuple, _Open] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def _engine(setup: BlockSetup) -> _Engine:
    tune_worker_allocator()
    with _CACHE_LOCK:
        engine = _ENGINES.get(setup.token)
        if engine is not None:
            _ENGINES.move_to_end(setup.token)
            return engine
    from mlaas4hep_lab.data.truth import Truth

    params = replace(setup.params, shuffle=False)
    preproc = None
    if setup.preproc:
        from mlaas4hep_lab.data.preprocess import Preproc

        preproc = Preproc.from_json(setup.preproc)
        preproc = None if preproc.is_empty() else preproc
    plan = replace(setup.plan, truth=Truth.from_params(params))
    vectorizer = Vectorizer.from_specs(setup.specs, params.normalization, params.missing_values)
    engine = _Engine(params, setup.specs, plan, preproc, vectorizer)
    with _CACHE_LOCK:
        _ENGINES[setup.token] = engine
        while len(_ENGINES) > _MAX_ENGINES:
            _ENGINES.popitem(last=False)
    return engine


def _open_reader(job: BlockJob, engine: _Engine) -> _Open:
    """The open reader of ``job``'s file on this worker (opened on first use, least recently used closed)."""
    p = engine.params
    key = (job.path, p.branch, p.retries, tuple(engine.plan.read))
    with _CACHE_LOCK:
        found = _READERS.get(key)
        if found is not None:
            _READERS.move_to_end(key)
            return found
    opened = _Open(job.path, p.branch, engine.plan.read, p.retries, job.block_bytes)
    closing = []
    with _CACHE_LOCK:
        if key in _READERS:   # another thread of this worker opened it meanwhile
            closing.append(opened)
            opened = _READERS[key]
        else:
            _READERS[key] = opened
        for old_key in list(_READERS)[:-_MAX_READERS]:
            old = _READERS[old_key]
            if old.lock.acquire(blocking=False):   # never close a reader a task is reading through
                del _READERS[old_key]
                closing.append(old)
                old.lock.release()
    for old in closing:
        old.reader.close()
    return opened


def close_readers(paths: list[str] | None = None) -> int:
    """Close the readers this process keeps open for ``paths`` (all: None), with the clusters they keep
    decoded; a stream asks every worker to when it closes (``client.run``). The number closed."""
    with _CACHE_LOCK:
        keys = [key for key in _READERS if paths is None or key[0] in paths]
        items = [_READERS.pop(key) for key in keys]
        if paths is None:
            _ENGINES.clear()
    for opened in items:
        with opened.lock:
            opened.reader.close()
    return len(items)


class _OneFile(ChunkStream):
    """The chunk stream's reading and preparing, for one entry range of one file and unshuffled.

    Only what :meth:`ChunkStream.read` and :meth:`ChunkStream.prepare` use is set (the stream's own
    ``__init__`` would open every file of the list): so a block is made by exactly the code of a local
    chunk, and cannot drift from it."""

    def __init__(self, engine: _Engine, opened: _Open, job: BlockJob):  # no super().__init__: see above
        self.files, self.labels = [job.path], np.asarray([job.label], np.float32)
        self.params, self.specs, self.preproc = engine.params, engine.specs, engine.preproc
        self.readers, self._blocks = [opened.reader], [opened.blocks]
        self.plan, self.vectorizer, self.layout = engine.plan, engine.vectorizer, None
        self._range = (job.start, job.stop)

    def bounds(self, k: int) -> list[tuple[int, int]]:
        return [self._range]


def build_block(setup: BlockSetup, job: BlockJob, shared: str | None = None) -> Block:
    """Read, preprocess and vectorise ``job``'s entries on this worker (the body of a Dask task).

    ``shared``: the client's marker in ``/dev/shm`` (:class:`~.shared.SharedFolder`): when this worker sees
    it and runs as its owner (:func:`~.shared.reachable`), ``X`` and ``mask`` are filled into a shared-memory
    segment of the stream and the block carries its name (:attr:`Block.shared`) instead of the matrices.

    Errors are the local stream's (:class:`~mlaas4hep_lab.errors.InputFileError` for a file that cannot be
    read, naming the file and entries); the client adds which chunk and how many attempts."""
    engine = _engine(setup)
    opened = _open_reader(job, engine)
    with opened.lock:
        share = _OneFile(engine, opened, job)
        pieces = share.read(0)
    prepared = share.prepare(pieces, 0, 0)
    del pieces   # the decoded records: only the normalised columns are needed from here on
    head = prepared.chunk
    memory = SharedMatrices(shared) if len(head) and engine.vectorizer.n_features and reachable(shared) else None
    X, mask = engine.vectorizer.fill(prepared.columns, memory)
    if memory is not None and memory.part is not None:
        del X, mask   # the segment keeps them (this process keeps it mapped for later blocks)
        return Block(None, None, head.y, head.split, head.entry, head.weight, head.ids, head.read_events,
                     job.file, job.start, job.stop, memory.part)
    return Block(X, mask, head.y, head.split, head.entry, head.weight, head.ids, head.read_events,
                 job.file, job.start, job.stop)
