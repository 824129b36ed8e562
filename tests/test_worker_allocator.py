"""The allocator of Dask worker processes (data/_buffers.py: tune_worker_allocator): Dask's nanny starts
workers with MALLOC_TRIM_THRESHOLD_=65536, which freezes glibc's mmap threshold at 128 KiB, so every array of
128 KiB or more comes from fresh pages; the engine's tasks tune it back, and leave a user's choice alone."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
from dask_support import local_cluster  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator")

# page faults of 300 allocations of a 512 KiB array, written then freed, before and after the tuning
_PROBE = """
import resource, sys, numpy as np
from mlaas4hep_lab.data import _buffers

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(300):
        a = np.empty(1 << 17, np.float32); a[:] = 1.0; del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults()
first = faults()
_buffers.tune_worker_allocator()
print(first, faults())
"""


def _faults(env: dict) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE], env={**os.environ, **env}, capture_output=True, text=True,
                         check=True).stdout.split()
    return int(out[0]), int(out[1])


def test_workers_of_a_local_cluster_start_with_dasks_trim_threshold(local_cluster):  # noqa: F811
    """The premise: what the nanny sets (if a Dask release drops it, the tuning has nothing to undo)."""
    envs = local_cluster.client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert set(envs.values()) <= {"65536", None}


def test_the_tuning_stops_fresh_pages_for_every_large_array():
    before, after = _faults({"MALLOC_TRIM_THRESHOLD_": "65536"})
    assert before > 300 * 100      # each 512 KiB array faulted in afresh (128 pages)
    assert after < before / 20     # reused from the heap


def test_a_users_own_thresholds_are_left_alone():
    before, after = _faults({"MALLOC_TRIM_THRESHOLD_": "65536", "MALLOC_MMAP_THRESHOLD_": "131072"})
    assert after > before / 2      # still mmapped: the user asked for it
