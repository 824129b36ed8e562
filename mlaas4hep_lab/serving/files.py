"""The model store's files on disk: private modes (folders 0700, files 0600), atomic writes, sizes, and the
scratch folders (``.staging``, ``.trash``) whose entries are named after the process that made them, so
that a starting server removes what killed processes left and not the uploads of its sibling workers."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

__all__ = ["atomic_write", "private_dir", "private_dirs", "tighten", "tree_bytes", "human_size", "scratch_dir",
           "clear_scratch", "SCRATCH_AGE"]

SCRATCH_AGE = 3600  # seconds after which a scratch entry of a live process is taken as left over
_OWNED = re.compile(r"(?:upload-)?(\d+)-")


def atomic_write(path: Path, text: str) -> None:
    """``text`` into ``path`` (0600) through a temporary file and a rename: readers see all or nothing."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fd, 0o600)  # the umask can only take bits away; this says exactly which remain
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def private_dir(path: Path, parents: bool = False) -> None:
    """``path`` as a folder 0700 (made when missing; an existing one is set to 0700)."""
    path.mkdir(mode=0o700, parents=parents, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != 0o700:
        os.chmod(path, 0o700)


def private_dirs(root: Path, path: Path) -> None:
    """The folders below ``root`` down to ``path``, each 0700."""
    parts = path.relative_to(root).parts
    for i in range(1, len(parts) + 1):
        private_dir(root.joinpath(*parts[:i]))


def tighten(top: Path) -> None:
    """Folders 0700, files 0600 under ``top``, whatever they were (links, which the store never holds,
    are left alone)."""
    for folder, _, files in os.walk(top):
        for entry in [folder, *(os.path.join(folder, f) for f in files)]:
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(entry)
                want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
                if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) != want:
                    os.chmod(entry, want)


def tree_bytes(top: Path) -> int:
    """The content bytes of the files under ``top`` (what a stored bundle counts against a quota)."""
    total = 0
    for folder, _, files in os.walk(top):
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(folder, f)).st_size
    return total


def human_size(n: int) -> str:
    """``1.5 GiB (1610612736 bytes)``."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit} ({n} bytes)"
    return f"{n} bytes"


def scratch_dir(folder: Path) -> Path:
    """A new private folder in ``folder`` named after this process (``upload-<pid>-...``)."""
    return Path(tempfile.mkdtemp(prefix=f"upload-{os.getpid()}-", dir=folder))


def clear_scratch(folder: Path, everything: bool = False) -> int:
    """Remove the entries of ``folder`` that no live process uses: those of dead processes, of this one
    (a restarted server may have the pid of its predecessor, in a container), older than
    :data:`SCRATCH_AGE`, or all of them (``everything``). Returns how many were removed."""
    private_dir(folder)
    removed = 0
    for left in folder.iterdir():
        match = _OWNED.match(left.name)
        pid = int(match.group(1)) if match else None
        try:
            age = time.time() - left.lstat().st_mtime
        except FileNotFoundError:
            continue
        if everything or age > SCRATCH_AGE or pid == os.getpid() or (pid is not None and not _alive(pid)):
            if left.is_dir() and not left.is_symlink():
                shutil.rmtree(left, ignore_errors=True)
            else:
                left.unlink(missing_ok=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        return True
    return True
