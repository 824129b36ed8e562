"""The example datasets the benchmarks run on, written once under benchmarks/_data/ (git-ignored)."""

from __future__ import annotations

import json
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent / "_data"


def dataset(kind: str, n: int) -> dict:
    """Files, labels and params.json of ``n`` events of the example ``kind``, written on first use."""
    from mlaas4hep_lab.data import datasets

    folder = DATA / f"{kind}_{n}"
    marker = folder / "done.json"
    if marker.exists():
        return json.loads(marker.read_text())
    t0 = time.perf_counter()
    ds = datasets.write_example(kind, folder, n)
    info = {"files": [str(p) for p in ds.files], "labels": list(ds.labels), "params": str(ds.params_json),
            "seconds": time.perf_counter() - t0}
    marker.write_text(json.dumps(info))
    return info
