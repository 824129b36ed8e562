"""Request bodies before any parser sees them: the nesting depth of a JSON document, measured on its bytes.

A JSON parser that recurses (or one with a bug, as orjson 3.8 had) can be crashed by a body of 100,000
nested ``[`` or ``{``: a segfault takes the whole service down, for every user. So the depth is measured
on the raw bytes first (:mod:`mlaas4hep_lab.json_depth`, vectorised with numpy), and a body deeper than
the limit is refused with a 400 before it is parsed. A document with fewer brackets than the limit cannot
be nested deeper, so the common small body costs two ``bytes.count``.

Example::

    obj = load_json(b'{"values": [[1, 2]]}', max_depth=32)
    json_depth(b'[[["]]]"]]]')     # 3
"""

from __future__ import annotations

from typing import Any

import orjson

from mlaas4hep_lab.json_depth import json_depth, too_deep
from mlaas4hep_lab.serving import BadRequest

__all__ = ["json_depth", "check_json_depth", "load_json"]


def check_json_depth(body: bytes, limit: int) -> None:
    """Raise :class:`BadRequest` when ``body`` nests arrays/objects deeper than ``limit`` levels."""
    depth = too_deep(body, limit)
    if depth:
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
