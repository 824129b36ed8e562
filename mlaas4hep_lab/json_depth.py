"""The nesting depth of a JSON text, measured on its bytes before any parser sees them.

A JSON parser that recurses (Python's ``json``, PyJWT on a token's header) raises RecursionError on a
document of a thousand nested ``[``; one with a bug (orjson 3.8) crashed the process on 100,000. Services
and bundle loaders measure the depth first and refuse deep documents with their own clear error.

Example::

    json_depth(b'[[["]]]"]]]')     # 3: the brackets inside the string do not count
"""

from __future__ import annotations

import numpy as np

__all__ = ["json_depth", "too_deep", "DEFAULT_MAX_DEPTH"]

DEFAULT_MAX_DEPTH = 64   # far deeper than any params, preproc, specs, manifest or request we write

_QUOTE, _BACKSLASH = 34, 92
_OPEN, _CLOSE = 0x7B, 0x7D  # '{' and '}'; '[' and ']' become them with the 0x20 bit set


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in the JSON text ``body`` (0 for a scalar).

    Works on any bytes (also invalid JSON, where it gives the depth the brackets outside strings reach), in
    a few numpy passes over the bytes, then work on the brackets and quotes only: no recursion, no Python
    loop over the characters."""
    a = np.frombuffer(body, np.uint8)
    folded = a | 0x20
    opens = folded == _OPEN
    brackets = np.flatnonzero(opens | (folded == _CLOSE))
    if not brackets.size:
        return 0
    step = np.where(opens[brackets], 1, -1)
    quotes = np.flatnonzero(a == _QUOTE)
    if quotes.size:
        slashes = a == _BACKSLASH
        if slashes.any():
            # a quote preceded by an odd run of backslashes is escaped, not the end of a string
            idx = np.arange(a.size, dtype=np.int64)
            last_plain = np.maximum.accumulate(np.where(slashes, -1, idx))  # last non-backslash at or before i
            before = quotes[quotes > 0] - 1
            escaped = np.zeros(quotes.size, bool)
            escaped[quotes.size - before.size:] = ((before - last_plain[before]) & 1) == 1
            quotes = quotes[~escaped]
        # a bracket after an odd number of (real) quotes is inside a string: it does not count
        inside = (np.searchsorted(quotes, brackets) & 1).astype(bool)
        step[inside] = 0
    return int(np.cumsum(step).max(initial=0))


def too_deep(text: bytes | str, limit: int) -> int:
    """The depth of ``text`` when it nests deeper than ``limit`` levels, else 0. A text with fewer
    brackets than the limit cannot be nested deeper, so the common small document costs two counts."""
    data = text.encode() if isinstance(text, str) else bytes(text)
    if data.count(b"[") + data.count(b"{") <= limit:
        return 0
    depth = json_depth(data)
    return depth if depth > limit else 0
