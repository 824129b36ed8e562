"""The connection layer (``--dask`` / ``dask=``) and the grid credentials, against real clusters: a
``LocalCluster`` of worker processes and a ``dask scheduler`` with ``dask worker`` processes; and the
bearer token sent to an ``https://`` server on 127.0.0.1 that requires it."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import os
import secrets
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import awkward as ak
import cloudpickle
import pytest
from dask_support import local_cluster, scheduler_processes  # noqa: F401  (fixtures)
from servers import HTTPControl, _RangeHandler, _Server

from mlaas4hep_lab.cluster.connect import Cluster, connect, parse_address, using_dask
from mlaas4hep_lab.cluster.credentials import (
    PLUGIN_NAME,
    _plugin_class,
    find_credentials,
    forward_credentials,
)
from mlaas4hep_lab.data import sources
from mlaas4hep_lab.data.reader import TreeReader
from mlaas4hep_lab.data.specs import compute_specs
from mlaas4hep_lab.errors import ConfigError, InputFileError
from mlaas4hep_lab.params import load_params

# the functions below run on the workers; the `dask worker` processes cannot import this test module
cloudpickle.register_pickle_by_value(sys.modules[__name__])

CREDENTIAL_VARIABLES = ("BEARER_TOKEN", "BEARER_TOKEN_FILE", "X509_USER_PROXY", "XDG_RUNTIME_DIR")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------- connect
def test_local_n_starts_n_workers_and_closes_them(tmp_path):
    with using_dask("local:2") as cluster:
        assert cluster.n_workers == 2 and cluster.owned
        client, lc = cluster.client, cluster.cluster
        assert client.submit(sum, [1, 2]).result() == 3
        assert cluster.dashboard_link
    assert client.status == "closed"
    assert lc.status.name == "closed"


def _housekeeping() -> list:
    import dask

    return [dask.config.get(key) for key in ("distributed.worker.profile.enabled", "distributed.admin.tick.interval",
                                             "distributed.admin.system-monitor.interval",
                                             "distributed.worker.memory.monitor-interval")]


def _nanny_polls(cluster) -> list[float]:
    """Seconds between a nanny's reads of its worker's memory (the nannies run in this process)."""
    return [nanny.memory_manager.memory_monitor_interval for nanny in cluster.cluster.workers.values()]


def test_local_workers_skip_dasks_profiler_and_poll_less_unless_the_user_configured_it(monkeypatch):
    import dask

    # Dask's defaults (profiler on, 20 ms ticks): lean settings in the workers we start, not in this process
    with using_dask("local:1") as cluster:
        assert list(cluster.client.run(_housekeeping).values()) == [[False, "500ms", "2s", "500ms"]]
        assert _nanny_polls(cluster) == [0.5]
    assert _housekeeping() == [True, "20ms", "500ms", "100ms"]
    # what the user set stays theirs: in a DASK_* variable (or a config file), even at Dask's default, or in code
    monkeypatch.setenv("DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED", "True")
    with dask.config.set({"distributed.admin.tick.interval": "50ms"}):
        with using_dask("local:1") as cluster:
            assert list(cluster.client.run(_housekeeping).values()) == [[True, "50ms", "2s", "500ms"]]


def test_a_given_client_or_cluster_is_used_and_not_closed(local_cluster):  # noqa: F811
    client = local_cluster.client
    for given in (client, local_cluster):
        with using_dask(given) as cluster:
            assert cluster.client is client and not cluster.owned
            assert cluster.n_workers == 2
    assert client.status == "running"
    assert client.submit(sum, [2, 3]).result() == 5


def test_tcp_address_of_a_running_scheduler(scheduler_processes):  # noqa: F811
    with using_dask(scheduler_processes) as cluster:
        cluster.client.wait_for_workers(2, timeout=60)  # the worker processes may still be joining
        assert cluster.n_workers == 2 and cluster.address == scheduler_processes
        client = cluster.client
        assert client.submit(sum, [3, 4]).result() == 7
    assert client.status == "closed"
    with using_dask(scheduler_processes) as again:  # the scheduler itself lives on
        assert again.n_workers == 2


def test_nothing_listening_is_a_quick_config_error():
    address = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="cannot reach the Dask scheduler") as err:
        connect(address, timeout=2)
    assert address in str(err.value)
    assert time.monotonic() - t0 < 15


@pytest.mark.parametrize("text", ["nonsense", "local:two", "locale", "127.0.0.1:8786", "gateway:x", "local:"])
def test_bad_addresses_name_the_accepted_forms(text):
    with pytest.raises(ConfigError) as err:
        connect(text)
    message = str(err.value)
    assert repr(text) in message
    for form in ('"local:N"', "tcp://HOST:PORT", '"gateway"'):
        assert form in message


@pytest.mark.parametrize("text, words", [("tcp://", "SCHEME://HOST:PORT"), ("local:0", "at least 1"),
                                         ("tcp://host:port/extra path", "SCHEME://HOST:PORT")])
def test_malformed_addresses_say_what_is_wrong(text, words):
    with pytest.raises(ConfigError, match=words):
        parse_address(text)


def test_other_types_are_refused():
    with pytest.raises(ConfigError, match="distributed.Client"):
        connect(42)
    assert connect(None) is None and connect("off") is None


def test_cli_specs_on_local_cluster_writes_the_same_specs(toy_data, tmp_path):
    def specs(*extra):
        out = tmp_path / f"specs{len(extra)}.json"
        run = subprocess.run(
            [sys.executable, "-m", "mlaas4hep_lab.cli", "specs", "--files", str(toy_data.files_txt), "--labels",
             str(toy_data.labels_txt), "--params", str(toy_data.params_json), "--fout", str(out), *extra],
            capture_output=True, text=True, timeout=240, cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        return out.read_bytes()

    assert specs("--dask", "local:2") == specs()


def test_cli_refuses_a_bad_address_in_one_line(toy_data, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "mlaas4hep_lab.cli", "specs", "--files", str(toy_data.files_txt), "--labels",
         str(toy_data.labels_txt), "--params", str(toy_data.params_json), "--fout", str(tmp_path / "s.json"),
         "--dask", "loca:2"], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "loca:2" in run.stderr and "tcp://HOST:PORT" in run.stderr
    assert "Traceback" not in run.stderr


# --------------------------------------------------------------------------------------- credentials
def _worker_credentials() -> dict:
    """On a worker: where its credentials are, their mode and content."""
    import os
    import stat

    out = {"BEARER_TOKEN": os.environ.get("BEARER_TOKEN")}
    for variable in ("BEARER_TOKEN_FILE", "X509_USER_PROXY"):
        path = os.environ.get(variable)
        if path and os.path.exists(path):
            with open(path, "rb") as f:
                out[variable] = (path, stat.S_IMODE(os.stat(path).st_mode), f.read())
        else:
            out[variable] = (path, None, None)
    return out


def _forget_credentials() -> None:
    import os

    for variable in ("BEARER_TOKEN_FILE", "X509_USER_PROXY", "SSL_CERT_FILE"):
        os.environ.pop(variable, None)


@pytest.fixture
def grid_credentials(tmp_path, monkeypatch):
    """A bearer token file and an X.509 proxy file of this process, found as the grid tools find them."""
    for variable in CREDENTIAL_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    token = "eyJ0ZXN0In0." + secrets.token_urlsafe(24)
    proxy = b"-----BEGIN CERTIFICATE-----\n" + secrets.token_hex(40).encode() + b"\n-----END CERTIFICATE-----\n"
    (tmp_path / "bt").write_text(token + "\n")
    (tmp_path / "x509up").write_bytes(proxy)
    monkeypatch.setenv("BEARER_TOKEN_FILE", str(tmp_path / "bt"))
    monkeypatch.setenv("X509_USER_PROXY", str(tmp_path / "x509up"))
    return token, proxy


@contextlib.contextmanager
def forgotten_afterwards(client):
    """Leave the shared clusters' workers without our credentials when the test ends."""
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            client.unregister_worker_plugin(PLUGIN_NAME)
        client.run(_forget_credentials)


