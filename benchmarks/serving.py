"""Inference-service throughput: the paper's mid-size MLP (inputs -> 1024 -> 1024 -> 1) under 200 clients.

    python benchmarks/serving.py                          # 30 s per configuration, 200 clients
    python benchmarks/serving.py --seconds 5 --clients 50 # quick look
    python benchmarks/serving.py --runtimes onnx --batching on

One run measures, for each runtime (ONNX Runtime, TF SavedModel) and with dynamic batching on and off
(the server restarted with ``--no-batching``): the echo route (``POST /echo``, the HTTP ceiling), the
TFaaS ``POST /json`` route and the Open Inference Protocol ``POST /v2/models/M/infer`` route, each with
single-event JSON requests from ``--clients`` concurrent keep-alive connections for ``--seconds``.
It prints a table of req/s, p50/p99 latency and errors (non-2xx answers and socket errors).

The model is a real bundle: a Keras model.py with that architecture, trained by the package for one
chunk of the Higgs-like example (cached under benchmarks/_data/serving_mlp). The server
(``mlaas4hep serve``) and the load generator run as separate processes on 127.0.0.1. The load generator
is ``wrk`` when installed (Debian package ``wrk``), else an asyncio + aiohttp generator in its own
process (``--loadgen aiohttp``); both are bounded in time, aiohttp also in request count.
The paper (TFaaS in Go, 16 cores) reports ~500 req/s for this model with 200 concurrent clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "_data"
MODEL_NAME = "mlp1024"
TOKEN = "bench-token"

MODEL_PY = '''"""The paper's mid-size MLP for the serving benchmark: inputs -> 1024 -> 1024 -> 1."""
import keras


