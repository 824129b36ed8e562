"""Prometheus-style metrics of the inference service, and the ASGI middleware that records them and
enforces the request-body caps.

:class:`Metrics` keeps counters and histograms in plain dicts (one event loop per process, no lock) and
renders the Prometheus text format, so no client library is needed: requests and latencies per route
template (``/v2/models/{model:path}/infer``, never the raw path, so a fuzzer cannot blow up the label
set), rows and requests per forward pass per model, queue refusals.

:class:`LimitsMiddleware` refuses a body over the cap from its ``Content-Length`` before reading it, and
counts the bytes of chunked bodies as they arrive (uploads have their own, larger cap).
"""

from __future__ import annotations

import bisect
import time
from collections import defaultdict

import orjson

from mlaas4hep_lab.serving import TooLarge

__all__ = ["Metrics", "LimitsMiddleware"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)


class _Histogram:
    __slots__ = ("buckets", "counts", "sum", "count")

    def __init__(self, buckets: tuple):
        self.buckets, self.counts, self.sum, self.count = buckets, [0] * (len(buckets) + 1), 0.0, 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self, name: str, labels: str) -> list[str]:
        lines, total = [], 0
        for bound, n in zip((*self.buckets, "+Inf"), self.counts):
            total += n
            lines.append(f'{name}_bucket{{{labels},le="{bound}"}} {total}')
        return lines + [f"{name}_sum{{{labels}}} {self.sum:.6f}", f"{name}_count{{{labels}}} {self.count}"]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Counters and histograms in Prometheus text format (no client library needed)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: dict[str, _Histogram] = {}
        self.batch_rows: dict[str, _Histogram] = {}
        self.batch_requests: dict[str, _Histogram] = {}
        self.rejected: dict[str, int] = defaultdict(int)
        self.in_flight = 0  # HTTP requests being answered now

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests[(route, method, status)] += 1
        hist = self.latency.get(route)
        if hist is None:
            hist = self.latency[route] = _Histogram(_LATENCY_BUCKETS)
        hist.observe(seconds)

    def observe_batch(self, model: str, rows: int, requests: int) -> None:
        for table, value in ((self.batch_rows, rows), (self.batch_requests, requests)):
            hist = table.get(model)
            if hist is None:
                hist = table[model] = _Histogram(_SIZE_BUCKETS)
            hist.observe(value)

    def render(self, models_loaded: int = 0) -> str:
        out = ["# HELP mlaas4hep_requests_total HTTP requests by route template, method and status.",
               "# TYPE mlaas4hep_requests_total counter"]
        out += [f'mlaas4hep_requests_total{{route="{_label(r)}",method="{m}",status="{s}"}} {n}'
                for (r, m, s), n in sorted(self.requests.items())]
        out += ["# HELP mlaas4hep_request_duration_seconds Time to answer, by route template.",
                "# TYPE mlaas4hep_request_duration_seconds histogram"]
        for route, hist in sorted(self.latency.items()):
            out += hist.render("mlaas4hep_request_duration_seconds", f'route="{_label(route)}"')
        for name, table, what in (("mlaas4hep_batch_rows", self.batch_rows, "Rows per forward pass"),
                                  ("mlaas4hep_batch_requests", self.batch_requests, "Requests per forward pass")):
            out += [f"# HELP {name} {what}, by model.", f"# TYPE {name} histogram"]
            for model, hist in sorted(table.items()):
                out += hist.render(name, f'model="{_label(model)}"')
        out += ["# HELP mlaas4hep_queue_rejected_total Requests refused because a model's queue was full.",
                "# TYPE mlaas4hep_queue_rejected_total counter"]
        out += [f'mlaas4hep_queue_rejected_total{{model="{_label(m)}"}} {n}' for m, n in sorted(self.rejected.items())]
        out += ["# HELP mlaas4hep_requests_in_flight Requests being answered.",
                "# TYPE mlaas4hep_requests_in_flight gauge", f"mlaas4hep_requests_in_flight {self.in_flight}"]
        out += ["# HELP mlaas4hep_models_loaded Model versions loaded in this process.",
                "# TYPE mlaas4hep_models_loaded gauge", f"mlaas4hep_models_loaded {models_loaded}"]
        return "\n".join(out) + "\n"



class LimitsMiddleware:
    """Request-body caps (uploads get their own) and per-route metrics, as plain ASGI (cheap).

    The cap holds while the body is read: a larger ``Content-Length`` is refused before a byte is read, and
    a chunked body is stopped at the first message past the cap, so memory stays bounded whatever the
    client sends."""

    def __init__(self, app, body_cap: int, upload_cap: int | None = None, metrics: Metrics | None = None):
        self.app, self.metrics = app, metrics if metrics is not None else Metrics()
        self.body_cap, self.upload_cap = body_cap, upload_cap

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]
        cap = self.upload_cap if self.upload_cap and scope["path"].endswith("/upload") else self.body_cap
        length = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                length = value
                break
        if length is not None:
            try:
                too_big = int(length) > cap
            except ValueError:
                return await _send_error(send, 400, "invalid Content-Length header")
            if too_big:
                await _send_error(send, 413, f"request body larger than this service's limit of {cap} bytes")
                return self._observe(scope, 413, start)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > cap:
                raise TooLarge(f"request body larger than this service's limit of {cap} bytes")
            return message

        async def tracking_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        self.metrics.in_flight += 1
        try:
            await self.app(scope, limited_receive, tracking_send)
        finally:
            self.metrics.in_flight -= 1
            self._observe(scope, status[0], start)

    def _observe(self, scope, status: int, start: float) -> None:
        route = scope.get("route")
        self.metrics.observe_request(getattr(route, "path", "unmatched"), scope["method"], status,
                                             time.perf_counter() - start)


async def _send_error(send, status: int, message: str) -> None:
    body = orjson.dumps({"error": message})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
