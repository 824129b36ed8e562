"""Uploads to the inference service under hostile conditions: the streaming extractor (mlaas4hep_lab.untar)
on its own, then a real ``mlaas4hep serve`` process with small caps and quotas.

The extractor's caps are checked at the byte: a bomb exactly at the cap is unpacked, one byte over is
refused, and what was written when it stopped never exceeds the cap. The server tests use the hand-made
ONNX bundles of test_serving_unit (no training) and check, after every refused upload, that nothing is
left in ``store/.staging`` and that the service still answers.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import socket
import stat
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
from serving_support import ServerProcess, http_call  # noqa: E402
from test_serving_unit import B1, B2, W1, W2, X4, make_bundle, scores, tarball  # noqa: E402

from mlaas4hep_lab.bundle import Bundle, tar_bundle  # noqa: E402
from mlaas4hep_lab.errors import ConfigError  # noqa: E402
from mlaas4hep_lab.serving.settings import Settings  # noqa: E402
from mlaas4hep_lab.serving.store import latest_version  # noqa: E402
from mlaas4hep_lab.untar import ArchiveTooLarge, TarLimits, UnsafeArchiveError, extract  # noqa: E402

MiB = 1 << 20
CAP = 1 * MiB  # the test server's --max-tar-bytes
USERS = ("alice", "bob", "carol", "dave", "erin", "frank")
TOKENS = {u: f"tok-{u}-{i:04d}" for i, u in enumerate(USERS)}


def tar_of(members, mode: str = "w:gz", fmt=tarfile.GNU_FORMAT) -> bytes:
    """A tarball of (TarInfo, bytes | None) pairs (a member's size is its data's)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=fmt) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member(name: str, data: bytes | None = b"x", kind=tarfile.REGTYPE, **attrs):
    info = tarfile.TarInfo(name)
    info.type, info.mode = kind, 0o777
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, (data if kind == tarfile.REGTYPE else None)


def zero_bomb(name: str, size: int) -> bytes:
    """A gzipped tar of one member of ``size`` zero bytes (1000:1 compression)."""
    info = tarfile.TarInfo(name)
    info.size = size
    raw = info.tobuf(tarfile.GNU_FORMAT) + bytes(size) + bytes(-size % 512) + bytes(1024)
    return gzip.compress(raw, compresslevel=6)


def du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------ the extractor

@pytest.mark.parametrize("extra", [0, 1], ids=["exactly at the cap", "one byte over"])
@pytest.mark.parametrize("cap", ["total", "member"])
def test_bomb_at_the_cap_and_one_byte_over(tmp_path, extra, cap):
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(zero_bomb("bomb/zeros.bin", CAP + extra))
    limits = TarLimits(total_bytes=CAP) if cap == "total" else TarLimits(member_bytes=CAP)
    if not extra:
        out = extract(archive, tmp_path / "out", limits)
        assert out.bytes == CAP == (out.root / "zeros.bin").stat().st_size
        return
    with pytest.raises(ArchiveTooLarge) as err:
        extract(archive, tmp_path / "out", limits)
    assert err.value.what == cap and err.value.written <= CAP and du(tmp_path / "out") <= CAP
    assert f"more than {CAP} bytes" in str(err.value)


def test_headers_that_lie_stop_the_copy_at_the_cap(tmp_path):
    """A member claiming 3 GiB of which 64 MiB of zeros follow, and members that add up past the cap:
    the copy stops at the cap, whatever the headers said."""
    info = tarfile.TarInfo("bundle/huge.bin")
    info.size = 3 << 30
    (tmp_path / "liar.tar.gz").write_bytes(gzip.compress(info.tobuf(tarfile.GNU_FORMAT) + bytes(64 * MiB)))
    many = tar_of([member(f"bundle/part{i}.bin", bytes(400_000)) for i in range(4)])
    (tmp_path / "many.tar.gz").write_bytes(many)
    for name in ("liar", "many"):
        with pytest.raises(ArchiveTooLarge) as err:
            extract(tmp_path / f"{name}.tar.gz", tmp_path / name, TarLimits(total_bytes=CAP))
        assert err.value.written <= CAP and du(tmp_path / name) <= CAP, name
    assert du(tmp_path / "many") == 800_000  # two whole members, nothing of the third


