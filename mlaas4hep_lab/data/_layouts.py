"""The leaves of a tree: what each is called, where it is in the file, and whether it holds numbers.

Physics frameworks store events in several layouts, and uproot names their leaves in two ways
(``tree.keys()`` gives full paths such as ``Muon/Muon.PT``, ``tree.arrays()`` the leaf's own name
``Muon.PT``). This module gives every leaf one name, used for features, expressions and params:

* top-level branches keep their name (``Jet_pt``, ``MET``, and names an uproot user wrote with dots
  or slashes, ``Muon.PT``, ``Info/runNum``);
* members of split objects whose ROOT name already carries the object's name keep it: Delphes'
  ``TClonesArray`` (``Muon.PT``), CMS's split ``std::vector<struct>`` (``Photon.pt``), objects
  stored in a branch whose name ends with a dot (``Info.runNum``). This is also RDataFrame's name;
* other members of split objects get their full path (Bacon's ``Info/runNum``, ``Gen/weight``),
  since the member names alone clash (``Gen/weight`` beside a top-level ``weight``);
* the fields of RNTuple records are joined with dots, as uproot names them (``Jet.pt`` for the
  collection ``Jet: var * {pt, eta}``, ``Info.run`` for the record ``Info: {run, lumi}``): a
  collection of records becomes jagged leaves, a record flat leaves.

The other spelling of a leaf (``Muon/Muon.PT`` for ``Muon.PT``) is kept as an *alias*, so that an
error can point to the name to use. The ``fUniqueID``/``fBits`` members every ``TObject`` carries
are bookkeeping, not physics: they are listed as skipped.

Each leaf is then classified from its awkward form, which uproot derives from the streamer
information without reading data: ``flat`` (one number per event), ``jagged`` (a list of numbers
per event, variable or fixed length), or a reason to skip it.
"""

from __future__ import annotations

from dataclasses import dataclass

import awkward as ak
import numpy as np
import uproot

__all__ = ["BOOKKEEPING", "Leaf", "classify", "ttree_leaves", "rntuple_leaves", "extract", "read_problem",
           "unclashing"]

_BOOKKEEPING = ("fUniqueID", "fBits")
BOOKKEEPING = "TObject bookkeeping member, not a physics quantity"
"""The reason given for skipping ``fUniqueID``/``fBits``."""


@dataclass(frozen=True)
class Leaf:
    """One leaf: ``name`` (the package's name for it), ``path`` (where uproot finds it: the full
    TTree path, or the RNTuple field names), its awkward ``form`` (None when uproot cannot interpret
    it) and ROOT ``typename``; ``problem`` says why it cannot be used, if it cannot."""

    name: str
    path: tuple[str, ...]
    form: ak.forms.Form | None
    typename: str
    problem: str = ""
    own_name: str = ""  # a TTree branch's own (last) name, which uproot's arrays() keys its results by

    @property
    def uproot_name(self) -> str:
        """The name to hand to ``tree.arrays``: the full path in a TTree, dotted fields in an RNTuple."""
        return ".".join(self.path)


def classify(form: ak.forms.Form) -> tuple[str, np.dtype, int | None] | str:
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
        inner = classify(form.content)
        if isinstance(inner, str):
            return f"list of unsupported elements ({inner})"
        if inner[0] != "flat":
            return "nested lists (e.g. vector<vector<T>>) are not supported"
        fixed = form.size if isinstance(form, ak.forms.RegularForm) else None
        return "jagged", inner[1], fixed
    if isinstance(form, (ak.forms.IndexedOptionForm, ak.forms.UnmaskedForm, ak.forms.ByteMaskedForm,
                         ak.forms.BitMaskedForm, ak.forms.IndexedForm)):
        return classify(form.content)
    return "objects (records) are not numeric features"


def _top_branch(branch, tree):
    while branch.parent is not tree and isinstance(branch.parent, uproot.behaviors.TBranch.TBranch):
        branch = branch.parent
    return branch


