"""The specs pass in parts: the statistics of one part of one file, and their exact merge.

A file is cut into parts (entry ranges ending on cluster boundaries, so no basket is decompressed
twice); each part is read chunk by chunk into its own :class:`PartStats`, and the parts are merged in
the files' order. The local pass and the Dask workers (:mod:`mlaas4hep_lab.cluster.specs_pass`) run
the same code on the same parts: floating-point sums depend on the order they are made in, so sharing
the per-part accumulation, not only the formula, is what makes both give the same specs.json to the bit.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import awkward as ak
import numpy as np

from mlaas4hep_lab.data.plan import Plan
from mlaas4hep_lab.data.reader import BlockReader, TreeReader
from mlaas4hep_lab.data.splits import split_of
from mlaas4hep_lab.data.truth import TruthTally
from mlaas4hep_lab.data.vectorize import jagged_buffers
from mlaas4hep_lab.params import Params

__all__ = ["PartStats", "Totals", "file_parts", "chunk_ranges", "read_chunk", "read_part"]

# a file is cut into at least this many parts where its clusters allow (so that a cluster's workers are
# busy even with one file), of at most this many chunks each (so that one big file spreads over many)
PARTS_PER_FILE = 8
PART_CHUNKS = 16


class _Stats:
    """Running min/max/mean/squared deviations/count of one branch, list lengths for jagged ones, and the
    values seen and how many were NaN or infinite (``counts``: values, nan, inf)."""

    __slots__ = ("lo", "hi", "mean", "m2", "n", "lengths", "counts", "lengths_crc")

    def __init__(self, jagged: bool):
        self.lo, self.hi, self.mean, self.m2, self.n = np.inf, -np.inf, 0.0, 0.0, 0
        self.lengths = np.zeros(1, np.int64) if jagged else None
        self.counts = np.zeros(3, np.int64)
        # a CRC of every event's list length (with the histogram of lengths, it groups the jagged branches
        # of one collection; a fifth of the cost of a cryptographic hash): running within a part, and the
        # parts' CRCs chained in order (equal lengths in every event give equal values either way)
        self.lengths_crc = 0

    def _add(self, n_b: int, lo: float, hi: float, mean_b: float, m2_b: float) -> None:
        if not n_b:
            return
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        # merge the new mean and squared deviations (Chan et al.): no cancellation for large offsets
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.n * n_b / n
        self.n = n

    def update(self, values: np.ndarray, missing: np.ndarray) -> None:
        from mlaas4hep_lab.data._kernels import moments  # compiled: two passes where numpy took nine

        nan, inf, n_b, lo, hi, mean_b, m2_b = moments(np.ascontiguousarray(values), missing)
        self.counts += (values.size, nan, inf)
        self._add(n_b, lo, hi, mean_b, m2_b)

    def update_lengths(self, counts: np.ndarray) -> None:
        self.lengths_crc = zlib.crc32(np.ascontiguousarray(counts, dtype=np.int64), self.lengths_crc)
        self._add_histogram(np.bincount(counts))

    def _add_histogram(self, hist: np.ndarray) -> None:
        if hist.size > self.lengths.size:
            hist = hist.copy()
            hist[: self.lengths.size] += self.lengths
            self.lengths = hist
        else:
            self.lengths[: hist.size] += hist

    def merge(self, part: _Stats) -> None:
        """Add the statistics of the next part (parts merged in a fixed order give fixed numbers)."""
        self.counts += part.counts
        self._add(part.n, part.lo, part.hi, part.mean, part.m2)
        if self.lengths is not None:
            self._add_histogram(part.lengths)
            self.lengths_crc = zlib.crc32(int(part.lengths_crc).to_bytes(4, "little"), self.lengths_crc)

    def quantile(self, q: float) -> int:
        cdf = np.cumsum(self.lengths)
        if cdf[-1] == 0:
            return 0
        return int(np.searchsorted(cdf, q * cdf[-1]))


def new_stats(plan: Plan) -> dict[str, _Stats]:
    return {b: _Stats(False) for b in plan.flat} | {b: _Stats(True) for b in plan.jagged}


class PartStats:
    """What the specs pass learns from one part of one file: the branches' statistics, the file's tally
    (entries read, events per cut and per split) and the truth's tally; small, whatever the part's size."""

    def __init__(self, plan: Plan):
        from mlaas4hep_lab.data.validation import FileTally  # validation imports the specs module

        self.stats = new_stats(plan)
        self.tally = FileTally()
        self.truth = TruthTally(plan.truth) if plan.truth is not None else None

    def add(self, path: str, first: int, arrays, keep: np.ndarray | None, plan: Plan, params: Params,
            missing: np.ndarray) -> None:
        """Entries ``first .. first+len(arrays)-1`` of ``path``, ``keep`` those passing the cuts."""
        self.tally.add(path, first, len(arrays), keep, params)
        _update(self.stats, plan, arrays, keep, missing)
        if self.truth is not None:
            entries = np.arange(first, first + len(arrays), dtype=np.int64)
            split = split_of(path, entries if keep is None else entries[keep], params.split, params.seed)
            self.truth.update(arrays, keep, split)

    def __getstate__(self) -> dict:
        # sent back from a worker without the compiled truth expressions (the client has its own)
        truth = None if self.truth is None else {k: v for k, v in vars(self.truth).items() if k != "truth"}
        return {"stats": self.stats, "tally": self.tally, "truth": truth}

    def __setstate__(self, state: dict) -> None:
        self.stats, self.tally = state["stats"], state["tally"]
        self.truth = None
        if state["truth"] is not None:
            self.truth = TruthTally.__new__(TruthTally)
            vars(self.truth).update(state["truth"], truth=None)


class Totals:
    """The parts merged, in order: every branch's statistics, each file's tally and NaN/inf counts."""

    def __init__(self, plan: Plan, n_files: int):
        from mlaas4hep_lab.data.validation import FileTally

        self.stats = new_stats(plan)
        self.tallies = [FileTally() for _ in range(n_files)]
        self.file_counts: list[dict[str, np.ndarray]] = [{} for _ in range(n_files)]
        self.truth = TruthTally(plan.truth) if plan.truth is not None else None

    def merge(self, file_index: int, part: PartStats) -> None:
        for name, st in self.stats.items():
            st.merge(part.stats[name])
            counts = self.file_counts[file_index]
            counts[name] = counts.get(name, 0) + part.stats[name].counts
        tally = self.tallies[file_index]
        tally.read += part.tally.read
        for key, n in part.tally.cuts.items():
            tally.cuts[key] = tally.cuts.get(key, 0) + n
        tally.splits += part.tally.splits
        if self.truth is not None:
            _merge_truth(self.truth, part.truth)


def _merge_truth(into: TruthTally, part: TruthTally) -> None:
    for value, per_split in part.classes.items():
        into.classes[value] = into.classes.get(value, np.zeros(3, np.int64)) + per_split
    into.nan += part.nan
    into.inf += part.inf
    for j in np.flatnonzero(part.n):  # the targets' moments, merged as TruthTally merges its chunks
        n_b = part.n[j]
        n = into.n[j] + n_b
        delta = part.mean[j] - into.mean[j]
        into.mean[j] += delta * n_b / n
        into.m2[j] += part.m2[j] + delta * delta * into.n[j] * n_b / n
        into.n[j] = n
        into.lo[j], into.hi[j] = min(into.lo[j], part.lo[j]), max(into.hi[j], part.hi[j])


def file_parts(boundaries: np.ndarray, n: int, chunk_size: int) -> list[tuple[int, int]]:
    """The parts ``[(start, stop), ...]`` of a file's first ``n`` entries: cut on cluster ``boundaries``
    only, about ``n / PARTS_PER_FILE`` entries each (at least a chunk, at most ``PART_CHUNKS`` chunks).
    They depend on the file and the params alone, never on the cluster, so the specs do not either."""
    if n <= 0:
        return []
    target = min(max(-(-n // PARTS_PER_FILE), chunk_size), PART_CHUNKS * chunk_size)
    cuts = [0]
    for b in np.asarray(boundaries, dtype=np.int64).tolist():  # one per cluster, not per event
        if cuts[-1] + target <= b < n:
            cuts.append(b)
    return list(zip(cuts, cuts[1:] + [n]))


def chunk_ranges(start: int, stop: int, chunk_size: int) -> list[tuple[int, int]]:
    """The chunks a part is read in (bounded memory: one chunk's arrays at a time)."""
    return [(s, min(s + chunk_size, stop)) for s in range(start, stop, chunk_size)]


def read_chunk(blocks: BlockReader, start: int, stop: int, preproc, cutflow: dict) -> list:
    """``[(first_entry, arrays, keep), ...]`` for entries [start, stop), with the new branches and cuts
    of ``preproc`` applied (``keep`` None without one); the cuts' counts are added to ``cutflow``."""
    pieces = []
    for first, arrays in blocks.read(start, stop):
        keep = None
        if preproc is not None and not preproc.is_empty():
            arrays, keep = preproc.apply(arrays, cutflow=cutflow)
        pieces.append((first, arrays, keep))
    return pieces


def read_part(reader: TreeReader, plan: Plan, params: Params, preproc, start: int, stop: int) -> PartStats:
    """The statistics of entries [start, stop) of ``reader``'s tree (a part of :func:`file_parts`),
    chunk by chunk: what the local pass computes for that part, step for step."""
    part = PartStats(plan)
    missing = np.asarray(params.missing_values, dtype=np.float64)
    blocks = BlockReader(reader, plan.read)
    for a, b in chunk_ranges(start, stop, params.chunk_size):
        for first, arrays, keep in read_chunk(blocks, a, b, preproc, part.tally.cuts):
            part.add(reader.path, first, arrays, keep, plan, params, missing)
    return part


def _update(stats: dict[str, _Stats], plan: Plan, arrays, keep, missing: np.ndarray) -> None:
    for name in plan.flat:
        values = np.asarray(arrays[name]) if keep is None else np.asarray(arrays[name])[keep]
        stats[name].update(values, missing)
    for name in plan.jagged:
        starts, stops, content = jagged_buffers(arrays[name])
        counts = (stops - starts).astype(np.int64)
        contiguous = len(starts) == 0 or np.array_equal(starts[1:], stops[:-1])
        if contiguous:
            values = content[starts[0]: stops[-1]] if len(starts) else content[:0]
            if keep is not None:
                values = values[np.repeat(keep, counts)]
        else:  # lists that do not tile their content (after a selection): let awkward flatten them
            selected = arrays[name] if keep is None else arrays[name][keep]
            values = ak.to_numpy(ak.flatten(selected, axis=-1))
        if keep is not None:
            counts = counts[keep]
        stats[name].update(np.asarray(values), missing)
        stats[name].update_lengths(counts)


def part_list(readers: Sequence[TreeReader], plan: Plan, use: Sequence[int], chunk_size: int):
    """``[(file_index, start, stop), ...]``: every part of every file, in the files' order."""
    return [(i, a, b) for i, (reader, n) in enumerate(zip(readers, use)) if n
            for a, b in file_parts(reader.cluster_boundaries(plan.read), n, chunk_size)]
