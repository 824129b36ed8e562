"""Chunked reading of one tree (TTree or RNTuple): branch listing, classification and selection.

Every leaf is classified from its awkward form, which uproot derives from the streamer information
without reading data, so the same code handles uproot-written counted arrays (NanoAOD style), ROOT's
``std::vector<T>`` branches, fixed-size arrays, members of split C++ objects (Delphes ``Muon.PT``,
Bacon ``Info/runNum``) and RNTuple fields, records included (``Jet.pt``); :mod:`._layouts` says how
leaves are named:

* ``flat``   -- one number per event (bool, any integer or float width);
* ``jagged`` -- a list of numbers per event (variable or fixed length);
* anything else (strings, nested vectors, objects) is skipped, with the reason kept in ``skipped``.
"""

from __future__ import annotations

import fnmatch
import logging
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import awkward as ak
import numpy as np

from mlaas4hep_lab.data import sources
from mlaas4hep_lab.data._layouts import (
    BOOKKEEPING,
    Leaf,
    classify,
    extract,
    read_problem,
    rntuple_leaves,
    ttree_leaves,
    unclashing,
)
from mlaas4hep_lab.errors import BranchNotFoundError, ConfigError, InputFileError

__all__ = ["BranchInfo", "TreeReader", "open_readers", "BlockReader", "share_offsets", "select_branches",
           "inspect_file", "format_table"]

log = logging.getLogger(__name__)
_NOTIFIED: set[tuple[str, str]] = set()  # (file, tree) whose skipped branches were reported


@dataclass(frozen=True)
class BranchInfo:
    """What a branch holds: ``kind`` is ``"flat"`` or ``"jagged"``; ``dtype`` the element type."""

    name: str
    kind: str
    dtype: np.dtype
    typename: str
    fixed_length: int | None = None  # fixed-size arrays (float x[3]) are jagged with a known length
    path: str = ""  # where uproot finds it, when not at ``name``: "Muon/Muon.PT", RNTuple "Jet.pt"


def _default_decompression_workers() -> int:
    """2, or on a Dask worker the threads it was given beyond the first one (0 for a one-thread worker)."""
    distributed = sys.modules.get("distributed")   # never imported here: a worker process has it loaded
    if distributed is not None:
        try:
            threads = distributed.get_worker().state.nthreads
        except (ValueError, AttributeError):   # not on a worker
            return 2
        return threads if threads > 1 else 0
    return 2


def _is_rntuple(tree) -> bool:
    return type(tree).__name__.endswith("RNTuple")