def model(idim):
    m = keras.Sequential([
        keras.Input(shape=(idim,)),
        keras.layers.Dense(1024, activation="relu"),
        keras.layers.Dense(1024, activation="relu"),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    m.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    return m
'''


# ----------------------------------------------------------------------------------------- the bundle

def build_bundle(events: int = 20_000) -> tuple[Path, list[str], list[list[float]]]:
    """(bundle dir, feature names, some raw feature rows) — trained once, then cached."""
    folder = DATA / "serving_mlp"
    bundle = folder / "output" / "bundle"
    if not (bundle / "manifest.json").exists():
        from mlaas4hep_lab.data import datasets

        folder.mkdir(parents=True, exist_ok=True)
        ds = datasets.higgs(folder / "data", n_events=events, seed=11)
        params = json.loads(Path(ds.params_json).read_text())
        params.update(nevts=events, chunk_size=events, epochs=1, verbose=0)
        (folder / "params.json").write_text(json.dumps(params, indent=1))
        (folder / "model.py").write_text(MODEL_PY)
        cmd = [sys.executable, "-m", "mlaas4hep_lab.cli", "workflow", "--files", str(ds.files_txt), "--labels",
               str(ds.labels_txt), "--params", str(folder / "params.json"), "--model", str(folder / "model.py"),
               "--fout", str(folder / "output"), "--name", MODEL_NAME]
        print("training the 1024x1024 MLP for one chunk:", " ".join(cmd[2:4]), "...", flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    manifest = json.loads((bundle / "manifest.json").read_text())
    features = manifest["features"]
    import uproot

    data_file = sorted((folder / "data").glob("*.root"))[0]
    arrays = uproot.open(data_file)["events"].arrays(features, entry_stop=200, library="np")
    rows = [[float(arrays[f][i]) for f in features] for i in range(len(arrays[features[0]]))]
    return bundle, features, rows


# ----------------------------------------------------------------------------------------- the server

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``mlaas4hep serve`` in its own process group on 127.0.0.1."""

    def __init__(self, store: Path, tokens: Path, log: Path, extra: list[str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "mlaas4hep_lab.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--store", str(store), "--tokens", str(tokens), *extra]
        self.log = log.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {log}")
            try:
                with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server not ready after 120 s; see {log}")

    def call(self, method: str, path: str, body: bytes | None = None, ctype: str = "application/json"):
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": ctype})
        with urllib.request.urlopen(req, timeout=300) as r:
            return json.loads(r.read() or b"null")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


# ----------------------------------------------------------------------------------------- load generators

def request_bodies(route: str, features: list[str], rows: list[list[float]]) -> tuple[str, list[str]]:
    """(path, JSON bodies) of single-event requests for one route."""
    if route == "infer":
        path = f"/v2/models/{MODEL_NAME}/infer"
        bodies = [{"inputs": [{"name": "features", "shape": [1, len(r)], "datatype": "FP32", "data": r}]}
                  for r in rows]
    else:
        path = "/json" if route == "json" else "/echo"
        bodies = [{"keys": features, "values": r, "model": MODEL_NAME} for r in rows]
    return path, [json.dumps(b) for b in bodies]


async def _aiohttp_load(url: str, bodies: list[str], clients: int, seconds: float, max_requests: int) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = {"non2xx": 0, "socket": 0}
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    deadline = time.perf_counter() + seconds
    sent = 0
    payloads = [b.encode() for b in bodies]
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as session:

        async def worker(seed: int) -> None:
            nonlocal sent
            rng = random.Random(seed)
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=rng.choice(payloads)) as resp:
                        await resp.read()
                        if resp.status >= 300:
                            errors["non2xx"] += 1
                            continue
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    errors["socket"] += 1
                    continue
                latencies.append(time.perf_counter() - t0)

        t_start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        elapsed = time.perf_counter() - t_start
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3 if latencies else float("nan")

    return {"requests": len(latencies), "rps": len(latencies) / elapsed, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "errors": errors["non2xx"] + errors["socket"], "seconds": elapsed}


_WRK_LUA = """
local bodies = {}
for line in io.lines("%(bodies)s") do bodies[#bodies + 1] = line end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(token)s"
local i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
"""


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def _wrk_load(url: str, bodies: list[str], clients: int, seconds: float, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        body_file = Path(tmp) / "bodies.txt"
        body_file.write_text("\n".join(bodies) + "\n")
        script = Path(tmp) / "post.lua"
        script.write_text(_WRK_LUA % {"bodies": body_file, "token": TOKEN})
        cmd = ["wrk", f"-t{threads}", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
               "--latency", "-s", str(script), url]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    m = re.search(r"(\d+) requests in ([\d.]+\w+),", out)
    requests, seconds = int(m.group(1)), _ms(m.group(2)) / 1e3
    errors = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    ok = max(0, requests - errors)
    return {"requests": ok, "rps": ok / seconds, "p50_ms": _ms(lat["50"]), "p99_ms": _ms(lat["99"]),
            "errors": errors, "seconds": seconds}


def run_load(loadgen: str, url: str, bodies: list[str], clients: int, seconds: float, max_requests: int,
             threads: int) -> dict:
    """Run the load generator in its own process; return its measurements."""
    if loadgen == "wrk":
        return _wrk_load(url, bodies, clients, seconds, threads)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(bodies, f)
    try:
        cmd = [sys.executable, __file__, "_aiohttp", url, f.name, str(clients), str(seconds), str(max_requests)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 120).stdout
    finally:
        os.unlink(f.name)
    return json.loads(out.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------- the run

def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_aiohttp":  # the load-generator process
        url, bodies_file, clients, seconds, max_requests = sys.argv[2:7]
        bodies = json.loads(Path(bodies_file).read_text())
        print(json.dumps(asyncio.run(_aiohttp_load(url, bodies, int(clients), float(seconds), int(max_requests)))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0, help="per configuration (default: %(default)s)")
    ap.add_argument("--clients", type=int, default=200, help="concurrent connections (default: %(default)s)")
    ap.add_argument("--runtimes", default="onnx,tf", help="comma list of onnx, tf (default: %(default)s)")
    ap.add_argument("--batching", default="on,off", help="comma list of on, off (default: %(default)s)")
    ap.add_argument("--routes", default="echo,json,infer", help="comma list (default: %(default)s)")
    ap.add_argument("--loadgen", choices=["auto", "wrk", "aiohttp"], default="auto",
                    help="auto: wrk when installed, else aiohttp (default: %(default)s)")
    ap.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default: %(default)s)")
    ap.add_argument("--max-requests", type=int, default=2_000_000, help="aiohttp: bound per configuration")
    ap.add_argument("--server-args", default="", help="extra arguments for mlaas4hep serve")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    loadgen = args.loadgen if args.loadgen != "auto" else ("wrk" if shutil.which("wrk") else "aiohttp")

    bundle, features, rows = build_bundle()
    results = []
    with tempfile.TemporaryDirectory(prefix="mlaas4hep-bench-") as tmp:
        tmp = Path(tmp)
        tokens = tmp / "tokens.json"
        tokens.write_text(json.dumps({"bench": TOKEN}))
        log = tmp / "server.log"
        for runtime in args.runtimes.split(","):
            store = tmp / f"store-{runtime}"
            # upload through a server of its own, so that every measured server starts the same way: the
            # model loaded from the store at start-up, nothing else done in the process before the load
            server = Server(store, tokens, log, ["--runtime", runtime])
            try:
                tarball = shutil.make_archive(str(tmp / "bundle"), "gztar", bundle.parent, "bundle")
                server.call("POST", "/upload", Path(tarball).read_bytes(), "application/gzip")
            finally:
                server.stop()
            for batching in args.batching.split(","):
                extra = ["--runtime", runtime, *([] if batching == "on" else ["--no-batching"])]
                extra += args.server_args.split()
                server = Server(store, tokens, log, extra)
                try:
                    for route in args.routes.split(","):
                        path, bodies = request_bodies(route, features, rows)
                        server.call("POST", path, bodies[0].encode())  # warm-up (and a check that it works)
                        r = run_load(loadgen, server.url + path, bodies, args.clients, args.seconds,
                                     args.max_requests, args.wrk_threads)
                        r.update(runtime=runtime, batching=batching, route=route)
                        results.append(r)
                        print(f"  {runtime:4s} batching {batching:3s} {route:5s}  {r['rps']:8.0f} req/s  "
                              f"p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}",
                              flush=True)
                finally:
                    server.stop()
        server_log_tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    print(f"\n{MODEL_NAME} ({len(features)} -> 1024 -> 1024 -> 1), {args.clients} clients, {args.seconds:g} s each, "
          f"load generator {loadgen}, {os.cpu_count()} CPU cores shared by server and load generator")
    print("| runtime | batching | route | req/s | p50 ms | p99 ms | errors |\n|---|---|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['runtime']} | {r['batching']} | {r['route']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | "
              f"{r['p99_ms']:.1f} | {r['errors']} |")
    if any(r["errors"] for r in results) and server_log_tail:
        print("\nserver log (tail):\n" + server_log_tail)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
