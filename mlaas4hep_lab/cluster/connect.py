"""One switch for where the work runs: ``None`` (this process), ``"local"`` / ``"local:N"`` (a
``LocalCluster`` of N worker processes), ``"tcp://host:port"`` (an existing scheduler), ``"gateway"`` /
``"gateway:N"`` (a cluster from Dask Gateway, address and auth from the environment, as on the hub), or a
``distributed.Client`` the caller already holds.

Example::

    with using_dask("local:2") as cluster:       # None when dask is None: run in this process
        specs = compute_specs(files, params, dask=cluster)
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mlaas4hep_lab.errors import ConfigError

__all__ = ["Cluster", "connect", "using_dask", "parse_address"]

log = logging.getLogger(__name__)

_SCHEMES = ("tcp://", "tls://", "ucx://", "inproc://", "ws://", "wss://")
_FORMS = ('"local" or "local:N" (N worker processes on this machine), "tcp://HOST:PORT" (a running scheduler), '
          '"gateway" or "gateway:N" (a Dask Gateway cluster, as on the hub)')


@dataclass(frozen=True)
class Address:
    """A parsed ``--dask`` value."""

    kind: str               # "local", "scheduler" or "gateway"
    workers: int | None     # local:N / gateway:N (None: the default)
    url: str = ""           # the scheduler's address


def parse_address(text: str) -> Address:
    """Check a ``--dask`` value and say what it means; a clear :class:`ConfigError` otherwise."""
    value = str(text).strip()
    low = value.lower()
    if low.startswith(_SCHEMES):
        if not re.fullmatch(r"[a-z]+://[^\s/]+(:\d+)?/?", low):
            raise ConfigError(f"--dask {value!r}: a scheduler address is SCHEME://HOST:PORT, e.g. tcp://127.0.0.1:8786")
        return Address("scheduler", None, value)
    m = re.fullmatch(r"(local|gateway)(?::(\d+))?", low)
    if not m:
        raise ConfigError(f"--dask {value!r} is not understood: give {_FORMS}")
    n = int(m.group(2)) if m.group(2) else None
    if n is not None and n < 1:
        raise ConfigError(f"--dask {value!r}: the number of workers must be at least 1")
    return Address(m.group(1), n)


@dataclass
class Cluster:
    """A Dask client and, when we started it, the cluster behind it (closed with :meth:`close`)."""

    client: Any                       # distributed.Client
    address: str                      # what was asked for ("local:2", "tcp://...", "gateway", "client")
    owned: bool = False               # started here: close() shuts the cluster down
    cluster: Any = None               # LocalCluster / GatewayCluster when started here
    _closers: list = field(default_factory=list)

    @property
    def dashboard_link(self) -> str | None:
        """The Dask dashboard's URL (behind the hub's proxy on the hub), if the scheduler has one."""
        try:
            return self.client.dashboard_link
        except Exception:  # noqa: BLE001  a scheduler without the dashboard's dependencies
            return None

    @property
    def n_workers(self) -> int:
        return len(self.client.scheduler_info().get("workers", {}))

    def close(self) -> None:
        if not self.owned:
            return
        try:
            for close in (self.client.close, *self._closers):
                with contextlib.suppress(Exception):
                    close()
        finally:
            _quiet_dask(False)
        self.owned = False

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Cluster({self.address!r}, workers={self.n_workers}, dashboard={self.dashboard_link!r})"


def _distributed():
    from mlaas4hep_lab.extras import require

    return require("distributed")


def connect(dask: Any, *, credentials: bool = True, timeout: float = 60) -> Cluster | None:
    """A :class:`Cluster` for ``dask`` (see the module's docstring), or None when ``dask`` is None/""/"off".

    The caller closes what this opens (``with connect(...)``); a given ``Client`` or ``Cluster`` is used and
    never closed. ``credentials``: send the grid credentials of this process to the workers
    (:func:`~mlaas4hep_lab.cluster.credentials.forward_credentials`)."""
    if dask is None or (isinstance(dask, str) and dask.strip().lower() in ("", "none", "off", "no")):
        return None
    if isinstance(dask, Cluster):
        return Cluster(dask.client, dask.address, owned=False)
    distributed = _distributed()
    if isinstance(dask, distributed.Client):
        cluster = Cluster(dask, "client", owned=False)
    else:
        if not isinstance(dask, str):
            raise ConfigError(f"dask= takes an address ({_FORMS}) or a distributed.Client, not "
                              f"{type(dask).__name__}")
        address = parse_address(dask)
        _quiet_dask(True)   # undone by Cluster.close() (or below, when the connection fails)
        try:
            if address.kind == "local":
                cluster = _local(distributed, address.workers or os.cpu_count() or 1)
            elif address.kind == "scheduler":
                cluster = _scheduler(distributed, address.url, timeout)
            else:
                cluster = _gateway(address.workers, timeout)
        except BaseException:
            _quiet_dask(False)
            raise
    try:
        _check_workers(cluster, timeout)
        if credentials:
            from mlaas4hep_lab.cluster.credentials import forward_credentials

            forward_credentials(cluster.client)
    except BaseException:
        cluster.close()
        raise
    # formatted here, not by the handler: the repr asks the scheduler, whose thread may log meanwhile and
    # would wait for the handler's lock that this thread holds (a deadlock when INFO is shown)
    log.info("running on %s", repr(cluster))
    return cluster


_QUIET: list[int] = []   # the "distributed" logger's own levels, one per open cluster that quieted it


def _quiet_dask(on: bool) -> None:
    """Dask's config sets its loggers to INFO: the scheduler's and the connections' chatter would reach the
    user's terminal through the application's handlers, around every run. While clusters opened here are
    open, that logger shows warnings only, unless the application itself asks for INFO (``--debug``)."""
    logger = logging.getLogger("distributed")
    if on:
        _QUIET.append(logger.level)
        if logging.getLogger().getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.WARNING)
    elif _QUIET:
        logger.setLevel(_QUIET.pop())


@contextlib.contextmanager
def using_dask(dask: Any, **kw) -> Iterator[Cluster | None]:
    """``with using_dask(dask) as cluster:``: :func:`connect`, closed at the end when opened here."""
    cluster = connect(dask, **kw)
    try:
        yield cluster
    finally:
        if cluster is not None:
            cluster.close()


# Dask's housekeeping in every process of a LocalCluster we start: its statistical profiler samples a
# worker's running task every 10 ms, each event loop wakes every 20 ms to time itself, and every worker and
# its nanny (the nannies run in this process) read the worker's memory use 10 times a second. On a machine
# whose cores all run tasks, that time is taken from the tasks (measured: a 2-worker specs pass 5-7%
# faster without the first two; the memory polls were ~20 ms of CPU per 0.49 s pass, 8% of this process's).
# Applied only where the user did not choose: Dask's default, not in a config file or a DASK_* variable.
_LEAN = {
    "distributed.worker.profile.enabled": False,      # the dashboard's Profile page stays empty
    "distributed.admin.tick.interval": "500ms",       # still reports a blocked event loop (limit 3 s)
    "distributed.admin.system-monitor.interval": "2s",
    # pause, spill and the nanny's restart at 95% of the memory limit react within 0.5 s instead of 0.1 s:
    # the engine's tasks hold one chunk at a time
    "distributed.worker.memory.monitor-interval": "500ms",
}


def _lean_config() -> dict:
    import dask

    defaults = dask.config.merge(*dask.config.defaults)
    chosen = dask.config.collect()   # the user's config files and DASK_* variables, without the defaults
    missing = object()
    return {key: value for key, value in _LEAN.items()
            if dask.config.get(key, missing, config=chosen) is missing
            and dask.config.get(key, None) == dask.config.get(key, None, config=defaults)}


def _local(distributed, n: int) -> Cluster:
    import dask

    # one thread per worker process: the engine's numpy and decompression already use what a core gives;
    # the nannies pass the config of this moment on to their workers
    with dask.config.set(_lean_config()):
        lc = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                                      silence_logs=logging.WARNING)
    client = distributed.Client(lc)
    return Cluster(client, f"local:{n}", owned=True, cluster=lc, _closers=[lc.close])


def _scheduler(distributed, url: str, timeout: float) -> Cluster:
    try:
        client = distributed.Client(url, timeout=timeout)
    except (OSError, TimeoutError) as err:
        raise ConfigError(f"--dask {url}: cannot reach the Dask scheduler ({err}); is `dask scheduler` running "
                          "there, and is the port open?") from err
    return Cluster(client, url, owned=True)


def _gateway(n: int | None, timeout: float) -> Cluster:
    from mlaas4hep_lab.extras import require

    dask_gateway = require("dask_gateway")
    try:
        gateway = dask_gateway.Gateway()  # address, proxy and auth from the environment (DASK_GATEWAY__*)
        gc = gateway.new_cluster()
    except Exception as err:  # noqa: BLE001  configuration, network and auth errors alike
        raise ConfigError(f"--dask gateway: cannot start a cluster from Dask Gateway ({err}); on the hub "
                          "DASK_GATEWAY__ADDRESS and JUPYTERHUB_API_TOKEN are set for you, elsewhere set "
                          "DASK_GATEWAY__ADDRESS (and DASK_GATEWAY__AUTH__TYPE)") from err
    gc.scale(n or 2)
    client = gc.get_client(set_as_default=False)
    # the Gateway object is left to close itself when collected: dask-gateway 2026.3 closes it again in
    # __del__ after an explicit close(), which prints "Exception ignored" in the user's kernel
    return Cluster(client, "gateway" + (f":{n}" if n else ""), owned=True, cluster=gc, _closers=[gc.shutdown])


def _check_workers(cluster: Cluster, timeout: float) -> None:
    """Wait for a worker, then make sure every worker can import this package (same version)."""
    import mlaas4hep_lab

    try:
        cluster.client.wait_for_workers(1, timeout=timeout)
    except TimeoutError as err:
        raise ConfigError(f"--dask {cluster.address}: no Dask worker joined within {timeout:.0f} s") from err
    versions = cluster.client.run(_worker_version)
    wrong = {w: v for w, v in versions.items() if v != mlaas4hep_lab.__version__}
    if wrong:
        raise ConfigError(f"--dask {cluster.address}: workers need mlaas4hep-lab {mlaas4hep_lab.__version__} "
                          f"installed, as here; found {wrong}")


def _worker_version() -> str | None:
    try:
        import mlaas4hep_lab
    except ImportError:
        return None
    return mlaas4hep_lab.__version__
