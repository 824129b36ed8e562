"""Safe expressions over branches: new-branch definitions and cuts of preproc.json.

An expression such as ``log(partonE) * 2``, ``1 <= nJets <= 16`` or ``count(Jet_pt > 30) >= 2`` is
parsed with :func:`ast.parse`, checked against a whitelist of node types and functions, and turned
into a small tree of Python closures that call numpy / awkward functions on whole arrays. The
user's text is never handed to Python's code evaluation machinery, so an expression can only do
arithmetic, comparisons and the whitelisted functions on the branches it names.

Semantics
---------
- Flat branches are 1-D arrays; jagged branches are ``var * T`` awkward arrays. Arithmetic between
  a flat and a jagged operand broadcasts the per-event value over the event's list.
- Any branch can be named: a name containing ``.`` or ``/`` is written between backticks
  (`` `Info/runNum` ``, `` `Muon.PT` ``); a dotted name may also be written plainly (``Muon.PT``, as in
  RDataFrame), since attribute access has no other meaning here.
- ``and`` / ``or`` / ``not`` are elementwise (like ``&`` / ``|`` / ``~``); ROOT's ``&&``, ``||`` and
  ``!`` are accepted as ``and``, ``or`` and ``not`` (``!`` binds as tightly as in C++: ``!a == b`` is
  ``(not a) == b``; ``!=`` is not-equal). Comparisons may be chained in any direction
  (``1 <= x <= 16``, ``16 >= x >= 1``): the AND of the pairwise comparisons.
- ``min``/``max`` with two or more arguments are elementwise; with one argument they, like
  ``sum mean count len any all``, reduce each event's list (last axis) to one value. ``count`` counts
  the true values of a condition (``count(Jet_pt > 30)``: jets above 30, ROOT's ``Sum$``) and the
  elements of anything else; ``len`` always counts the elements (ROOT's ``Length$``). Empty lists give
  ``sum`` 0, ``count`` 0, ``len`` 0, ``any`` False, ``all`` True and NaN for ``min``/``max``/``mean``.
  On a flat argument the reductions are the identity (``len`` gives 1, ``count`` 1 or, for a
  condition, 1 where it holds and 0 elsewhere, ``any``/``all`` the truth value).
- A comparison counts as 1 or 0 in arithmetic, as in ROOT and in Python: ``(x > 0) + (x > 1)`` is 0, 1 or
  2 (a multi-class label), ``-(x > 0)`` is 0 or -1 (numpy alone would give True + True = True).
- Numerical problems follow numpy (``1/0`` is inf, ``log(-1)`` is NaN) with its warnings silenced.
  Constant parts are computed when the expression is compiled: one whose value is not a finite
  64-bit float (``10**400``, ``9**9**9**9``, ``1e308*10``, ``1/0``) is refused there with the reason.

Cost
----
An expression's work is bounded before it is parsed or built: at most ``MAX_LENGTH`` characters,
brackets nested at most ``MAX_NESTING`` deep (checked on the text, since the parser itself can fail
on deep nesting), at most ``MAX_NODES`` syntax nodes nested at most ``MAX_DEPTH`` deep; powers of
constants are sized with logarithms before they are computed. Each limit hit is an
:class:`~mlaas4hep_lab.errors.ExpressionError` that names the expression and the limit.

Modules
-------
This module is the public entry point (:func:`compile_expression`, :class:`Expression` and the
names listed in ``__all__``). The parts live in private modules and are re-exported here:
``_array_kinds`` (flat vs jagged arrays), ``_expression_text`` (quoted names and ROOT's operators,
rewritten before parsing), ``_expression_functions`` (the operator and function tables with their
numpy/awkward implementations) and ``_expression_compiler`` (the whitelist check of the syntax tree
and the closures it builds).
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import awkward as ak
import numpy as np

from mlaas4hep_lab.data._array_kinds import flat_to_numpy, is_jagged, kind_of
from mlaas4hep_lab.data._expression_compiler import (
    MAX_DEPTH,
    MAX_NODES,
    Compiler,
    EvalFailure,
    kind_from_tree,
    limit_error,
    unknown_name,
)
from mlaas4hep_lab.data._expression_functions import ALLOWED_FUNCTIONS, CONSTANTS
from mlaas4hep_lab.data._expression_text import quote_name, rewrite
from mlaas4hep_lab.errors import ExpressionError

__all__ = [
    "ALLOWED_FUNCTIONS",
    "CONSTANTS",
    "MAX_DEPTH",
    "MAX_LENGTH",
    "MAX_NESTING",
    "MAX_NODES",
    "Expression",
    "compile_expression",
    "flat_to_numpy",
    "is_jagged",
    "kind_of",
    "quote_name",
    "unknown_name",
]

MAX_LENGTH = 10_000
"""Longest expression text accepted (characters)."""

MAX_NESTING = 50
"""Deepest nesting of brackets accepted (``((x))`` is 2)."""

_OPEN, _CLOSE = "([{", ")]}"


# --------------------------------------------------------------------------------------------------
# public API


class Expression:
    """A compiled, whitelisted expression. Call it on arrays to evaluate it.

    ``names`` is the set of branch names it reads. Calling it with an ``ak.Array`` of records (one
    field per branch) or a mapping ``name -> array`` returns a numpy array for a flat result and an
    awkward ``var * T`` array for a jagged one.
    """

    __slots__ = ("text", "names", "where", "_root", "_kinds")

    def __init__(self, text: str, names: frozenset[str], where: str | None, root: Any, kinds: tuple):
        self.text = text
        self.names = names
        self.where = where
        self._root = root
        self._kinds = kinds

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expression) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def kind(self, kinds: Mapping[str, str]) -> str:
        """The kind (``"flat"``/``"jagged"``) of the result, given the kinds of the branches read.

        Reductions (one-argument ``min max sum mean count len any all``) make a jagged operand flat;
        everything else is jagged as soon as one operand is.
        """
        return kind_from_tree(self._kinds, kinds)

    def evaluate(self, lookup: Callable[[str], Any], length: int | None = None) -> Any:
        """Evaluate with ``lookup(name) -> array``; a constant result is broadcast to ``length``."""
        root = self._root
        if callable(root):
            try:
                with np.errstate(all="ignore"):
                    out = root(lookup)
            except EvalFailure as exc:
                raise ExpressionError(self.text, exc.reason, col=exc.col, where=self.where) from None
        else:
            out = root
        if isinstance(out, ak.Array):
            out = flat_to_numpy(out)
        if length is not None and not isinstance(out, ak.Array) and np.ndim(out) == 0:
            out = np.full(length, out)
        return out

    def __call__(self, arrays: Any) -> ak.Array | np.ndarray:
        cache: dict[str, Any] = {}
        if isinstance(arrays, ak.Array):
            fields = arrays.fields
            available: Iterable[str] = fields
            length: int | None = len(arrays)

            def get(name: str) -> Any:
                if name not in fields:
                    raise KeyError(name)
                return arrays[name]

        elif isinstance(arrays, Mapping):
            available = arrays.keys()
            length = None
            for v in arrays.values():
                length = len(v) if hasattr(v, "__len__") else None
                break
            get = arrays.__getitem__
        else:
            raise TypeError(
                f"expected an ak.Array of records or a mapping of arrays, got {type(arrays).__name__}"
            )

        def lookup(name: str) -> Any:
            try:
                return cache[name]
            except KeyError:
                pass
            try:
                value = get(name)
            except KeyError:
                raise unknown_name(name, self.where or "the arrays", available,
                                   f"in expression {self.text!r}") from None
            if isinstance(value, ak.Array):
                value = flat_to_numpy(value)
            elif not isinstance(value, np.ndarray):
                value = np.asarray(value)
            cache[name] = value
            return value

        return self.evaluate(lookup, length)


def _line_starts(text: str) -> list[int]:
    starts = [0]
    for i, ch in enumerate(text):
        if ch == "\n":
            starts.append(i + 1)
    return starts


def _check_brackets(text: str, where: str | None) -> None:
    """Refuse brackets nested deeper than MAX_NESTING, on the text: CPython's parser recurses on them and
    fails at about 200 levels with a RecursionError or a MemoryError, and deep nesting is never needed."""
    depth = 0
    for i, ch in enumerate(text):
        if ch in _OPEN:
            depth += 1
            if depth > MAX_NESTING:
                raise limit_error(text, f"brackets are nested too deeply (more than {MAX_NESTING} levels); "
                                  "split the expression into new branches", i, where)
        elif ch in _CLOSE:
            depth -= 1


def compile_expression(text: str, names: Iterable[str] | None = None, where: str | None = None) -> Expression:
    """Compile ``text`` into an :class:`Expression`, or raise :class:`ExpressionError`.

    ``names``: the branch names that exist; an identifier outside them (and not a function or
    ``pi``) raises :class:`BranchNotFoundError` with close spellings. ``where`` (e.g.
    ``"new_branch.log_E.def"``) is quoted in error messages.
    """
    if not isinstance(text, str):
        raise ExpressionError(
            repr(text), f"an expression must be a string, not {type(text).__name__}", where=where
        )
    if len(text) > MAX_LENGTH:
        raise ExpressionError(
            text[:80] + "...",
            f"expression is too long ({len(text)} characters; at most {MAX_LENGTH})",
            where=where,
        )
    if not text.strip():
        raise ExpressionError(text, "the expression is empty", where=where)
    _check_brackets(text, where)
    # quoted names, && || ! -> parseable text, with a map back to the user's columns
    rewritten = rewrite(text, where)
    body = rewritten.body
    starts = _line_starts(body)
    try:
        tree = ast.parse(body, mode="eval")
    except SyntaxError as exc:
        line = (exc.lineno or 1) - 1
        offset = max((exc.offset or 1) - 1, 0)
        col = (starts[line] if 0 <= line < len(starts) else 0) + offset
        col = rewritten.source_col[min(col, len(body))]
        raise ExpressionError(text, f"syntax error: {exc.msg}", col=col, where=where) from None
    except (RecursionError, MemoryError):
        # the parser's own stack: operators chained thousands deep (- - - ... x)
        raise limit_error(text, "expression is nested too deeply for the parser", None, where) from None
    except ValueError as exc:  # e.g. a null character
        raise ExpressionError(text, f"cannot be parsed: {exc}", where=where) from None

    known = frozenset(names) if names is not None else None
    compiler = Compiler(text, rewritten, known, where, starts)
    try:
        compiler.check_size(tree.body)
        root, kinds = compiler.build(tree.body)
    except RecursionError:
        raise limit_error(text, "expression is nested too deeply", None, where) from None
    return Expression(text, frozenset(compiler.used), where, root, kinds)
