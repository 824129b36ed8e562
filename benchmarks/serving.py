"""Inference-service throughput: the paper's mid-size MLP (inputs -> 1024 -> 1024 -> 1) under 200 clients.

    python benchmarks/serving.py                          # 30 s per configuration, 200 clients
    python benchmarks/serving.py --seconds 5 --clients 50 # quick look
    python benchmarks/serving.py --runtimes onnx --batching on

One run measures, for each runtime (ONNX Runtime, TF SavedModel) and with dynamic batching on and off
(the server restarted with ``--no-batching``): the echo route (``POST /echo``, the HTTP ceiling), the
TFaaS ``POST /json`` route, the Open Inference Protocol ``POST /v2/models/M/infer`` route with JSON
(``infer``) and with the binary tensor data extension (``binary``, tritonclient.http's default), and OIP
gRPC ``ModelInfer`` with ``raw_input_contents`` (``grpc``, tritonclient.grpc's default), each with
single-event requests from ``--clients`` concurrent keep-alive connections for ``--seconds``. When
KServe is installed in a venv of its own (see benchmarks/_kserve_peer.py), its Python model server on the
same ONNX model is the peer row for the infer, binary and grpc routes.
It prints a table of req/s, p50/p99 latency and errors (non-2xx answers, socket errors, and gRPC calls
the server did not count as successful), then the issue's targets.

The model is a real bundle: a Keras model.py with that architecture, trained by the package for one
chunk of the Higgs-like example (cached under benchmarks/_data/serving_mlp). The server
(``mlaas4hep serve``) and the load generator run as separate processes on 127.0.0.1 on the same cores.
The HTTP load generator is ``wrk`` when installed (Debian package ``wrk``), else an asyncio + aiohttp
generator in its own process (``--loadgen aiohttp``); gRPC's is ``h2load`` (Debian package
``nghttp2-client``), see benchmarks/_loadgen.py.
The paper (TFaaS in Go, 16 cores) reports ~500 req/s for this model with 200 concurrent clients.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _loadgen import Load, aiohttp_main, grpc_frame, run_load

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


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, stop) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    stop()
    raise RuntimeError(f"server not ready after 120 s; see {log}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Server:
    """``mlaas4hep serve`` in its own process group on 127.0.0.1 (HTTP, and gRPC on a second port)."""

    def __init__(self, store: Path, tokens: Path, log: Path, extra: list[str]):
        self.port, self.grpc_port = free_port(), free_port()
        self.url, self.grpc_url = f"http://127.0.0.1:{self.port}", f"127.0.0.1:{self.grpc_port}"
        cmd = [sys.executable, "-m", "mlaas4hep_lab.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--grpc-port", str(self.grpc_port), "--store", str(store), "--tokens", str(tokens), *extra]
        self.log = log.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_ready(self.proc, f"{self.url}/v2/health/ready", log, self.stop)

    def call(self, method: str, path: str, body: bytes | None = None, ctype: str = "application/json"):
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": ctype})
        with urllib.request.urlopen(req, timeout=300) as r:
            return json.loads(r.read() or b"null")

    def stop(self) -> None:
        _stop(self.proc)
        self.log.close()


# ----------------------------------------------------------------------------------------- requests

GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"


def request_load(route: str, features: list[str], rows: list[list[float]]) -> Load:
    """What a route is sent: single-event requests (one per raw row, cycled; gRPC: the first row)."""
    import numpy as np

    auth = {"Authorization": f"Bearer {TOKEN}"}
    n = len(features)
    if route == "infer":
        bodies = [{"inputs": [{"name": "features", "shape": [1, n], "datatype": "FP32", "data": r}]} for r in rows]
        return Load(f"/v2/models/{MODEL_NAME}/infer", [json.dumps(b).encode() for b in bodies],
                    {**auth, "Content-Type": "application/json"})
    if route == "binary":  # the OIP binary tensor data extension, as tritonclient.http sends it by default
        header = json.dumps({"inputs": [{"name": "features", "shape": [1, n], "datatype": "FP32",
                                         "parameters": {"binary_data_size": 4 * n}}],
                             "outputs": [{"name": "score", "parameters": {"binary_data": True}}]}).encode()
        return Load(f"/v2/models/{MODEL_NAME}/infer", [header + np.asarray(r, np.float32).tobytes() for r in rows],
                    {**auth, "Content-Type": "application/octet-stream",
                     "Inference-Header-Content-Length": str(len(header))})
    if route == "grpc":  # ModelInfer with raw_input_contents, as tritonclient.grpc sends it by default
        from tritonclient.grpc import service_pb2

        req = service_pb2.ModelInferRequest(model_name=MODEL_NAME)
        tensor = req.inputs.add(name="features", datatype="FP32")
        tensor.shape.extend([1, n])
        req.raw_input_contents.append(np.asarray(rows[0], np.float32).tobytes())
        req.outputs.add(name="score")
        return Load(GRPC_PATH, [grpc_frame(req.SerializeToString())],
                    {"content-type": "application/grpc", "te": "trailers", "authorization": f"Bearer {TOKEN}"},
                    protocol="grpc")
    bodies = [{"keys": features, "values": r, "model": MODEL_NAME} for r in rows]
    return Load("/json" if route == "json" else "/echo", [json.dumps(b).encode() for b in bodies],
                {**auth, "Content-Type": "application/json"})


def check_route(url: str, grpc_url: str | None, route: str, load: Load, rows: list[list[float]]) -> None:
    """One request through Triton's own client (or plain HTTP), so a route that fails is not timed."""
    import numpy as np

    if route == "grpc":
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(grpc_url)
        x = grpcclient.InferInput("features", [1, len(rows[0])], "FP32")
        x.set_data_from_numpy(np.asarray(rows[:1], np.float32))
        client.infer(MODEL_NAME, [x], headers={"authorization": f"Bearer {TOKEN}"}).as_numpy("score")
        client.close()
        return
    req = urllib.request.Request(url + load.path, data=load.bodies[0], method="POST", headers=load.headers)
    with urllib.request.urlopen(req, timeout=300) as r:
        r.read()


