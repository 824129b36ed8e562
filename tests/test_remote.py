"""Remote reading through real servers on 127.0.0.1: XRootD (``root://``) and HTTP with byte ranges.

TreeReader must give, chunk by chunk, the same arrays through ``root://`` and ``http://`` as from
disk, for uproot-written TTrees (counted arrays), ROOT-written TTrees (``std::vector`` branches) and
RNTuples; survive transient HTTP 503s with retries; and report missing, unreachable and truncated
files as InputFileError / RemoteReadError naming the URL, quickly and without hanging.
"""

from __future__ import annotations

import http.client
import shutil
import threading
import time
import urllib.parse
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

try:
    from servers import free_port, http_range_server, xrootd_server
except ImportError:  # tests/ imported as a package
    from tests.servers import free_port, http_range_server, xrootd_server

from mlaas4hep_lab.data.reader import TreeReader
from mlaas4hep_lab.errors import InputFileError, RemoteReadError, TreeNotFoundError

pytestmark = pytest.mark.remote

DATA = Path(__file__).resolve().parent / "data"
N = 12_000  # entries of the uproot-written files, in 4 baskets of 3,000
STEP = 2_500  # chunks cross basket boundaries; the last one is partial
DEADLINE = 30.0  # seconds: longer than this is a hang
FAST = {"retries": 3, "backoff": 0.05}

# file -> tree; the ROOT-written ones come from tests/data/make_root_files.py
FILES = {
    "events.root": "events",  # TTree written by uproot: flat + counted arrays (NanoAOD style)
    "rntuple.root": "events",  # RNTuple written by uproot
    "root_written.root": "ntuple/tree",  # TTree written by ROOT 6.40: std::vector<T> branches
    "root_written_rntuple.root": "ntuple/tree",  # RNTuple written by ROOT 6.40
}


