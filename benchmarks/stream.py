"""Streaming benchmark: events/s of chunk creation beside plain uproot.iterate, in one run.

    python benchmarks/stream.py                 # 1M Higgs-like + 200k ttH-like events (a few minutes)
    python benchmarks/stream.py --scale 0.1     # quick look

Prints, per dataset: the raw read rate of the same branches with ``uproot.iterate`` (the reference),
our specs pass, chunk creation without cuts, chunk creation with cuts and a new branch, the ratios,
and the peak memory (RSS) of chunk creation for N and 5N events (each in a fresh process).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "_data"

CUTS = {
    # a jagged cut plus a new jagged branch (ttH); a flat cut plus a new flat branch (Higgs, no jagged data)
    "tth": {"new_branch": {"Jet_logpt": {"def": "log(Jet_pt)", "type": "jagged"}},
            "jagged_cut": {"Jet_pt": {"cut": ["Jet_pt > 100", "any"], "remove": False}}},
    "higgs": {"new_branch": {"log_met": {"def": "log(1 + PRI_met)", "type": "flat"}},
              "flat_cut": {"PRI_tau_pt": {"cut": "PRI_tau_pt > 22", "remove": False}}},
}


def dataset(kind: str, n: int):
    from mlaas4hep_lab.data import datasets

    folder = DATA / f"{kind}_{n}"
    marker = folder / "done.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        return info
    t0 = time.perf_counter()
    ds = datasets.write_example(kind, folder, n)
    info = {"files": [str(p) for p in ds.files], "labels": list(ds.labels), "params": str(ds.params_json),
            "seconds": time.perf_counter() - t0}
    marker.write_text(json.dumps(info))
    return info


def _params(info, chunk_size):
    from mlaas4hep_lab.params import load_params

    return load_params(info["params"], chunk_size=chunk_size, verbose=0)


def raw_rate(info, chunk_size, branches) -> float:
    import uproot

    t0 = time.perf_counter()
    n = 0
    for arrays in uproot.iterate([f"{f}:events" for f in info["files"]], branches, step_size=chunk_size,
                                 library="ak"):
        n += len(arrays)
    return n / (time.perf_counter() - t0)


def ours(info, chunk_size, preproc_dict=None):
    from mlaas4hep_lab.data.preprocess import Preproc
    from mlaas4hep_lab.data.specs import compute_specs
    from mlaas4hep_lab.data.stream import ChunkStream

    params = _params(info, chunk_size)
    preproc = Preproc.from_json(preproc_dict) if preproc_dict else None
    t0 = time.perf_counter()
    specs = compute_specs(info["files"], params, preproc, progress=False)
    t_specs = time.perf_counter() - t0
    n_total = sum(f["used"] for f in specs.files)
    with ChunkStream(info["files"], info["labels"], params, specs, preproc) as stream:
        t0 = time.perf_counter()
        kept = 0
        for chunk in stream:
            kept += len(chunk)
        t_chunks = time.perf_counter() - t0
        read = stream.plan.read
    return {"specs": n_total / t_specs, "chunks": n_total / t_chunks, "kept": kept, "events": n_total,
            "features": specs.n_features, "read": read}


def child_rss(kind: str, n: int, chunk_size: int) -> None:
    """Run chunk creation over the dataset and print the peak RSS in MB (called in a fresh process)."""
    info = dataset(kind, n)
    ours(info, chunk_size, CUTS[kind])
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def rss(kind: str, n: int, chunk_size: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--child-rss", kind, str(n), str(chunk_size)],
                         check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the default sizes")
    ap.add_argument("--chunk-size", type=int, default=20_000)
    ap.add_argument("--child-rss", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_rss:
        child_rss(args.child_rss[0], int(args.child_rss[1]), int(args.child_rss[2]))
        return
    sizes = {"higgs": int(1_000_000 * args.scale), "tth": int(200_000 * args.scale)}
    print(f"python {sys.version.split()[0]}, chunk_size {args.chunk_size}")
    for kind, n in sizes.items():
        info = dataset(kind, n)
        plain = ours(info, args.chunk_size)
        raw = raw_rate(info, args.chunk_size, plain["read"])
        cut = ours(info, args.chunk_size, CUTS[kind])
        print(f"\n{kind}: {n:,} events, {plain['features']} features ({len(plain['read'])} branches read)")
        print(f"  uproot.iterate (reference)    {raw:>12,.0f} events/s")
        print(f"  specs pass                    {plain['specs']:>12,.0f} events/s  ({plain['specs'] / raw:.2f} x raw)")
        print(f"  chunks, no cuts               {plain['chunks']:>12,.0f} events/s  ({plain['chunks'] / raw:.2f} x raw)")
        print(f"  chunks, cut + new branch      {cut['chunks']:>12,.0f} events/s  ({cut['chunks'] / raw:.2f} x raw, "
              f"{plain['chunks'] / cut['chunks']:.2f}x slower than no cuts; {cut['kept'] / cut['events']:.0%} pass)")
    for kind in ("tth",):
        n = max(10_000, sizes[kind] // 5)
        dataset(kind, n * 5)
        small, large = rss(kind, n, args.chunk_size), rss(kind, 5 * n, args.chunk_size)
        print(f"\npeak RSS, {kind} chunk creation: {n:,} events {small:,.0f} MB, {5 * n:,} events "
              f"{large:,.0f} MB ({large / small:.2f}x for 5x the events)")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    tempfile.tempdir = None
    main()