class TreeReader:
    """Read one tree of one ROOT file in entry ranges.

    Args:
        path: local path, ``root://`` or ``http(s)://`` URL.
        tree: path of the TTree or RNTuple in the file (``events``, ``dir/events``).
        retries, backoff: retry policy for transient remote errors.
        decompression_workers: threads that decompress baskets (0: the calling thread); zlib, lz4 and
            zstd release the GIL, so two threads nearly double the read rate on two cores. Default: 2, or on a
            Dask worker its own thread count beyond the first (a one-thread worker is given one core: more
            threads would compete with the other workers for theirs).

    Example::

        r = TreeReader("sig.root", "events")
        chunk = r.read(["Jet_pt", "MET_pt"], 0, 10_000)
    """

    def __init__(self, path: str, tree: str = "events", retries: int = 3, backoff: float = 0.5,
                 decompression_workers: int | None = None):
        self.path, self.tree_name = str(path), tree
        self.retries, self.backoff = retries, backoff
        self._file = sources.open_file(self.path, retries, backoff)
        self._tree = sources.get_tree(self._file, tree, self.path)
        self.is_rntuple = _is_rntuple(self._tree)
        self.num_entries = int(self._tree.num_entries)
        self._executor = None
        if decompression_workers is None:
            decompression_workers = _default_decompression_workers()
        if decompression_workers:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(decompression_workers)
        self.branches: dict[str, BranchInfo] = {}
        self.skipped: dict[str, str] = {}  # name -> why it is not a feature
        self.skipped_types: dict[str, str] = {}  # name -> ROOT type name of the skipped leaf
        self.aliases: dict[str, str] = {}  # another spelling (full path, member name) -> the name used
        self._classify_branches()

    # -- branch listing ---------------------------------------------------------------------------
    def _classify_branches(self) -> None:
        if self.is_rntuple:
            leaves, self.aliases = rntuple_leaves(self._tree), {}
        else:
            leaves, self.aliases = ttree_leaves(self._tree, self._file.file)
        self._leaves: dict[str, Leaf] = {}
        for leaf in leaves:
            if leaf.name in self._leaves:  # an RNTuple field literally named like another's member
                self.skipped[leaf.name] = f"another leaf is also called {leaf.name!r}"
                continue
            self._leaves[leaf.name] = leaf
            kind = leaf.problem or classify(leaf.form)
            if isinstance(kind, str):
                self.skipped[leaf.name] = kind
                self.skipped_types[leaf.name] = leaf.typename
            else:
                path = "" if leaf.uproot_name == leaf.name and not self.is_rntuple else leaf.uproot_name
                typename = leaf.typename or str(leaf.form.type)
                self.branches[leaf.name] = BranchInfo(leaf.name, kind[0], kind[1], typename, kind[2], path)
        # TObject bookkeeping (fUniqueID, fBits on every Delphes collection) is not worth a warning
        worth = {k: v for k, v in self.skipped.items() if v != BOOKKEEPING}
        if worth and (self.path, self.tree_name) not in _NOTIFIED:
            _NOTIFIED.add((self.path, self.tree_name))
            log.warning("%s: skipping %d branch(es) that are not numbers or lists of numbers: %s", self.path,
                        len(worth), ", ".join(f"{k} ({v})" for k, v in worth.items()))

    def unreadable(self) -> dict[str, str]:
        """Skipped leaves that uproot cannot interpret or fails to read (the first entry is tried),
        with uproot's reason: a type uproot knows is no promise that it can decode the bytes."""
        out = {}
        for name in self.skipped:
            leaf = self._leaves.get(name)
            if leaf is None or self.skipped[name] == BOOKKEEPING:
                continue
            problem = read_problem(self._tree, leaf, self.num_entries, self.is_rntuple)
            if problem:
                out[name] = problem
        return out

    def kinds(self) -> dict[str, str]:
        """Branch name -> ``"flat"``/``"jagged"`` for every numeric branch."""
        return {name: info.kind for name, info in self.branches.items()}

    def check(self, names: Iterable[str], context: str = "") -> None:
        """Raise BranchNotFoundError (with close spellings) for a name that is not a numeric branch."""
        for name in names:
            if name not in self.branches:
                if name in self.skipped:
                    raise ConfigError(f"branch {name!r} in {self.path} cannot be used: {self.skipped[name]}",
                                      key=context or None)
                where = f"tree {self.tree_name!r} of {self.path}"
                if self.aliases.get(name) in self.branches:
                    # uproot's other spelling of a leaf (full path, or a member's bare name)
                    raise BranchNotFoundError(
                        name, where, [self.aliases[name]],
                        f"{context + '; ' if context else ''}this leaf is called {self.aliases[name]!r} here",
                    )
                raise BranchNotFoundError(name, where, self.branches, context)

    # -- reading ----------------------------------------------------------------------------------
    def read(self, branches: Sequence[str], entry_start: int, entry_stop: int) -> ak.Array:
        """Records with one field per requested branch for entries [entry_start, entry_stop)."""
        self.check(branches)
        wanted = list(dict.fromkeys(branches))
        entry_stop = min(entry_stop, self.num_entries)

        if not wanted:
            return ak.Array(ak.contents.RecordArray([], [], length=max(0, entry_stop - entry_start)))
        leaves = [self._leaves[name] for name in wanted]
        options = {"entry_start": entry_start, "entry_stop": entry_stop}
        if not self.is_rntuple:
            options.update(array_cache=None, decompression_executor=self._executor, library="ak")

        def _read() -> list[ak.Array]:
            if self.is_rntuple:
                return [self._tree.arrays(list(dict.fromkeys(leaf.uproot_name for leaf in leaves)), **options)]
            # by full path, not filter_name: uproot names the output of filter_name by the member's own name
            # (runNum), which two split objects may share
            return [self._tree.arrays([leaf.uproot_name for leaf in group], **options)
                    for group in unclashing(leaves)]

        try:
            parts = sources.with_retries(_read, self.path, self.retries, self.backoff, what="read")
        except InputFileError:
            raise
        except Exception as err:
            raise InputFileError(
                f"cannot read entries {entry_start}-{entry_stop} of {self.tree_name!r} in {self.path}: "
                f"{type(err).__name__}: {err}. The file may be truncated or corrupt.",
                self.path,
            ) from err
        if len(parts) == 1 and parts[0].fields == wanted:
            return parts[0]
        # fields named by the package's names, sharing uproot's buffers (no copy)
        columns = {}
        for arrays in parts:
            columns.update({leaf.name: extract(arrays, leaf, self.is_rntuple) for leaf in leaves
                            if leaf.path[0] in arrays.fields})
        return ak.zip({name: columns[name] for name in wanted}, depth_limit=1)

    def cluster_boundaries(self, branches: Sequence[str]) -> np.ndarray:
        """Entry numbers at which every one of ``branches`` starts a new basket (cluster), 0 and the end
        included: reading between two of them decompresses each basket once."""
        try:
            if self.is_rntuple:
                offsets = self._tree.common_entry_offsets()
            else:
                paths = {self._leaves[b].uproot_name for b in branches if b in self._leaves}
                offsets = self._tree.common_entry_offsets(filter_name=paths.__contains__)
        except Exception:  # no basket layout to exploit: the whole tree is one block
            offsets = []
        return np.unique(np.asarray([0, *offsets, self.num_entries], dtype=np.int64))

    def bytes_per_entry(self, branches: Sequence[str]) -> float:
        """Uncompressed bytes per entry of ``branches`` (an estimate, used to bound buffers)."""
        if self.is_rntuple or not self.num_entries:
            return 8.0 * max(1, len(branches)) * 4
        wanted = {self._leaves[b].uproot_name for b in branches if b in self._leaves}
        total = sum(b.uncompressed_bytes for name, b in self._tree.iteritems(recursive=True, full_paths=True)
                    if name in wanted)
        return max(1.0, total / self.num_entries)

    def iterate(self, branches: Sequence[str], step: int, entry_start: int = 0,
                entry_stop: int | None = None) -> Iterator[tuple[int, ak.Array]]:
        """Yield ``(first_entry, records)`` chunks of ``step`` entries."""
        stop = self.num_entries if entry_stop is None else min(entry_stop, self.num_entries)
        for start in range(entry_start, stop, step):
            yield start, self.read(branches, start, min(start + step, stop))

    def close(self) -> None:
        if self._executor is not None:
            # decompression threads may still read the memory-mapped file: let them finish first
            self._executor.shutdown(wait=True, cancel_futures=True)
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        kind = "RNTuple" if self.is_rntuple else "TTree"
        return f"<TreeReader {self.path}:{self.tree_name} {kind} {self.num_entries} entries, {len(self.branches)} branches>"


