"""Blocks of workers on the client's machine come through /dev/shm (cluster/shared.py): the same chunks as
through Dask, nothing left in /dev/shm after a pass, a closed stream or a stream stopped mid-pass; workers
that do not see the client's marker (another machine, another /dev/shm) send their blocks through Dask."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
from dask_support import local_cluster  # noqa: F401  (fixture)
from test_dask_stream import assert_same_chunks, toy_inputs

from mlaas4hep_lab.cluster.shared import SHM, SharedFolder, SharedMatrices, drop_segments
from mlaas4hep_lab.cluster.stream import DaskChunkStream
from mlaas4hep_lab.data.specs import compute_specs
from mlaas4hep_lab.data.stream import ChunkStream

pytestmark = pytest.mark.skipif(not os.path.isdir(SHM), reason="no /dev/shm on this machine")


def _ours(marker: str) -> list[str]:
    return glob.glob(glob.escape(marker) + "*")


def _streams(cluster, toy_data, unseen: bool = False, owner: int | None = None, **changes):
    files, labels, params, preproc = toy_inputs(toy_data, chunk_cache="off", **changes)
    specs = compute_specs(files, params, preproc, progress=False)
    with ChunkStream(files, labels, params, specs, preproc) as local:
        want = list(local.iterate_passes(2))
    with DaskChunkStream(files, labels, params, specs, preproc, dask=cluster) as remote:
        marker = remote._shared.marker
        assert marker is not None and os.path.exists(marker)
        if unseen:   # as a worker on another machine sees it: no marker in its /dev/shm
            os.unlink(marker)
        if owner is not None:   # the client runs as another user than the workers (a Gateway's accounts)
            os.chown(marker, owner, -1)
        got = list(remote.iterate_passes(2))
        stats = dict(remote.stats)
    return want, got, stats, marker


def test_blocks_of_workers_on_this_machine_come_through_shared_memory(local_cluster, toy_data):  # noqa: F811
    want, got, stats, marker = _streams(local_cluster, toy_data)
    assert_same_chunks(want, got)
    features = want[0][1].X.shape[1]
    assert stats["shared_bytes"] == stats["kept"] * features * 5   # every block's X and mask, both passes
    assert stats["bytes"] < stats["shared_bytes"] / 5   # the rest (labels, entries, ids: 25 of ~150 B/event here)
    assert not _ours(marker)                                         # every segment removed at the end


def test_workers_that_do_not_see_the_marker_send_their_blocks_through_dask(local_cluster, toy_data):  # noqa: F811
    want, got, stats, marker = _streams(local_cluster, toy_data, unseen=True)
    assert_same_chunks(want, got)
    assert stats["shared_bytes"] == 0 and stats["bytes"] > stats["kept"] * want[0][1].X.shape[1] * 5
    assert not _ours(marker)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to give the marker away")
def test_workers_of_another_user_than_the_client_send_their_blocks_through_dask(local_cluster, toy_data):  # noqa: F811
    """Their 0600 files would be unreadable for the client, and only their owner may remove them."""
    want, got, stats, marker = _streams(local_cluster, toy_data, owner=os.getuid() + 4242)
    assert_same_chunks(want, got)
    assert stats["shared_bytes"] == 0 and not _ours(marker)


def test_a_stream_closed_mid_pass_leaves_nothing_in_shared_memory(local_cluster, toy_data):  # noqa: F811
    files, labels, params, preproc = toy_inputs(toy_data, prefetch=2, chunk_size=1000, chunk_cache="off")
    specs = compute_specs(files, params, preproc, progress=False)
    with DaskChunkStream(files, labels, params, specs, preproc, dask=local_cluster) as stream:
        marker = stream._shared.marker
        passes = stream.iterate_passes(1)
        next(passes)   # the blocks of the next chunks are built meanwhile, some already in /dev/shm
        passes.close()
    assert not _ours(marker)


def test_a_segment_is_filled_again_only_once_the_client_released_it(tmp_path):
    folder = SharedFolder(str(tmp_path))
    first = SharedMatrices(folder.marker)
    X, mask = first.matrices(7, 3)
    X[:] = np.arange(21, dtype=np.float32).reshape(7, 3)
    mask[:] = X > 9
    del X, mask
    X, mask = folder.open(first.part)
    assert not X.flags.writeable and X.tolist() == np.arange(21, dtype=np.float32).reshape(7, 3).tolist()
    assert mask.sum() == 11
    busy = SharedMatrices(folder.marker)
    busy.matrices(7, 3)   # the client still reads the first: a second segment
    assert busy.part.path != first.part.path
    del X, mask
    folder.release(first.part)
    again = SharedMatrices(folder.marker)
    X, _ = again.matrices(6, 3)   # the first, filled again: no new file
    assert again.part.path == first.part.path and len(list(tmp_path.iterdir())) == 3
    X[:] = -1.0
    assert folder.open(again.part)[0].tolist() == [[-1.0] * 3] * 6
    del X
    folder.release(again.part)
    folder.release(busy.part)
    large = SharedMatrices(folder.marker)
    large.matrices(200_000, 3)   # larger than both free segments: they make room for a new one
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(os.path.basename(p) for p in (folder.marker,
                                                                                            large.part.path))
    assert drop_segments(folder.marker) == 1 and folder.close() == 2 and not list(tmp_path.iterdir())


def test_no_marker_where_the_folder_cannot_be_written(tmp_path):
    assert SharedFolder(str(tmp_path / "missing")).marker is None


def test_a_full_shared_memory_gives_plain_matrices(tmp_path, monkeypatch):
    """A /dev/shm without room (a container's 64 MB): the block is made in plain memory, no file is left."""
    folder = SharedFolder(str(tmp_path))

    def full(fd, offset, size):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    memory = SharedMatrices(folder.marker)
    X, mask = memory.matrices(4, 2)
    assert memory.part is None and X.shape == mask.shape == (4, 2) and X.flags.writeable
    assert [p.name for p in tmp_path.iterdir()] == [os.path.basename(folder.marker)]


_KILLED_CLIENT = """
import os, sys
from mlaas4hep_lab.cluster.shared import SharedFolder, SharedMatrices
folder = SharedFolder(sys.argv[1])
SharedMatrices(folder.marker).matrices(1000, 4)   # a block's segment beside the marker
print(folder.marker, flush=True)
os.kill(os.getpid(), 9)                           # killed before it could close its stream
"""


def test_what_a_killed_client_left_is_removed_by_the_next_one(tmp_path):
    """A client killed mid-stream leaves its marker and segments; the next client's sweep removes them (no
    process holds the marker's lock any more), not those of a live client nor files of another kind."""
    import subprocess
    import sys

    live = SharedFolder(str(tmp_path))
    SharedMatrices(live.marker).matrices(10, 2)
    other = tmp_path / "someone-elses-file"
    other.write_text("x")
    run = subprocess.run([sys.executable, "-c", _KILLED_CLIENT, str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == -9
    dead = run.stdout.strip()
    assert os.path.exists(dead) and len(_ours(dead)) == 2   # the marker and its segment, left behind
    new = SharedFolder(str(tmp_path))
    assert not _ours(dead)
    assert len(_ours(live.marker)) == 2 and other.exists() and os.path.exists(new.marker)
    assert live.close() == 2 and new.close() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to give a marker away")
def test_another_users_leftovers_are_not_swept(tmp_path):
    from mlaas4hep_lab.cluster.shared import sweep

    marker = tmp_path / "mlaas4hep-blocks-0123456789abcdef0123456789abcdef"
    marker.write_text("")
    os.chown(marker, os.getuid() + 4242, -1)
    assert sweep(str(tmp_path)) == 0 and marker.exists()
