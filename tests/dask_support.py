"""Real Dask clusters for the tests: a ``LocalCluster`` of worker processes, and a ``dask scheduler`` with
``dask worker`` processes started as a user would, on 127.0.0.1.

Usage (in a test module)::

    from dask_support import local_cluster, scheduler_processes  # noqa: F401  (fixtures)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

pytest.importorskip("distributed", reason='the dask extra: pip install "mlaas4hep-lab[dask]"')


@pytest.fixture(scope="session")
def local_cluster():
    """A session-wide ``Cluster`` on a ``LocalCluster`` of 2 worker processes (one thread each)."""
    from mlaas4hep_lab.cluster.connect import connect

    cluster = connect("local:2")
    yield cluster
    cluster.owned = True
    cluster.close()


def _dask_command() -> list[str]:
    exe = shutil.which("dask", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    return [exe] if exe else [sys.executable, "-m", "distributed.cli.dask_spec"]


@pytest.fixture(scope="session")
def scheduler_processes(tmp_path_factory):
    """``tcp://127.0.0.1:PORT`` of a real ``dask scheduler`` process with two ``dask worker`` processes."""
    folder = tmp_path_factory.mktemp("dask-scheduler")
    log = open(folder / "scheduler.log", "w+")
    scheduler = subprocess.Popen([*_dask_command(), "scheduler", "--host", "127.0.0.1", "--port", "0",
                                  "--dashboard-address", ":0", "--no-show"],
                                 stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    address, deadline = None, time.monotonic() + 60
    while address is None and time.monotonic() < deadline:
        time.sleep(0.2)
        log.seek(0)
        m = re.search(r"Scheduler at:\s+(tcp://127\.0\.0\.1:\d+)", log.read())
        address = m.group(1) if m else None
    if address is None:
        scheduler.kill()
        log.seek(0)
        raise RuntimeError(f"dask scheduler did not start: {log.read()[-2000:]}")
    workers = [subprocess.Popen([*_dask_command(), "worker", address, "--nthreads", "1", "--nworkers", "1",
                                 "--host", "127.0.0.1", "--no-dashboard", "--name", f"w{i}"],
                                stdout=open(folder / f"worker{i}.log", "w"), stderr=subprocess.STDOUT, cwd=folder)
               for i in range(2)]
    from distributed import Client

    with Client(address, timeout=60) as client:  # both workers joined before any test uses the address
        client.wait_for_workers(2, timeout=60)
    yield address
    for p in [*workers, scheduler]:
        p.terminate()
    for p in [*workers, scheduler]:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