def successes(url: str) -> int | None:
    """The server's count of successful inferences of the model (statistics extension), or None."""
    req = urllib.request.Request(f"{url}/v2/models/{MODEL_NAME}/stats", headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            stats = json.loads(r.read())
        return sum(int(m["inference_stats"]["success"]["count"]) for m in stats["model_stats"])
    except (OSError, KeyError, ValueError, TypeError):
        return None


# ----------------------------------------------------------------------------------------- the peer

def kserve_python() -> Path | None:
    path = Path(os.environ.get("MLAAS4HEP_KSERVE_PYTHON", Path.home() / ".cache/mlaas4hep/kserve-venv/bin/python"))
    return path if path.exists() else None


class KServePeer:
    """KServe's Python model server (benchmarks/_kserve_peer.py) on the bundle's ONNX model."""

    def __init__(self, python: Path, onnx: Path, log: Path, threads: int):
        self.port, self.grpc_port = free_port(), free_port()
        self.url, self.grpc_url = f"http://127.0.0.1:{self.port}", f"127.0.0.1:{self.grpc_port}"
        cmd = [str(python), str(HERE / "_kserve_peer.py"), MODEL_NAME, str(onnx), str(self.port),
               str(self.grpc_port), str(threads)]
        self.log = log.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_ready(self.proc, f"{self.url}/v2/models/{MODEL_NAME}/ready", log, self.stop)

    def stop(self) -> None:
        _stop(self.proc)
        self.log.close()


# ----------------------------------------------------------------------------------------- the run

ROUTES = "echo,json,infer,binary,grpc"
PEER_ROUTES = ("infer", "binary", "grpc")


def measure(target, route: str, features, rows, args, loadgen: str) -> dict:
    load = request_load(route, features, rows)
    url = (f"http://{target.grpc_url}" if load.protocol == "grpc" else target.url) + load.path
    check_route(target.url, target.grpc_url, route, load, rows)  # a check that it works
    # a short untimed run first: connections set up, first-call costs paid, as for every row alike
    run_load(loadgen, url, load, args.clients, min(2.0, args.seconds), args.max_requests, args.wrk_threads)
    before = successes(target.url) if load.protocol == "grpc" and isinstance(target, Server) else None
    r = run_load(loadgen, url, load, args.clients, args.seconds, args.max_requests, args.wrk_threads)
    if before is not None:  # h2load sees HTTP statuses only: count the gRPC calls the server says succeeded
        after = successes(target.url)
        if after is not None:
            r["errors"] += max(0, r["requests"] - (after - before))
    r["loadgen"] = "h2load" if load.protocol == "grpc" else loadgen
    return r


def _print(r: dict) -> None:
    print(f"  {r['server']:9s} {r['runtime']:4s} batching {r['batching']:3s} {r['route']:6s}  {r['rps']:8.0f} req/s  "
          f"p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}", flush=True)


def targets(results: list[dict]) -> list[str]:
    """The issue's targets, checked on this run's rows (ONNX Runtime, batching on)."""
    ours = {r["route"]: r for r in results if r["server"] == "mlaas4hep" and r["runtime"] == "onnx"
            and r["batching"] == "on"}
    peer = {r["route"]: r for r in results if r["server"] == "kserve"}
    lines = []
    if "echo" in ours and "infer" in ours:
        ratio = ours["infer"]["rps"] / ours["echo"]["rps"]
        ok = ratio >= 0.75 and ours["infer"]["p99_ms"] < 50
        lines.append(f"OIP JSON with batching / echo: {ratio:.2f}x, p99 {ours['infer']['p99_ms']:.1f} ms "
                     f"(target >= 0.75x, p99 < 50 ms: {'met' if ok else 'NOT met'})")
    for route in ("binary", "grpc"):
        if route in ours and "infer" in ours:
            ratio = ours[route]["rps"] / ours["infer"]["rps"]
            lines.append(f"{route} / OIP JSON: {ratio:.2f}x (target >= 1: {'met' if ratio >= 1 else 'NOT met'})")
    for route, r in peer.items():
        if route in ours:
            ratio = ours[route]["rps"] / r["rps"]
            lines.append(f"{route}: mlaas4hep / KServe {ratio:.2f}x (target > 1: {'met' if ratio > 1 else 'NOT met'})")
    return lines


def medians(results: list[dict]) -> list[dict]:
    """One row per configuration and route: the run with the median req/s of its rounds."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["server"], r["runtime"], r["batching"], r["route"]), []).append(r)
    return [sorted(runs, key=lambda r: r["rps"])[(len(runs) - 1) // 2] for runs in groups.values()]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_aiohttp":  # the load-generator process
        aiohttp_main(sys.argv[2:7])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0, help="per configuration (default: %(default)s)")
    ap.add_argument("--clients", type=int, default=200, help="concurrent connections (default: %(default)s)")
    ap.add_argument("--runtimes", default="onnx,tf", help="comma list of onnx, tf (default: %(default)s)")
    ap.add_argument("--batching", default="on,off", help="comma list of on, off (default: %(default)s)")
    ap.add_argument("--routes", default=ROUTES, help="comma list (default: %(default)s)")
    ap.add_argument("--peer", choices=["auto", "off"], default="auto",
                    help="auto: KServe's row when its venv exists (MLAAS4HEP_KSERVE_PYTHON)")
    ap.add_argument("--loadgen", choices=["auto", "wrk", "aiohttp"], default="auto",
                    help="HTTP/1.1 load: wrk when installed, else aiohttp (default: %(default)s); gRPC: h2load")
    ap.add_argument("--wrk-threads", type=int, default=1, help="wrk and h2load threads (default: %(default)s)")
    ap.add_argument("--max-requests", type=int, default=2_000_000, help="aiohttp: bound per configuration")
    ap.add_argument("--server-args", default="", help="extra arguments for mlaas4hep serve")
    ap.add_argument("--repeat", type=int, default=1, help="rounds over the routes; the median is printed")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    loadgen = args.loadgen if args.loadgen != "auto" else ("wrk" if shutil.which("wrk") else "aiohttp")
    routes = args.routes.split(",")
    if "grpc" in routes and not shutil.which("h2load"):
        print("h2load is not installed (Debian package nghttp2-client): the gRPC route is left out")
        routes.remove("grpc")

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
                    for _ in range(args.repeat):  # rounds over the routes: the VM's speed drifts
                        for route in routes:
                            r = measure(server, route, features, rows, args, loadgen)
                            r.update(server="mlaas4hep", runtime=runtime, batching=batching, route=route)
                            results.append(r)
                            _print(r)
                finally:
                    server.stop()
        python = kserve_python() if args.peer == "auto" else None
        if python is not None:
            peer = KServePeer(python, bundle / "inference" / "model.onnx", log, threads=1)
            try:
                for _ in range(args.repeat):
                    for route in [r for r in routes if r in PEER_ROUTES]:
                        r = measure(peer, route, features, rows, args, loadgen)
                        r.update(server="kserve", runtime="onnx", batching="off", route=route)
                        results.append(r)
                        _print(r)
            finally:
                peer.stop()
        elif args.peer == "auto":
            print("KServe's row: no venv at ~/.cache/mlaas4hep/kserve-venv (python -m venv ...; pip install "
                  "kserve==0.21.0 onnxruntime==1.32.0), or set MLAAS4HEP_KSERVE_PYTHON")
        server_log_tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    results = medians(results)
    print(f"\n{MODEL_NAME} ({len(features)} -> 1024 -> 1024 -> 1), {args.clients} clients, {args.seconds:g} s each, "
          f"HTTP/1.1 load from {loadgen}, gRPC load from h2load, {os.cpu_count()} CPU cores shared by server and "
          f"load generator; the median of {args.repeat} round(s) by req/s")
    print("| server | runtime | batching | route | load | req/s | p50 ms | p99 ms | errors |\n"
          "|---|---|---|---|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['server']} | {r['runtime']} | {r['batching']} | {r['route']} | {r['loadgen']} | {r['rps']:.0f} | "
              f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} |")
    for line in targets(results):
        print(line)
    if any(r["errors"] for r in results) and server_log_tail:
        print("\nserver log (tail):\n" + server_log_tail)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
