"""Which network addresses a job may read its inputs from.

A job names its input files; a URL among them makes the job's worker open a connection. Without a rule a
user could point it at this machine or its network: the inference service on 127.0.0.1, the hub API, a
cloud metadata endpoint (169.254.169.254), a database on 10.x. So an input URL (and the params
``redirector`` that turns missing paths into URLs) must name a host whose every address is public, unless
the operator listed the host in the jobs service's ``allowed_hosts`` (an experiment's XRootD redirector on
the site network, a test server on loopback).

Refused: loopback, link-local, private (RFC 1918), shared (CGNAT 100.64/10), unique-local (fc00::/7),
site-local, unspecified (0.0.0.0, ::), multicast, reserved and every other not globally routable address,
also when wrapped in IPv6 (``::ffff:127.0.0.1``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``). The host is
read as a URL parser reads it (``urllib.parse``: the part after the last ``@``), IPv4 in every form the C
library accepts (``2130706433``, ``0x7f.1``, ``127.1``, ``017700000001``), and a name is resolved with
:func:`socket.getaddrinfo`: one forbidden address among its answers refuses it, no answer refuses it too.

Two places apply the rule: the service, at submission (:meth:`AddressPolicy.check_url`, a 4xx naming the
entry), and the worker process, before it opens anything (:func:`enforce_in_worker`), because a name can
resolve differently minutes later (DNS rebinding) and an HTTP server can redirect. The worker also wraps
:func:`socket.getaddrinfo` so that every connection made through it (uproot's HTTP source, which reads the
data, and each redirect it follows) is checked on the very answer it connects to. The XRootD client
resolves names in C++ and follows its own redirections, and aiohttp (fsspec's HTTP, used only for the
best-effort size/mtime look-up of :func:`mlaas4hep_lab.data.sources.file_info`) resolves with c-ares and
takes IP literals as they are: for those the check just before opening is what is feasible (and fsspec
is told not to follow redirects).

This guards the inputs a job names. The job's model.py is code that runs in the same worker and can open
sockets itself: keeping it off the site network is the worker's isolation (network namespace, firewall).

Example::

    policy = AddressPolicy(["xrootd.site.internal", "10.1.0.0/16", "127.0.0.1:1094"])
    policy.check_url("root://xrootd.site.internal//store/f.root", "files[0]")   # listed: allowed
    policy.check_url("http://169.254.169.254/latest/", "files[1]")             # AddressRefused
"""

from __future__ import annotations

import ipaddress
import re
import socket
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from mlaas4hep_lab.errors import ConfigError, MLaaSError

__all__ = ["AddressPolicy", "AddressRefused", "AllowedHost", "parse_allowed_hosts", "forbidden_reason",
           "host_address", "enforce_in_worker", "ALLOW_HINT", "DEFAULT_PORTS"]

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PORTS = {"http": 80, "https": 443, "root": 1094, "roots": 1094}
ALLOW_HINT = ("the jobs service's operator can allow it with the setting allowed_hosts "
              "(MLAAS4HEP_JOBS_ALLOWED_HOSTS={entry} or `mlaas4hep jobs --allow-host {entry}`)")
_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?$")
_NUMERIC_V4 = re.compile(r"^[0-9a-fx.]+$")    # what inet_aton may read as a number: 127.1, 0x7f.1, 2130706433
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_ULA = ipaddress.ip_network("fc00::/7")
_RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_REFUSED = "jobs may not read from loopback, link-local, private or reserved addresses"


class AddressRefused(MLaaSError, PermissionError):
    """An input URL whose host is not one a job may connect to.

    A PermissionError (an OSError): inside the worker it is raised where a name is resolved, and the
    libraries that resolve (http.client, aiohttp) pass OSErrors on as failed connections."""


# -- addresses -------------------------------------------------------------------------------------