def test_compression_ratio_guard(tmp_path):
    archive = tmp_path / "padded.tar.gz"
    archive.write_bytes(zero_bomb("bundle/pad.bin", 8 * MiB))
    with pytest.raises(ArchiveTooLarge) as err:
        extract(archive, tmp_path / "out", TarLimits(ratio=50, ratio_floor=MiB))
    assert err.value.what == "ratio" and err.value.written <= 2 * MiB and "compression bomb" in str(err.value)
    assert extract(archive, tmp_path / "ok", TarLimits(ratio=0)).bytes == 8 * MiB  # 0: no check


def _sparse() -> bytes:
    info = tarfile.TarInfo("bundle/sparse")
    info.type = tarfile.GNUTYPE_SPARSE
    return gzip.compress(info.tobuf(tarfile.GNU_FORMAT) + bytes(1024))


def _nul_name() -> bytes:
    info, data = member("bundle/placeholder")
    info.pax_headers = {"path": "bundle/a\x00b"}  # a pax path may hold what a plain header cannot
    return tar_of([(info, data)], fmt=tarfile.PAX_FORMAT)


def _pax_bomb() -> bytes:
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, 1 << 30
    return gzip.compress(info.tobuf(tarfile.USTAR_FORMAT) + bytes(8 * MiB))


HOSTILE = {
    "absolute path": lambda: tar_of([member("/tmp/mlaas4hep-evil")]),
    "dot-dot": lambda: tar_of([member("bundle/../../mlaas4hep-evil")]),
    "backslash dot-dot": lambda: tar_of([member("bundle\\..\\..\\evil")]),
    "drive letter": lambda: tar_of([member("C:/evil")]),
    "symlink": lambda: tar_of([member("bundle/link", kind=tarfile.SYMTYPE, linkname="/etc/passwd")]),
    "symlink folder": lambda: tar_of([member("bundle", kind=tarfile.SYMTYPE, linkname="/tmp"),
                                      member("bundle/evil")]),
    "hardlink": lambda: tar_of([member("bundle/a"), member("bundle/b", kind=tarfile.LNKTYPE, linkname="bundle/a")]),
    "char device": lambda: tar_of([member("bundle/null", kind=tarfile.CHRTYPE, devmajor=1, devminor=3)]),
    "block device": lambda: tar_of([member("bundle/disk", kind=tarfile.BLKTYPE, devmajor=8, devminor=0)]),
    "fifo": lambda: tar_of([member("bundle/pipe", kind=tarfile.FIFOTYPE)]),
    "sparse": _sparse,
    "duplicate file": lambda: tar_of([member("bundle/manifest.json", b"{}"), member("bundle/manifest.json", b"[]")]),
    "file over folder": lambda: tar_of([member("bundle/model", kind=tarfile.DIRTYPE), member("bundle/model")]),
    "folder over file": lambda: tar_of([member("bundle/model"), member("bundle/model/w.bin")]),
    "control character": lambda: tar_of([member("bundle/evil\nname")], fmt=tarfile.PAX_FORMAT),
    "escape character": lambda: tar_of([member("bundle/\x1b[31mred")], fmt=tarfile.PAX_FORMAT),
    "NUL in the name": _nul_name,
    "pax header bomb": _pax_bomb,
    "too many members": lambda: tar_of([member(f"bundle/f{i}") for i in range(21)]),
    "truncated": lambda: tar_of([member("bundle/w.bin", os.urandom(50_000))], mode="w")[:20_000],
    "empty archive": lambda: tar_of([]),
    "not a tarball": lambda: b"just some bytes, not a tarball" * 50,
}


