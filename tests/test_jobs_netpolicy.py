"""Tests of the address policy of job inputs (mlaas4hep_lab.jobs.netpolicy): a job's input URLs and its
params ``redirector`` may not point at this machine or its private network unless the operator allows the
host (``allowed_hosts``).

The forms an attacker would try are checked one by one through :func:`resolve_files` (what the service
runs on a submission): every spelling of loopback (``2130706433``, ``0x7f.1``, ``127.1``, ``[::1]``,
``[::ffff:127.0.0.1]``), userinfo tricks, link-local metadata, RFC 1918, CGNAT, ULA, multicast, reserved,
names that resolve there. Names resolve for real (``localhost``; ``.invalid`` never resolves); the one
case a test machine's DNS cannot give (a name with a public and a private answer) goes through the
``resolve`` parameter. The end-to-end test runs the real ``mlaas4hep jobs`` with ``--allow-host`` and
real HTTP servers on 127.0.0.1: a listed server's file trains, an unlisted one is refused at submission,
and a listed server that redirects to an unlisted one makes the job fail in its worker, naming why.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
from pathlib import Path

import pytest

from mlaas4hep_lab.errors import ConfigError
from mlaas4hep_lab.jobs.netpolicy import AddressPolicy, AddressRefused, enforce_in_worker, parse_allowed_hosts
from mlaas4hep_lab.jobs.schemas import SubmitRequest
from mlaas4hep_lab.jobs.settings import Settings
from mlaas4hep_lab.jobs.submission import check_submission, resolve_files
from mlaas4hep_lab.serving import ServingError

try:
    from servers import free_port, http_range_server
    from serving_support import JobsProcess
except ImportError:  # tests/ imported as a package
    from tests.servers import free_port, http_range_server
    from tests.serving_support import JobsProcess

TOKENS = {"alice": "alice-token-0123"}


def _refusal(entry: str, allowed=(), **kw) -> tuple[int, str]:
    with pytest.raises(ServingError) as info:
        resolve_files([entry], (), "", AddressPolicy(allowed, **kw) if kw else allowed)
    return info.value.status, str(info.value)


# ------------------------------------------------------------------------------------------ addresses

@pytest.mark.parametrize("url, reason", [
    ("http://127.0.0.1:8085/models", "127.0.0.1 is a loopback address"),
    ("http://2130706433/f.root", "2130706433 is the address 127.0.0.1, a loopback"),
    ("http://0x7f.1/f.root", "0x7f.1 is the address 127.0.0.1, a loopback"),
    ("http://0x7f000001/f.root", "the address 127.0.0.1, a loopback"),
    ("http://127.1/f.root", "127.1 is the address 127.0.0.1, a loopback"),
    ("http://017700000001/f.root", "the address 127.0.0.1, a loopback"),
    ("http://127.0.0.1./f.root", "127.0.0.1 is a loopback"),
    ("http://[::1]:8084/jobs", "::1 is a loopback address"),
    ("http://[::ffff:127.0.0.1]/f.root", "IPv4-mapped IPv6 address of 127.0.0.1, a loopback"),
    ("http://[::ffff:a9fe:a9fe]/latest", "IPv4-mapped IPv6 address of 169.254.169.254, a link-local"),
    ("http://good.example@127.0.0.1/f.root", "127.0.0.1 is a loopback"),
    ("http://user:pw@127.0.0.1:80/f.root", "127.0.0.1 is a loopback"),
    ("http://169.254.169.254/latest/meta-data/", "link-local address (where cloud metadata"),
    ("http://[fe80::1]/f.root", "link-local"),
    ("root://10.0.3.4//store/f.root", "private address (RFC 1918)"),
    ("roots://172.16.0.1//store/f.root", "private address (RFC 1918)"),
    ("https://192.168.1.1/f.root", "private address (RFC 1918)"),
    ("http://100.64.0.7/f.root", "shared address space 100.64.0.0/10"),
    ("http://[fd12:3456::1]/f.root", "unique local IPv6 address"),
    ("http://[fec0::1]/f.root", "site-local"),
    ("http://0.0.0.0:8085/models", "unspecified address"),
    ("http://0/f.root", "the address 0.0.0.0, the unspecified"),
    ("http://[::]/f.root", "unspecified address"),
    ("http://224.0.0.251/f.root", "multicast"),
    ("http://[ff02::1]/f.root", "multicast"),
    ("http://240.0.0.1/f.root", "reserved"),
    ("http://[::7f00:1]/f.root", "reserved"),
    ("http://192.0.2.10/f.root", "not a globally routable address"),
    ("http://[64:ff9b::a00:1]/f.root", "NAT64 IPv6 address of 10.0.0.1, a private"),
    ("http://[2002:7f00:1::]/f.root", "6to4 IPv6 address of 127.0.0.1, a loopback"),
    ("http://localhost:8085/models", "host 'localhost' resolves to 127.0.0.1, a loopback"),
])
def test_internal_addresses_in_every_spelling_are_refused(url, reason):
    status, text = _refusal(url)
    assert status == 400 and reason in text, text
    # the message names the entry, what is refused, and the setting that would allow it
    assert text.startswith(f"files[0] {url!r}:") and "jobs may not read from loopback" in text
    assert "allowed_hosts" in text and "MLAAS4HEP_JOBS_ALLOWED_HOSTS=" in text and "--allow-host" in text


def test_the_hint_names_the_entry_to_list_in_its_canonical_form():
    assert "--allow-host 127.0.0.1:80`" in _refusal("http://0x7f.1/f.root")[1]
    assert "--allow-host [::1]:1094`" in _refusal("root://[::1]//store/f.root")[1]
    assert "--allow-host localhost:8085`" in _refusal("http://localhost:8085/f.root")[1]


@pytest.mark.parametrize("url", [
    "http://8.8.8.8/f.root", "https://[2606:4700::1111]/f.root", "root://137.138.0.1:1095//store/f.root",
    "http://[64:ff9b::808:808]/f.root",      # NAT64 of a public address (DNS64 networks hand these out)
    "http://[2002:808:808::1]/f.root",       # 6to4 of a public address
])
def test_public_addresses_are_read(url):
    assert resolve_files([url], ()) == [url]


@pytest.mark.parametrize("url, reason", [
    ("http://a@b@127.0.0.1/f.root", "several '@'"),
    ("http://%31%32%37.0.0.1/f.root", "characters URL parsers disagree about"),
    ("http://127.0.0.1\\@example.com/f.root", "characters URL parsers disagree about"),
    ("http://\uff11\uff12\uff17.0.0.1/f.root", "not ASCII"),   # full-width digits: NFKC makes them 127
    ("http://127.0.0.1:99999/f.root", "host and port"),
    ("http:///f.root", "names no host"),
])
def test_hosts_parsers_could_read_differently_are_refused(url, reason):
    status, text = _refusal(url)
    assert status == 400 and reason in text and "--allow-host" not in text, text


def test_names_are_resolved_and_every_answer_counts():
    status, text = _refusal("root://no-such-host.invalid//store/f.root")
    assert status == 400 and "cannot resolve host 'no-such-host.invalid'" in text and "spelling" in text

    def answers(*ips):
        def resolve(host, port, type=0):
            return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
                    for ip in ips]
        return resolve

    # one private answer among public ones refuses the name (the client may connect to any of them)
    text = _refusal("root://eos.example.org//f.root", resolve=answers("137.138.0.1", "10.1.1.1"))[1]
    assert "host 'eos.example.org' resolves to 10.1.1.1, a private address" in text
    text = _refusal("root://eos.example.org//f.root", resolve=answers("137.138.0.1", "fe80::1%eth0"))[1]
    assert "resolves to fe80::1, a link-local" in text
    policy = AddressPolicy(resolve=answers("137.138.0.1", "2001:1458::1"))
    assert resolve_files(["root://eos.example.org//f.root"], (), "", policy) == ["root://eos.example.org//f.root"]
    assert "resolves to no address" in _refusal("http://empty.example.org/f", resolve=answers())[1]


def test_one_submission_resolves_a_bounded_number_of_hosts():
    policy = AddressPolicy(resolve=lambda host, port, type=0: [(2, 1, 6, "", ("137.138.0.1", port))], max_hosts=3)
    files = [f"root://h{i}.example.org//f.root" for i in range(3)]
    assert resolve_files(files * 2, (), "", policy) == files * 2   # each host resolved once
    with pytest.raises(ServingError, match="more than 3 different hosts"):
        resolve_files([*files, "root://h9.example.org//f.root"], (), "", policy)


# ------------------------------------------------------------------------------------------ allowed_hosts

def test_allowed_hosts_let_listed_internal_servers_through():
    url = "root://xrootd.site.invalid:1094//store/f.root"
    # a listed name is taken as the operator's word: not even resolved (this one never would)
    assert resolve_files([url], (), "", ("xrootd.site.invalid",)) == [url]
    assert resolve_files([url], (), "", ("XRootD.site.invalid.:1094",)) == [url]
    assert "cannot resolve" in _refusal(url, ("xrootd.site.invalid:1095",))[1]     # another port
    # addresses and networks, with or without a port
    assert resolve_files(["http://127.0.0.1:8000/f"], (), "", ("127.0.0.1:8000",)) == ["http://127.0.0.1:8000/f"]
    assert "loopback" in _refusal("http://127.0.0.1:8001/f", ("127.0.0.1:8000",))[1]
    assert resolve_files(["root://10.2.3.4//f"], (), "", ("10.0.0.0/8",)) == ["root://10.2.3.4//f"]
    assert "private" in _refusal("root://192.168.0.4//f", ("10.0.0.0/8",))[1]
    assert resolve_files(["http://[::ffff:10.2.3.4]/f"], (), "", ("10.0.0.0/8",)) == ["http://[::ffff:10.2.3.4]/f"]
    assert resolve_files(["root://[fd00::5]:1094//f"], (), "", ("[fd00::/8]:1094",)) == ["root://[fd00::5]:1094//f"]
    # a listed address also lets a name that resolves to it through, and the other spellings of it
    assert resolve_files(["http://localhost:8000/f", "http://0x7f.1:8000/f"], (), "",
                         ("127.0.0.1:8000", "[::1]:8000"))
    # the metadata endpoint stays refused when only the site's network is listed
    assert "link-local" in _refusal("http://169.254.169.254/latest", ("10.0.0.0/8", "172.16.0.0/12"))[1]


@pytest.mark.parametrize("entry, message", [
    ("not a host", "is not a host name"),
    ("10.0.0.0/33", "is not a network"),
    ("host:port", "port 'port' is not a number"),
    ("host:70000", "port '70000'"),
    ("[::1]1094", "[addr]:port"),
])
def test_bad_allowed_hosts_entries_are_named(entry, message):
    with pytest.raises(ConfigError) as info:
        parse_allowed_hosts(["ok.example", entry])
    assert message in str(info.value) and repr(entry) in str(info.value) and "allowed_hosts" in str(info.value)


def test_settings_read_allowed_hosts_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MLAAS4HEP_JOBS_ALLOWED_HOSTS", " xrootd.site:1094, 10.0.0.0/8 ,,[fd00::1]:1094")
    settings = Settings(state_dir=tmp_path, tokens=TOKENS)
    assert settings.allowed_hosts == ("xrootd.site:1094", "10.0.0.0/8", "[fd00::1]:1094")
    assert Settings(state_dir=tmp_path, tokens=TOKENS, allowed_hosts="a.site,b.site").allowed_hosts == \
        ("a.site", "b.site")
    monkeypatch.setenv("MLAAS4HEP_JOBS_ALLOWED_HOSTS", "10.0.0.0/40")
    with pytest.raises(ConfigError, match="allowed_hosts"):
        Settings(state_dir=tmp_path, tokens=TOKENS)


def test_the_cli_refuses_a_bad_allow_host_before_serving(tmp_path, capsys):
    from mlaas4hep_lab.cli import main

    assert main(["jobs", "--state", str(tmp_path), "--no-auth", "--allow-host", "ok.site",
                 "--allow-host", "not a host"]) != 0
    assert "'not a host'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ redirector

def test_the_redirector_is_checked_at_submission():
    status, text = _refusal_of(lambda: resolve_files(["/store/f.root"], (), "root://127.0.0.1:1094"))
    assert status == 400 and "files[0] '/store/f.root' (not found locally, so read through params" in text
    assert "loopback" in text
    body = {"files": ["/store/f.root"], "labels": [1], "model": "sklearn",
            "params": {"redirector": "root://0x7f.1", "branch": "events"}}
    status, text = _refusal_of(lambda: check_submission(SubmitRequest.model_validate(body), ()))
    assert status == 422 and "params: key 'redirector' 'root://0x7f.1'" in text and "loopback" in text
    sub = check_submission(SubmitRequest.model_validate(body), (), allowed_hosts=("127.0.0.1:1094",))
    assert sub.files == ["root://0x7f.1//store/f.root"]


def _refusal_of(fn) -> tuple[int, str]:
    with pytest.raises(ServingError) as info:
        fn()
    return info.value.status, str(info.value)


# ------------------------------------------------------------------------------------------ the worker

@pytest.fixture
def worker_process_state():
    """enforce_in_worker changes process-wide state meant for a job's process: put it back for the
    tests that follow in this one."""
    import copy

    import fsspec.config

    original, conf = socket.getaddrinfo, copy.deepcopy(fsspec.config.conf)
    yield original
    socket.getaddrinfo = original
    fsspec.config.conf.clear()
    fsspec.config.conf.update(conf)


def test_the_worker_checks_inputs_again_before_opening(tmp_path, worker_process_state):
    with pytest.raises(AddressRefused, match=r"input 1 'http://127\.0\.0\.1:9/f\.root': 127\.0\.0\.1 is a loop"):
        enforce_in_worker([str(tmp_path / "local.root"), "http://127.0.0.1:9/f.root"], "", ())
    with pytest.raises(AddressRefused, match="params 'redirector' 'root://localhost'"):
        enforce_in_worker([str(tmp_path / "local.root")], "root://localhost", ())
    assert socket.getaddrinfo is worker_process_state   # refused before the guard went in


def test_the_worker_guard_checks_every_connection(worker_process_state):
    # what enforce_in_worker leaves in the job's process: each resolution is checked on the answers that
    # the connection then uses, so a redirect or a name that now resolves elsewhere cannot get through
    import fsspec.config

    with socket.create_server(("127.0.0.1", 0)) as allowed, socket.create_server(("127.0.0.1", 0)) as other:
        port, other_port = allowed.getsockname()[1], other.getsockname()[1]
        enforce_in_worker([f"http://127.0.0.1:{port}/f.root"], "", [f"127.0.0.1:{port}"])
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        for host in ("127.0.0.1", "localhost", "2130706433"):
            with pytest.raises(AddressRefused, match=f"refused to reach {host}:{other_port}"):
                socket.create_connection((host, other_port), timeout=5)
        # a listening address is no connection: servers in model.py's libraries may still bind
        assert socket.getaddrinfo(None, 0, flags=socket.AI_PASSIVE)
        assert fsspec.config.conf["http"]["allow_redirects"] is False
        enforce_in_worker([], "", [])   # a second call replaces the guard, it does not stack
        assert socket.getaddrinfo._mlaas4hep_original is worker_process_state


# ------------------------------------------------------------------------------------------ end to end

class _Redirect(http.server.BaseHTTPRequestHandler):
    target = ""

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    def _redirect(self):
        self.send_response(302)
        self.send_header("Location", self.target + self.path.lstrip("/"))
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = _redirect


@pytest.mark.slow
@pytest.mark.serving
@pytest.mark.remote
def test_jobs_service_reads_only_listed_internal_servers(tmp_path):
    from mlaas4hep_lab.data import datasets

    ds = datasets.higgs(tmp_path / "data", n_events=2000, seed=5)
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps(TOKENS))
    params = {**json.loads(Path(ds.params_json).read_text()), "chunk_size": 1000, "epochs": 1}

    def body(urls):
        return {"files": urls, "labels": ds.labels, "model": "sklearn", "params": params}

    with http_range_server(ds.directory) as listed, http_range_server(ds.directory) as internal:
        handler = type("Redirect", (_Redirect,), {"target": str(internal)})
        redirector = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
        threading.Thread(target=redirector.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        redirecting = f"127.0.0.1:{redirector.server_address[1]}"
        listed_host = listed.split("//", 1)[1].rstrip("/")
        jobs = JobsProcess(tmp_path / "state", tokens, ds.directory, tmp_path / "jobs.log",
                           "--allow-host", listed_host, "--allow-host", redirecting)
        jobs.users = TOKENS
        try:
            jobs.start()
            # not listed: refused at once, naming the entry and the setting
            status, answer = jobs.call("POST", "/submit", body([internal.file(p.name) for p in ds.files]))
            assert status == 400, answer
            assert f"files[0] '{internal.file(ds.files[0].name)}'" in answer["error"]
            assert "loopback" in answer["error"] and "--allow-host" in answer["error"]
            # listed: the job reads the files over HTTP and trains
            status, answer = jobs.call("POST", "/submit", body([listed.file(p.name) for p in ds.files]))
            assert status == 201, answer
            job = jobs.wait(answer["id"], lambda j: j["status"] == "succeeded", what="success")
            assert job["metrics"]["auc"] > 0.6
            # listed, but it redirects to the unlisted server: accepted, then refused in the worker
            status, answer = jobs.call("POST", "/submit",
                                       body([f"http://{redirecting}/{p.name}" for p in ds.files]))
            assert status == 201, answer
            job = jobs.wait(answer["id"], lambda j: j["status"] == "failed", what="failure")
            port = internal.split(":")[-1].rstrip("/")
            assert f"refused to reach 127.0.0.1:{port}" in job["error"], job["error"]
            # nothing reached it: neither uproot's source (the guard) nor fsspec's size look-up (which
            # the worker tells not to follow redirects)
            assert not internal.control.requests, internal.control.requests
        finally:
            jobs.stop()
            redirector.shutdown()
            redirector.server_close()