def forbidden_reason(ip: IP) -> str | None:
    """Why a job may not connect to ``ip`` ("a loopback address", ...), or None for a public address."""
    if ip.version == 6:
        embedded, how = ip.ipv4_mapped, "an IPv4-mapped"
        if embedded is None and ip in _NAT64:
            embedded, how = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "a NAT64"
        if embedded is None and ip.sixtofour is not None:
            embedded, how = ip.sixtofour, "a 6to4"
        if embedded is not None:
            inner = forbidden_reason(embedded)
            return None if inner is None else f"{how} IPv6 address of {embedded}, {inner}"
    if ip.is_unspecified:
        return "the unspecified address (0.0.0.0 / ::), which reaches this machine"
    if ip.is_loopback:
        return "a loopback address (this machine)"
    if ip.is_link_local:
        return "a link-local address (where cloud metadata services such as 169.254.169.254 answer)"
    if ip.version == 4 and ip in _CGNAT:
        return "in the shared address space 100.64.0.0/10 (carrier-grade NAT)"
    if ip.version == 6 and ip in _ULA:
        return "a unique local IPv6 address (fc00::/7)"
    if ip.is_multicast:
        return "a multicast address"
    if ip.version == 4 and any(ip in net for net in _RFC1918):
        return "a private address (RFC 1918)"
    if ip.version == 6 and ip.is_site_local:
        return "a site-local IPv6 address (fec0::/10)"
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:
        return "not a globally routable address (private, documentation or special-purpose range)"
    return None


def host_address(host: str) -> IP | None:
    """``host`` as an IP address when it is one in any spelling a resolver accepts, else None (a name).

    ``ipaddress`` reads the canonical forms; the C library's ``inet_aton`` also reads ``127.1``,
    ``0x7f.0.0.1``, ``017700000001`` and ``2130706433``, and so do the HTTP and XRootD clients that open
    the URL, so those forms must mean the same address here."""
    text = host.strip("[]")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if _NUMERIC_V4.match(text.lower()):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


# -- the operator's list ---------------------------------------------------------------------------

@dataclass(frozen=True)
class AllowedHost:
    """One entry of ``allowed_hosts``: a host name, an IP address or a network, with an optional port."""

    name: str | None = None
    network: Network | None = None
    port: int | None = None

    def allows_name(self, name: str, port: int | None) -> bool:
        return self.name is not None and self.name == name and self.port in (None, port)

    def allows_ip(self, ip: IP, port: int | None) -> bool:
        if self.network is None or self.port not in (None, port):
            return False
        mapped = ip.ipv4_mapped if ip.version == 6 else None
        return ip in self.network if ip.version == self.network.version else (
            mapped is not None and mapped in self.network)

    def __str__(self) -> str:
        where = self.name if self.name is not None else str(self.network)
        return where if self.port is None else f"{where}:{self.port}"


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"entry {entry!r}: port {text!r} is not a number from 1 to 65535", key="allowed_hosts")
    return int(text)


def _allowed_entry(raw: str) -> AllowedHost:
    entry = raw.strip().lower()
    host, port = entry, None
    if entry.startswith("["):                               # [v6] or [v6]:port
        host, _, rest = entry[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"entry {raw!r}: write an IPv6 address as [addr] or [addr]:port",
                                  key="allowed_hosts")
            port = _port(rest[1:], raw)
    elif entry.count(":") == 1:                             # name:port or v4:port (bare v6 has several)
        host, _, text = entry.partition(":")
        port = _port(text, raw)
    if "/" in host:
        try:
            return AllowedHost(network=ipaddress.ip_network(host, strict=False), port=port)
        except ValueError as err:
            raise ConfigError(f"entry {raw!r} is not a network such as 10.0.0.0/8 ({err})",
                              key="allowed_hosts") from None
    ip = host_address(host)
    if ip is not None:
        return AllowedHost(network=ipaddress.ip_network(ip), port=port)
    host = host.rstrip(".")
    if not _NAME.match(host):
        raise ConfigError(f"entry {raw!r} is not a host name, host:port, IP address or CIDR network",
                          key="allowed_hosts")
    return AllowedHost(name=host, port=port)