_OPENING_THREADS = 16  # files opened at once by open_readers


def open_readers(files: Sequence[str], tree: str, retries: int = 3) -> list[TreeReader]:
    """A :class:`TreeReader` per file, in their order, opened by up to 16 threads at once: opening a
    ``root://`` or ``https://`` file is a few round trips to its server (about 0.1 s on the grid), so hundreds
    of them opened one after another would keep a pass from starting for a minute. If any fails, those
    opened are closed and the error of the first failing file (in the list's order) is raised."""
    files = [str(f) for f in files]
    if len(files) < 2:
        return [TreeReader(f, tree, retries=retries) for f in files]
    from concurrent.futures import ThreadPoolExecutor

    def opened(path: str):
        try:
            return TreeReader(path, tree, retries=retries), None
        except Exception as err:   # noqa: BLE001  raised below, in the files' order
            return None, err

    with ThreadPoolExecutor(min(_OPENING_THREADS, len(files)), thread_name_prefix="open") as pool:
        results = list(pool.map(opened, files))
    failed = next((err for _, err in results if err is not None), None)
    if failed is not None:
        for reader, _ in results:
            if reader is not None:
                reader.close()
        raise failed
    return [reader for reader, _ in results]


class BlockReader:
    """Serve consecutive entry ranges of one tree while decompressing each basket only once.

    A training chunk takes a few thousand entries from each file, while a basket may hold 100k: reading
    each range on its own would decompress the same basket again for every chunk. This reader decodes
    whole clusters (up to ``max_bytes`` of decoded arrays) and hands out slices of them.

    Example::

        blocks = BlockReader(reader, ["Jet_pt", "MET_pt"])
        for first, arrays in blocks.read(0, 6_500): ...
    """

    def __init__(self, reader: TreeReader, branches: Sequence[str], max_bytes: float = 256e6):
        self.reader, self.branches = reader, list(branches)
        self.boundaries = reader.cluster_boundaries(self.branches)
        self.max_entries = max(1, int(max_bytes / reader.bytes_per_entry(self.branches)))
        self._start = self._stop = 0
        self._arrays = None

    @property
    def largest_cluster(self) -> int:
        """Entries of the file's largest cluster (baskets of the branches read)."""
        return int(np.diff(self.boundaries).max(initial=0))

    def _load(self, start: int, stop: int) -> None:
        # extend to the next cluster boundary so that no basket is left half-used, within the budget
        i = np.searchsorted(self.boundaries, stop, side="left")
        end = int(self.boundaries[min(i, len(self.boundaries) - 1)])
        end = max(stop, min(end, start + max(self.max_entries, stop - start)))
        self._arrays = None  # release the previous block before decoding the next one
        self._arrays = share_offsets(self.reader.read(self.branches, start, end))
        self._start, self._stop = start, end

    def read(self, start: int, stop: int) -> list[tuple[int, ak.Array]]:
        """``[(first_entry, records), ...]`` covering entries [start, stop), in order."""
        stop = min(stop, self.reader.num_entries)
        pieces = []
        while start < stop:
            if self._arrays is None or not self._start <= start < self._stop:
                self._load(start, stop)
            end = min(stop, self._stop)
            pieces.append((start, self._arrays[start - self._start: end - self._start]))
            if end == self._stop:  # handed out to the end: the pieces alone keep it in memory now
                self._arrays = None
            start = end
        return pieces


