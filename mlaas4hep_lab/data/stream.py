"""Training chunks that mix the files in proportion to their sizes, with labels, splits and prefetch.

Chunk ``k`` of ``K`` takes from file ``i`` the entries ``[k*n_i//K, (k+1)*n_i//K)``: every chunk holds
the same fraction of every file, the entries of each file are covered exactly once per pass, and a
chunk never holds more than ``chunk_size`` events. Whether an event is for training, validation or
test is decided by a hash of (file name, entry, seed), so it is the same on every run and every chunk.
The next chunk is built in the background while the consumer works on this one, in two threads: one
reads (decompression itself uses more) the chunk after it while the other vectorises it. A chunk is
vectorised in one go: the events kept by the cuts of every file's piece, in their shuffled order, are
gathered branch by branch straight into ``X`` (:meth:`Vectorizer.gather`), with no per-file matrices
to concatenate and no permutation of a finished matrix.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from mlaas4hep_lab.data._buffers import Buffers, return_large_frees
from mlaas4hep_lab.data._chunk_cache import ChunkCache, open_cache, pass_order
from mlaas4hep_lab.data._gather import flat_rows, piece_rows
from mlaas4hep_lab.data._pipeline import pipelined
from mlaas4hep_lab.data.plan import Plan, events_to_use, make_plan
from mlaas4hep_lab.data.reader import BlockReader, TreeReader, open_readers
from mlaas4hep_lab.data.specs import Specs
from mlaas4hep_lab.data.splits import SPLITS, split_of
from mlaas4hep_lab.data.vectorize import Vectorizer, _flat_numpy
from mlaas4hep_lab.errors import LabelsError, StaleSpecsError
from mlaas4hep_lab.params import Params

__all__ = ["Chunk", "ChunkStream", "SPLITS", "split_of"]

log = logging.getLogger(__name__)


@dataclass
class Chunk:
    """One training chunk: features, mask, labels and bookkeeping, row-aligned numpy arrays."""

    X: np.ndarray                 # float32[n, n_features], normalised, the pad value where masked
    mask: np.ndarray              # bool[n, n_features], True = real value (always on every chunk)
    y: np.ndarray                 # float32[n] (the class), or float32[n, T] (regression targets)
    split: np.ndarray             # uint8[n]: 0 train, 1 validation, 2 test
    file_index: np.ndarray        # int16[n]: position of the event's file in the file list
    entry: np.ndarray             # int64[n]: entry number in its file
    weight: np.ndarray | None = None
    ids: dict[str, np.ndarray] = field(default_factory=dict)
    index: int = 0                # chunk number within the pass
    read_events: int = 0          # entries read for this chunk (before cuts)
    layout: object = None         # the objects layout (params "layout": "objects"), else None

    def __len__(self) -> int:
        return len(self.y)

    def named_inputs(self) -> dict[str, np.ndarray]:
        """The objects layout's named inputs of these events: ``flat`` [n, F], per collection [n, k, C] and
        its ``_mask`` [n, k] (:class:`~mlaas4hep_lab.data.objects.ObjectsLayout`), gathered from ``X`` on
        demand (a copy: the chunk itself keeps one matrix)."""
        if self.layout is None:
            raise ValueError('the chunk is of the flat layout: set params "layout": "objects" for named inputs')
        return self.layout.split(self.X)

    def take(self, rows: np.ndarray) -> Chunk:
        return Chunk(self.X[rows], self.mask[rows], self.y[rows], self.split[rows], self.file_index[rows],
                     self.entry[rows], None if self.weight is None else self.weight[rows],
                     {k: v[rows] for k, v in self.ids.items()}, self.index, self.read_events, self.layout)

    def subset(self, which: str) -> Chunk:
        """The events of one split: ``"train"``, ``"validation"`` or ``"test"``."""
        if which not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {which!r}")
        return self.take(np.flatnonzero(self.split == SPLITS.index(which)))


@dataclass
class _Piece:
    """The events of one file in one chunk (or a part of them): read and preprocessed records."""

    file: int                     # position of the file in the file list
    first: int                    # entry number of the records' first event
    read: int                     # entries read (before cuts)
    arrays: object                # the records (one field per branch)
    kept: np.ndarray | None       # events kept by the cuts, positions in ``arrays`` (None: all)

    def __len__(self) -> int:
        return len(self.arrays) if self.kept is None else len(self.kept)

    def entries(self) -> np.ndarray:
        """The entry numbers of the kept events."""
        if self.kept is None:
            return np.arange(self.first, self.first + len(self.arrays), dtype=np.int64)
        return self.kept.astype(np.int64) + self.first


@dataclass
class _Prepared:
    """A chunk without its matrices, and what fills them."""

    chunk: Chunk
    columns: object  # Columns
    seconds: float


class ChunkStream:
    """Iterate over mixed, labelled, vectorised training chunks.

    Args:
        files: ROOT file paths or URLs (already resolved).
        labels: one label per file.
        params: the workflow settings (chunk_size, nevts, shuffle, seed, split, prefetch, ...).
        specs: the first pass's specs (feature layout and normalisation).
        preproc: optional :class:`~mlaas4hep_lab.data.preprocess.Preproc`.

    Example::

        stream = ChunkStream(files, labels, params, specs)
        for chunk in stream:            # one pass; iterate again for another epoch
            train = chunk.subset("train")
    """

    def __init__(self, files: Sequence[str], labels: Sequence[float], params: Params, specs: Specs,
                 preproc=None, readers: list[TreeReader] | None = None):
        if len(labels) != len(files):
            raise LabelsError(f"{len(labels)} labels for {len(files)} files: give one label per file")
        self.files, self.labels = list(files), np.asarray(labels, dtype=np.float32)
        self.params, self.specs, self.preproc = params, specs, preproc
        if preproc is not None and preproc.is_empty():
            self.preproc = None
        self._own_readers = readers is None
        self.readers = readers or open_readers(files, params.branch, params.retries)
        self.plan: Plan = make_plan(self.readers[0], params, preproc)
        self._check_plan()
        # the specs fix the feature layout, as they fix the jagged lengths: a model's inputs follow them
        self.vectorizer = Vectorizer.from_specs(specs, params.normalization, params.missing_values)
        if params.padding != self.vectorizer.padding:
            log.warning("the specs were computed with padding %r, params ask for %r: the specs' layout is "
                        "used; recompute the specs to change it", self.vectorizer.padding, params.padding)
        self.layout = None   # the objects layout: each chunk gives its named inputs (Chunk.named_inputs)
        if params.layout == "objects":
            from mlaas4hep_lab.data.objects import ObjectsLayout

            self.layout = ObjectsLayout.from_specs(specs, params.normalization, params.missing_values,
                                                   params.collections)
        self.entries = events_to_use([r.num_entries for r in self.readers], params.nevts)
        self.n_chunks = _n_chunks(self.entries, params.chunk_size)
        self._blocks: list[BlockReader | None] = [None] * len(self.readers)
        # every file keeps the rest of its last decoded block for the next chunks: together they stay
        # within read_buffer_mb, however many files are mixed (a block still covers one chunk's share)
        self._block_bytes = params.read_buffer_mb * 1e6 / max(1, sum(n > 0 for n in self.entries))
        self._told_split = False
        # the matrices of chunks the consumer has dropped are refilled (no page faults, steady memory)
        self._buffers = Buffers(params.chunk_size, self.vectorizer.n_features)
        return_large_frees()
        # the compiled loops load while the first chunk is read, not after it
        threading.Thread(target=_warm_kernels, name="mlaas4hep-warm", daemon=True).start()
        self.epoch = 0
        self.stats = {"read": 0, "kept": 0, "seconds": 0.0}

    def _check_plan(self) -> None:
        if sorted(self.plan.flat) != sorted(self.specs.fkeys) or sorted(self.plan.jagged) != sorted(self.specs.jkeys):
            diff = sorted(set(self.plan.features) ^ set(self.specs.fkeys + self.specs.jkeys))
            raise StaleSpecsError(
                f"the specs' features differ from those of {self.readers[0].path} in {diff[:10]}: the specs "
                "were computed for other files or settings; recompute them (`mlaas4hep specs ...`)"
            )

    @property
    def feature_names(self) -> list[str]:
        return self.vectorizer.names

    @property
    def n_events(self) -> int:
        return sum(self.entries)

    def bounds(self, k: int) -> list[tuple[int, int]]:
        """Entry range of each file in chunk ``k``."""
        K = self.n_chunks
        return [((k * n) // K, ((k + 1) * n) // K) for n in self.entries]

    def build(self, k: int, epoch: int = 0) -> Chunk:
        """Read, preprocess, vectorise and mix chunk ``k`` (any order; nothing is cached)."""
        return self._finish(self.prepare(self.read(k), k, epoch))

    def read(self, k: int) -> list[_Piece]:
        """The pieces of chunk ``k``: each file's entry range, read and preprocessed, not yet vectorised."""
        pieces = []
        for i, (reader, (start, stop)) in enumerate(zip(self.readers, self.bounds(k))):
            if stop <= start:
                continue
            if self._blocks[i] is None:
                self._blocks[i] = BlockReader(reader, self.plan.read, self._block_bytes)
                self._tell_split_clusters(self._blocks[i], stop - start)
            for first, arrays in self._blocks[i].read(start, stop):
                keep, read = None, len(arrays)
                if self.preproc is not None:
                    arrays, keep = self.preproc.apply(arrays)
                pieces.append(_Piece(i, first, read, arrays, None if keep is None else np.flatnonzero(keep)))
        return pieces

    def _tell_split_clusters(self, blocks: BlockReader, share: int) -> None:
        """Say once when the read buffer holds less than a cluster per file: baskets are then decompressed
        more than once per pass (each block re-decodes the baskets it starts in)."""
        cluster, block = blocks.largest_cluster, max(blocks.max_entries, share)
        if self._told_split or cluster <= block:
            return
        self._told_split = True
        log.info("%d files share read_buffer_mb=%d: a file keeps up to %d decoded entries between chunks, "
                 "fewer than its clusters of up to %d, so their baskets are decompressed up to %d times per "
                 "pass; a larger read_buffer_mb reads faster with more memory", sum(n > 0 for n in self.entries),
                 self.params.read_buffer_mb, block, cluster, -(-cluster // block))

    def prepare(self, pieces: list[_Piece], k: int, epoch: int = 0) -> _Prepared:
        """Everything of chunk ``k`` of pass ``epoch`` but its matrices: the kept events of every piece,
        shuffled when the params say so, with each branch normalised once over its values
        (:meth:`Vectorizer.columns`); :meth:`build` and the pipeline then fill ``X`` and ``mask``. Nothing in the
        result refers to the pieces, so the decoded arrays can be freed before ``X`` exists."""
        t0 = time.perf_counter()
        rows = piece_rows([len(p.arrays) for p in pieces], [p.kept for p in pieces])
        entry = np.concatenate([p.entries() for p in pieces]) if pieces else np.zeros(0, np.int64)
        file_index = np.concatenate([np.full(len(p), p.file, np.int16) for p in pieces]) if pieces \
            else np.zeros(0, np.int16)
        split = np.concatenate([split_of(self.readers[p.file].path, p.entries(), self.params.split, self.params.seed)
                                for p in pieces]) if pieces else np.zeros(0, np.uint8)
        order = None
        if self.params.shuffle and len(entry):
            order = pass_order(self.params.seed, epoch, k, len(entry))
            entry, file_index, split = entry[order], file_index[order], split[order]
        records = [p.arrays for p in pieces]
        events = rows if order is None else (order if rows is None else rows[order])
        weight = _column(records, self.plan.weight, events).astype(np.float32) \
            if self.plan.weight and pieces else None
        ids = {name: _column(records, name, events) for name in self.plan.ids} if pieces else {}
        # gathered in the files' order (the values are read sequentially), shuffled in place afterwards
        columns = self.vectorizer.columns(records, rows, order)
        y = self.labels[file_index] if self.plan.truth is None else self._truth(records, events)
        head = Chunk(np.zeros((0, 0), np.float32), np.zeros((0, 0), bool), y, split,
                     file_index, entry, weight, ids, k, sum(p.read for p in pieces), self.layout)
        return _Prepared(head, columns, time.perf_counter() - t0)

    def _truth(self, records: list, events: np.ndarray | None) -> np.ndarray:
        """The per-event label (``float32[n]``) or regression targets (``float32[n, T]``) at ``events``."""
        truth = self.plan.truth
        if not records:
            return np.zeros((0, len(truth.texts)) if truth.key == "target" else 0, np.float32)
        parts = [truth.evaluate(r) for r in records]
        values = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return (values if events is None else values[events]).astype(np.float32)

    def _finish(self, prepared: _Prepared) -> Chunk:
        t0 = time.perf_counter()
        chunk = prepared.chunk
        chunk.X, chunk.mask = self.vectorizer.fill(prepared.columns, self._buffers)
        self.stats["read"] += chunk.read_events
        self.stats["kept"] += len(chunk)
        self.stats["seconds"] += prepared.seconds + time.perf_counter() - t0
        return chunk

    def __iter__(self) -> Iterator[Chunk]:
        epoch = self.epoch
        self.epoch += 1
        return self.iterate(epoch)

    def iterate(self, epoch: int = 0, start: int = 0) -> Iterator[Chunk]:
        """Chunks ``start .. n_chunks-1`` of pass ``epoch`` (its shuffling), built ahead in a thread."""
        for _, chunk in self.iterate_passes(epoch + 1, epoch, start):
            yield chunk

    def iterate_passes(self, passes: int, start_epoch: int = 0, start: int = 0) -> Iterator[tuple[int, Chunk]]:
        """``(epoch, chunk)`` for passes ``start_epoch .. passes-1``, from chunk ``start`` of the first one.

        One pipeline serves every pass, so the first chunk of a pass is built while the consumer still
        works on the last chunk of the one before (a new :meth:`iterate` per pass would leave the
        consumer waiting for it). With ``prefetch`` > 0 one thread reads chunk ``k + 1`` while another
        vectorises chunk ``k`` (:func:`~mlaas4hep_lab.data._pipeline.pipelined`)."""
        order = [(e, k) for e in range(start_epoch, passes)
                 for k in range(start if e == start_epoch else 0, self.n_chunks)]

        # a run of several passes keeps the first pass's chunks on disk for the others (params chunk_cache)
        cache = self._open_cache(passes - start_epoch) if order else None

        def prepare(i: int) -> _Prepared | None:
            epoch, k = order[i]
            if cache is not None and cache.has(k):
                return None  # read back by finish()
            return self.prepare(self.read(k), k, epoch)

        def finish(i: int, prepared: _Prepared | None) -> tuple[int, Chunk]:
            epoch, k = order[i]
            if prepared is None:
                return epoch, self._cached(cache, k, epoch)
            chunk = self._finish(prepared)
            if cache is not None and not cache.has(k):
                cache.put(k, epoch, chunk)
            return epoch, chunk

        try:
            if self.params.prefetch <= 0:
                yield from (finish(i, prepare(i)) for i in range(len(order)))
                return
            # one thread reads, preprocesses and normalises chunk k + 1 (decompression and numpy release the
            # GIL) while the other fills the matrices of chunk k with compiled loops that hold no GIL at all
            yield from pipelined(prepare, finish, len(order), self.params.prefetch)
        finally:
            if cache is not None:
                cache.close()

    def _open_cache(self, passes: int) -> ChunkCache | None:
        """The chunk cache of a run of ``passes`` passes, or None (a subclass that builds chunks elsewhere
        asks here which chunks later passes will read back)."""
        return open_cache(self.params.chunk_cache, self.n_events, self.vectorizer.n_features, passes)

    def _cached(self, cache: ChunkCache, k: int, epoch: int) -> Chunk:
        t0 = time.perf_counter()
        head = Chunk(np.zeros((0, 0), np.float32), np.zeros((0, 0), bool), np.zeros(0, np.float32),
                     np.zeros(0, np.uint8), np.zeros(0, np.int16), np.zeros(0, np.int64), layout=self.layout)
        chunk = cache.get(k, epoch, self.params.seed, self.params.shuffle, self._buffers, head)
        self.stats["read"] += chunk.read_events
        self.stats["kept"] += len(chunk)
        self.stats["seconds"] += time.perf_counter() - t0
        return chunk

    def __len__(self) -> int:
        return self.n_chunks

    def close(self) -> None:
        if self._own_readers:
            for r in self.readers:
                r.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _warm_kernels() -> None:
    try:
        from mlaas4hep_lab.data import _kernels

        _kernels.warm()
    except Exception:  # the first chunk then loads them itself, and reports what fails
        log.debug("loading the compiled loops ahead failed", exc_info=True)


def _column(records: list, name: str, rows: np.ndarray | None) -> np.ndarray:
    return flat_rows([_flat_numpy(r[name]) for r in records], rows)


def _n_chunks(entries: Sequence[int], chunk_size: int) -> int:
    """The fewest chunks such that, with per-file bounds ``k*n_i//K``, no chunk exceeds ``chunk_size``."""
    n = np.asarray(entries, dtype=np.int64)
    K = max(1, -(-int(n.sum()) // chunk_size))
    while True:
        k = np.arange(K + 1, dtype=np.int64)[:, None]
        sizes = np.diff((k * n[None, :]) // K, axis=0).sum(axis=1)
        if sizes.max(initial=0) <= chunk_size:
            return K
        K += 1
