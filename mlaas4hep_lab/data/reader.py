"""Chunked reading of one tree (TTree or RNTuple): branch listing, classification and selection.

Every branch is classified from its awkward form, which uproot derives from the streamer information
without reading data, so the same code handles uproot-written counted arrays (NanoAOD style), ROOT's
``std::vector<T>`` branches, fixed-size arrays and RNTuple fields:

* ``flat``   -- one number per event (bool, any integer or float width);
* ``jagged`` -- a list of numbers per event (variable or fixed length);
* anything else (strings, nested vectors, objects) is skipped, with the reason kept in ``skipped``.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import awkward as ak
import numpy as np

from mlaas4hep_lab.data import sources
from mlaas4hep_lab.errors import BranchNotFoundError, ConfigError, InputFileError

__all__ = ["BranchInfo", "TreeReader", "BlockReader", "select_branches", "inspect_file", "format_table"]

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


def _classify(form: ak.forms.Form) -> tuple[str, np.dtype, int | None] | str:
    """(kind, dtype, fixed_length) for a numeric form, else the reason it is skipped."""
    params = form.parameters or {}
    if params.get("__array__") in ("string", "bytestring", "char", "byte"):
        return "strings are not numeric features"
    if isinstance(form, ak.forms.NumpyForm):
        dtype = np.dtype(ak.types.numpytype.primitive_to_dtype(form.primitive))
        if dtype.kind not in "biuf":
            return f"element type {form.primitive} is not numeric"
        if len(form.inner_shape) == 0:
            return "flat", dtype, None
        if len(form.inner_shape) == 1:
            return "jagged", dtype, int(form.inner_shape[0])
        return f"multi-dimensional array {form.inner_shape} is not supported"
    if isinstance(form, (ak.forms.ListOffsetForm, ak.forms.ListForm, ak.forms.RegularForm)):
        inner = _classify(form.content)
        if isinstance(inner, str):
            return f"list of unsupported elements ({inner})"
        if inner[0] != "flat":
            return "nested lists (e.g. vector<vector<T>>) are not supported"
        fixed = form.size if isinstance(form, ak.forms.RegularForm) else None
        return "jagged", inner[1], fixed
    if isinstance(form, (ak.forms.IndexedOptionForm, ak.forms.UnmaskedForm, ak.forms.ByteMaskedForm,
                         ak.forms.BitMaskedForm, ak.forms.IndexedForm)):
        return _classify(form.content)
    return f"{type(form).__name__} (objects or records) is not supported"


def _is_rntuple(tree) -> bool:
    return type(tree).__name__.endswith("RNTuple")


class TreeReader:
    """Read one tree of one ROOT file in entry ranges.

    Args:
        path: local path, ``root://`` or ``http(s)://`` URL.
        tree: path of the TTree or RNTuple in the file (``events``, ``dir/events``).
        retries, backoff: retry policy for transient remote errors.
        decompression_workers: threads that decompress baskets (0: the calling thread); zlib, lz4 and
            zstd release the GIL, so two threads nearly double the read rate on two cores.

    Example::

        r = TreeReader("sig.root", "events")
        chunk = r.read(["Jet_pt", "MET_pt"], 0, 10_000)
    """

    def __init__(self, path: str, tree: str = "events", retries: int = 3, backoff: float = 0.5,
                 decompression_workers: int = 2):
        self.path, self.tree_name = str(path), tree
        self.retries, self.backoff = retries, backoff
        self._file = sources.open_file(self.path, retries, backoff)
        self._tree = sources.get_tree(self._file, tree, self.path)
        self.is_rntuple = _is_rntuple(self._tree)
        self.num_entries = int(self._tree.num_entries)
        self._executor = None
        if decompression_workers:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(decompression_workers)
        self.branches: dict[str, BranchInfo] = {}
        self.skipped: dict[str, str] = {}
        self._classify_branches()

    # -- branch listing ---------------------------------------------------------------------------
    def _classify_branches(self) -> None:
        if self.is_rntuple:
            form = self._tree.arrays(entry_stop=0).layout.form
            items = [(name, form.content(name), "") for name in form.fields]
        else:
            items = []
            for name, branch in self._tree.iteritems(recursive=True, full_paths=True):
                if len(branch.branches):  # a split object's parent holds no data of its own
                    continue
                try:
                    form = branch.interpretation.awkward_form(self._file.file)
                except Exception as err:  # uproot cannot interpret it: a custom class, typically
                    self.skipped[name] = f"cannot be interpreted by uproot ({type(err).__name__})"
                    continue
                items.append((name, form, branch.typename))
        for name, form, typename in items:
            kind = _classify(form)
            if isinstance(kind, str):
                self.skipped[name] = kind
            else:
                self.branches[name] = BranchInfo(name, kind[0], kind[1], typename or str(form.type), kind[2])
        if self.skipped and (self.path, self.tree_name) not in _NOTIFIED:
            _NOTIFIED.add((self.path, self.tree_name))
            log.warning("%s: skipping %d branch(es) that are not numbers or lists of numbers: %s", self.path,
                        len(self.skipped), ", ".join(f"{k} ({v})" for k, v in self.skipped.items()))

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
                raise BranchNotFoundError(name, f"tree {self.tree_name!r} of {self.path}", self.branches, context)

    # -- reading ----------------------------------------------------------------------------------
    def read(self, branches: Sequence[str], entry_start: int, entry_stop: int) -> ak.Array:
        """Records with one field per requested branch for entries [entry_start, entry_stop)."""
        self.check(branches)
        wanted = list(dict.fromkeys(branches))
        entry_stop = min(entry_stop, self.num_entries)

        def _read():
            if self.is_rntuple:
                return self._tree.arrays(wanted, entry_start=entry_start, entry_stop=entry_stop)
            return self._tree.arrays(
                filter_name=set(wanted).__contains__,
                entry_start=entry_start,
                entry_stop=entry_stop,
                array_cache=None,
                decompression_executor=self._executor,
                library="ak",
            )

        try:
            arrays = sources.with_retries(_read, self.path, self.retries, self.backoff, what="read")
        except InputFileError:
            raise
        except Exception as err:
            raise InputFileError(
                f"cannot read entries {entry_start}-{entry_stop} of {self.tree_name!r} in {self.path}: "
                f"{type(err).__name__}: {err}. The file may be truncated or corrupt.",
                self.path,
            ) from err
        if arrays.fields != wanted:
            arrays = arrays[wanted]
        return arrays

    def cluster_boundaries(self, branches: Sequence[str]) -> np.ndarray:
        """Entry numbers at which every one of ``branches`` starts a new basket (cluster), 0 and the end
        included: reading between two of them decompresses each basket once."""
        try:
            if self.is_rntuple:
                offsets = self._tree.common_entry_offsets()
            else:
                offsets = self._tree.common_entry_offsets(filter_name=set(branches).__contains__)
        except Exception:  # no basket layout to exploit: the whole tree is one block
            offsets = []
        return np.unique(np.asarray([0, *offsets, self.num_entries], dtype=np.int64))

    def bytes_per_entry(self, branches: Sequence[str]) -> float:
        """Uncompressed bytes per entry of ``branches`` (an estimate, used to bound buffers)."""
        if self.is_rntuple or not self.num_entries:
            return 8.0 * max(1, len(branches)) * 4
        wanted = set(branches)
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

    def _load(self, start: int, stop: int) -> None:
        # extend to the next cluster boundary so that no basket is left half-used, within the budget
        i = np.searchsorted(self.boundaries, stop, side="left")
        end = int(self.boundaries[min(i, len(self.boundaries) - 1)])
        end = max(stop, min(end, start + max(self.max_entries, stop - start)))
        self._arrays = None  # release the previous block before decoding the next one
        self._arrays = self.reader.read(self.branches, start, end)
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
            start = end
        return pieces


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
    """A readable description of the trees in a ROOT file: branches, types, flat/jagged, entries."""
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
            out.append(f"{kind} {name!r} in {path}: {r.num_entries} entries, {n_flat} flat and "
                       f"{len(r.branches) - n_flat} jagged numeric branches, {len(r.skipped)} skipped")
            rows = [(b.name, b.typename, str(b.dtype), b.kind + (f"[{b.fixed_length}]" if b.fixed_length else ""))
                    for b in r.branches.values()]
            rows += [(name, "", "", f"skipped: {why}") for name, why in r.skipped.items()]
            out.append(format_table(rows, ("branch", "type", "dtype", "kind")))
    return "\n\n".join(out)
