"""Flat and jagged arrays: telling them apart, and flat awkward arrays as numpy.

A *flat* value has one number per event (a numpy array, or an awkward array without a variable-length
dimension); a *jagged* value has a list per event (an awkward ``var * T`` array). These helpers are
shared by the expression language and preproc.json; they are re-exported by
:mod:`mlaas4hep_lab.data.expressions`, the import path to use.
"""

from __future__ import annotations

from typing import Any

import awkward as ak

__all__ = ["flat_to_numpy", "is_jagged", "kind_of"]


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


def flat_to_numpy(x: Any) -> Any:
    """A non-jagged awkward array as a numpy array (no copy for plain numeric data); else ``x``."""
    if isinstance(x, ak.Array) and not is_jagged(x):
        try:
            return ak.to_numpy(x, allow_missing=False)
        except (ValueError, TypeError):
            return x
    return x
