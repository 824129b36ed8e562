"""The specs pass on a Dask cluster: the same specs.json, byte for byte, as in this process, from a
``LocalCluster`` of worker processes and from a real ``dask scheduler`` with ``dask worker`` processes,
with several parts per file; failures retried, then reported as the local pass reports them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TOY_SENTINEL
from dask_support import local_cluster, scheduler_processes  # noqa: F401  (fixtures)

from mlaas4hep_lab.cluster.specs_pass import RETRIES, task_groups
from mlaas4hep_lab.data import _partial, datasets
from mlaas4hep_lab.data import specs as specs_module
from mlaas4hep_lab.data.preprocess import Preproc
from mlaas4hep_lab.data.reader import TreeReader
from mlaas4hep_lab.data.specs import compute_specs
from mlaas4hep_lab.errors import InputFileError
from mlaas4hep_lab.params import load_params

CLUSTERS = ["local_cluster", "scheduler_processes"]

TOY_PREPROC = {
    "new_branch": {
        "ht": {"def": "sum(Jet_pt)", "type": "flat"},
        "Jet_pt_log": {"def": "log(Jet_pt)", "type": "jagged", "cut": ["Jet_pt_log > 3.2", "any"],
                       "remove": "False"},
    },
    "flat_cut": {"f_float32": {"cut": "f_float32 > -0.5", "remove": "False"}},
    "jagged_cut": {"Trk_nhits": {"cut": ["Trk_nhits > 1", "all"], "remove": False}},
}


def saved(specs, path: Path) -> bytes:
    """specs.json as written (it holds no time stamp: the files' mtimes are those of the files)."""
    return specs.save(path).read_bytes()


def part_counts(files, params, preproc=None) -> list[int]:
    """Parts per file, as the pass cuts them."""
    from mlaas4hep_lab.data.plan import make_plan

    out = []
    for f in files:
        with TreeReader(f, params.branch) as r:
            plan = make_plan(r, params, preproc)
            out.append(len(_partial.file_parts(r.cluster_boundaries(plan.read), r.num_entries, params.chunk_size)))
    return out


def part_sizes(files, params, preproc=None) -> list[int]:
    """Entries of every part of every file, as the pass cuts them."""
    from mlaas4hep_lab.data.plan import make_plan

    out = []
    for f in files:
        with TreeReader(f, params.branch) as r:
            plan = make_plan(r, params, preproc)
            bounds = r.cluster_boundaries(plan.read)
            out += [b - a for a, b in _partial.file_parts(bounds, r.num_entries, params.chunk_size)]
    return out


def on_cluster(cluster, request):
    """The fixture's cluster as ``dask=`` takes it: the session's Cluster, or the scheduler's address."""
    return request.getfixturevalue(cluster)


def part_tasks(client, run):
    """(key, worker) of every specs-part task the scheduler ran during ``run()``."""
    from distributed import get_task_stream

    with get_task_stream(client) as ts:
        result = run()
    return result, [(d["key"], d["worker"]) for d in ts.data if "mlaas4hep-specs-part" in str(d["key"])]


# ------------------------------------------------------------------------------------------ toy data
@pytest.mark.parametrize("cluster", CLUSTERS)
def test_toy_specs_equal_local_ones(toy_data, tmp_path, cluster, request):
    """Flat and jagged branches, new branches and cuts, a sentinel, quantile jagged lengths; chunks of 400
    so that parts (3 and 7 per file) hold several chunks and the last chunk of a part is short."""
    params = load_params(toy_data.params_json, chunk_size=400, missing_values=[TOY_SENTINEL],
                         max_jagged_length={"Jet_*": 0.9})
    pre = Preproc.from_json(TOY_PREPROC)
    assert part_counts(toy_data.files, params, pre) == [3, 7]
    local = compute_specs(toy_data.files, params, pre, progress=False)
    remote = compute_specs(toy_data.files, params, pre, progress=False, dask=on_cluster(cluster, request))
    assert remote.to_dict() == local.to_dict()
    assert saved(remote, tmp_path / "remote.json") == saved(local, tmp_path / "local.json")
    # the pass really ran and saw everything: cuts, new branches, groups of jagged branches
    assert local.cutflow[str(toy_data.bkg)]["read"] == 7000
    assert {"ht", "Jet_pt_log"} <= set(local.fkeys) | set(local.jkeys)
    assert ["Jet_pt", "Jet_pt_log"] in local.jagged_groups


def test_parts_run_on_both_workers(toy_data, local_cluster):  # noqa: F811
    """One task per part, spread over the two workers even for one file."""
    params = load_params(toy_data.params_json, chunk_size=500)
    specs, tasks = part_tasks(local_cluster.client,
                              lambda: compute_specs([str(toy_data.bkg)], params, progress=False, dask=local_cluster))
    assert specs.events[str(toy_data.bkg)] == 7000
    n_parts = part_counts([str(toy_data.bkg)], params)[0]
    assert len({key for key, _ in tasks}) == n_parts >= 4
    assert len({worker for _, worker in tasks}) == 2


def test_progress_advances_as_parts_finish(toy_data, local_cluster, monkeypatch):  # noqa: F811
    updates: list[int] = []

    class Bar:
        def update(self, n):
            updates.append(n)

        def close(self):
            pass

    monkeypatch.setattr(specs_module, "_progress", lambda total, desc, show: Bar())
    params = load_params(toy_data.params_json, chunk_size=500)
    compute_specs(toy_data.files, params, dask=local_cluster)
    # one step per part (entries of the part), not one at the end
    assert sorted(updates) == sorted(part_sizes(toy_data.files, params))
    assert len(updates) == sum(part_counts(toy_data.files, params)) > 2 and sum(updates) == 10_000


def open_on_workers(client) -> dict:
    """Per worker: the specs readers it holds open."""
    def held():
        from mlaas4hep_lab.cluster import specs_pass

        return [key[1] for key in specs_pass._OPEN]

    return client.run(held)


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_the_workers_close_their_readers_after_a_pass(toy_data, cluster, request):
    """Workers that outlive the pass (the caller's cluster, a scheduler's) close the files it opened: at once
    for a scheduler whose client the pass closes, in the background on a cluster the caller goes on using."""
    from distributed import Client

    params = load_params(toy_data.params_json, chunk_size=500)
    dask = on_cluster(cluster, request)
    with Client(dask) if isinstance(dask, str) else contextlib.nullcontext(dask.client) as client:
        compute_specs(toy_data.files, params, progress=False, dask=dask)
        deadline = time.monotonic() + 30
        while any(open_on_workers(client).values()) and time.monotonic() < deadline:
            assert cluster == "local_cluster", "a scheduler's workers kept the pass's files open"
            time.sleep(0.05)
        assert not any(open_on_workers(client).values())
        # two passes one after the other: each opens its own readers, whenever the other's are closed
        a = compute_specs(toy_data.files, params, progress=False, dask=dask)
        b = compute_specs(toy_data.files, params, progress=False, dask=dask)
        assert a.to_dict() == b.to_dict()


@pytest.mark.parametrize("every", [2, 64])
def test_the_parts_results_are_released_from_the_cluster(toy_data, local_cluster, monkeypatch, every):  # noqa: F811
    """The workers drop every part's result once fetched (in batches of ``every``, and the rest at the end)."""
    from mlaas4hep_lab.cluster import specs_pass

    def held(dask_scheduler=None):
        return [str(key) for key in dask_scheduler.tasks if "mlaas4hep-specs-part" in str(key)]

    monkeypatch.setattr(specs_pass, "_RELEASE_EVERY", every)
    params = load_params(toy_data.params_json, chunk_size=500)
    assert sum(part_counts(toy_data.files, params)) > 2 * every or every == 64
    compute_specs(toy_data.files, params, progress=False, dask=local_cluster)
    deadline = time.monotonic() + 30
    while local_cluster.client.run_on_scheduler(held) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert local_cluster.client.run_on_scheduler(held) == []


# ------------------------------------------------------------------------------------ example data
@pytest.fixture(scope="module")
def tth_small_clusters(tmp_path_factory):
    """The ttH example (20,000 events, two files) written in clusters of 2,500 entries."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets, "SLICE", 2_500)
        return datasets.write_example("tth", tmp_path_factory.mktemp("tth"), 20_000)


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_tth_specs_equal_local_ones(tth_small_clusters, tmp_path, cluster, request):
    ds = tth_small_clusters
    files = [str(f) for f in ds.files]
    params = load_params(ds.params_json, chunk_size=2_000)
    pre = Preproc.from_json(ds.preproc_json)
    assert part_counts(files, params, pre) == [4, 4]
    local = compute_specs(files, params, pre, progress=False)
    remote = compute_specs(files, params, pre, progress=False, dask=on_cluster(cluster, request))
    assert saved(remote, tmp_path / "remote.json") == saved(local, tmp_path / "local.json")
    assert len(local.jagged_groups) == 6 and local.events["total"] > 10_000


@pytest.fixture(scope="module")
def tth_tasks_small_clusters(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets, "SLICE", 2_000)
        return datasets.write_example("tth_tasks", tmp_path_factory.mktemp("tth_tasks"), 9_000)


@pytest.mark.parametrize("which, changes", [("params_json", {"label": "(GenExtra_pt > 30) + (GenExtra_pt > 80)"}),
                                             ("params_regression", {})])
def test_truth_tallies_equal_local_ones(tth_tasks_small_clusters, tmp_path, local_cluster, which,  # noqa: F811
                                        changes):
    """A per-event class (counted per split) and a regression target (moments merged part by part)."""
    ds = tth_tasks_small_clusters
    files = [str(f) for f in ds.files]
    params = load_params(getattr(ds, which), chunk_size=1_500, **changes)
    pre = Preproc.from_json(ds.preproc_json)
    assert max(part_counts(files, params, pre)) >= 2
    local = compute_specs(files, params, pre, progress=False)
    remote = compute_specs(files, params, pre, progress=False, dask=local_cluster)
    if changes:  # three classes, every event after cuts in one of them
        assert len(local.truth["classes"]) == 3
        assert sum(map(sum, local.truth["classes"].values())) == local.events["total"]
    else:
        assert local.truth["targets"]["GenTop_pt"]["values"] == local.events["total"]
    assert saved(remote, tmp_path / "remote.json") == saved(local, tmp_path / "local.json")


def test_statistics_match_numpy_when_cut_in_parts(toy_write_tree):
    """The merge of parts is exact, not only self-consistent: moments equal numpy's on all values."""
    rng = np.random.default_rng(3)
    x = 1e6 + rng.normal(0, 1e-2, 9_000)  # a large offset and a small spread: cancellation shows here
    path = toy_write_tree({"x": x, "y": rng.integers(0, 9, 9_000).astype(np.int32)}, step=1_000)
    params = load_params(None, chunk_size=1500, verbose=0)
    assert part_counts([str(path)], params) == [5]
    s = compute_specs([str(path)], params, progress=False)
    assert s.mean["x"] == pytest.approx(x.mean(), rel=1e-15)
    assert s.std["x"] == pytest.approx(x.std(), rel=1e-9)
    assert (s.minv["x"], s.maxv["x"]) == (x.min(), x.max())


@pytest.mark.parametrize("sizes", [
    [100_000] * 3 + [50_000] + [100_000] * 6 + [50_000],   # the Higgs-like example: two files' last parts
    [7, 3, 3, 3, 2, 9, 6, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],  # files of every size
    [5], [], [4, 4, 4],
    np.random.default_rng(2).integers(1, 100_000, 2_000).tolist() + [150_000],   # many files of many sizes
])
def test_small_parts_share_tasks_of_at_most_the_largest_part(sizes):
    groups = task_groups(sizes, most=8)
    assert sorted(p for g in groups for p in g) == list(range(len(sizes)))   # every part, once
    totals = [sum(sizes[p] for p in g) for g in groups]
    assert totals == sorted(totals, reverse=True)                             # the largest tasks first
    assert all(t <= max(sizes) for t in totals) and all(len(g) <= 8 for g in groups)
    for g in groups:   # a part of at least half the largest one runs alone
        assert len(g) == 1 or all(2 * sizes[p] <= max(sizes) for p in g)
    if sizes[:4] == [100_000] * 3 + [50_000]:
        assert len(groups) == 10 and [3, 10] in groups
    if len(sizes) == 18:   # parts under half of 9 fill tasks of up to 9 entries and 8 parts, largest first
        assert groups == [[5], [1, 2, 3], [4, 7, 8, 9, 10, 11, 12, 13], [0], [6], [14, 15, 16, 17]]


def corrupt_last_baskets(path: Path) -> None:
    """Overwrite the compressed bytes of every branch's last basket: the file opens, its other entries read."""
    import uproot

    with uproot.open(path) as f:
        tree = f["events"]
        spots = []
        for branch in tree.values():
            last = branch.num_baskets - 1
            key_length = branch.basket(last).member("fKeylen")
            spots.append(int(branch.member("fBasketSeek")[last]) + key_length + 9)  # past the 9-byte header
    with open(path, "r+b") as out:
        for spot in spots:
            out.seek(spot)
            out.write(b"\x55" * 24)


def test_an_error_in_a_shared_task_names_its_own_part(toy_write_tree, local_cluster):  # noqa: F811
    """Two files' last parts run in one task: the one that fails is named, not the other."""
    rng = np.random.default_rng(5)
    files = [toy_write_tree({"x": rng.normal(size=6_500), "y": rng.normal(size=6_500)}, name=f"part_{k}.root")
             for k in ("a", "b")]
    params = load_params(None, chunk_size=1000, verbose=0)
    sizes = part_sizes([str(f) for f in files], params)
    assert sizes == [1000] * 6 + [500] + [1000] * 6 + [500]
    assert [6, 13] in task_groups(sizes)                    # a's last part, then b's, in one task
    corrupt_last_baskets(files[1])
    with pytest.raises(InputFileError) as err:
        compute_specs([str(f) for f in files], params, progress=False, dask=local_cluster)
    message = str(err.value)
    assert f"on a Dask worker: {files[1]}, entries 6000-6500, tried {RETRIES + 1} times" in message
    assert err.value.path == str(files[1]) and not hasattr(err.value, "mlaas4hep_part")


def test_a_file_gone_from_the_workers_in_a_shared_task_is_named_alone(toy_write_tree, local_cluster):  # noqa: F811
    """A small file whose only part shares a task with another file's last part, removed once the client opened
    it: the error names the small file's part, not the part of the file the task read first."""
    rng = np.random.default_rng(6)
    big = toy_write_tree({"x": rng.normal(size=6_500)}, name="shared_big.root")
    small = toy_write_tree({"x": rng.normal(size=400)}, name="shared_small.root")
    params = load_params(None, chunk_size=1000, verbose=0)
    sizes = part_sizes([str(big), str(small)], params)
    assert sizes == [1000] * 6 + [500, 400] and [6, 7] in task_groups(sizes)
    readers = [TreeReader(str(f), params.branch) for f in (big, small)]
    try:
        os.unlink(small)
        with pytest.raises(InputFileError) as err:
            compute_specs([str(big), str(small)], params, progress=False, readers=readers, dask=local_cluster)
    finally:
        for r in readers:
            r.close()
    message = str(err.value)
    assert f"on a Dask worker: {small}, entries 0-400, tried {RETRIES + 1} times" in message
    assert str(big) not in message


# ------------------------------------------------------------------------------------------- errors
def corrupt_copy(src: Path, dst: Path) -> Path:
    """A copy whose baskets in the middle are overwritten: it opens, but some entries cannot be read."""
    shutil.copy(src, dst)
    size = dst.stat().st_size
    with open(dst, "r+b") as f:
        f.seek(int(size * 0.4))
        f.write(b"\x55" * int(size * 0.1))
    return dst


def attempts(client, key_part: str) -> int:
    """The most times the workers logged a failure of one task whose message contains ``key_part``."""
    import collections
    import re

    logs = client.get_worker_logs()
    keys = collections.Counter(key for records in logs.values() for _, msg in records
                               if "Compute Failed" in msg and key_part in msg
                               for key in re.findall(r"Key:\s+(\S+)", msg))
    return max(keys.values(), default=0)


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_corrupt_file_is_retried_then_reported_like_locally(toy_data, tmp_path, cluster, request):
    bad = corrupt_copy(toy_data.bkg, tmp_path / f"corrupt_{cluster}.root")
    params = load_params(toy_data.params_json, chunk_size=1000)
    with pytest.raises(InputFileError) as local:
        compute_specs([str(bad)], params, progress=False)
    with pytest.raises(InputFileError) as remote:
        compute_specs([str(bad)], params, progress=False, dask=on_cluster(cluster, request))
    message = str(remote.value)
    assert str(bad) in message and remote.value.path == local.value.path == str(bad)
    assert "cannot read entries" in message and "on a Dask worker" in message
    assert f"tried {RETRIES + 1} times" in message
    part = message.split("entries ")[-1].split(",")[0]  # the part's range: "2000-4000"
    assert part.split("-")[0].isdigit() and part.split("-")[1].isdigit()
    if cluster == "local_cluster":  # the workers logged each try of the task that failed
        assert attempts(request.getfixturevalue(cluster).client, bad.name) == RETRIES + 1


def test_file_gone_from_the_workers(toy_copy, local_cluster):  # noqa: F811
    """A file the client opened but the workers cannot: InputFileError naming the file and the part."""
    params = load_params(toy_copy.params_json)
    readers = [TreeReader(str(f), params.branch) for f in (toy_copy.sig, toy_copy.bkg)]
    try:
        os.unlink(toy_copy.bkg)
        with pytest.raises(InputFileError, match=r"ROOT file not found: .*bkg\.root.*entries \d+-\d+"):
            compute_specs(toy_copy.files, params, progress=False, readers=readers, dask=local_cluster)
    finally:
        for r in readers:
            r.close()


def test_relative_paths_reach_the_workers(toy_data, tmp_path, local_cluster, monkeypatch):  # noqa: F811
    monkeypatch.chdir(toy_data.dir)
    params = load_params(toy_data.params_json)
    local = compute_specs(["sig.root", "bkg.root"], params, progress=False)
    remote = compute_specs(["sig.root", "bkg.root"], params, progress=False, dask=local_cluster)
    assert json.dumps(remote.to_dict()) == json.dumps(local.to_dict())
    assert remote.files[0]["path"] == "sig.root"