@pytest.mark.parametrize("attack", sorted(HOSTILE))
def test_hostile_tarballs_are_refused_by_the_extractor(tmp_path, attack):
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(HOSTILE[attack]())
    target = tmp_path / "deep" / "out"
    target.parent.mkdir()
    with pytest.raises(UnsafeArchiveError) as err:
        extract(archive, target, TarLimits(members=20))
    assert str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "evil.tar.gz"]  # nothing escaped
    assert not any(p.is_symlink() for p in target.rglob("*")) and not Path("/tmp/mlaas4hep-evil").exists()
    if attack == "too many members":
        assert isinstance(err.value, ArchiveTooLarge) and err.value.what == "members"


def test_modes_are_private_whatever_the_archive_or_umask_says(tmp_path):
    archive = tmp_path / "b.tar"
    archive.write_bytes(tar_of([member("bundle/sub", kind=tarfile.DIRTYPE), member("bundle/sub/w.bin", b"1"),
                                member("bundle/implicit/x.json", b"{}")], mode="w"))
    old = os.umask(0)
    try:
        out = extract(archive, tmp_path / "out")
    finally:
        os.umask(old)
    modes = {p.relative_to(tmp_path / "out").as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in [tmp_path / "out", *(tmp_path / "out").rglob("*")]}
    assert out.root == tmp_path / "out" / "bundle" and out.members == 3
    assert modes == {".": 0o700, "bundle": 0o700, "bundle/sub": 0o700, "bundle/sub/w.bin": 0o600,
                     "bundle/implicit": 0o700, "bundle/implicit/x.json": 0o600}


def test_bundle_tarball_has_the_manifest_first_and_it_is_read_before_the_payload(tmp_path):
    folder = make_bundle(tmp_path / "higgs")
    tar_bundle(folder, tmp_path / "higgs.tar.gz")
    with tarfile.open(tmp_path / "higgs.tar.gz") as tar:
        names = tar.getnames()
    assert names[:3] == ["higgs", "higgs/manifest.json", "higgs/specs.json"]
    assert names.index("higgs/inference/model.onnx") > names.index("higgs/preproc.json")
    seen = []

    def refuse_manifest(path: str, data: bytes) -> None:
        seen.append(path)
        raise UnsafeArchiveError(f"{path}: not this one")

    with pytest.raises(UnsafeArchiveError, match="not this one"):
        extract(tmp_path / "higgs.tar.gz", tmp_path / "out", inspect=refuse_manifest)
    assert seen == ["higgs/manifest.json"]
    assert [p.name for p in (tmp_path / "out" / "higgs").iterdir()] == ["manifest.json"]  # no payload yet