def ttree_leaves(tree, file) -> tuple[list[Leaf], dict[str, str]]:
    """The leaves of a TTree, named as the module docstring says, and ``alias -> name``."""
    found = []  # (preferred name, full path, branch, problem)
    for path, branch in tree.iteritems(recursive=True, full_paths=True):
        interp = branch.interpretation
        if isinstance(interp, uproot.interpretation.grouped.AsGrouped):
            continue  # a split object's parent holds no data of its own: its members are listed
        top = _top_branch(branch, tree)
        own = branch.name
        if branch is top or own.startswith(top.name.rstrip(".") + "."):
            name = own
        else:
            name = path
        problem = ""
        if branch is not top and own.rsplit(".", 1)[-1] in _BOOKKEEPING:
            problem = BOOKKEEPING
        found.append((name, path, branch, problem))
    # a shortened name that two leaves share falls back to the full path
    counts: dict[str, int] = {}
    for name, *_ in found:
        counts[name] = counts.get(name, 0) + 1
    leaves = []
    for name, path, branch, problem in found:
        if counts[name] > 1:
            name = path
        form = None
        interp = branch.interpretation
        if isinstance(interp, uproot.interpretation.identify.UnknownInterpretation):
            problem = problem or f"uproot cannot interpret it: {interp.reason}"
        else:
            try:
                form = interp.awkward_form(file)
            except Exception as err:  # a class uproot has no model for, typically
                problem = problem or f"uproot cannot interpret it ({type(err).__name__}: {_first_line(err)})"
        leaves.append(Leaf(name, (path,), form, branch.typename, problem, branch.name))
    names = {leaf.name for leaf in leaves}
    spellings: dict[str, set[str]] = {}
    for leaf, (_, path, branch, _) in zip(leaves, found):
        for alias in (path, branch.name):
            if alias not in names:
                spellings.setdefault(alias, set()).add(leaf.name)
    aliases = {alias: next(iter(owners)) for alias, owners in spellings.items() if len(owners) == 1}
    return leaves, aliases


def rntuple_leaves(rntuple) -> list[Leaf]:
    """The leaves of an RNTuple: records (also inside collections) are opened into their fields."""
    leaves: list[Leaf] = []

    def walk(array: ak.Array, path: tuple[str, ...]) -> None:
        fields = ak.fields(array)
        if fields:
            for field in fields:
                walk(array[field], (*path, field))
        else:
            leaves.append(Leaf(".".join(path), path, array.layout.form, str(array.type.content)))

    empty = rntuple.arrays(entry_stop=0)  # the types, without reading data
    for field in empty.fields:
        walk(empty[field], (field,))
    return leaves


def extract(arrays: ak.Array, leaf: Leaf, is_rntuple: bool) -> ak.Array:
    """The array of ``leaf`` in what ``tree.arrays([leaf.uproot_name, ...])`` returned."""
    if not is_rntuple:
        return arrays[leaf.path[0]]
    value = arrays[leaf.path[0]]
    for field in leaf.path[1:]:
        value = value[field]  # projects through the collection's lists: var * {pt} -> var * float
    return value


def unclashing(leaves: list[Leaf]) -> list[list[Leaf]]:
    """``leaves`` in groups that uproot can read in one ``arrays()`` call each: uproot 5.7 keys the arrays
    it computes by the branch's own name, so ``weight`` and ``Gen/weight`` read together both come back
    as one of them. A tree without such a clash is read in one group."""
    groups: list[tuple[set[str], list[Leaf]]] = []
    for leaf in leaves:
        for names, group in groups:
            if leaf.own_name not in names:
                names.add(leaf.own_name)
                group.append(leaf)
                break
        else:
            groups.append(({leaf.own_name}, [leaf]))
    return [group for _, group in groups]


def read_problem(tree, leaf: Leaf, num_entries: int, is_rntuple: bool) -> str:
    """Why uproot fails to read ``leaf`` ("" when it reads it): interpreting a branch's type is not
    enough, some layouts only fail on the bytes. The first entry is read; a vector of objects is also
    checked for ROOT's member-wise streaming, which uproot's fast path decodes into wrong numbers
    without an error."""
    if leaf.form is None:
        return leaf.problem
    try:
        tree.arrays([leaf.uproot_name], entry_start=0, entry_stop=min(1, num_entries))
    except Exception as err:
        return f"uproot cannot read it ({type(err).__name__}: {_first_line(err)})"
    if not is_rntuple and _memberwise(tree, leaf):
        return ("written member-wise (a std::vector of objects stored with split level 0), which uproot "
                "reads as wrong numbers; write it split (split level 99) or read it with ROOT")
    return ""


# ROOT's byte-count flag and its "streamed member-wise" bit in an object's version (TBufferFile)
_BYTECOUNT_FLAG, _MEMBERWISE_BIT = 0x40000000, 0x4000


def _memberwise(tree, leaf: Leaf) -> bool:
    """True when the first entry of a jagged vector-of-objects TTree branch carries the member-wise bit."""
    branch = tree[leaf.path[0]]
    interp = branch.interpretation
    content = getattr(interp, "content", None)
    if not isinstance(interp, uproot.interpretation.jagged.AsJagged) or not isinstance(
            content, uproot.interpretation.objects.AsStridedObjects) or interp.header_bytes < 6:
        return False
    if not branch.num_baskets:
        return False
    data = branch.basket(0).data
    if len(data) < 6 or not int.from_bytes(data[:4].tobytes(), "big") & _BYTECOUNT_FLAG:
        return False
    return bool(int.from_bytes(data[4:6].tobytes(), "big") & _MEMBERWISE_BIT)


def _first_line(err: BaseException) -> str:
    """uproot's message on one line (a DeserializationError spreads it over several)."""
    text = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text if len(text) <= 160 else text[:157] + "..."
