"""Bounded, streaming extraction of tarballs: uploads to the inference service and ``Bundle.load``.

One pass over the archive. Each member's header is checked before anything of it is written (absolute
or ``..`` paths, links, devices, FIFOs, sparse files, duplicates, control characters in names), its
content is copied in 1 MiB blocks while the bytes actually written are counted, and the caps (members,
bytes per member, bytes in all, unpacked-to-packed ratio) stop the copy at the first byte over: whatever
the headers claim, the target folder never holds more than the caps. The decompressed stream itself is
capped too (headers included), and no single read may ask for more than :data:`MAX_READ` bytes, so a
pax or GNU long-name header claiming gigabytes is refused before Python allocates it.

Folders are created 0700 and files 0600 whatever modes the archive gives: an extracted bundle is read
by the process that extracted it and nobody else.

The small JSON files of a bundle (:data:`BUNDLE_JSON`, at the archive's top or in its one top folder)
are capped at ``json_bytes`` each and handed to ``inspect(relative_path, data)`` as soon as they are
written, before the members after them are read: ``write_bundle`` puts ``manifest.json`` first, so a
service refuses a bad manifest before it has unpacked any payload.

Example::

    out = extract("bundle.tar.gz", "/tmp/x", TarLimits(members=1000, total_bytes=1 << 30))
    out.root  # /tmp/x/bundle
"""

from __future__ import annotations

import bz2
import errno
import gzip
import io
import lzma
import os
import re
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlaas4hep_lab.errors import ConfigError, MLaaSError

__all__ = ["extract", "TarLimits", "Extracted", "UnsafeArchiveError", "ArchiveTooLarge", "ArchiveWriteError",
           "BUNDLE_JSON", "MAX_READ"]

BUNDLE_JSON = ("manifest.json", "specs.json", "params.json", "preproc.json", "metrics.json", "history.json")
CHUNK = 1 << 20
MAX_READ = 4 << 20  # the largest single read of the decompressed stream (a data block is CHUNK)
_HEADER_ALLOWANCE = 4096  # bytes of headers and padding per member (pax records of a long name included)
_BAD_CHAR = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)


class UnsafeArchiveError(ConfigError):
    """A tarball refused: unreadable, or a member that could escape the target or is not a plain file."""


class ArchiveTooLarge(UnsafeArchiveError):
    """A cap reached. ``what``: ``members``, ``member``, ``total``, ``ratio``, ``json`` or ``headers``;
    ``limit``: the cap; ``written``: content bytes written to the target when extraction stopped."""

    def __init__(self, message: str, what: str, limit: float, written: int):
        super().__init__(message)
        self.what, self.limit, self.written = what, limit, written


class ArchiveWriteError(MLaaSError, OSError):
    """The target could not be written (disk full, permissions): the archive is not at fault."""

    status = 507


@dataclass(frozen=True)
class TarLimits:
    """Caps on one extraction (bytes are content bytes, as written to disk)."""

    members: int = 10_000
    member_bytes: int = 2 << 30
    total_bytes: int = 2 << 30
    # unpacked bytes per packed byte of the archive file above which it is taken for a compression bomb;
    # checked once more than ratio_floor bytes are unpacked (small bundles of text compress well); 0: off
    ratio: float = 0.0
    ratio_floor: int = 16 << 20
    json_bytes: int = 64 << 20  # each of BUNDLE_JSON


@dataclass
class Extracted:
    """What :func:`extract` wrote: ``root`` (the one top folder, else the target), counts."""

    root: Path
    members: int
    bytes: int


def extract(archive: str | Path, target: str | Path, limits: TarLimits = TarLimits(),
            inspect: Callable[[str, bytes], None] | None = None, label: str | None = None) -> Extracted:
    """Extract ``archive`` (.tar, .tar.gz, .tar.bz2, .tar.xz) into ``target`` (created 0700 when missing)
    under ``limits``; ``inspect(path, data)`` sees each bundle JSON file as soon as it is complete and may
    raise to stop. Raises :class:`UnsafeArchiveError` (:class:`ArchiveTooLarge` for a cap) naming the
    member, with ``label`` (default: the archive's path) for the archive; what was written before stays
    in ``target`` for the caller to remove."""
    target = Path(target)
    _mkdir(target)
    label = str(archive) if label is None else label
    with open(archive, "rb") as raw:
        run = _Extraction(target, limits, inspect, raw, label)
        try:
            tar = tarfile.open(fileobj=run.stream, mode="r:")
        except MLaaSError:
            raise
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError, ValueError, RecursionError,
                UnicodeError) as err:
            raise UnsafeArchiveError(f"not a readable tar archive (.tar, .tar.gz, .tar.bz2, .tar.xz): {err}",
                                     source=label) from None
        with tar:
            run.run(tar)
    tops = run.tops
    root = target / next(iter(tops)) if len(tops) == 1 and (target / next(iter(tops))).is_dir() else target
    return Extracted(root, run.members, run.written)


