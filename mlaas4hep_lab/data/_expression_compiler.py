"""The expression compiler: checks an :mod:`ast` tree against the whitelist and builds closures.

:class:`Compiler` walks the tree that :func:`~mlaas4hep_lab.data.expressions.compile_expression`
parses, rejects every node type, operator and name outside the expression language (with the
column of the offending text), folds constant parts and returns a tree of Python closures that
call the numpy/awkward implementations of :mod:`mlaas4hep_lab.data._expression_functions` on a
``lookup(name) -> array`` environment, together with a *kind tree* from which
:func:`kind_from_tree` tells whether the result is flat or jagged before any data is read.

The cost of an expression is bounded before anything is built: :meth:`Compiler.check_size` limits the
nodes (``MAX_NODES``) and the nesting (``MAX_DEPTH``) of the tree, without recursion. Constant parts
are folded with bounded arithmetic: a power is sized with logarithms before it is computed
(``9**9**9**9`` is refused, not attempted), an integer result beyond int64 becomes a float as an integer
literal beyond int64 does, and a constant part whose value is not a finite 64-bit float (``10**400``,
``1e308*10``, ``1/0``, ``log(0)``) is refused with the reason.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from mlaas4hep_lab.data._expression_functions import (
    ALLOWED_FUNCTIONS,
    BINARY_OPERATORS,
    COMPARISONS,
    CONSTANTS,
    FUNCTIONS,
    UNARY_OPERATORS,
)
from mlaas4hep_lab.data._expression_text import Rewritten, quote_name
from mlaas4hep_lab.errors import BranchNotFoundError, ExpressionError, close_matches

__all__ = ["MAX_DEPTH", "MAX_NODES", "Compiler", "EvalFailure", "kind_from_tree", "limit_error", "unknown_name"]

MAX_DEPTH = 100
"""Deepest nesting of syntax nodes accepted."""

MAX_NODES = 1000
"""Most syntax nodes (names, numbers, operations, calls) in one expression: each becomes a closure that
runs on every chunk, so their number bounds the work per event."""

_FLOAT_MAX = float(np.finfo(np.float64).max)
_LOG10_FLOAT_MAX = math.log10(_FLOAT_MAX)


def _exact_int(what: str, args: list) -> int | None:
    """The exact integer value of the operations whose int64 result can wrap around (None for the others,
    which stay in range: & | ^ ~, comparisons, min/max). Cheap: the operands are int64 and a power has
    been sized first."""
    a = [int(v) for v in args]
    if what == "'+'":
        return a[0] + a[1] if len(a) == 2 else a[0]
    if what == "'-'":
        return a[0] - a[1] if len(a) == 2 else -a[0]
    if what == "'*'":
        return a[0] * a[1]
    if what == "'**'":
        return a[0] ** a[1] if a[1] >= 0 else None
    if what == "'//'":
        return a[0] // a[1] if a[1] else None
    if what == "abs()":
        return abs(a[0])
    return None


def limit_error(text: str, reason: str, col: int | None = None, where: str | None = None) -> ExpressionError:
    """An expression past one of the size limits: quoted whole with a caret when short, else its start and
    the column (a message that repeats 10,000 characters twice helps nobody)."""
    if len(text) <= 200:
        return ExpressionError(text, reason, col=col, where=where)
    at = "" if col is None else f" (at column {col + 1})"
    return ExpressionError(text[:80] + "...", reason + at, where=where)


def unknown_name(name: str, where: str, available, context: str = "") -> BranchNotFoundError:
    """BranchNotFoundError for a name no branch has, suggesting names as an expression writes them:
    the members of an object named ``name`` (``Muon`` -> `` `Muon.PT` ``, ``Info`` -> `` `Info/runNum` ``)
    first, else the closest spellings; with a reminder of the backticks when a suggestion needs them."""
    available = sorted(set(available))
    err = BranchNotFoundError(name, where, available, context)
    members = [a for a in available if a.startswith((name + ".", name + "/"))]
    hits = members[:5] or close_matches(name, available, n=3)
    head, _, attr = name.rpartition(".")
    attribute = bool(head) and head in available  # x.real: attribute access, not a branch name
    if members or attribute or any(not h.isidentifier() for h in hits):
        msg = f"unknown name {quote_name(name)} in {where}" + (f" ({context})" if context else "")
        if attribute:
            msg += f"; no branch is called {name!r}, and attribute access ('.{attr}') is not allowed"
        if hits:
            msg += f"; did you mean {', '.join(quote_name(h) for h in hits)}?"
        msg += " Write names that contain '.' or '/' between backticks, e.g. `Info/runNum`."
        err.args = (msg,)
    return err


class EvalFailure(Exception):
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
            raise EvalFailure(col, f"{what} failed: {exc}") from exc

    return guarded


class Compiler:
    """Checks an ``ast`` tree against the whitelist and builds the closure tree."""

    def __init__(self, text: str, rewritten: Rewritten, names: frozenset[str] | None, where: str | None,
                 line_starts: list[int]):
        # ``text`` is what the user wrote (quoted in messages); the tree is parsed from ``rewritten.body``
        self.text, self.known, self.where = text, names, where
        self.body, self.quoted, self.source_col = rewritten.body, rewritten.quoted, rewritten.source_col
        self.line_starts = line_starts
        self.used: set[str] = set()
        self.kind_tree: Any = None

    # positions ------------------------------------------------------------------------------
    def col(self, node: ast.AST, end: bool = False) -> int:
        """The column of ``node`` (or of its end) in the user's text."""
        lineno = getattr(node, "end_lineno" if end else "lineno", 1) or 1
        offset = getattr(node, "end_col_offset" if end else "col_offset", 0) or 0
        start = self.line_starts[min(lineno, len(self.line_starts)) - 1]
        line = self.body[start:]
        # ast offsets count UTF-8 bytes; convert to characters
        chars = len(line.encode("utf-8")[:offset].decode("utf-8", errors="ignore"))
        return self.source_col[min(start + chars, len(self.source_col) - 1)]

    def fail(self, node: ast.AST, reason: str, end: bool = False) -> ExpressionError:
        return ExpressionError(self.text, reason, col=self.col(node, end), where=self.where)

    def snippet(self, node: ast.AST) -> str:
        text = self.text[self.col(node): self.col(node, end=True)] or "?"
        return text if len(text) <= 60 else text[:57] + "..."

    # cost -----------------------------------------------------------------------------------
    def check_size(self, root: ast.AST) -> None:
        """Refuse a tree with more than ``MAX_NODES`` nodes or deeper than ``MAX_DEPTH``, walking it
        with a stack (a recursive walk would itself fail on the trees this is meant to refuse)."""
        stack, count = [(root, 0)], 0
        while stack:
            node, depth = stack.pop()
            if depth > MAX_DEPTH:
                raise limit_error(self.text, f"expression is nested too deeply (more than {MAX_DEPTH} levels "
                                  "of operations and calls); split it into new branches", self.col(node),
                                  self.where)
            count += 1
            if count > MAX_NODES:
                raise limit_error(self.text, f"expression is too large (more than {MAX_NODES} names, numbers, "
                                  "operations and calls); split it into new branches (preproc.json "
                                  "new_branch) and combine those", where=self.where)
            stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node) if isinstance(child, ast.expr))

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
        if isinstance(node, ast.Attribute):
            return self.dotted(node)
        if isinstance(node, ast.BinOp):
            op = BINARY_OPERATORS.get(type(node.op))
            if op is None:
                raise self.fail(
                    node, f"operator {type(node.op).__name__} is not allowed; use + - * / // % ** & | ^"
                )
            left, lk = self.build(node.left, d)
            right, rk = self.build(node.right, d)
            return self.combine(node, f"'{op[0]}'", op[1], [left, right]), ("op", lk, rk)
        if isinstance(node, ast.UnaryOp):
            op = UNARY_OPERATORS[type(node.op)]
            if isinstance(node.op, ast.Invert) and self.text[self.col(node):self.col(node) + 1] == "!":
                op = UNARY_OPERATORS[ast.Not]  # ROOT's '!' (rewritten as '~' for its precedence)
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
            if v.bit_length() > 1024:   # beyond float64's largest value, 1.8e308
                raise self.fail(node, f"the number {self.snippet(node)} is too large (at most {_FLOAT_MAX:.4g})")
            return np.float64(v), ("flat",)
        if isinstance(v, float):
            if not math.isfinite(v):
                raise self.fail(node, f"the number {self.snippet(node)} is too large (at most {_FLOAT_MAX:.4g})")
            return np.float64(v), ("flat",)
        if isinstance(v, (str, bytes)):
            raise self.fail(node, "strings are not allowed in an expression")
        if isinstance(v, complex):
            raise self.fail(node, "complex numbers are not allowed")
        raise self.fail(node, f"the constant {v!r} is not allowed")

    def name(self, node: ast.Name) -> tuple[Any, tuple]:
        name = node.id
        if name in self.quoted:  # `Muon.PT`: a branch, whatever it is called
            return self.branch(node, self.quoted[name])
        if name.startswith("_"):
            raise self.fail(node, f"names starting with '_' are not allowed ({name!r})")
        is_branch = self.known is not None and name in self.known
        if name in CONSTANTS and not is_branch:
            return np.float64(CONSTANTS[name]), ("flat",)
        if name in ALLOWED_FUNCTIONS and not is_branch:
            raise self.fail(node, f"{name!r} is a function; call it as {name}(...)")
        return self.branch(node, name)

    def dotted(self, node: ast.Attribute) -> tuple[Any, tuple]:
        """``Muon.PT`` written without backticks: the branch of that name (RDataFrame's spelling of a
        split object's member), since attribute access has no other meaning here."""
        parts, value = [node.attr], node.value
        while isinstance(value, ast.Attribute):
            parts.append(value.attr)
            value = value.value
        if not isinstance(value, ast.Name) or value.id in self.quoted:
            raise self.reject(node)
        parts.append(value.id)
        name = ".".join(reversed(parts))
        if any(p.startswith("_") for p in parts) and (self.known is None or name not in self.known):
            raise self.reject(node)  # x.__class__: attribute access, refused as such
        return self.branch(node, name)

    def branch(self, node: ast.AST, name: str) -> tuple[Any, tuple]:
        if self.known is not None and name not in self.known:
            raise unknown_name(name, self.where or "the expression", self.known, f"in expression {self.text!r}")
        self.used.add(name)
        return (lambda lookup: lookup(name)), ("name", name)

    def compare(self, node: ast.Compare, d: int) -> tuple[Any, tuple]:
        for i, op in enumerate(node.ops):
            if type(op) not in COMPARISONS:
                what = {ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in"}.get(
                    type(op), "?"
                )
                raise self.fail(
                    node.comparators[i], f"the comparison '{what}' is not allowed; use < <= > >= == !="
                )
        items = [self.build(node.left, d)] + [self.build(c, d) for c in node.comparators]
        steps = [(COMPARISONS[type(op)], items[i][0], items[i + 1][0]) for i, op in enumerate(node.ops)]
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
            except EvalFailure as exc:
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
                raise EvalFailure(col, f"'{sym}' failed: {exc}") from exc
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
        func, lo, hi, reduces = FUNCTIONS[fname]
        n = len(node.args)
        if n < lo or (hi is not None and n > hi):
            want = str(lo) if lo == hi else (f"{lo} or more" if hi is None else f"{lo} to {hi}")
            raise self.fail(node, f"{fname}() takes {want} argument{'s' if want != '1' else ''}, got {n}")
        parts = [self.build(a, d) for a in node.args]
        kind = ("reduce" if reduces and n == 1 else "op", *(k for _, k in parts))
        return self.combine(node, f"{fname}()", func, [v for v, _ in parts]), kind

    def fold(self, node: ast.AST, what: str, guarded: Callable[..., Any], args: list) -> Any:
        """The value of a constant part, computed with bounded cost and checked: a power is sized with
        logarithms first; an int64 result that wrapped around becomes the float it should be; a value
        that is not a finite float64 is refused."""
        if what == "'**'":
            base, exponent = abs(float(args[0])), float(args[1])
            digits = exponent * math.log10(base) if base not in (0.0, 1.0) else 0.0
            if digits > _LOG10_FLOAT_MAX:
                raise self.fail(node, f"the constant {self.snippet(node)} is too large (about 10**{digits:.3g}; "
                                      f"at most {_FLOAT_MAX:.4g})")
        with np.errstate(all="ignore"):
            value = guarded(*args)
            if isinstance(value, np.integer) and all(isinstance(a, (np.integer, np.bool_)) for a in args):
                exact = _exact_int(what, args)
                if exact is not None and not -(2**63) <= exact < 2**63:
                    try:
                        value = np.float64(float(exact))
                    except OverflowError:
                        raise self.fail(node, f"the constant {self.snippet(node)} is too large (at most "
                                              f"{_FLOAT_MAX:.4g})") from None
        try:
            finite = bool(np.all(np.isfinite(value)))
        except TypeError:
            finite = True
        if not finite:
            raise self.fail(node, f"the constant {self.snippet(node)} gives {value} (not a finite number; at most "
                                  f"{_FLOAT_MAX:.4g}); write the value you mean")
        return value

    def combine(self, node: ast.AST, what: str, func: Callable[..., Any], args: list) -> Any:
        guarded = _guard(self.col(node), what, func)
        if not any(callable(a) for a in args):
            # constant folding, so errors in constant parts are found at compile time
            try:
                return self.fold(node, what, guarded, args)
            except EvalFailure as exc:
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


def kind_from_tree(tree: tuple, kinds: Mapping[str, str]) -> str:
    tag = tree[0]
    if tag == "flat":
        return "flat"
    if tag == "name":
        return "jagged" if kinds.get(tree[1]) == "jagged" else "flat"
    inner = [kind_from_tree(t, kinds) for t in tree[1:]]
    if tag == "reduce":
        return "flat"
    return "jagged" if "jagged" in inner else "flat"
