"""Load generators of benchmarks/serving.py, each in its own process beside the server on the same cores.

* HTTP/1.1: ``wrk`` (Debian package ``wrk``; C, one thread by default) cycling through the request bodies,
  which may be binary (a Lua script reads them from one file by their lengths); else an asyncio + aiohttp
  generator in its own Python process.
* gRPC: ``h2load`` (Debian package ``nghttp2-client``; C), HTTP/2 cleartext with prior knowledge, the same
  gRPC-framed ``ModelInferRequest`` on every stream, one stream at a time per connection (like wrk's
  keep-alive connections); latencies from its per-request log. h2load counts HTTP statuses only, and a
  failed gRPC call is an HTTP 200 with a non-zero ``grpc-status`` trailer, so the caller checks the server's
  own count of successful inferences (the statistics extension) against h2load's.

Each returns ``{"requests", "rps", "p50_ms", "p99_ms", "errors", "seconds"}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Load:
    """What one configuration sends: a path, request bodies (cycled), headers, and the protocol."""

    path: str
    bodies: list[bytes]
    headers: dict[str, str] = field(default_factory=dict)
    protocol: str = "http"   # "http" (HTTP/1.1) or "grpc" (HTTP/2)


def _pct(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))] if sorted_ms else float("nan")


# ----------------------------------------------------------------------------------------- aiohttp

async def _aiohttp_load(url: str, bodies: list[bytes], headers: dict, clients: int, seconds: float,
                        max_requests: int) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = {"non2xx": 0, "socket": 0}
    deadline = time.perf_counter() + seconds
    sent = 0
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
                    async with session.post(url, data=rng.choice(bodies)) as resp:
                        await resp.read()
                        if resp.status >= 300:
                            errors["non2xx"] += 1
                            continue
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    errors["socket"] += 1
                    continue
                latencies.append((time.perf_counter() - t0) * 1e3)

        t_start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        elapsed = time.perf_counter() - t_start
    latencies.sort()
    return {"requests": len(latencies), "rps": len(latencies) / elapsed, "p50_ms": _pct(latencies, 0.50),
            "p99_ms": _pct(latencies, 0.99), "errors": errors["non2xx"] + errors["socket"], "seconds": elapsed}


def aiohttp_main(argv: list[str]) -> None:
    """The aiohttp generator's process: ``URL LOAD_FILE CLIENTS SECONDS MAX_REQUESTS`` (bodies hex-encoded)."""
    url, load_file, clients, seconds, max_requests = argv
    spec = json.loads(Path(load_file).read_text())
    bodies = [bytes.fromhex(b) for b in spec["bodies"]]
    print(json.dumps(asyncio.run(_aiohttp_load(url, bodies, spec["headers"], int(clients), float(seconds),
                                               int(max_requests)))))


def _aiohttp(url: str, load: Load, clients: int, seconds: float, max_requests: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"bodies": [b.hex() for b in load.bodies], "headers": load.headers}, f)
    try:
        cmd = [sys.executable, str(Path(__file__).with_name("serving.py")), "_aiohttp", url, f.name, str(clients),
               str(seconds), str(max_requests)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 120).stdout
    finally:
        os.unlink(f.name)
    return json.loads(out.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------- wrk

_WRK_LUA = """
local f = assert(io.open("%(bodies)s", "rb"))
local data = f:read("*a")
f:close()
local lengths = {%(lengths)s}
local bodies = {}
local at = 1
for _, n in ipairs(lengths) do
  bodies[#bodies + 1] = string.sub(data, at, at + n - 1)
  at = at + n
end
wrk.method = "POST"
%(headers)s
local i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
"""


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _wrk(url: str, load: Load, clients: int, seconds: float, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        body_file = Path(tmp) / "bodies.bin"
        body_file.write_bytes(b"".join(load.bodies))
        headers = "\n".join(f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in load.headers.items())
        script = Path(tmp) / "post.lua"
        script.write_text(_WRK_LUA % {"bodies": body_file, "lengths": ", ".join(str(len(b)) for b in load.bodies),
                                      "headers": headers})
        cmd = ["wrk", f"-t{threads}", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
               "--latency", "-s", str(script), url]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    m = re.search(r"(\d+) requests in ([\d.]+\w+),", out)
    requests, seconds = int(m.group(1)), _ms(m.group(2)) / 1e3
    errors = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    ok = max(0, requests - errors)
    p50, p99 = (_ms(lat[q]) if q in lat else float("nan") for q in ("50", "99"))
    return {"requests": ok, "rps": ok / seconds, "p50_ms": p50, "p99_ms": p99,
            "errors": errors, "seconds": seconds}


# ----------------------------------------------------------------------------------------- h2load (gRPC)

def grpc_frame(message: bytes) -> bytes:
    """One uncompressed gRPC message on the wire: flag byte, big-endian length, the message."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def _h2load(url: str, load: Load, clients: int, seconds: float, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "request.bin"
        body.write_bytes(load.bodies[0])
        log = Path(tmp) / "requests.tsv"
        cmd = ["h2load", f"-c{clients}", "-m1", f"-t{threads}", f"-D{max(1, round(seconds))}", "-d", str(body),
               f"--log-file={log}", *[f"-H{k}: {v}" for k, v in load.headers.items()], url]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
        rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    ok_ms = sorted(int(r[2]) / 1e3 for r in rows if r[1].startswith("2"))
    m = re.search(r"finished in ([\d.]+\w+),", out)
    elapsed = _ms(m.group(1)) / 1e3 if m else seconds
    failed = sum(1 for r in rows if not r[1].startswith("2"))
    return {"requests": len(ok_ms), "rps": len(ok_ms) / elapsed, "p50_ms": _pct(ok_ms, 0.50),
            "p99_ms": _pct(ok_ms, 0.99), "errors": failed, "seconds": elapsed}


def run_load(loadgen: str, url: str, load: Load, clients: int, seconds: float, max_requests: int,
             threads: int) -> dict:
    """Drive ``url`` with ``load`` from a separate process; return its measurements."""
    if load.protocol == "grpc":
        return _h2load(url, load, clients, seconds, threads)
    if loadgen == "wrk":
        return _wrk(url, load, clients, seconds, threads)
    return _aiohttp(url, load, clients, seconds, max_requests)
