"""Operators, functions and constants of the expression language, implemented with numpy/awkward.

The tables here map the syntax an expression may use to the array functions that carry it out:
``BINARY_OPERATORS``, ``UNARY_OPERATORS`` and ``COMPARISONS`` (keyed by :mod:`ast` node type, each
with the symbol quoted in error messages) and ``FUNCTIONS``, the whitelist of callable names with
their arities. The compiler (:mod:`mlaas4hep_lab.data._expression_compiler`) consults them; the
semantics are described in :mod:`mlaas4hep_lab.data.expressions`.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from typing import Any

import awkward as ak
import numpy as np

from mlaas4hep_lab.data._array_kinds import is_jagged

__all__ = [
    "ALLOWED_FUNCTIONS",
    "BINARY_OPERATORS",
    "COMPARISONS",
    "CONSTANTS",
    "FUNCTIONS",
    "UNARY_OPERATORS",
]

CONSTANTS: dict[str, float] = {"pi": math.pi}
"""Named constants an expression may use."""


def _is_ak(x: Any) -> bool:
    return isinstance(x, ak.Array)


def _nan_filled(x: Any) -> Any:
    """Fill the None of a reduction over empty lists with NaN."""
    return ak.fill_none(x, np.nan, axis=-1) if _is_ak(x) else x


def _power(a: Any, b: Any) -> Any:
    try:
        return np.power(a, b)
    except ValueError:
        # integers to negative integer powers: do it in floating point, as Python would
        return np.power(np.asarray(a, dtype=np.float64) if not _is_ak(a) else a * 1.0, b)


def _number(x: Any) -> Any:
    """Booleans as the integers 0 and 1 (numpy would add two truths into True, and refuses to subtract
    them): a comparison counts in arithmetic as in ROOT and in Python, ``(x > 0) + (x > 1)`` is 0, 1 or 2."""
    if isinstance(x, np.ndarray):
        return x.astype(np.int64) if x.dtype == np.bool_ else x
    if isinstance(x, (bool, np.bool_)):
        return int(x)
    if _is_ak(x) and str(ak.type(x)).endswith("bool"):
        return ak.values_astype(x, np.int64)
    return x


def _counting(op: Callable) -> Callable:
    if op.nin == 1:
        return lambda a: op(_number(a))
    return lambda a, b: op(_number(a), _number(b))


BINARY_OPERATORS: dict[type, tuple[str, Callable[[Any, Any], Any]]] = {
    ast.Add: ("+", _counting(np.add)),
    ast.Sub: ("-", _counting(np.subtract)),
    ast.Mult: ("*", _counting(np.multiply)),
    ast.Div: ("/", np.true_divide),
    ast.FloorDiv: ("//", np.floor_divide),
    ast.Mod: ("%", np.remainder),
    ast.Pow: ("**", _power),
    ast.BitAnd: ("&", np.bitwise_and),
    ast.BitOr: ("|", np.bitwise_or),
    ast.BitXor: ("^", np.bitwise_xor),
}

UNARY_OPERATORS: dict[type, tuple[str, Callable[[Any], Any]]] = {
    ast.USub: ("-", _counting(np.negative)),
    ast.UAdd: ("+", _counting(np.positive)),
    ast.Not: ("not", np.logical_not),
    ast.Invert: ("~", np.invert),
}

COMPARISONS: dict[type, tuple[str, Callable[[Any, Any], Any]]] = {
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


def _is_boolean(x: Any) -> bool:
    """True for booleans (a condition), flat or jagged."""
    if isinstance(x, (np.ndarray, np.generic)):
        return x.dtype == np.bool_
    if isinstance(x, bool):
        return True
    if not _is_ak(x):
        return False
    t = x.type.content
    while isinstance(t, (ak.types.ListType, ak.types.RegularType, ak.types.OptionType)):
        t = t.content
    return isinstance(t, ak.types.NumpyType) and t.primitive == "bool"


def _reducer(name: str) -> Callable[[Any], Any]:
    """One-argument reduction over each event's list (last axis); identity on flat input.

    ``count`` counts the true values of a condition (``count(Jet_pt > 30)``, as ROOT's ``Sum$``) and the
    elements of anything else; ``len`` always counts the elements (ROOT's ``Length$``).
    """

    def reduce(x: Any) -> Any:
        if name == "count" and _is_boolean(x):
            return ak.sum(x, axis=-1) if is_jagged(x) else np.asarray(x, dtype=np.int64)
        if not is_jagged(x):
            if name in ("count", "len"):
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
        if name in ("count", "len"):
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
FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int | None, bool]] = {
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
    "len": (_reducer("len"), 1, 1, True),
    "any": (_reducer("any"), 1, 1, True),
    "all": (_reducer("all"), 1, 1, True),
}

ALLOWED_FUNCTIONS: frozenset[str] = frozenset(FUNCTIONS)
"""Names that may be called in an expression."""
