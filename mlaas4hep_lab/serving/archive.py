"""Checks on what users upload, before anything is extracted or parsed: tar members and bundle sizes."""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from mlaas4hep_lab.serving import BadRequest

__all__ = ["check_archive", "check_bundle_sizes", "file_sha256", "MAX_JSON_BYTES", "MAX_FEATURES"]

MAX_JSON_BYTES = 64 << 20  # per JSON file of a bundle
MAX_FEATURES = 1_000_000  # model inputs (flat + padded jagged slots)


def check_archive(path: Path, max_members: int, max_bytes: int) -> None:
    """Refuse a tarball with absolute or ``..`` paths, links, devices, sparse files, too many members or
    too much content. Reads the headers one by one, so a tar of a million members costs no memory."""
    try:
        with tarfile.open(path, "r:*") as tar:
            count = total = 0
            for member in tar:
                count += 1
                if count > max_members:
                    raise BadRequest(f"the archive has more than {max_members} members")
                name = member.name
                parts = PurePosixPath(name.replace("\\", "/")).parts
                if (not name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts
                        or "\x00" in name):
                    raise BadRequest(f"refused archive member {name!r}: absolute path or '..'")
                if member.issym() or member.islnk():
                    raise BadRequest(f"refused archive member {name!r}: links are not allowed")
                if member.isdev():
                    raise BadRequest(f"refused archive member {name!r}: devices and FIFOs are not allowed")
                if member.issparse() or not (member.isfile() or member.isdir()):
                    raise BadRequest(f"refused archive member {name!r}: only plain files and folders")
                total += member.size
                if total > max_bytes:
                    raise BadRequest(f"the archive unpacks to more than {max_bytes} bytes")
            if count == 0:
                raise BadRequest("the archive is empty")
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as err:
        if isinstance(err, BadRequest):
            raise
        raise BadRequest(f"not a readable tar archive (.tar, .tar.gz): {err}") from err


def check_bundle_sizes(path: Path) -> None:
    """Sizes an uploaded bundle may not exceed before it is parsed (JSON files, feature count): a specs
    file asking for a billion padded slots would otherwise exhaust the memory while being loaded."""
    for name in ("manifest.json", "specs.json", "params.json", "preproc.json"):
        file = path / name
        if file.is_file() and file.stat().st_size > MAX_JSON_BYTES:
            raise BadRequest(f"{name} is larger than {MAX_JSON_BYTES} bytes")
    try:
        specs = json.loads((path / "specs.json").read_text())
        jdim, fkeys = specs.get("jdim", {}), specs.get("fkeys", [])
        width = len(fkeys) + sum(int(v) for v in jdim.values())
        if any(int(v) < 0 for v in jdim.values()):
            raise ValueError("negative jagged length")
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise BadRequest(f"specs.json is missing or malformed: {err}") from err
    if width > MAX_FEATURES:
        raise BadRequest(f"the bundle has {width} features, more than this service takes ({MAX_FEATURES})")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
