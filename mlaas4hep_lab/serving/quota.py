"""Per-owner quotas of the model store: bytes of unpacked bundles and number of model versions, over all
of an owner's models. An upload that would go past one is refused with 413 (:class:`QuotaExceeded`): a
4xx because the user can fix it (delete versions; clients do not retry it), saying what is used and what
the limit is. A version an upload replaces is not counted twice; a deleted one frees its share at once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlaas4hep_lab.serving import TooLarge
from mlaas4hep_lab.serving.files import human_size

__all__ = ["Quota", "QuotaExceeded"]

Index = dict[tuple[str, str], dict[str, Any]]  # (owner, name) -> model state, as the store keeps them


class QuotaExceeded(TooLarge):
    """An upload that would take an owner past their quota of bytes or of versions (413)."""


@dataclass
class Quota:
    """Limits per owner (0: none)."""

    bytes: int = 0
    versions: int = 0

    def usage(self, index: Index, owner: str) -> dict[str, int]:
        """What ``owner`` stores (bytes, versions) and the limits (0: none)."""
        used = n = 0
        for (o, _), state in index.items():
            if o == owner:
                n += len(state["versions"])
                used += sum(info.get("bytes") or 0 for info in state["versions"].values())
        return {"bytes": used, "versions": n, "quota_bytes": self.bytes, "quota_versions": self.versions}

    def room(self, index: Index, owner: str, name: str | None, version: str | None, cap: int) -> int:
        """Bytes ``owner`` may still add with an upload (at most ``cap``), known before it is unpacked;
        raises when there is none, or when the upload is sure to be one version too many. With no name
        yet (it may come from the manifest), a version of that number in any of the owner's models may
        be the one replaced: the exact check is :meth:`check`, on activation."""
        usage = self.usage(index, owner)
        replaced = [state["versions"][str(version)] for (o, n), state in index.items()
                    if o == owner and version is not None and str(version) in state["versions"]
                    and (name is None or n == name)]
        if self.versions and not replaced and usage["versions"] >= self.versions:
            raise self.error(usage, owner, "one more version")
        if not self.bytes:
            return cap
        room = self.bytes - usage["bytes"] + max((info.get("bytes") or 0 for info in replaced), default=0)
        if room <= 0:
            raise self.error(usage, owner, "more bytes")
        return min(room, cap)

    def check(self, index: Index, owner: str, size: int, replaced: dict[str, Any] | None) -> None:
        """Refuse an upload of ``size`` bytes, replacing the version ``replaced`` (or adding one)."""
        usage = self.usage(index, owner)
        if self.versions and replaced is None and usage["versions"] + 1 > self.versions:
            raise self.error(usage, owner, "one more version")
        freed = (replaced or {}).get("bytes") or 0
        if self.bytes and usage["bytes"] - freed + size > self.bytes:
            raise self.error(usage, owner, human_size(size) + (f" in place of {human_size(freed)}" if freed else ""))

    def error(self, usage: dict[str, int], owner: str, need: str) -> QuotaExceeded:
        limits = " and ".join([human_size(self.bytes) if self.bytes else "unlimited bytes",
                               f"{self.versions} versions" if self.versions else "unlimited versions"])
        return QuotaExceeded(
            f"quota exceeded for user {owner!r}: this upload needs {need}; you store {human_size(usage['bytes'])} "
            f"in {usage['versions']} model versions, and the limits are {limits}. Delete versions you no longer "
            "need (DELETE /v2/models/NAME/versions/V) or ask the service's admins for a larger quota")