class _Extraction:
    def __init__(self, target: Path, limits: TarLimits, inspect, raw, source: str):
        self.target, self.limits, self.inspect, self.raw, self.source = target, limits, inspect, raw, source
        self.members = self.written = 0
        self.files: set[tuple[str, ...]] = set()
        self.dirs: set[tuple[str, ...]] = {()}
        self.tops: set[str] = set()
        headroom = (limits.members + 2) * _HEADER_ALLOWANCE + MAX_READ
        self.stream = _Bounded(_decompressed(raw), limits.total_bytes + headroom, self._too_large, source)

    def _too_large(self, message: str, what: str, limit: float) -> ArchiveTooLarge:
        return ArchiveTooLarge(f"{self.source}: {message} (stopped after writing {self.written} bytes)", what,
                               limit, self.written)

    def _refuse(self, name: str, why: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"refused archive member {name!r}: {why}", source=self.source)

    def run(self, tar: tarfile.TarFile) -> None:
        try:
            for member in tar:
                self.members += 1
                if self.members > self.limits.members:
                    raise self._too_large(f"the archive has more than {self.limits.members} members", "members",
                                          self.limits.members)
                self.member(member)
        except MLaaSError:
            raise
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError, ValueError, RecursionError,
                UnicodeError) as err:
            raise UnsafeArchiveError(f"not a readable tar archive: {type(err).__name__}: {err}",
                                     source=self.source) from None
        if self.members == 0:
            raise UnsafeArchiveError("the archive is empty", source=self.source)

    def member(self, m: tarfile.TarInfo) -> None:
        parts = self.parts(m.name)
        if m.issym() or m.islnk():
            raise self._refuse(m.name, "links are not allowed")
        if m.isdev():
            raise self._refuse(m.name, "devices and FIFOs are not allowed")
        if m.type == tarfile.GNUTYPE_SPARSE or m.issparse() or any(k.startswith("GNU.sparse")
                                                                   for k in m.pax_headers):
            raise self._refuse(m.name, "sparse files are not allowed")
        if m.isdir():
            if not parts:  # "./": the target itself
                return
            if parts in self.files:
                raise self._refuse(m.name, "a folder of the same name as a file before it")
            self.tops.add(parts[0])
            self.mkdirs(parts, m.name)
            return
        if m.type not in _FILE_TYPES:
            raise self._refuse(m.name, f"only plain files and folders (tar type {m.type!r})")
        if not parts:
            raise self._refuse(m.name, "a file without a name")
        if parts in self.files or parts in self.dirs:
            raise self._refuse(m.name, "the archive holds this path twice (one would overwrite the other)")
        self.tops.add(parts[0])
        self.write_file(m, parts)

    def parts(self, name: str) -> tuple[str, ...]:
        if _BAD_CHAR.search(name):
            raise self._refuse(name, "control characters in the name")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise self._refuse(name, "the name is not UTF-8") from None
        slashed = name.replace("\\", "/")
        if slashed.startswith("/") or _DRIVE.match(slashed):
            raise self._refuse(name, "absolute path")
        parts = tuple(p for p in slashed.split("/") if p not in ("", "."))
        if ".." in parts:
            raise self._refuse(name, "'..' in the path")
        return parts

    def mkdirs(self, parts: tuple[str, ...], name: str) -> None:
        for i in range(1, len(parts) + 1):
            sub = parts[:i]
            if sub in self.dirs:
                continue
            if sub in self.files:
                raise self._refuse(name, f"{'/'.join(sub)!r} is a file earlier in the archive")
            _mkdir(self.target.joinpath(*sub))
            self.dirs.add(sub)

    def write_file(self, m: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        lim = self.limits
        if m.size < 0:
            raise self._refuse(m.name, f"negative size {m.size}")
        room = min(lim.member_bytes, lim.total_bytes - self.written)
        keep_json = parts[-1] in BUNDLE_JSON and len(parts) <= 2
        if keep_json:
            room = min(room, lim.json_bytes)
        self.check_claim(m, keep_json)  # the header's claim, before a byte is written
        self.mkdirs(parts[:-1], m.name)
        path = self.target.joinpath(*parts)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                         0o600)
        except FileExistsError:
            raise self._refuse(m.name, "the archive holds this path twice") from None
        except OSError as err:
            raise self._write_error(m.name, err) from None
        self.files.add(parts)
        kept = [] if keep_json else None
        try:  # reading errors are the archive's (UnsafeArchiveError from the stream); OSErrors are writing's
            with os.fdopen(fd, "wb") as out:
                os.fchmod(fd, 0o600)  # the umask can only take bits away; this says exactly which remain
                self.copy(m, out, room, keep_json, kept)
        except MLaaSError:
            raise
        except OSError as err:
            raise self._write_error(m.name, err) from None
        if kept is not None and self.inspect is not None:
            self.inspect("/".join(parts), b"".join(kept))

    def copy(self, m: tarfile.TarInfo, out, room: int, keep_json: bool, kept: list | None) -> None:
        self.stream.seek(m.offset_data)
        left = m.size
        while left:
            # ask for one byte more than the room left under the caps: the first byte over is seen before
            # it is written, whatever the header said
            data = self.stream.read(min(left, CHUNK, room + 1))
            if len(data) > room:
                raise self.over(m, keep_json)
            if not data:
                raise UnsafeArchiveError(f"member {m.name!r} is truncated: {left} bytes missing", source=self.source)
            out.write(data)
            if kept is not None:
                kept.append(data)
            left -= len(data)
            room -= len(data)
            self.written += len(data)
            self.check_ratio()

    def check_claim(self, m: tarfile.TarInfo, keep_json: bool) -> None:
        lim = self.limits
        if keep_json and m.size > lim.json_bytes:
            raise self._too_large(f"{m.name} is more than {lim.json_bytes} bytes", "json", lim.json_bytes)
        if m.size > lim.member_bytes:
            raise self._too_large(f"member {m.name!r} is more than {lim.member_bytes} bytes", "member",
                                  lim.member_bytes)
        if self.written + m.size > lim.total_bytes:
            raise self._too_large(f"the archive unpacks to more than {lim.total_bytes} bytes", "total",
                                  lim.total_bytes)

    def over(self, m: tarfile.TarInfo, keep_json: bool) -> ArchiveTooLarge:
        """The cap that a copy ran into (the same caps as :meth:`check_claim`, met while writing)."""
        lim = self.limits
        if keep_json and lim.json_bytes <= min(lim.member_bytes, lim.total_bytes - self.written):
            return self._too_large(f"{m.name} is more than {lim.json_bytes} bytes", "json", lim.json_bytes)
        if lim.member_bytes <= lim.total_bytes - self.written:
            return self._too_large(f"member {m.name!r} is more than {lim.member_bytes} bytes", "member",
                                   lim.member_bytes)
        return self._too_large(f"the archive unpacks to more than {lim.total_bytes} bytes", "total",
                               lim.total_bytes)

    def check_ratio(self) -> None:
        lim = self.limits
        if lim.ratio and self.written > lim.ratio_floor:
            packed = max(self.raw.tell(), 1)
            if self.written > lim.ratio * packed:
                raise self._too_large(f"the archive unpacks to more than {lim.ratio:g} times its packed size "
                                      f"({self.written} bytes from {packed}): a compression bomb, or padding",
                                      "ratio", lim.ratio)

    def _write_error(self, name: str, err: OSError) -> MLaaSError:
        if err.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.ENAMETOOLONG, errno.EINVAL):
            return self._refuse(name, f"cannot be written here: {err.strerror}")
        return ArchiveWriteError(f"cannot write {name!r} from {self.source}: {err}")