def all_logs(client) -> str:
    worker = client.get_worker_logs()
    return "\n".join([msg for records in worker.values() for _, msg in records]
                     + [msg for _, msg in client.get_scheduler_logs()])


@pytest.mark.parametrize("which", ["local_cluster", "scheduler_processes"])
def test_credentials_reach_every_worker_privately_and_are_never_logged(grid_credentials, which, request, caplog):
    token, proxy = grid_credentials
    caplog.set_level(logging.DEBUG, logger="distributed")
    caplog.set_level(logging.DEBUG, logger="mlaas4hep_lab")
    given = request.getfixturevalue(which)
    if not isinstance(given, Cluster):
        with using_dask(given, credentials=False) as cluster:  # both workers there, before forwarding
            cluster.client.wait_for_workers(2, timeout=60)
    with using_dask(given.client if isinstance(given, Cluster) else given) as cluster, \
            forgotten_afterwards(cluster.client):
        seen = cluster.client.run(_worker_credentials)
        assert len(seen) == 2
        for worker, found in seen.items():
            path, mode, content = found["BEARER_TOKEN_FILE"]
            assert content.strip() == token.encode() and mode == 0o600, worker
            assert path != str(Path(os.environ["BEARER_TOKEN_FILE"]))  # the worker's own private copy
            path, mode, content = found["X509_USER_PROXY"]
            assert content == proxy and mode == 0o600, worker
            assert found["BEARER_TOKEN"] is None
        logs = all_logs(cluster.client)
        assert "grid credentials sent to the Dask workers: bearer, x509" in caplog.text  # by kind only
    for text in (caplog.text, logs):
        assert token not in text and token[:16] not in text
        assert proxy.decode().splitlines()[1] not in text


