"""Checkpoints written after each chunk, replaced atomically, so that ``--resume`` after a kill
continues from the last completed chunk with nothing lost and nothing trained twice."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

__all__ = ["Checkpoint"]


class Checkpoint:
    """``<dir>/checkpoint/``: ``model/`` (the backend's native save) and ``state.json`` (written last)."""

    def __init__(self, directory: str | Path):
        self.root = Path(directory)
        self.path = self.root / "checkpoint"

    def save(self, backend, state: dict[str, Any]) -> None:
        new, old = self.root / "checkpoint.new", self.root / "checkpoint.old"
        shutil.rmtree(new, ignore_errors=True)
        (new / "model").mkdir(parents=True)
        previous = self.path / "model" if (self.path / "state.json").is_file() else None
        state = dict(state, model=backend.save_checkpoint(new / "model", previous))
        tmp = new / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=1, default=_jsonable))
        with open(tmp) as f:
            os.fsync(f.fileno())
        tmp.replace(new / "state.json")
        shutil.rmtree(old, ignore_errors=True)
        if self.path.exists():
            self.path.replace(old)
        new.replace(self.path)
        shutil.rmtree(old, ignore_errors=True)

    def load(self) -> tuple[dict[str, Any], Path] | None:
        """``(state, model_dir)`` of the newest complete checkpoint, or None."""
        for candidate in (self.path, self.root / "checkpoint.old", self.root / "checkpoint.new"):
            state_file = candidate / "state.json"
            if state_file.is_file():
                return json.loads(state_file.read_text()), candidate / "model"
        return None

    def clear(self) -> None:
        for name in ("checkpoint", "checkpoint.new", "checkpoint.old"):
            shutil.rmtree(self.root / name, ignore_errors=True)


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