def parse_allowed_hosts(entries: str | Iterable[str | AllowedHost]) -> tuple[AllowedHost, ...]:
    """``allowed_hosts`` from a comma-separated string or a list: host names (any port), ``host:port``,
    IP addresses, ``[v6]:port``, CIDR networks (``10.0.0.0/8``); ConfigError names a bad entry."""
    if isinstance(entries, str):
        entries = entries.split(",")
    out = []
    for entry in entries:
        if isinstance(entry, AllowedHost):
            out.append(entry)
        elif not isinstance(entry, str):
            raise ConfigError(f"entries must be strings, not {entry!r}", key="allowed_hosts")
        elif entry.strip():
            out.append(_allowed_entry(entry))
    return tuple(out)


# -- the policy ------------------------------------------------------------------------------------

Resolver = Callable[..., list]


class AddressPolicy:
    """Decides whether a URL's host may be connected to: public addresses yes, the rest only when listed.

    ``resolve`` is :func:`socket.getaddrinfo` (a parameter so that the decision on a name with mixed
    answers can be tested without a DNS server that gives them). ``max_hosts`` bounds the different hosts
    one check resolves, so that one submission cannot keep the service resolving for minutes."""

    def __init__(self, allowed: str | Iterable[str | AllowedHost] = (), resolve: Resolver | None = None,
                 max_hosts: int = 50):
        self.allowed = parse_allowed_hosts(allowed)
        self._resolve = resolve
        self.max_hosts = max_hosts
        self._seen: dict[tuple[str, int | None], str | None] = {}

    # one address / one host
    def _allowed_ip(self, ip: IP, port: int | None) -> bool:
        return any(a.allows_ip(ip, port) for a in self.allowed)

    def _allowed_name(self, name: str, port: int | None) -> bool:
        return any(a.allows_name(name, port) for a in self.allowed)

    def address_problem(self, ip: IP, port: int | None) -> str | None:
        """Why ``ip`` is refused (None: allowed), the operator's list considered."""
        reason = forbidden_reason(ip)
        return None if reason is None or self._allowed_ip(ip, port) else reason

    def answers_problem(self, name: str, port: int | None, answers: list) -> str | None:
        """Why a name whose getaddrinfo ``answers`` are these is refused (None: allowed)."""
        for answer in answers:
            ip = ipaddress.ip_address(str(answer[4][0]).split("%", 1)[0])   # fe80::1%eth0: drop the zone
            reason = self.address_problem(ip, port)
            if reason is not None and host_address(name) is not None:
                return f"{ip} is {reason}; {_REFUSED}"
            if reason is not None:
                return f"host {name!r} resolves to {ip}, {reason}; {_REFUSED}"
        return None

    def host_problem(self, host: str, port: int | None) -> str | None:
        """Why ``host`` (a name or an address as written in a URL) is refused; resolves names."""
        key = (host, port)
        if key not in self._seen:
            self._seen[key] = self._host_problem(host, port)
        return self._seen[key]

    def _host_problem(self, host: str, port: int | None) -> str | None:
        ip = host_address(host)
        if ip is not None:
            reason = self.address_problem(ip, port)
            if reason is None:
                return None
            spelled = "" if ip.version == 6 or str(ip) == host else f"the address {ip}, "
            return f"{host} is {spelled}{reason}; {_REFUSED}"
        if self._allowed_name(host, port):
            return None
        try:
            answers = (self._resolve or socket.getaddrinfo)(host, port or 0, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as err:
            return (f"cannot resolve host {host!r} ({err}); check its spelling (the service checks where a "
                    "job would connect before accepting it, so the name must resolve here)")
        if not answers:
            return f"host {host!r} resolves to no address"
        return self.answers_problem(host, port, answers)

    # a URL
    def url_problem(self, url: str) -> tuple[str | None, str | None]:
        """(why ``url`` is refused or None, the allowed_hosts entry that would allow it or None when the
        URL itself is malformed)."""
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as err:
            return f"cannot read the URL's host and port ({err})", None
        netloc = parts.netloc
        # what a URL parser, an HTTP client and the XRootD client could each read differently: refuse
        if any(c in netloc for c in "\\ \t%") or netloc.count("@") > 1:
            return ("the host part holds characters URL parsers disagree about (\\, blanks, %, several "
                    "'@'); write the plain host name"), None
        host = (parts.hostname or "").rstrip(".")
        if not host:
            return "the URL names no host", None
        if not host.isascii():
            return f"host {host!r} is not ASCII; write an international name in its xn-- (punycode) form", None
        if port is None:
            port = DEFAULT_PORTS.get(parts.scheme.lower())
        if (host, port) not in self._seen and len(self._seen) >= self.max_hosts:
            return (f"more than {self.max_hosts} different hosts in one job; read the files through fewer "
                    "servers (a redirector)"), None
        ip = host_address(host)
        shown = host if ip is None else f"[{ip}]" if ip.version == 6 else str(ip)
        return self.host_problem(host, port), f"{shown}:{port}" if port else shown

    def check_url(self, url: str, what: str) -> None:
        """Raise :class:`AddressRefused` naming ``what`` (e.g. ``"files[3] 'root://...'"``) when ``url``
        points where a job may not connect."""
        problem, entry = self.url_problem(url)
        if problem is not None and entry is None:
            raise AddressRefused(f"{what}: {problem}")
        if problem is not None:
            raise AddressRefused(f"{what}: {problem}. If this is a data server of your site, "
                                 + ALLOW_HINT.format(entry=entry))


# -- inside the worker ----------------------------------------------------------------------------

def _numeric_port(port: Any) -> int | None:
    if isinstance(port, int):
        return port
    if isinstance(port, (str, bytes)) and port.isdigit():
        return int(port)
    return DEFAULT_PORTS.get(port.decode() if isinstance(port, bytes) else str(port)) if port else None


def _guard_resolver(policy: AddressPolicy) -> None:
    """Wrap :func:`socket.getaddrinfo` in this process so that what resolves through it cannot reach a
    refused address: http.client (uproot's HTTP source, each redirect it follows included) and asyncio's
    default resolver connect to the very answers checked here, which leaves no window for DNS rebinding
    between the check and the connection. Addresses to listen on (AI_PASSIVE, no host) are left alone."""
    original = socket.getaddrinfo
    if getattr(original, "_mlaas4hep_policy", None) is not None:
        original = original._mlaas4hep_original

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        answers = original(host, port, family, type, proto, flags)
        if host is None or flags & socket.AI_PASSIVE:   # an address to listen on, not to connect to
            return answers
        name = (host.decode() if isinstance(host, bytes) else str(host)).lower().rstrip(".")
        number = _numeric_port(port)
        if host_address(name) is None and policy._allowed_name(name, number):
            return answers
        problem = policy.answers_problem(name, number, answers)
        if problem is not None:
            raise AddressRefused(f"refused to reach {name}:{port} (an input URL or a redirect from one): "
                                 f"{problem}. If this is a data server of your site, "
                                 + ALLOW_HINT.format(entry=f"{name}:{number}" if number else name))
        return answers

    getaddrinfo._mlaas4hep_policy = policy          # type: ignore[attr-defined]
    getaddrinfo._mlaas4hep_original = original      # type: ignore[attr-defined]
    socket.getaddrinfo = getaddrinfo


def enforce_in_worker(files: Iterable[str], redirector: str, allowed: Iterable[str]) -> AddressPolicy:
    """In the job's process, before any input is opened: check every input URL (and the redirector) again,
    then guard every later name resolution of Python code. Raises :class:`AddressRefused`."""
    policy = AddressPolicy(allowed)
    for i, entry in enumerate(files):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", entry) and not entry.startswith("file://"):
            policy.check_url(entry, f"input {i} {entry!r}")
    if redirector:
        policy.check_url(redirector, f"params 'redirector' {redirector!r}")
    _guard_resolver(policy)   # decides on each resolution afresh: it keeps no answers
    _no_fsspec_redirects()
    return policy


def _no_fsspec_redirects() -> None:
    """fsspec's HTTP filesystem (aiohttp: its own resolver, IP literals not resolved at all) follows
    redirects unless told not to; its requests take these defaults from fsspec's configuration."""
    try:
        import fsspec.config
    except ImportError:
        return
    for protocol in ("http", "https"):
        fsspec.config.conf.setdefault(protocol, {})["allow_redirects"] = False