def test_renewed_token_replaces_the_old_one(grid_credentials, local_cluster, tmp_path, monkeypatch):  # noqa: F811
    """Tokens expire within the hour: forwarding a renewed one must reach the workers."""
    client = local_cluster.client
    with forgotten_afterwards(client):
        assert forward_credentials(client) == ["bearer", "x509"]
        renewed = "eyJyZW5ld2VkIn0." + secrets.token_urlsafe(24)
        (tmp_path / "bt").write_text(renewed)
        forward_credentials(client)
        for found in client.run(_worker_credentials).values():
            assert found["BEARER_TOKEN_FILE"][2] == renewed.encode()


def test_token_in_the_environment_and_discovery_order(tmp_path, monkeypatch):
    for variable in CREDENTIAL_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    (tmp_path / f"bt_u{os.getuid()}").write_text("from-xdg\n")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert find_credentials()["bearer"] == b"from-xdg"
    (tmp_path / "file").write_text("from-file")
    monkeypatch.setenv("BEARER_TOKEN_FILE", str(tmp_path / "file"))
    assert find_credentials()["bearer"] == b"from-file"
    monkeypatch.setenv("BEARER_TOKEN", " from-env ")
    assert find_credentials()["bearer"] == b"from-env"


def test_plugin_shows_kinds_not_contents():
    plugin = _plugin_class()({"bearer": b"s3cr3t-token-value", "x509": b"PROXY-CONTENT"})
    for text in (repr(plugin), str(plugin)):
        assert "s3cr3t" not in text and "PROXY" not in text
        assert "bearer" in text and "x509" in text
    # what Dask's DEBUG logs print of it as it travels to the workers
    travelling = cloudpickle.dumps(plugin)  # a class made in a function: cloudpickle, as Dask does
    assert b"s3cr3t" not in travelling and b"PROXY" not in travelling


