"""Safe expressions over branches: new-branch definitions and cuts of preproc.json.

An expression such as ``log(partonE) * 2``, ``1 <= nJets <= 16`` or ``sum(Jet_pt > 30) >= 2`` is
parsed with :func:`ast.parse`, checked against a whitelist of node types and functions, and turned
into a small tree of Python closures that call numpy / awkward functions on whole arrays. The
user's text is never handed to Python's code evaluation machinery, so an expression can only do
arithmetic, comparisons and the whitelisted functions on the branches it names.

Semantics
---------
- Flat branches are 1-D arrays; jagged branches are ``var * T`` awkward arrays. Arithmetic between
  a flat and a jagged operand broadcasts the per-event value over the event's list.
- ``and`` / ``or`` / ``not`` are elementwise (like ``&`` / ``|`` / ``~``); comparisons may be chained
  in any direction (``1 <= x <= 16``, ``16 >= x >= 1``): the AND of the pairwise comparisons.
- ``min``/``max`` with two or more arguments are elementwise; with one argument they, like
  ``sum mean count any all``, reduce each event's list (last axis) to one value. Empty lists give
  ``sum`` 0, ``count`` 0, ``any`` False, ``all`` True and NaN for ``min``/``max``/``mean``. On a flat
  argument the reductions are the identity (``count`` gives 1, ``any``/``all`` the truth value).
- Numerical problems follow numpy (``1/0`` is inf, ``log(-1)`` is NaN) with its warnings silenced.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import awkward as ak
import numpy as np

from mlaas4hep_lab.errors import BranchNotFoundError, ExpressionError, close_matches

__all__ = [
    "ALLOWED_FUNCTIONS",
    "CONSTANTS",
    "MAX_DEPTH",
    "MAX_LENGTH",
    "Expression",
    "compile_expression",
    "flat_to_numpy",
    "is_jagged",
    "kind_of",
]

MAX_LENGTH = 10_000
"""Longest expression text accepted (characters)."""

MAX_DEPTH = 100
"""Deepest nesting of syntax nodes accepted."""

CONSTANTS: dict[str, float] = {"pi": math.pi}


# --------------------------------------------------------------------------------------------------
# array helpers


def is_jagged(array: Any) -> bool:
    """True for an awkward array whose type has a variable-length (``var``) dimension."""
    if not isinstance(array, ak.Array):
        return False
    t = array.type.content
    while True:
        if isinstance(t, ak.types.ListType):
            return True
        if isinstance(t, (ak.types.RegularType, ak.types.OptionType)):
            t = t.content
            continue
        return False


def kind_of(array: Any) -> str:
    """``"jagged"`` or ``"flat"`` for an evaluated expression value."""
    return "jagged" if is_jagged(array) else "flat"


def _is_ak(x: Any) -> bool:
    return isinstance(x, ak.Array)


def flat_to_numpy(x: Any) -> Any:
    """A non-jagged awkward array as a numpy array (no copy for plain numeric data); else ``x``."""
    if isinstance(x, ak.Array) and not is_jagged(x):
        try:
            return ak.to_numpy(x, allow_missing=False)
        except (ValueError, TypeError):
            return x
    return x


def _nan_filled(x: Any) -> Any:
    """Fill the None of a reduction over empty lists with NaN."""
    return ak.fill_none(x, np.nan, axis=-1) if _is_ak(x) else x


# --------------------------------------------------------------------------------------------------
# operators and functions


def _power(a: Any, b: Any) -> Any:
    try:
        return np.power(a, b)
    except ValueError:
        # integers to negative integer powers: do it in floating point, as Python would
        return np.power(np.asarray(a, dtype=np.float64) if not _is_ak(a) else a * 1.0, b)


_BINARY: dict[type, tuple[str, Callable[[Any, Any], Any]]] = {
    ast.Add: ("+", np.add),
    ast.Sub: ("-", np.subtract),
    ast.Mult: ("*", np.multiply),
    ast.Div: ("/", np.true_divide),
    ast.FloorDiv: ("//", np.floor_divide),
    ast.Mod: ("%", np.remainder),
    ast.Pow: ("**", _power),
    ast.BitAnd: ("&", np.bitwise_and),
    ast.BitOr: ("|", np.bitwise_or),
    ast.BitXor: ("^", np.bitwise_xor),
}

_UNARY: dict[type, tuple[str, Callable[[Any], Any]]] = {
    ast.USub: ("-", np.negative),
    ast.UAdd: ("+", np.positive),
    ast.Not: ("not", np.logical_not),
    ast.Invert: ("~", np.invert),
}

_COMPARE: dict[type, tuple[str, Callable[[Any, Any], Any]]] = {
    ast.Lt: ("<", np.less),
    ast.LtE: ("<=", np.less_equal),
    ast.Gt: (">", np.greater),
    ast.GtE: (">=", np.greater_equal),
    ast.Eq: ("==", np.equal),
    ast.NotEq: ("!=", np.not_equal),
}


def _where(c: Any, a: Any, b: Any) -> Any:
    if is_jagged(c) or is_jagged(a) or is_jagged(b):
        # a flat condition or a scalar branch must be spread over each event's list first
        return ak.where(*ak.broadcast_arrays(c, a, b))
    if _is_ak(c) or _is_ak(a) or _is_ak(b):
        return ak.where(c, a, b)
    return np.where(c, a, b)


def _clip(x: Any, lo: Any, hi: Any) -> Any:
    return np.minimum(np.maximum(x, lo), hi)


def _reducer(name: str) -> Callable[[Any], Any]:
    """One-argument reduction over each event's list (last axis); identity on flat input."""

    def reduce(x: Any) -> Any:
        if not is_jagged(x):
            if name == "count":
                return (
                    np.ones(len(x), dtype=np.int64) if isinstance(x, (ak.Array, np.ndarray)) else np.int64(1)
                )
            if name in ("any", "all"):
                return np.not_equal(x, 0)
            return x
        if name == "min":
            return _nan_filled(ak.min(x, axis=-1))
        if name == "max":
            return _nan_filled(ak.max(x, axis=-1))
        if name == "mean":
            return _nan_filled(ak.mean(x, axis=-1))
        if name == "sum":
            return ak.sum(x, axis=-1)
        if name == "count":
            return ak.count(x, axis=-1)
        if name == "any":
            return ak.any(x, axis=-1)
        return ak.all(x, axis=-1)

    return reduce


