"""API paths (``a/b/sig.root``, relative to the server's root folder, as the contents API names files) to
files on disk, refusing what the file browser would not show.

Every refusal is a :class:`PathRefused` carrying the HTTP status the handlers answer: 400 for a missing or
malformed path, 403 for one that leaves the root (``..``, an absolute path, a symbolic link pointing out),
404 for one that does not exist or is hidden (unless the server shows hidden files).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

__all__ = ["PathRefused", "Root"]


class PathRefused(ValueError):
    """A path the extension will not touch; ``status`` is the HTTP answer."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class Root:
    """The server's root folder (``ServerApp.root_dir``) and the rules for paths below it.

    Args:
        root: the folder.
        allow_hidden: whether names starting with ``.`` may be used (``ContentsManager.allow_hidden``).
    """

    def __init__(self, root: str | os.PathLike, allow_hidden: bool = False):
        self.path = Path(root).expanduser().resolve()
        self.allow_hidden = allow_hidden

    def resolve(self, api_path: str | None, *, kind: str = "any", what: str = "path") -> Path:
        """The file or folder (``kind``: ``"file"``, ``"dir"`` or ``"any"``) an API path names.

        Example::

            Root("/home/me").resolve("data/sig.root", kind="file")   # Path('/home/me/data/sig.root')
        """
        if api_path is None or not str(api_path).strip():
            raise PathRefused(f"give the {what} (relative to the server's root folder)", 400)
        text = str(api_path).strip()
        if "\x00" in text:
            raise PathRefused(f"{what} {text!r} holds a NUL character", 400)
        parts = PurePosixPath(text.replace("\\", "/")).parts
        if parts and parts[0] == "/":
            parts = parts[1:]   # the contents API's paths may start with "/": still relative to the root
        if ".." in parts:
            raise PathRefused(f"{what} {text!r} leaves the server's root folder", 403)
        if not self.allow_hidden and any(p.startswith(".") for p in parts):
            raise PathRefused(f"{what} {text!r} is hidden (the server does not show hidden files)", 404)
        target = self.path.joinpath(*parts)
        try:
            real = target.resolve(strict=True)
        except FileNotFoundError:
            raise PathRefused(f"{what} {text!r} not found below the server's root folder", 404) from None
        except (OSError, RuntimeError) as err:   # a symbolic link loop, a permission problem
            raise PathRefused(f"{what} {text!r} cannot be opened: {err}", 404) from None
        if real != self.path and self.path not in real.parents:
            raise PathRefused(f"{what} {text!r} points outside the server's root folder", 403)
        if kind == "file" and not real.is_file():
            raise PathRefused(f"{what} {text!r} is not a file", 400)
        if kind == "dir" and not real.is_dir():
            raise PathRefused(f"{what} {text!r} is not a folder", 400)
        return real

    def api_path(self, path: str | os.PathLike) -> str:
        """The API path of a file below the root (``data/sig.root``); "" for the root itself."""
        rel = Path(path).resolve().relative_to(self.path)
        return "" if str(rel) == "." else rel.as_posix()

    def contains(self, path: str | os.PathLike) -> bool:
        try:
            Path(path).resolve().relative_to(self.path)
        except (ValueError, OSError):
            return False
        return True
