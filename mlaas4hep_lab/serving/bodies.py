"""Request bodies before any parser sees them: the nesting depth of a JSON document, measured on its bytes.

A JSON parser that recurses (or one with a bug, as orjson 3.8 had) can be crashed by a body of 100,000
nested ``[`` or ``{``: a segfault takes the whole service down, for every user. So the depth is measured
on the raw bytes first, vectorised with numpy (brackets inside strings do not count, escaped quotes are
honoured), and a body deeper than the limit is refused with a 400 before it is parsed. A document with
fewer brackets than the limit cannot be nested deeper, so the common small body costs two ``bytes.count``.

Example::

    obj = load_json(b'{"values": [[1, 2]]}', max_depth=32)
    json_depth(b'[[["]]]"]]]')     # 3
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from mlaas4hep_lab.serving import BadRequest

__all__ = ["json_depth", "check_json_depth", "load_json"]

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


def check_json_depth(body: bytes, limit: int) -> None:
    """Raise :class:`BadRequest` when ``body`` nests arrays/objects deeper than ``limit`` levels."""
    if body.count(b"[") + body.count(b"{") <= limit:  # too few brackets to be nested deeper
        return
    depth = json_depth(body)
    if depth > limit:
        raise BadRequest(f"JSON nested {depth} levels deep; this service takes at most {limit}")


def load_json(body: bytes, max_depth: int, what: str = "body") -> Any:
    """Parse a JSON body (orjson) after checking its nesting depth on the bytes; 400 when it is bad."""
    if not body:
        raise BadRequest(f"empty {what}: a JSON document is needed")
    check_json_depth(body, max_depth)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise BadRequest(f"{what} is not valid JSON: {err}") from None