def _min_or_max(name: str) -> Callable[..., Any]:
    pairwise = np.minimum if name == "min" else np.maximum
    reduce = _reducer(name)

    def func(*args: Any) -> Any:
        if len(args) == 1:
            return reduce(args[0])
        out = args[0]
        for a in args[1:]:
            out = pairwise(out, a)
        return out

    return func


# name -> (callable, minimum number of arguments, maximum number of arguments or None, reduces)
_FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int | None, bool]] = {
    "log": (np.log, 1, 1, False),
    "log10": (np.log10, 1, 1, False),
    "log1p": (np.log1p, 1, 1, False),
    "exp": (np.exp, 1, 1, False),
    "sqrt": (np.sqrt, 1, 1, False),
    "abs": (np.absolute, 1, 1, False),
    "sin": (np.sin, 1, 1, False),
    "cos": (np.cos, 1, 1, False),
    "tan": (np.tan, 1, 1, False),
    "arcsin": (np.arcsin, 1, 1, False),
    "arccos": (np.arccos, 1, 1, False),
    "arctan": (np.arctan, 1, 1, False),
    "arctan2": (np.arctan2, 2, 2, False),
    "hypot": (np.hypot, 2, 2, False),
    "sinh": (np.sinh, 1, 1, False),
    "cosh": (np.cosh, 1, 1, False),
    "tanh": (np.tanh, 1, 1, False),
    "floor": (np.floor, 1, 1, False),
    "ceil": (np.ceil, 1, 1, False),
    "where": (_where, 3, 3, False),
    "clip": (_clip, 3, 3, False),
    "min": (_min_or_max("min"), 1, None, True),
    "max": (_min_or_max("max"), 1, None, True),
    "sum": (_reducer("sum"), 1, 1, True),
    "mean": (_reducer("mean"), 1, 1, True),
    "count": (_reducer("count"), 1, 1, True),
    "any": (_reducer("any"), 1, 1, True),
    "all": (_reducer("all"), 1, 1, True),
}

ALLOWED_FUNCTIONS: frozenset[str] = frozenset(_FUNCTIONS)
"""Names that may be called in an expression."""