def share_offsets(arrays: ak.Array) -> ak.Array:
    """``arrays`` with one offsets buffer per collection: uproot gives every jagged branch its own int64
    offsets, although the branches read through one counter (``Jet_pt``, ``Jet_eta`` ... of ``nJet``)
    have equal ones: 8 bytes per event and branch beside ~4 per value, so on the ttH-like example the
    decoded blocks of one chunk fell from 178 to 112 MiB once the copies were dropped (no values are
    copied). The vectoriser then sees at once that a collection's branches share their lists."""
    layout = ak.to_layout(arrays)
    if not isinstance(layout, ak.contents.RecordArray) or layout.is_tuple:
        return arrays
    seen: dict[tuple, list[ak.index.Index]] = {}
    contents, shared = [], 0
    for content in layout.contents:
        if isinstance(content, ak.contents.ListOffsetArray):
            data = content.offsets.data
            key = (len(data), data.dtype.str, int(data[-1]) if len(data) else 0)
            for offsets in seen.setdefault(key, []):
                if offsets.data is data or np.array_equal(offsets.data, data):
                    content, shared = ak.contents.ListOffsetArray(offsets, content.content,
                                                                  parameters=content.parameters), shared + 1
                    break
            else:
                seen[key].append(content.offsets)
        contents.append(content)
    if not shared:
        return arrays
    record = ak.contents.RecordArray(contents, layout.fields, length=layout.length,
                                     parameters=layout.parameters)
    return ak.Array(record, behavior=arrays.behavior)


def select_branches(available: Sequence[str], selected: Sequence[str] = (), excluded: Sequence[str] = (),
                    where: str = "the tree") -> list[str]:
    """Apply ``selected_branches`` then ``exclude_branches`` (shell wildcards allowed) to ``available``.

    An empty selection means every branch. A pattern that matches nothing is an error with suggestions,
    because a typo would otherwise silently train on other features.
    """
    def expand(patterns: Sequence[str], key: str) -> list[str]:
        out: list[str] = []
        for pattern in patterns:
            hits = [b for b in available if fnmatch.fnmatchcase(b, pattern)]
            if not hits:
                raise BranchNotFoundError(pattern, where, available, context=f"params {key!r}")
            out.extend(hits)
        return out

    chosen = expand(selected, "selected_branches") if selected else list(available)
    drop = set(expand(excluded, "exclude_branches"))
    return [b for b in dict.fromkeys(chosen) if b not in drop]


def format_table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def inspect_file(path: str, tree: str | None = None) -> str:
    """A readable description of the trees in a ROOT file: branches, types, flat/jagged, entries.

    Skipped branches are listed with their ROOT type and the reason; those uproot fails to read (its
    first entry is tried) are flagged ``UNREADABLE`` with uproot's error.
    """
    f = sources.open_file(str(path))
    try:
        trees = [tree] if tree else [
            k.split(";")[0] for k, c in f.classnames(recursive=True).items()
            if c in ("TTree", "TNtuple", "TNtupleD", "ROOT::RNTuple", "ROOT::Experimental::RNTuple")
        ]
        trees = list(dict.fromkeys(trees))
    finally:
        f.close()
    if not trees:
        return f"{path}: no TTree or RNTuple found"
    out = []
    for name in trees:
        with TreeReader(str(path), name) as r:
            kind = "RNTuple" if r.is_rntuple else "TTree"
            n_flat = sum(b.kind == "flat" for b in r.branches.values())
            broken = r.unreadable()
            out.append(f"{kind} {name!r} in {path}: {r.num_entries} entries, {n_flat} flat and "
                       f"{len(r.branches) - n_flat} jagged numeric branches, {len(r.skipped)} skipped"
                       + (f" ({len(broken)} that uproot cannot read)" if broken else ""))
            rows = [(b.name, b.typename, str(b.dtype), b.kind + (f"[{b.fixed_length}]" if b.fixed_length else ""))
                    for b in r.branches.values()]
            rows += [(leaf, r.skipped_types.get(leaf, ""), "",
                      f"UNREADABLE: {broken[leaf]}" if leaf in broken else f"skipped: {why}")
                     for leaf, why in r.skipped.items()]
            out.append(format_table(rows, ("branch", "type", "dtype", "kind")))
    return "\n\n".join(out)
