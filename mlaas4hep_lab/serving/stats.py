"""Per-model inference statistics, as Triton's statistics extension defines them.

Each served model version has a :class:`ModelStats`: the count and cumulative nanoseconds of successful
and failed requests, of the time requests waited in the batcher's queue, and of the three parts of the
forward passes their rows went through (``compute_input``: gathering the batch and handing it to a thread;
``compute_infer``: the runtime's pass; ``compute_output``: handing each request its slice), as
Triton counts them: once per request (a request shares the durations of the pass it was in), and once per
pass in ``batch_stats`` under the pass's number of rows. ``inference_count`` counts the rows of successful
requests, ``execution_count`` the passes, ``last_inference`` is in milliseconds since the epoch.

The statistics are counted where every inference goes through (:meth:`.Service.score` and the batcher),
whatever the route or wire format (HTTP JSON or binary, ``/json``, raw events, gRPC); a few integer
additions per request and per pass, under a lock (the gRPC server may run on its own thread). They are
kept per server process, from its start (as Triton keeps them), and survive a model's unload.
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["ModelStats", "Statistics", "MAX_BATCH_SIZES"]

MAX_BATCH_SIZES = 1024  # distinct batch sizes kept per model version (a fuzzer must not grow it without end)

# indices of the counters in ModelStats.counts
_SUCCESS, _FAIL, _QUEUE, _INPUT, _INFER, _OUTPUT = range(0, 12, 2)
_KEYS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


def _duration(count: int, ns: int) -> dict[str, int]:
    return {"count": count, "ns": ns}


class ModelStats:
    """The statistics of one model version; :meth:`request` and :meth:`batch` are thread-safe."""

    __slots__ = ("lock", "counts", "inference_count", "execution_count", "last_inference", "batches")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts = [0] * 12  # (count, ns) of success, fail, queue, compute_input, compute_infer, compute_output
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference = 0
        self.batches: dict[int, list[int]] = {}  # rows -> [passes, input ns, infer ns, output ns]

    def request(self, rows: int, ns: int, ok: bool) -> None:
        """One request of ``rows`` rows ended after ``ns`` nanoseconds, successfully or not."""
        now = time.time_ns() // 1_000_000
        with self.lock:
            c = self.counts
            if ok:
                c[_SUCCESS] += 1
                c[_SUCCESS + 1] += ns
                self.inference_count += rows
            else:
                c[_FAIL] += 1
                c[_FAIL + 1] += ns
            self.last_inference = now

    def batch(self, rows: int, requests: int, queue_ns: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One forward pass of ``rows`` rows for ``requests`` requests, which waited ``queue_ns`` in all."""
        with self.lock:
            c = self.counts
            c[_QUEUE] += requests
            c[_QUEUE + 1] += queue_ns
            c[_INPUT] += requests
            c[_INPUT + 1] += requests * input_ns
            c[_INFER] += requests
            c[_INFER + 1] += requests * infer_ns
            c[_OUTPUT] += requests
            c[_OUTPUT + 1] += requests * output_ns
            self.execution_count += 1
            entry = self.batches.get(rows)
            if entry is None:
                if len(self.batches) >= MAX_BATCH_SIZES:
                    return
                entry = self.batches[rows] = [0, 0, 0, 0]
            entry[0] += 1
            entry[1] += input_ns
            entry[2] += infer_ns
            entry[3] += output_ns

    def to_dict(self, name: str, version: str) -> dict[str, Any]:
        """Triton's ``$model_stat`` JSON object (also the JSON form of the gRPC ``ModelStatistics``)."""
        with self.lock:
            c = list(self.counts)
            batches = sorted((rows, list(entry)) for rows, entry in self.batches.items())
            out = {"name": name, "version": version, "last_inference": self.last_inference,
                   "inference_count": self.inference_count, "execution_count": self.execution_count}
        stats = {key: _duration(c[2 * i], c[2 * i + 1]) for i, key in enumerate(_KEYS)}
        stats["cache_hit"] = stats["cache_miss"] = _duration(0, 0)  # no response cache
        out["inference_stats"] = stats
        out["batch_stats"] = [{"batch_size": rows, "compute_input": _duration(n, t_in),
                               "compute_infer": _duration(n, t_infer), "compute_output": _duration(n, t_out)}
                              for rows, (n, t_in, t_infer, t_out) in batches]
        return out


class Statistics:
    """The :class:`ModelStats` of every model version of this process, by (owner, name, version)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str, str], ModelStats] = {}

    def model(self, owner: str, name: str, version: str) -> ModelStats:
        """The statistics of a version (created empty the first time)."""
        key = (owner, name, version)
        stats = self._models.get(key)
        if stats is None:
            with self._lock:
                stats = self._models.setdefault(key, ModelStats())
        return stats

    def get(self, owner: str, name: str, version: str) -> ModelStats | None:
        return self._models.get((owner, name, version))

    def drop(self, owner: str, name: str, versions: list[str] | None = None) -> None:
        """Forget the statistics of deleted versions (all of the model's with None)."""
        with self._lock:
            for key in [k for k in self._models if k[:2] == (owner, name) and (versions is None or k[2] in versions)]:
                del self._models[key]

    def keys(self) -> list[tuple[str, str, str]]:
        return list(self._models)
