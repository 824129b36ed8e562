"""Inference-service soak: steady load on the hot routes while model versions come and go, and its memory.

    python benchmarks/soak.py                            # 200 clients for 60 s
    python benchmarks/soak.py --seconds 600 --clients 400
    python benchmarks/soak.py --churn other              # upload/delete another model instead
    python benchmarks/soak.py --churn none               # load only: tells load growth from churn growth

One ``mlaas4hep serve`` process (the paper's mid-size MLP, inputs -> 1024 -> 1024 -> 1, built and cached by
benchmarks/serving.py) gets, for ``--seconds``:

* ``--clients`` concurrent keep-alive connections, half on the TFaaS ``POST /json`` route and half on the Open
  Inference Protocol ``POST /v2/models/M/infer`` route, single-event requests (one load-generator process per
  route: benchmarks/serving.py's, wrk when installed, else asyncio + aiohttp);
* one more client that uploads the bundle as a new version and deletes the previous one, in a loop. With
  ``--churn same`` (the default) that is the model under load, so every request races a version swap;
  ``--churn other`` uses a second model, ``--churn none`` none.

It prints requests, errors (non-2xx answers and transport errors), req/s and p50/p99 latency per route, the
uploads and deletes done, and the resident memory (RSS) of the server process and its children after the
warm-up and at the end. Targets: no errors, RSS growth under 10%; the exit status is 1 when one is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import MODEL_NAME, TOKEN, Server, build_bundle, request_bodies, run_load  # noqa: E402

ROUTES = ("json", "infer")
CHURN_OTHER = "churn"


def server_rss(pid: int) -> int:
    """Resident bytes of a process and all its children (uvicorn workers, if any)."""
    proc = psutil.Process(pid)
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class Churn(threading.Thread):
    """Upload the bundle as a new version of ``name``, then delete the version before, until stopped."""

    def __init__(self, server: Server, tarball: bytes, name: str):
        super().__init__(name="churn", daemon=True)
        self.server, self.tarball, self.name = server, tarball, name
        self.stop_event = threading.Event()
        self.uploads = self.deletes = 0
        self.errors: list[str] = []

    def cycle(self, previous: str | None) -> str:
        answer = self.server.call("POST", f"/upload?name={self.name}", self.tarball, "application/gzip")
        self.uploads += 1
        if previous is not None:
            self.server.call("DELETE", f"/v2/models/{self.name}/versions/{previous}")
            self.deletes += 1
        return answer["version"]

    def run(self) -> None:
        previous = self.server.call("GET", f"/v2/models/{self.name}")["version"]
        while not self.stop_event.is_set():
            try:
                previous = self.cycle(previous)
            except Exception as err:  # noqa: BLE001 - counted and reported, the loop goes on
                self.errors.append(f"{type(err).__name__}: {err}")
                time.sleep(0.5)


def soak(args, loadgen: str, bundle: Path, features: list[str], rows: list[list[float]], tmp: Path) -> dict:
    tokens = tmp / "tokens.json"
    tokens.write_text(json.dumps({"bench": TOKEN}))
    log = tmp / "server.log"
    tarball = Path(shutil.make_archive(str(tmp / "bundle"), "gztar", bundle.parent, "bundle")).read_bytes()
    server = Server(tmp / "store", tokens, log, ["--runtime", args.runtime, *args.server_args.split()])
    try:
        server.call("POST", f"/upload?name={MODEL_NAME}", tarball, "application/gzip")
        churn_model = {"same": MODEL_NAME, "other": CHURN_OTHER, "none": None}[args.churn]
        if churn_model == CHURN_OTHER:
            server.call("POST", f"/upload?name={churn_model}", tarball, "application/gzip")
        # warm-up: every route answers, one churn cycle (first upload's allocations are not a leak)
        loads = {}
        for route in ROUTES:
            path, bodies = request_bodies(route, features, rows)
            server.call("POST", path, bodies[0].encode())
            loads[route] = (server.url + path, bodies)
        churn = Churn(server, tarball, churn_model)
        if churn_model is not None:
            churn.cycle(server.call("GET", f"/v2/models/{churn_model}")["version"])
            churn.uploads = churn.deletes = 0
            churn.start()
        rss_start = server_rss(server.proc.pid)
        t0 = time.monotonic()
        samples = [(0.0, rss_start)]  # (seconds into the run, RSS)
        done = threading.Event()

        def sample() -> None:
            while not done.wait(1.0):
                samples.append((time.monotonic() - t0, server_rss(server.proc.pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        per_route = max(1, args.clients // len(ROUTES))
        with ThreadPoolExecutor(len(ROUTES)) as pool:
            futures = {route: pool.submit(run_load, loadgen, url, bodies, per_route, args.seconds,
                                          args.max_requests, args.wrk_threads)
                       for route, (url, bodies) in loads.items()}
            results = {route: f.result() for route, f in futures.items()}
        churn.stop_event.set()
        if churn.is_alive():
            churn.join(600)
        done.set()
        sampler.join()
        rss_end = server_rss(server.proc.pid)
        alive = server.proc.poll() is None
    finally:
        server.stop()
    log_tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    return {"routes": results, "clients_per_route": per_route, "uploads": churn.uploads, "deletes": churn.deletes,
            "churn_errors": churn.errors, "churn_model": churn_model, "rss_start": rss_start, "rss_end": rss_end,
            "rss_peak": max(rss for _, rss in samples),
            # RSS once a fifth of the run is over: growth after it is steady-state growth (a leak), before
            # it the working set of the connections and the allocator's first model swaps
            "rss_settled": next((rss for t, rss in samples if t >= args.seconds / 5), rss_end),
            "alive": alive, "log_tail": log_tail}


def report(args, r: dict, loadgen: str, features: list[str]) -> bool:
    """Print the table; True when the targets are met."""
    mib = 1 / 2**20
    growth = 100.0 * (r["rss_end"] - r["rss_start"]) / r["rss_start"]
    print(f"\n{MODEL_NAME} ({len(features)} -> 1024 -> 1024 -> 1), runtime {args.runtime}, {args.seconds:g} s, "
          f"{r['clients_per_route']} clients per route, load generator {loadgen}, uploads/deletes of "
          f"{ {MODEL_NAME: 'the model under load', None: 'no model'}.get(r['churn_model'], 'another model')}, "
          f"{os.cpu_count()} CPU cores shared by server, load generators and uploader")
    print("| route | requests | errors | req/s | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|---:|")
    for route, x in r["routes"].items():
        print(f"| {route} | {x['requests']} | {x['errors']} | {x['rps']:.0f} | {x['p50_ms']:.1f} | {x['p99_ms']:.1f} |")
    print(f"\nuploads {r['uploads']}, version deletes {r['deletes']}, upload/delete errors {len(r['churn_errors'])}")
    print(f"server RSS: {r['rss_start'] * mib:.0f} MiB after warm-up, {r['rss_end'] * mib:.0f} MiB at the end "
          f"({growth:+.1f}%), peak {r['rss_peak'] * mib:.0f} MiB; server alive at the end: {r['alive']}")
    settled = 100.0 * (r["rss_end"] - r["rss_settled"]) / r["rss_settled"]
    print(f"  after the first fifth of the run: {r['rss_settled'] * mib:.0f} MiB, growth from there to the end "
          f"{settled:+.1f}% (a leak keeps growing there; warm-up does not)")
    errors = sum(x["errors"] for x in r["routes"].values()) + len(r["churn_errors"])
    ok = errors == 0 and growth < args.max_growth and r["alive"]
    print(f"targets (0 errors, RSS growth < {args.max_growth:g}%): {'met' if ok else 'MISSED'}")
    for message in r["churn_errors"][:5]:
        print("  upload/delete error:", message)
    if errors and r["log_tail"]:
        print("\nserver log (tail):\n" + r["log_tail"])
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the soak (default: %(default)s)")
    ap.add_argument("--clients", type=int, default=200,
                    help="concurrent connections, split evenly over the routes (default: %(default)s)")
    ap.add_argument("--churn", choices=["same", "other", "none"], default="same",
                    help="upload/delete versions of the model under load, of another one, or none "
                    "(default: %(default)s)")
    ap.add_argument("--runtime", choices=["onnx", "tf"], default="onnx", help="(default: %(default)s)")
    ap.add_argument("--loadgen", choices=["auto", "wrk", "aiohttp"], default="auto",
                    help="auto: wrk when installed, else aiohttp (default: %(default)s)")
    ap.add_argument("--wrk-threads", type=int, default=1, help="wrk threads per route (default: %(default)s)")
    ap.add_argument("--max-requests", type=int, default=10_000_000, help="aiohttp: bound per route")
    ap.add_argument("--max-growth", type=float, default=10.0, help="RSS growth target in %% (default: %(default)s)")
    ap.add_argument("--server-args", default="", help="extra arguments for mlaas4hep serve")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    loadgen = args.loadgen if args.loadgen != "auto" else ("wrk" if shutil.which("wrk") else "aiohttp")
    bundle, features, rows = build_bundle()
    with tempfile.TemporaryDirectory(prefix="mlaas4hep-soak-") as tmp:
        result = soak(args, loadgen, bundle, features, rows, Path(tmp))
    ok = report(args, result, loadgen, features)
    if args.json:
        Path(args.json).write_text(json.dumps({k: v for k, v in result.items() if k != "log_tail"}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