# ------------------------------------------------------------------------------ https with a token
def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (the test's clients trust it through SSL_CERT_FILE)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _TokenHandler(_RangeHandler):
    """The range server of tests/servers.py, answering 401 unless the request carries the bearer token."""

    token = ""
    seen: list

    def _serve(self, head: bool) -> None:
        auth = self.headers.get("Authorization")
        self.seen.append((self.command, auth))
        if auth != f"Bearer {self.token}":
            self._send_simple(401, "bearer token required", {"WWW-Authenticate": "Bearer"}, head)
            return
        super()._serve(head)


@contextlib.contextmanager
def token_server(folder: Path, token: str, tls: tuple[Path, Path] | None):
    """``(base URL, requests seen)`` of a server on 127.0.0.1 serving ``folder`` to bearers of ``token``."""
    seen: list = []
    handler = type("TokenHandler", (_TokenHandler,),
                   {"root": Path(folder).resolve(), "control": HTTPControl(), "token": token, "seen": seen})
    server = _Server(("127.0.0.1", 0), handler)
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}/", seen
    finally:
        server.shutdown()
        server.close_connections()
        server.server_close()
        thread.join(5)


@pytest.fixture
def tls(tmp_path, monkeypatch):
    cert, key = _self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    return cert, key


@pytest.mark.remote
def test_https_reads_send_the_bearer_token(toy_data, grid_credentials, tls, caplog):
    token, _ = grid_credentials
    caplog.set_level(logging.DEBUG)
    with token_server(toy_data.dir, token, tls) as (base, seen), \
            TreeReader(base + "sig.root", "events", retries=0) as remote, TreeReader(str(toy_data.sig)) as local:
        for start in (0, 1_200):  # across baskets: several range requests
            a, b = remote.read(["Jet_pt", "MET"], start, start + 1_500), local.read(["Jet_pt", "MET"], start,
                                                                                     start + 1_500)
            assert ak.to_list(a) == ak.to_list(b)
        with sources.open_file(base + "sig.root", retries=0) as f:  # the size comes from a HEAD request
            assert f.file.source.num_bytes == toy_data.sig.stat().st_size
    assert len(seen) >= 3 and all(auth == f"Bearer {token}" for _, auth in seen)
    assert {"HEAD", "GET"} <= {method for method, _ in seen}
    assert token not in caplog.text


@pytest.mark.remote
def test_https_without_or_with_a_wrong_token_is_refused_clearly(toy_data, grid_credentials, tls, monkeypatch):
    token, _ = grid_credentials
    with token_server(toy_data.dir, token, tls) as (base, _):
        monkeypatch.setenv("BEARER_TOKEN", "not-the-token")
        with pytest.raises(InputFileError, match="(?s)401.*was not accepted") as err:
            TreeReader(base + "sig.root", "events", retries=0)
        assert "not-the-token" not in str(err.value) and token not in str(err.value)
        for variable in CREDENTIAL_VARIABLES:
            monkeypatch.delenv(variable, raising=False)
        with pytest.raises(InputFileError, match="(?s)401.*no bearer token was found"):
            TreeReader(base + "sig.root", "events", retries=0)


@pytest.mark.remote
def test_plain_http_never_carries_the_token(toy_data, grid_credentials):
    token, _ = grid_credentials
    with token_server(toy_data.dir, token, None) as (base, seen):
        with pytest.raises(InputFileError):
            TreeReader(base + "sig.root", "events", retries=0)
    assert seen and all(auth is None for _, auth in seen)


def _trust(cert: str | None) -> None:
    import os

    if cert is None:
        os.environ.pop("SSL_CERT_FILE", None)
    else:
        os.environ["SSL_CERT_FILE"] = cert


@pytest.mark.remote
def test_workers_read_https_with_the_forwarded_token(toy_data, grid_credentials, tls, local_cluster):  # noqa: F811
    """The specs pass over https on the workers, which hold only the token the client forwarded."""
    token, _ = grid_credentials
    client = local_cluster.client
    params = load_params(toy_data.params_json)
    with token_server(toy_data.dir, token, tls) as (base, seen), forgotten_afterwards(client):
        files = [base + "sig.root", base + "bkg.root"]
        local = compute_specs(files, params, progress=False)
        client.run(_trust, str(tls[0]))
        with using_dask(client) as cluster:  # forwards this process's credentials, as --dask does
            n_before = len(seen)
            remote = compute_specs(files, params, progress=False, dask=cluster)
        assert len(seen) > n_before and all(auth == f"Bearer {token}" for _, auth in seen)
    assert remote.to_dict() == local.to_dict()
    assert remote.events["total"] == 10_000