def _mkdir(path: Path) -> None:
    """``path`` as a new folder 0700 (an existing folder is kept as it is)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if path.is_symlink() or not path.is_dir():
            raise UnsafeArchiveError(f"cannot extract into {path}: it is not a folder") from None
        return
    except OSError as err:
        raise ArchiveWriteError(f"cannot create the folder {path}: {err}") from None
    os.chmod(path, 0o700)  # the umask may have taken bits away; never added any


def _decompressed(raw):
    """The tar stream inside ``raw``: gzip, bzip2 and xz by their magic bytes, else the bytes as they are
    (decompressors that produce their output in bounded pieces, as they are read)."""
    magic = raw.read(6)
    raw.seek(0)
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if magic[:3] == b"BZh":
        return bz2.BZ2File(raw)
    if magic == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(raw)
    return raw


class _Bounded:
    """The decompressed stream as tarfile reads it, forward only: counts every byte (headers, padding,
    data) against ``limit`` and refuses any single read larger than :data:`MAX_READ`."""

    def __init__(self, stream, limit: int, too_large, source: str):
        self._stream, self._limit, self._too_large, self._source = stream, limit, too_large, source
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > MAX_READ:
            raise self._too_large(f"a tar header of {size} bytes (the limit is {MAX_READ})", "headers", MAX_READ)
        if self._pos + size > self._limit:
            size = self._limit - self._pos + 1  # read up to the first byte over: a short archive still ends
        try:
            data = self._stream.read(size)
        except (EOFError, zlib.error, lzma.LZMAError, OSError, ValueError) as err:  # corrupt compressed data
            raise UnsafeArchiveError(f"not a readable archive: {type(err).__name__}: {err}",
                                     source=self._source) from None
        self._pos += len(data)
        if self._pos > self._limit:
            raise self._too_large(f"the archive's tar stream is longer than {self._limit} bytes", "headers",
                                  self._limit)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("the tar stream is read forward only")
        if offset < self._pos:
            raise UnsafeArchiveError(f"the archive asks to read backwards (to {offset} from {self._pos})",
                                     source=self._source)
        while self._pos < offset:  # skipping is reading: it counts against the limit
            if not self.read(min(offset - self._pos, CHUNK)):
                break
        return self._pos
