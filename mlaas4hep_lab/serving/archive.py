"""What users upload: the bounded, streaming extraction of a bundle tarball (:mod:`mlaas4hep_lab.untar`)
with the service's checks of the bundle's JSON files as they arrive, and size checks before parsing."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from mlaas4hep_lab.json_depth import DEFAULT_MAX_DEPTH
from mlaas4hep_lab.serving import BadRequest, ServingError, TooLarge
from mlaas4hep_lab.serving.bodies import check_json_depth, load_json
from mlaas4hep_lab.untar import ArchiveTooLarge, ArchiveWriteError, TarLimits, UnsafeArchiveError, extract

__all__ = ["extract_upload", "check_bundle_json", "check_bundle_sizes", "file_sha256", "MAX_JSON_BYTES",
           "MAX_FEATURES"]

MAX_JSON_BYTES = 64 << 20  # per JSON file of a bundle
MAX_FEATURES = 1_000_000  # model inputs (flat + padded jagged slots)


def extract_upload(archive: Path, target: Path, limits: TarLimits) -> Path:
    """Unpack an uploaded tarball into ``target`` in one pass under ``limits``, checking manifest.json and
    specs.json the moment each is unpacked (bundles written by ``write_bundle`` have them first, before
    any payload). Returns the bundle folder. Raises 400 for an unsafe or broken archive, 413 for a cap,
    507 when the store's disk cannot take it; ``target`` is the caller's to remove."""
    limits = dataclasses.replace(limits, json_bytes=min(limits.json_bytes, MAX_JSON_BYTES))
    try:
        out = extract(archive, target, limits, inspect=check_bundle_json, label="the upload")
    except ArchiveTooLarge as err:
        too_large = TooLarge(str(err))
        too_large.what = err.what  # which cap: the store tells its quota's room from the service's caps
        raise too_large from None
    except UnsafeArchiveError as err:
        raise BadRequest(str(err)) from None
    except ArchiveWriteError as err:
        raise ServingError(f"the store cannot take this upload now: {err.strerror or err}", 507) from None
    if not (out.root / "manifest.json").is_file():
        raise BadRequest("the archive holds no model bundle (manifest.json at its top or in its one folder)")
    return out.root


def check_bundle_json(path: str, data: bytes) -> None:
    """The checks of a bundle's JSON file (``path`` in the archive) that need no other file: none nested
    deeper than :data:`~mlaas4hep_lab.json_depth.DEFAULT_MAX_DEPTH` (the service parses them later, e.g.
    for ``GET /params``); manifest.json an object whose ``features`` name the inputs; specs.json not
    asking for more than :data:`MAX_FEATURES` inputs."""
    try:
        check_json_depth(data, DEFAULT_MAX_DEPTH)
    except BadRequest as err:
        raise BadRequest(f"{path}: {err}") from None
    name = path.rsplit("/", 1)[-1]
    if name not in ("manifest.json", "specs.json"):
        return
    obj = load_json(data, DEFAULT_MAX_DEPTH, what=path)
    if not isinstance(obj, dict):
        raise BadRequest(f"{path} must hold a JSON object")
    if name == "specs.json":
        _check_width(obj, path)
        return
    features = obj.get("features")
    if not isinstance(features, list) or not features or not all(isinstance(f, str) for f in features):
        raise BadRequest(f"{path}: 'features' must be a non-empty list of names")
    if len(features) > MAX_FEATURES:
        raise BadRequest(f"{path} lists {len(features)} features, more than this service takes ({MAX_FEATURES})")
    for key, kind in (("name", str), ("inference", dict), ("labels", dict)):
        if obj.get(key) is not None and not isinstance(obj[key], kind):
            raise BadRequest(f"{path}: {key!r} must be a {'string' if kind is str else 'JSON object'}")


def check_bundle_sizes(path: Path) -> None:
    """Sizes a stored bundle may not exceed before it is parsed (JSON files, feature count): a specs
    file asking for a billion padded slots would otherwise exhaust the memory while being loaded."""
    for name in ("manifest.json", "specs.json", "params.json", "preproc.json"):
        file = path / name
        if file.is_file() and file.stat().st_size > MAX_JSON_BYTES:
            raise BadRequest(f"{name} is larger than {MAX_JSON_BYTES} bytes")
    try:
        specs = json.loads((path / "specs.json").read_text())
    except (OSError, ValueError) as err:
        raise BadRequest(f"specs.json is missing or malformed: {err}") from err
    _check_width(specs, "specs.json")


def _check_width(specs, where: str) -> None:
    try:
        jdim, fkeys = specs.get("jdim", {}), specs.get("fkeys", [])
        if any(int(v) < 0 for v in jdim.values()):
            raise ValueError("negative jagged length")
        width = len(fkeys) + sum(int(v) for v in jdim.values())
    except (ValueError, TypeError, AttributeError) as err:
        raise BadRequest(f"{where} is malformed: {err}") from err
    if width > MAX_FEATURES:
        raise BadRequest(f"the bundle has {width} features, more than this service takes ({MAX_FEATURES})")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