# --------------------------------------------------------------------------------------------------
# the compiled form: closures over an environment


class _EvalFailure(Exception):
    """Raised inside the closure tree; turned into an ExpressionError by Expression."""

    def __init__(self, col: int, reason: str):
        super().__init__(reason)
        self.col, self.reason = col, reason


_NUMERIC_ERRORS = (TypeError, ValueError, OverflowError, ZeroDivisionError, IndexError)

Lookup = Callable[[str], Any]
Node = Callable[[Lookup], Any]


def _guard(col: int, what: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(*args: Any) -> Any:
        try:
            return fn(*args)
        except _NUMERIC_ERRORS as exc:
            raise _EvalFailure(col, f"{what} failed: {exc}") from exc

    return guarded


class _Compiler:
    """Checks an ``ast`` tree against the whitelist and builds the closure tree."""

    def __init__(self, text: str, names: frozenset[str] | None, where: str | None, line_starts: list[int]):
        self.text, self.known, self.where = text, names, where
        self.line_starts = line_starts
        self.used: set[str] = set()
        self.kind_tree: Any = None

    # positions ------------------------------------------------------------------------------
    def col(self, node: ast.AST, end: bool = False) -> int:
        lineno = getattr(node, "end_lineno" if end else "lineno", 1) or 1
        offset = getattr(node, "end_col_offset" if end else "col_offset", 0) or 0
        start = self.line_starts[min(lineno, len(self.line_starts)) - 1]
        line = self.text[start:]
        # ast offsets count UTF-8 bytes; convert to characters
        chars = len(line.encode("utf-8")[:offset].decode("utf-8", errors="ignore"))
        return start + chars

    def fail(self, node: ast.AST, reason: str, end: bool = False) -> ExpressionError:
        return ExpressionError(self.text, reason, col=self.col(node, end), where=self.where)

    # compilation ----------------------------------------------------------------------------
    def build(self, node: ast.AST, depth: int = 0) -> tuple[Node | Any, tuple]:
        """Return (value-or-closure, kind-tree). A non-callable first item is a constant."""
        if depth > MAX_DEPTH:
            raise self.fail(node, f"expression is nested too deeply (more than {MAX_DEPTH} levels)")
        d = depth + 1
        if isinstance(node, ast.Constant):
            return self.constant(node)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.BinOp):
            op = _BINARY.get(type(node.op))
            if op is None:
                raise self.fail(
                    node, f"operator {type(node.op).__name__} is not allowed; use + - * / // % ** & | ^"
                )
            left, lk = self.build(node.left, d)
            right, rk = self.build(node.right, d)
            return self.combine(node, f"'{op[0]}'", op[1], [left, right]), ("op", lk, rk)
        if isinstance(node, ast.UnaryOp):
            op = _UNARY[type(node.op)]
            operand, k = self.build(node.operand, d)
            return self.combine(node, f"'{op[0]}'", op[1], [operand]), ("op", k)
        if isinstance(node, ast.BoolOp):
            func = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            word = "and" if isinstance(node.op, ast.And) else "or"
            parts = [self.build(v, d) for v in node.values]
            out = parts[0][0]
            for value, _ in parts[1:]:
                out = self.combine(node, f"'{word}'", func, [out, value])
            return out, ("op", *(k for _, k in parts))
        if isinstance(node, ast.Compare):
            return self.compare(node, d)
        if isinstance(node, ast.Call):
            return self.call(node, d)
        raise self.reject(node)

    def reject(self, node: ast.AST) -> ExpressionError:
        if isinstance(node, ast.Attribute):
            # point at the dot, not at the start of the object
            return self.fail(node.value, f"attribute access ('.{node.attr}') is not allowed", end=True)
        return self.fail(*self.rejection(node))

    def rejection(self, node: ast.AST) -> tuple[ast.AST, str]:
        if isinstance(node, ast.Subscript):
            return (
                node,
                "subscripts ('x[...]') are not allowed; use the reductions min max sum mean count any all",
            )
        if isinstance(node, ast.Lambda):
            return node, "lambdas are not allowed"
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            return node, "comprehensions are not allowed"
        if isinstance(node, ast.JoinedStr):
            return node, "f-strings are not allowed"
        if isinstance(node, ast.NamedExpr):
            return node, "assignment expressions (':=') are not allowed"
        if isinstance(node, ast.Starred):
            return node, "'*' arguments are not allowed"
        if isinstance(node, ast.IfExp):
            return node, "conditional expressions ('a if c else b') are not allowed; use where(c, a, b)"
        if isinstance(node, (ast.List, ast.Tuple, ast.Set, ast.Dict)):
            return node, f"{type(node).__name__.lower()} literals are not allowed"
        return node, f"{type(node).__name__} is not allowed in an expression"

    def constant(self, node: ast.Constant) -> tuple[Any, tuple]:
        v = node.value
        if isinstance(v, bool):
            return np.bool_(v), ("flat",)
        if isinstance(v, int):
            if -(2**63) <= v < 2**63:
                return np.int64(v), ("flat",)
            return np.float64(v), ("flat",)
        if isinstance(v, float):
            return np.float64(v), ("flat",)
        if isinstance(v, (str, bytes)):
            raise self.fail(node, "strings are not allowed in an expression")
        if isinstance(v, complex):
            raise self.fail(node, "complex numbers are not allowed")
        raise self.fail(node, f"the constant {v!r} is not allowed")

    def name(self, node: ast.Name) -> tuple[Any, tuple]:
        name = node.id
        if name.startswith("_"):
            raise self.fail(node, f"names starting with '_' are not allowed ({name!r})")
        is_branch = self.known is not None and name in self.known
        if name in CONSTANTS and not is_branch:
            return np.float64(CONSTANTS[name]), ("flat",)
        if name in ALLOWED_FUNCTIONS and not is_branch:
            raise self.fail(node, f"{name!r} is a function; call it as {name}(...)")
        if self.known is not None and not is_branch:
            raise BranchNotFoundError(
                name, self.where or "the expression", self.known, context=f"in expression {self.text!r}"
            )
        self.used.add(name)
        return (lambda lookup: lookup(name)), ("name", name)

    def compare(self, node: ast.Compare, d: int) -> tuple[Any, tuple]:
        for i, op in enumerate(node.ops):
            if type(op) not in _COMPARE:
                what = {ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in"}.get(
                    type(op), "?"
                )
                raise self.fail(
                    node.comparators[i], f"the comparison '{what}' is not allowed; use < <= > >= == !="
                )
        items = [self.build(node.left, d)] + [self.build(c, d) for c in node.comparators]
        steps = [(_COMPARE[type(op)], items[i][0], items[i + 1][0]) for i, op in enumerate(node.ops)]
        kinds = ("op", *(k for _, k in items))
        if len(steps) == 1:
            (sym, func), a, b = steps[0]
            return self.combine(node, f"'{sym}'", func, [a, b]), kinds
        # chained: evaluate every operand once, AND the pairwise comparisons
        col = self.col(node)
        operands = [v for v, _ in items]
        funcs = [entry for entry, _, _ in steps]
        if not any(callable(v) for v in operands):
            try:
                with np.errstate(all="ignore"):
                    return self.chain(col, funcs, operands), kinds
            except _EvalFailure as exc:
                raise ExpressionError(self.text, exc.reason, col=exc.col, where=self.where) from None

        def chained(lookup: Lookup) -> Any:
            values = [v(lookup) if callable(v) else v for v in operands]
            return self.chain(col, funcs, values)

        return chained, kinds

    @staticmethod
    def chain(col: int, funcs: list, values: list) -> Any:
        out = None
        for i, (sym, func) in enumerate(funcs):
            try:
                r = func(values[i], values[i + 1])
                out = r if out is None else np.logical_and(out, r)
            except _NUMERIC_ERRORS as exc:
                raise _EvalFailure(col, f"'{sym}' failed: {exc}") from exc
        return out

    def call(self, node: ast.Call, d: int) -> tuple[Any, tuple]:
        if node.keywords:
            kw = node.keywords[0]
            label = f"'{kw.arg}=' keyword arguments" if kw.arg else "'**' arguments"
            raise self.fail(kw, f"{label} are not allowed; pass arguments by position")
        for a in node.args:
            if isinstance(a, ast.Starred):
                raise self.fail(a, "'*' arguments are not allowed")
        if not isinstance(node.func, ast.Name):
            if isinstance(node.func, ast.Attribute):
                raise self.reject(node.func)
            raise self.fail(node, "only the whitelisted functions can be called, by their bare name")
        fname = node.func.id
        allowed = ", ".join(sorted(ALLOWED_FUNCTIONS))
        if fname not in ALLOWED_FUNCTIONS:
            close = close_matches(fname, ALLOWED_FUNCTIONS, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else "."
            raise self.fail(node, f"function {fname!r} is not allowed{hint} Allowed functions: {allowed}.")
        func, lo, hi, reduces = _FUNCTIONS[fname]
        n = len(node.args)
        if n < lo or (hi is not None and n > hi):
            want = str(lo) if lo == hi else (f"{lo} or more" if hi is None else f"{lo} to {hi}")
            raise self.fail(node, f"{fname}() takes {want} argument{'s' if want != '1' else ''}, got {n}")
        parts = [self.build(a, d) for a in node.args]
        kind = ("reduce" if reduces and n == 1 else "op", *(k for _, k in parts))
        return self.combine(node, f"{fname}()", func, [v for v, _ in parts]), kind

    def combine(self, node: ast.AST, what: str, func: Callable[..., Any], args: list) -> Any:
        guarded = _guard(self.col(node), what, func)
        if not any(callable(a) for a in args):
            # constant folding, so errors in constant parts are found at compile time
            try:
                with np.errstate(all="ignore"):
                    return guarded(*args)
            except _EvalFailure as exc:
                raise ExpressionError(self.text, exc.reason, col=exc.col, where=self.where) from None
        if len(args) == 1:
            (a,) = args
            return lambda lookup: guarded(a(lookup))
        if len(args) == 2:
            a, b = args
            if callable(a) and callable(b):
                return lambda lookup: guarded(a(lookup), b(lookup))
            if callable(a):
                return lambda lookup: guarded(a(lookup), b)
            return lambda lookup: guarded(a, b(lookup))
        return lambda lookup: guarded(*[x(lookup) if callable(x) else x for x in args])


def _kind_from_tree(tree: tuple, kinds: Mapping[str, str]) -> str:
    tag = tree[0]
    if tag == "flat":
        return "flat"
    if tag == "name":
        return "jagged" if kinds.get(tree[1]) == "jagged" else "flat"
    inner = [_kind_from_tree(t, kinds) for t in tree[1:]]
    if tag == "reduce":
        return "flat"
    return "jagged" if "jagged" in inner else "flat"


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

        Reductions (one-argument ``min max sum mean count any all``) make a jagged operand flat;
        everything else is jagged as soon as one operand is.
        """
        return _kind_from_tree(self._kinds, kinds)

    def evaluate(self, lookup: Callable[[str], Any], length: int | None = None) -> Any:
        """Evaluate with ``lookup(name) -> array``; a constant result is broadcast to ``length``."""
        root = self._root
        if callable(root):
            try:
                with np.errstate(all="ignore"):
                    out = root(lookup)
            except _EvalFailure as exc:
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
                raise BranchNotFoundError(
                    name, self.where or "the arrays", available, context=f"in expression {self.text!r}"
                ) from None
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
    # leading blanks would be an indentation error; parse without them and shift the columns
    lead = len(text) - len(text.lstrip(" \t"))
    body = text[lead:]
    starts = _line_starts(body)
    try:
        tree = ast.parse(body, mode="eval")
    except SyntaxError as exc:
        line = (exc.lineno or 1) - 1
        offset = max((exc.offset or 1) - 1, 0)
        col = (starts[line] if 0 <= line < len(starts) else 0) + offset
        col = min(col, len(body))
        raise ExpressionError(text, f"syntax error: {exc.msg}", col=lead + col, where=where) from None
    except (RecursionError, MemoryError):
        raise ExpressionError(text, "expression is nested too deeply", where=where) from None

    known = frozenset(names) if names is not None else None
    compiler = _Compiler(body, known, where, starts)
    try:
        root, kinds = compiler.build(tree.body)
    except ExpressionError as exc:
        if lead:
            col = None if exc.col is None else exc.col + lead
            raise ExpressionError(text, exc.reason, col=col, where=where) from None
        raise
    except RecursionError:
        raise ExpressionError(text, "expression is nested too deeply", where=where) from None
    return Expression(text, frozenset(compiler.used), where, root, kinds)
