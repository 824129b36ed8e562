"""Names and versions of stored models: what a usable name is, what ``latest`` means, ``owner:name`` refs."""

from __future__ import annotations

import datetime as _dt
import re
from typing import Any

__all__ = ["NAME_PATTERN", "NAME", "latest_version", "split_ref", "version_key", "now"]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$"
NAME = re.compile(NAME_PATTERN)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def version_key(v: str) -> tuple:
    return (0, int(v), v) if v.isdigit() else (1, 0, v)


def latest_version(versions: dict[str, dict[str, Any]]) -> str | None:
    """What ``latest`` means: the highest numbered version; with none numbered, the most recently
    uploaded one (``seq`` counts a model's uploads); None for no versions."""
    numbered = [v for v in versions if v.isdigit()]
    if numbered:
        return max(numbered, key=version_key)
    if not versions:
        return None
    return max(versions, key=lambda v: (versions[v].get("seq", 0), versions[v].get("uploaded") or "", v))


def split_ref(ref: str, default_owner: str) -> tuple[str, str]:
    """``name`` -> (default_owner, name); ``owner:name`` or ``owner/name`` -> (owner, name)."""
    for sep in (":", "/"):
        if sep in ref:
            owner, _, name = ref.partition(sep)
            return owner, name
    return default_owner, ref