def test_bundle_load_of_a_hostile_tarball_leaves_no_temporary_folder(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(HOSTILE["symlink"]())
    with pytest.raises(ConfigError, match="links are not allowed"):
        Bundle.load(archive)
    assert list((tmp_path / "tmp").iterdir()) == []
    good = tmp_path / "good.tar.gz"
    good.write_bytes(tarball(make_bundle(tmp_path / "higgs")))
    bundle = Bundle.load(good)
    assert bundle.name == "higgs"
    bundle.close()


def test_latest_is_the_highest_version():
    v = {"3": {"seq": 2}, "5": {"seq": 1}, "10": {"seq": 0}, "beta": {"seq": 9}}
    assert latest_version(v) == "10"  # numbers compare as numbers; names only when no number exists
    assert latest_version({"beta": {"seq": 1}, "alpha": {"seq": 2}}) == "alpha"  # the latest uploaded
    assert latest_version({}) is None


def test_settings_of_caps_and_quotas(monkeypatch):
    monkeypatch.setenv("MLAAS4HEP_QUOTA_BYTES", "0")
    monkeypatch.setenv("MLAAS4HEP_MAX_TAR_MEMBER_BYTES", "1234")
    s = Settings(tokens={"a": "b"})
    assert (s.quota_bytes, s.quota_versions, s.max_tar_member_bytes, s.max_tar_ratio) == (0, 100, 1234, 100.0)
    with pytest.raises(ConfigError, match="quota_versions"):
        Settings(tokens={"a": "b"}, quota_versions=-1)
    monkeypatch.setenv("MLAAS4HEP_MAX_TAR_BYTES", "lots")
    with pytest.raises(ConfigError, match="MLAAS4HEP_MAX_TAR_BYTES"):
        Settings(tokens={"a": "b"})


# ------------------------------------------------------------------------------------------ the server

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uploads")
    (folder / "tokens.json").write_text(json.dumps(TOKENS))
    proc = ServerProcess(folder / "store", folder / "tokens.json", folder / "server.log",
                         "--max-tar-bytes", str(CAP), "--max-tar-members", "20", "--quota-bytes", str(CAP * 5 // 2),
                         "--quota-versions", "5", "--max-upload", str(16 * MiB)).start()
    try:
        yield proc
    finally:
        proc.stop()


def call(server, user: str, method: str, path: str, body: bytes | None = None, ctype="application/gzip"):
    return http_call(server.url, method, path, body, TOKENS[user], content_type=ctype)


def upload(server, user: str, body: bytes, query: str = "", ctype="application/gzip"):
    return call(server, user, "POST", f"/upload{query}", body, ctype)


def staging(server) -> list[str]:
    return sorted(p.name for p in (server.store / ".staging").iterdir())


def assert_refused_cleanly(server, status, payload, statuses=range(400, 500)):
    assert status in statuses, (status, payload)
    assert isinstance(payload, dict) and payload.get("error"), payload
    assert staging(server) == []  # nothing of the refused upload is left behind
    assert http_call(server.url, "GET", "/v2/health/live")[0] == 200


def padded(tmp_path: Path, name: str, total: int, w=W1, b=B1) -> bytes:
    """A valid bundle with a zero-filled pad.bin making its content exactly ``total`` bytes."""
    folder = make_bundle(tmp_path / name, name=name, w=w, b=b)
    (folder / "pad.bin").write_bytes(bytes(total - du(folder)))
    assert du(folder) == total
    return tarball(folder)


def test_hostile_uploads_are_refused_and_leave_nothing(server):
    for attack, build in sorted(HOSTILE.items()):
        status, payload = upload(server, "alice", build(), "?name=evil")
        assert_refused_cleanly(server, status, payload)
        assert status == (413 if attack in ("too many members", "pax header bomb") else 400), (attack, payload)
    assert call(server, "alice", "GET", "/models")[1] == []


def test_bundle_exactly_at_the_cap_is_taken_and_one_byte_over_is_refused(server, tmp_path):
    status, answer = upload(server, "bob", padded(tmp_path, "at-cap", CAP))
    assert status == 201, answer
    status, payload = upload(server, "bob", padded(tmp_path, "over-cap", CAP + 1))
    assert_refused_cleanly(server, status, payload, [413])
    assert f"more than {CAP} bytes" in payload["error"]
    # a valid bundle padded with 64 MiB of zeros (64 KiB uploaded)
    status, payload = upload(server, "bob", padded(tmp_path, "zero-padded", 64 * MiB))
    assert_refused_cleanly(server, status, payload, [413])
    assert call(server, "bob", "DELETE", "/v2/models/at-cap")[0] == 200


def test_quota_of_bytes(server, tmp_path):
    first, second = padded(tmp_path, "q1", CAP), padded(tmp_path, "q2", CAP, W2, B2)
    assert upload(server, "carol", first, "?name=q")[0] == 201
    assert upload(server, "carol", second, "?name=q")[0] == 201
    status, payload = upload(server, "carol", second, "?name=q")  # 3 MiB > 2.5 MiB
    assert_refused_cleanly(server, status, payload, [413])
    assert "quota exceeded" in payload["error"] and "2.0 MiB" in payload["error"] and "2.5 MiB" in payload["error"]
    # replacing a version: its bytes are not counted twice
    status, answer = upload(server, "carol", second, "?name=q&version=1")
    assert status == 201 and answer["versions"] == ["1", "2"], answer
    usage = call(server, "carol", "GET", "/whoami")[1]["usage"]
    assert (usage["bytes"], usage["versions"], usage["quota_bytes"]) == (2 * CAP, 2, CAP * 5 // 2)
    assert call(server, "carol", "DELETE", "/v2/models/q/versions/2")[0] == 200  # frees its share
    assert upload(server, "carol", second, "?name=q")[0] == 201
    assert call(server, "carol", "DELETE", "/v2/models/q")[0] == 200
    assert call(server, "carol", "GET", "/whoami")[1]["usage"]["bytes"] == 0


def test_quota_of_versions(server, tmp_path):
    small = tarball(make_bundle(tmp_path / "small", name="small"))
    for name in ("one", "one", "one", "two", "two"):
        assert upload(server, "dave", small, f"?name={name}")[0] == 201
    status, payload = upload(server, "dave", small, "?name=three")
    assert_refused_cleanly(server, status, payload, [413])
    assert "5 model versions" in payload["error"] and "5 versions" in payload["error"]
    assert upload(server, "dave", small, "?name=one&version=2")[0] == 201  # a replacement is no new version
    assert call(server, "dave", "DELETE", "/v2/models/two/versions/1")[0] == 200
    assert upload(server, "dave", small, "?name=three")[0] == 201


def predict(server, user: str, model: str, version=None) -> np.ndarray:
    body = {"model": model, "values": X4.tolist(), **({"version": version} if version else {})}
    status, out = call(server, user, "POST", "/json", json.dumps(body).encode(), "application/json")
    assert status == 200, out
    return np.asarray(out)


def test_latest_is_the_highest_version_number(server, tmp_path):
    v1, v2 = tarball(make_bundle(tmp_path / "a", name="m")), tarball(make_bundle(tmp_path / "b", name="m", w=W2, b=B2))
    assert upload(server, "erin", v2, "?version=5")[0] == 201
    status, answer = upload(server, "erin", v1, "?version=3")
    assert status == 201 and answer["tags"]["latest"] == "5" and answer["latest"] == "5"
    np.testing.assert_allclose(predict(server, "erin", "m"), scores(X4, W2, B2), atol=1e-6)
    assert upload(server, "erin", v1)[1]["version"] == "6"  # no version given: the next number
    for gone, now in (("6", "5"), ("5", "3")):
        assert call(server, "erin", "DELETE", f"/v2/models/m/versions/{gone}")[0] == 200
        assert call(server, "erin", "GET", "/v2/models/m")[1]["tags"]["latest"] == now
    np.testing.assert_allclose(predict(server, "erin", "m"), scores(X4), atol=1e-6)
    # names are latest only while no number exists: then the most recently uploaded
    assert upload(server, "erin", v1, "?name=named&version=beta")[1]["latest"] == "beta"
    assert upload(server, "erin", v2, "?name=named&version=alpha")[1]["latest"] == "alpha"
    assert upload(server, "erin", v1, "?name=named&version=2")[1]["latest"] == "2"
    call(server, "erin", "DELETE", "/v2/models/named/versions/2")
    assert call(server, "erin", "GET", "/v2/models/named")[1]["tags"] == {"latest": "alpha"}
    np.testing.assert_allclose(predict(server, "erin", "named"), scores(X4, W2, B2), atol=1e-6)


def multipart(fields: dict[str, tuple[str | None, bytes]]) -> tuple[bytes, str]:
    boundary = "b0undary-x1"
    parts = []
    for key, (filename, data) in fields.items():
        disposition = f'form-data; name="{key}"' + (f'; filename="{filename}"' if filename else "")
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_bad_multipart_params_leave_nothing(server):
    from test_serving_unit import onnx_logistic

    model = onnx_logistic(W1, B1)
    for params in (b"[" * 100_000 + b"]" * 100_000, b'{"features": [', b'["a list"]', b"x" * (2 * MiB)):
        body, ctype = multipart({"model": ("m.onnx", model), "params": ("params.json", params),
                                 "name": (None, b"bare")})
        status, payload = upload(server, "frank", body, ctype=ctype)
        assert_refused_cleanly(server, status, payload)
        assert "params" in payload["error"], payload
    body, ctype = multipart({"model": ("m.onnx", model), "name": (None, b"bare"),
                             "params": ("params.json", b'{"features": ["pt", "eta", "mass", "met"]}')})
    assert upload(server, "frank", body, ctype=ctype)[0] == 201


@pytest.mark.parametrize("form", [False, True], ids=["body", "multipart"])
def test_client_gone_mid_upload_leaves_nothing(server, form):
    head = (f"POST /upload?name=gone HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKENS['frank']}\r\n"
            f"Content-Type: {'multipart/form-data; boundary=zz' if form else 'application/gzip'}\r\n"
            f"Content-Length: {8 * MiB}\r\n\r\n").encode()
    start = b'--zz\r\nContent-Disposition: form-data; name="bundle"; filename="b.tgz"\r\n\r\n' if form else b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + start + os.urandom(512 * 1024))
        deadline = time.monotonic() + 10
        while not staging(server) and time.monotonic() < deadline:  # the upload is being written
            time.sleep(0.05)
        assert staging(server), "the upload never reached .staging"
    deadline = time.monotonic() + 10
    while staging(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert staging(server) == []
    assert http_call(server.url, "GET", "/v2/health/live")[0] == 200


def test_store_files_are_owner_only(server):
    """Run after the uploads above: every folder of the store 0700, every file 0600 (state, generation,
    lock and the bundles, whose archives said 0644/0755)."""
    store = server.store
    seen = {p.name for p in store.rglob("*")}
    assert {"model.json", ".generation", ".lock", "manifest.json", "model.onnx"} <= seen
    wrong = [(str(p), oct(stat.S_IMODE(p.stat().st_mode))) for p in [store, *store.rglob("*")]
             if stat.S_IMODE(p.stat().st_mode) != (0o700 if p.is_dir() else 0o600)]
    assert wrong == []


def test_restart_clears_dead_uploads_tightens_modes_and_moves_latest(tmp_path):
    (tmp_path / "tokens.json").write_text(json.dumps(TOKENS))
    store = tmp_path / "store"
    args = (store, tmp_path / "tokens.json", tmp_path / "server.log")
    server = ServerProcess(*args).start()
    try:
        for version, (w, b) in (("5", (W2, B2)), ("3", (W1, B1))):
            body = tarball(make_bundle(tmp_path / version, name="m", w=w, b=b))
            assert upload(server, "alice", body, f"?version={version}")[0] == 201
    finally:
        server.stop()
    # what an older version of the service left: latest on the last upload, 0644/0755, dead uploads
    state_file = store / "alice" / "m" / "model.json"
    state = json.loads(state_file.read_text())
    state["tags"]["latest"] = "3"
    state_file.write_text(json.dumps(state))
    for path in [store, *store.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    (store / ".staging" / "upload-999999999-x.bin").write_bytes(b"from a dead process")
    (store / ".staging" / "upload-999999999-dir").mkdir()
    live = store / ".staging" / f"upload-{os.getpid()}-y.bin"  # this test process: alive
    live.write_bytes(b"an upload in progress in another worker")
    old = store / ".staging" / "left-over"
    old.write_bytes(b"old")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    (store / ".trash" / "upload-1-z").mkdir()
    server = ServerProcess(*args).start()
    try:
        assert staging(server) == [live.name] and list((store / ".trash").iterdir()) == []
        assert call(server, "alice", "GET", "/v2/models/m")[1]["tags"]["latest"] == "5"
        np.testing.assert_allclose(predict(server, "alice", "m"), scores(X4, W2, B2), atol=1e-6)
        live.unlink()
        wrong = [str(p) for p in [store, *store.rglob("*")]
                 if stat.S_IMODE(p.stat().st_mode) != (0o700 if p.is_dir() else 0o600)]
        assert wrong == []
    finally:
        server.stop()