def within(seconds: float, fn, *args, **kwargs):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it takes longer than ``seconds``."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as err:  # re-raised in the test's thread
            box["error"] = err

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        pytest.fail(f"{getattr(fn, '__name__', fn)} did not finish within {seconds:.0f}s (hang)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def make_columns(seed: int = 20240601) -> dict:
    rng = np.random.default_rng(seed)
    njet = rng.integers(0, 7, N)
    nmu = rng.integers(0, 3, N)
    return {
        "x": rng.normal(0, 1, N).astype(np.float32),
        "e": rng.exponential(50, N),
        "nhit": rng.integers(-5, 100, N).astype(np.int32),
        "evt": np.arange(N, dtype=np.int64) + 2**33,
        "flag": rng.random(N) < 0.3,
        "Jet_pt": ak.unflatten(rng.exponential(30, njet.sum()).astype(np.float32), njet),
        "Jet_eta": ak.unflatten(rng.uniform(-2.5, 2.5, njet.sum()), njet),
        "Muon_q": ak.unflatten(rng.choice(np.array([-1, 1], np.int32), nmu.sum()), nmu),
    }


@pytest.fixture(scope="module")
def columns() -> dict:
    return make_columns()


@pytest.fixture(scope="module")
def remote_dir(tmp_path_factory, columns) -> Path:
    """A folder with the files to serve (written once per module)."""
    d = tmp_path_factory.mktemp("remote")
    with uproot.recreate(d / "events.root") as f:
        f.mktree("events", {
            "x": np.float32, "e": np.float64, "nhit": np.int32, "evt": np.int64, "flag": np.bool_,
            "Jet_pt": "var * float32", "Jet_eta": "var * float64", "Muon_q": "var * int32",
        })
        for start in range(0, N, 3000):
            f["events"].extend({k: v[start : start + 3000] for k, v in columns.items()})
    with uproot.recreate(d / "rntuple.root") as f:
        f["events"] = {k: columns[k] for k in ("x", "e", "nhit", "evt", "flag", "Jet_pt")}  # dict -> RNTuple
    for name in ("root_written.root", "root_written_rntuple.root"):
        shutil.copy(DATA / name, d / name)
    # a truncated copy on disk (an interrupted transfer), for the XRootD server
    whole = (d / "events.root").read_bytes()
    (d / "truncated.root").write_bytes(whole[: len(whole) // 2])
    (d / "not_root.root").write_text("this is not a ROOT file\n" * 10)
    return d


@pytest.fixture(scope="module")
def xrootd_base(remote_dir):
    with xrootd_server(remote_dir) as base:
        yield base


@pytest.fixture(scope="module")
def http_base(remote_dir):
    with http_range_server(remote_dir) as base:
        yield base


@pytest.fixture(params=["root", "http"])
def base(request):
    """The base URL of each server in turn (an XRootD-less machine skips only the root:// cases)."""
    server = request.getfixturevalue("xrootd_base" if request.param == "root" else "http_base")
    if server.control is not None:
        server.control.reset()
    return server


def assert_same_chunks(local: TreeReader, remote: TreeReader, step: int) -> int:
    names = list(local.branches)
    n = local.num_entries
    chunks = 0
    for start in range(0, n, step):
        stop = min(start + step, n)
        want = local.read(names, start, stop)
        got = remote.read(names, start, stop)
        assert got.fields == names
        assert len(got) == stop - start
        assert str(ak.type(got)) == str(ak.type(want)), (start, stop)
        assert ak.array_equal(got, want, dtype_exact=True), (start, stop)
        chunks += 1
    return chunks


# ---------------------------------------------------------------------------------------- reading
@pytest.mark.parametrize("fname", list(FILES))
def test_remote_reads_same_arrays_as_local(base, remote_dir, fname):
    tree = FILES[fname]
    url = base.file(fname)
    with TreeReader(str(remote_dir / fname), tree) as local:
        remote = within(DEADLINE, TreeReader, url, tree, **FAST)
        try:
            assert remote.num_entries == local.num_entries > 0
            assert remote.branches == local.branches
            assert remote.skipped == local.skipped
            step = STEP if local.num_entries == N else 700
            chunks = within(DEADLINE, assert_same_chunks, local, remote, step)
            assert chunks >= 3
        finally:
            remote.close()


def test_uproot_written_ttree_matches_source_columns(http_base, columns):
    """The remote read is also right in absolute terms, not only equal to the local read."""
    with TreeReader(http_base.file("events.root"), "events", **FAST) as r:
        assert r.num_entries == N
        kinds = {name: (info.kind, info.dtype) for name, info in r.branches.items()}
        assert kinds["x"] == ("flat", np.dtype(np.float32))
        assert kinds["evt"] == ("flat", np.dtype(np.int64))
        assert kinds["flag"] == ("flat", np.dtype(np.bool_))
        assert kinds["Jet_pt"] == ("jagged", np.dtype(np.float32))
        assert kinds["Jet_eta"] == ("jagged", np.dtype(np.float64))
        assert kinds["Muon_q"] == ("jagged", np.dtype(np.int32))
        names = list(columns)
        parts = [r.read(names, start, start + STEP) for start in range(0, N, STEP)]
    got = ak.concatenate(parts)
    for name, want in columns.items():
        assert ak.array_equal(got[name], want), name


def test_rntuple_fields_over_xrootd(xrootd_base, columns):
    with TreeReader(xrootd_base.file("rntuple.root"), "events", **FAST) as r:
        assert r.num_entries == N
        assert r.branches["Jet_pt"].kind == "jagged"
        assert r.branches["x"].kind == "flat"
        got = r.read(["Jet_pt", "x"], 5000, 9000)
    assert ak.array_equal(got["Jet_pt"], columns["Jet_pt"][5000:9000])
    np.testing.assert_array_equal(ak.to_numpy(got["x"]), columns["x"][5000:9000])


# ----------------------------------------------------------------------------------------- errors
def test_missing_remote_file_is_input_file_error_naming_url(base):
    url = base.file("missing.root")
    t0 = time.monotonic()
    with pytest.raises(InputFileError) as err:
        within(DEADLINE, TreeReader, url, "events", retries=2, backoff=0.05)
    assert url in str(err.value)
    assert err.value.path == url
    assert time.monotonic() - t0 < 10


def test_missing_tree_in_remote_file(base):
    with pytest.raises(TreeNotFoundError) as err:
        within(DEADLINE, TreeReader, base.file("events.root"), "evnets", **FAST)
    assert "events" in str(err.value)  # the suggestion / the list of trees


@pytest.mark.parametrize("fname", ["truncated.root", "not_root.root"])
def test_broken_remote_file_gives_clear_error(base, fname):
    url = base.file(fname)

    def open_and_read():
        with TreeReader(url, "events", retries=1, backoff=0.05) as r:
            r.read(list(r.branches), 0, r.num_entries)

    with pytest.raises(InputFileError) as err:
        within(DEADLINE, open_and_read)
    assert url in str(err.value)


def test_unreachable_server_is_remote_read_error():
    url = f"http://127.0.0.1:{free_port()}/events.root"  # nothing listens there
    with pytest.raises(RemoteReadError) as err:
        within(DEADLINE, TreeReader, url, "events", retries=1, backoff=0.05)
    assert url in str(err.value)


# ------------------------------------------------------------------------- transient HTTP failures
def test_http_503s_on_open_are_retried(remote_dir):
    with http_range_server(remote_dir, fail_first=2) as base:
        url = base.file("events.root")
        with within(DEADLINE, TreeReader, url, "events", **FAST) as r, TreeReader(
            str(remote_dir / "events.root"), "events"
        ) as local:
            assert base.control.failures_sent == 2
            assert r.num_entries == N
            assert ak.array_equal(r.read(list(r.branches), 0, 4000), local.read(list(local.branches), 0, 4000))


def test_http_503s_during_read_are_retried(remote_dir):
    with http_range_server(remote_dir) as base, TreeReader(str(remote_dir / "events.root"), "events") as local:
        with TreeReader(base.file("events.root"), "events", **FAST) as r:
            names = list(r.branches)
            base.control.set_failures(2)
            got = within(DEADLINE, r.read, names, 1000, 7000)
            assert base.control.failures_sent == 2
            assert ak.array_equal(got, local.read(names, 1000, 7000))


def test_http_503s_per_path_are_retried(remote_dir):
    with http_range_server(remote_dir, fail_first=1, fail_per_path=True) as base:
        for fname in ("events.root", "root_written.root"):
            with within(DEADLINE, TreeReader, base.file(fname), FILES[fname], **FAST) as r:
                assert r.num_entries > 0
        assert base.control.failures_sent == 2


def test_http_failures_beyond_retries_on_open_raise_remote_read_error(remote_dir):
    with http_range_server(remote_dir, fail_first=10_000) as base:
        url = base.file("events.root")
        with pytest.raises(RemoteReadError) as err:
            within(DEADLINE, TreeReader, url, "events", retries=2, backoff=0.05)
        assert url in str(err.value)
        assert base.control.failures_sent >= 3  # one try and two retries


def test_http_failures_beyond_retries_during_read_raise_remote_read_error(remote_dir):
    with http_range_server(remote_dir) as base, TreeReader(base.file("events.root"), "events",
                                                           retries=2, backoff=0.05) as r:
        base.control.set_failures(10_000)
        with pytest.raises(RemoteReadError) as err:
            within(DEADLINE, r.read, list(r.branches), 0, N)
        assert base.file("events.root") in str(err.value)
        assert base.control.failures_sent >= 3


@pytest.mark.parametrize("fraction", [0.5, 0.8])
def test_truncated_copy_over_http_gives_clear_error(remote_dir, fraction):
    with http_range_server(remote_dir, truncate={"cut.root": ("events.root", fraction)}) as base:
        url = base.file("cut.root")

        def open_and_read():
            with TreeReader(url, "events", retries=1, backoff=0.05) as r:
                r.read(list(r.branches), 0, r.num_entries)

        with pytest.raises(InputFileError) as err:
            within(DEADLINE, open_and_read)
        assert url in str(err.value)


# ------------------------------------------------------------------------- the servers themselves
def _request(base: str, method: str, path: str, headers: dict | None = None):
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.request(method, "/" + path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _parse_multipart(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    boundary = content_type.split("boundary=", 1)[1].encode()
    parts = []
    for chunk in body.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.partition(b"\r\n\r\n")
        assert data.endswith(b"\r\n")
        crange = [line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-range:")][0]
        parts.append((crange, data[:-2]))
    return parts


def test_http_range_server_protocol(http_base, remote_dir):
    data = (remote_dir / "events.root").read_bytes()
    size = len(data)
    status, h, body = _request(http_base, "HEAD", "events.root")
    assert (status, h["content-length"], h["accept-ranges"], body) == (200, str(size), "bytes", b"")
    status, h, body = _request(http_base, "GET", "events.root")
    assert status == 200 and body == data
    status, h, body = _request(http_base, "GET", "events.root", {"Range": "bytes=100-199"})
    assert (status, h["content-range"], h["content-length"]) == (206, f"bytes 100-199/{size}", "100")
    assert body == data[100:200]
    status, h, body = _request(http_base, "GET", "events.root", {"Range": "bytes=-10"})
    assert status == 206 and body == data[-10:]
    status, h, body = _request(http_base, "GET", "events.root", {"Range": f"bytes={size - 5}-"})
    assert status == 206 and body == data[-5:]
    status, h, body = _request(http_base, "GET", "events.root", {"Range": f"bytes={size - 5}-{size + 100}"})
    assert status == 206 and body == data[-5:] and h["content-range"] == f"bytes {size - 5}-{size - 1}/{size}"
    status, h, body = _request(http_base, "GET", "events.root", {"Range": "bytes=0-3, 1000-1099,50-59"})
    assert status == 206 and h["content-type"].startswith("multipart/byteranges")
    assert int(h["content-length"]) == len(body)
    assert _parse_multipart(h["content-type"], body) == [
        (f"bytes 0-3/{size}", data[0:4]), (f"bytes 1000-1099/{size}", data[1000:1100]),
        (f"bytes 50-59/{size}", data[50:60]),
    ]
    status, h, _ = _request(http_base, "GET", "events.root", {"Range": f"bytes={size}-"})
    assert status == 416 and h["content-range"] == f"bytes */{size}"
    assert _request(http_base, "GET", "nothing.root")[0] == 404
    assert _request(http_base, "GET", "../etc/passwd")[0] == 404
    http_base.control.set_failures(1)
    assert _request(http_base, "GET", "events.root")[0] == 503
    assert _request(http_base, "GET", "events.root")[0] == 200


@pytest.mark.parametrize("multirange", [True, False])
def test_uproot_httpsource_multirange(remote_dir, multirange):
    """uproot's own HTTPSource sends multi-range requests; the server answers them (or, with
    multirange=False, answers 200 and uproot falls back to one request per range)."""
    with http_range_server(remote_dir, multirange=multirange) as base, uproot.open(
        base.file("root_written.root"), handler=uproot.source.http.HTTPSource
    ) as f:
        got = within(DEADLINE, f["ntuple/tree"].arrays, ["jet_pt", "met", "pt"])
        multi = [r for r in base.control.requests if r.range and "," in r.range]
        statuses = {r.status for r in multi}
        if not multi:  # uproot coalesced its reads into single ranges this time: send a multi-range request
            url = urllib.parse.urlsplit(base.file("root_written.root"))
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
            conn.request("GET", url.path, headers={"Range": "bytes=0-9, 100-109"})
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            statuses = {resp.status}
            assert (b"multipart/byteranges" in resp.getheader("Content-Type", "").encode()) == multirange
            assert len(body) > 0
        assert statuses == ({206} if multirange else {200})
    want = uproot.open(remote_dir / "root_written.root")["ntuple/tree"].arrays(["jet_pt", "met", "pt"])
    assert ak.array_equal(got, want)


def test_xrootd_url_forms(xrootd_base):
    good = xrootd_base.file("events.root")
    assert good == f"{xrootd_base}/events.root" and "//events.root" in good
    for handler in (None, uproot.source.xrootd.XRootDSource):
        kw = {} if handler is None else {"handler": handler}
        with uproot.open(good, timeout=10, **kw) as f:
            assert f["events"].num_entries == N
    with pytest.raises(OSError, match="relative path"):
        uproot.open(f"{xrootd_base}events.root", timeout=10)  # single slash: refused by the server


def test_xrootd_server_is_read_only(xrootd_base):
    from XRootD import client
    from XRootD.client.flags import OpenFlags

    f = client.File()
    status, _ = f.open(xrootd_base.file("new.root"), OpenFlags.NEW, timeout=10)
    assert not status.ok
    assert not (xrootd_base.folder / "new.root").exists()


def test_root_url_after_tensorflow_was_imported(tmp_path):
    """Importing TensorFlow before the XRootD client crashes the first root:// read; the package loads the
    XRootD client first. Run in a fresh process: the user imports the package, then Keras, then reads."""
    import subprocess
    import sys
    from pathlib import Path

    if shutil.which("xrootd") is None and __import__("os").environ.get("MLAAS4HEP_REQUIRE_SERVERS") != "1":
        pytest.skip("xrootd server binary not installed (apt-get install xrootd-server)")
    data = tmp_path / "data"
    data.mkdir()
    with uproot.recreate(data / "a.root") as f:
        f.mktree("events", {"x": np.float32})
        f["events"].extend({"x": np.arange(10, dtype=np.float32)})
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import mlaas4hep_lab, keras\n"
        "from servers import xrootd_server\n"
        "from mlaas4hep_lab.data.reader import TreeReader\n"
        f"with xrootd_server({str(data)!r}) as url:\n"
        "    r = TreeReader(url.rstrip('/') + '//a.root', 'events')\n"
        "    print('SUM', float(r.read(['x'], 0, 10)['x'].to_numpy().sum()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "SUM 45.0" in out.stdout
