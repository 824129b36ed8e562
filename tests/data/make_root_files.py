"""Write ROOT-made test files (TTree with std::vector branches, and an RNTuple) plus expected numbers.

Run with a Python that has PyROOT (ROOT 6.40 from PyPI, in a separate venv so the main
environment stays clean)::

    python -m venv /tmp/rootenv
    /tmp/rootenv/bin/pip install ROOT==0.1a12 numpy
    /tmp/rootenv/bin/python tests/data/make_root_files.py

Outputs, next to this script:

* ``root_written.root``: TDirectory ``ntuple`` holding TTree ``tree`` (2,000 entries, CMS-ntuple
  style): ``std::vector<float|int|double|bool>`` branches, flat ``Float_t``, ``Double_t``, ``Int_t``,
  ``Long64_t``, ``UInt_t``, ``Bool_t``, ``Short_t``, ``UChar_t`` branches, a C-style counted
  array ``pt[n]/F`` with counter ``n/I``, and two non-numeric branches (``std::string`` and
  ``std::vector<std::vector<float>>``) that a numeric reader must skip.
* ``root_written_rntuple.root``: the flat branches plus ``jet_pt`` (``std::vector<float>``) as
  an RNTuple, also at ``ntuple/tree``.
* ``root_written_expected.json``: per-branch sums, min, max (and for jagged branches total
  counts and max length), computed in plain Python from the generating formulas and checked
  here against ROOT's own RDataFrame reading back the file.

All values are deterministic and exact binary fractions (k/16, k/64, ...), so float32/float64
sums are exact whatever the summation order.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TTREE_FILE = HERE / "root_written.root"
RNTUPLE_FILE = HERE / "root_written_rntuple.root"
EXPECTED_FILE = HERE / "root_written_expected.json"
TREE_PATH = "ntuple/tree"
NUM_ENTRIES = 2000
AUTO_FLUSH = 300  # clusters of 300 entries, so chunked reads cross basket boundaries
RANGES = [(0, 777), (777, 1500), (1500, NUM_ENTRIES)]


def h(i: int, j: int, salt: int) -> int:
    """A deterministic integer hash of (entry, index, salt)."""
    x = (i * 1103515245 + j * 12345 + salt * 2654435761 + 0x9E3779B9) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x2C1B3C6D) & 0xFFFFFFFF
    x ^= x >> 12
    return x


# --------------------------------------------------------------------------- generating formulas
def gen_entry(i: int) -> dict:
    njet = h(i, 0, 1) % 9  # 0..8
    n = h(i, 0, 2) % 6  # 0..5 (counted array length)
    return {
        # flat numeric
        "met": (h(i, 0, 3) % 20000) / 64.0,  # Float_t, exact in float32
        "weight": ((h(i, 0, 4) % 2001) - 1000) / 512.0,  # Double_t, negative too
        "nvtx": (h(i, 0, 5) % 80) - 10,  # Int_t
        "event": 2**40 + 7919 * i,  # Long64_t beyond 2**32
        "run": 3_000_000_000 + i // 100,  # UInt_t beyond 2**31
        "trigger": h(i, 0, 6) % 4 != 0,  # Bool_t
        "charge_sum": (h(i, 0, 7) % 60001) - 30000,  # Short_t
        "quality": h(i, 0, 8) % 256,  # UChar_t
        # C-style counted array
        "n": n,
        "pt": [(h(i, j, 9) % 8000) / 32.0 for j in range(n)],
        # std::vector branches
        "jet_pt": [20.0 + (h(i, j, 10) % 4000) / 16.0 for j in range(njet)],
        "jet_charge": [(h(i, j, 11) % 7) - 3 for j in range(njet)],
        "jet_energy": [30.0 + (h(i, j, 12) % 100000) / 1024.0 for j in range(njet)],
        "jet_btag": [h(i, j, 13) % 3 == 0 for j in range(njet)],
        # non-numeric
        "label": f"evt{i:05d}",
        "jet_constituents": [[0.5 * k + j for k in range(j % 3)] for j in range(njet)],
    }


FLAT = {  # name -> (leaflist code, numpy dtype, ROOT typename)
    "met": ("F", np.float32, "Float_t"),
    "weight": ("D", np.float64, "Double_t"),
    "nvtx": ("I", np.int32, "Int_t"),
    "event": ("L", np.int64, "Long64_t"),
    "run": ("i", np.uint32, "UInt_t"),
    "trigger": ("O", np.bool_, "Bool_t"),
    "charge_sum": ("S", np.int16, "Short_t"),
    "quality": ("b", np.uint8, "UChar_t"),
    "n": ("I", np.int32, "Int_t"),
}
VECTORS = {  # name -> (C++ element type, numpy dtype)
    "jet_pt": ("float", np.float32),
    "jet_charge": ("int", np.int32),
    "jet_energy": ("double", np.float64),
    "jet_btag": ("bool", np.bool_),
}
COUNTED = {"pt": ("n", np.float32)}
SKIPPED = {
    "label": "std::string",
    "jet_constituents": "std::vector<std::vector<float>>",
}


def _num(x):
    """JSON-friendly number: bools become ints, integral dtypes stay ints."""
    if isinstance(x, (bool, np.bool_)):
        return int(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    return float(x)


def python_expected(entries: list[dict]) -> dict:
    """Expected numbers computed from the formulas, without ROOT."""

    def stats(rows: list[dict], name: str, jagged: bool, dtype) -> dict:
        if jagged:
            values = [v for r in rows for v in r[name]]
            lengths = [len(r[name]) for r in rows]
        else:
            values = [r[name] for r in rows]
            lengths = None
        # Round-trip through the branch dtype so the numbers are what the file holds.
        arr = np.asarray(values, dtype=dtype)
        out: dict = {}
        if np.issubdtype(dtype, np.floating):
            out["sum"] = math.fsum(float(v) for v in arr)
        else:
            out["sum"] = int(sum(int(v) for v in arr))
        out["min"] = _num(arr.min()) if len(arr) else None
        out["max"] = _num(arr.max()) if len(arr) else None
        if jagged:
            out["count"] = int(sum(lengths))
            out["max_len"] = int(max(lengths))
            out["min_len"] = int(min(lengths))
        return out

    branches: dict = {}
    for name, (_, dtype, typename) in FLAT.items():
        branches[name] = {"kind": "flat", "dtype": np.dtype(dtype).name, "typename": typename}
    for name, (ctype, dtype) in VECTORS.items():
        branches[name] = {
            "kind": "jagged",
            "dtype": np.dtype(dtype).name,
            "typename": f"std::vector<{ctype}>",
        }
    for name, (counter, dtype) in COUNTED.items():
        branches[name] = {"kind": "jagged", "dtype": np.dtype(dtype).name, "typename": f"float[{counter}]"}

    for name, info in branches.items():
        jagged = info["kind"] == "jagged"
        dtype = np.dtype(info["dtype"])
        info.update(stats(entries, name, jagged, dtype))
        info["ranges"] = [
            {"start": a, "stop": b, **stats(entries[a:b], name, jagged, dtype)} for a, b in RANGES
        ]
        head = [entries[i][name] for i in range(5)]
        info["head"] = [[_num(v) for v in x] if jagged else _num(x) for x in head]
    return branches


# --------------------------------------------------------------------------- writing with ROOT
def write_ttree(ROOT, entries: list[dict]) -> None:
    f = ROOT.TFile(str(TTREE_FILE), "RECREATE", "ROOT-written test ntuple", 505)  # ZSTD, ROOT's default
    d = f.mkdir("ntuple")
    d.cd()
    t = ROOT.TTree("tree", "CMS-ntuple-style test tree")
    t.SetAutoFlush(AUTO_FLUSH)

    buffers = {}
    for name, (code, dtype, _) in FLAT.items():
        buffers[name] = np.zeros(1, dtype=dtype)
        t.Branch(name, buffers[name], f"{name}/{code}")
    for name, (counter, dtype) in COUNTED.items():
        buffers[name] = np.zeros(16, dtype=dtype)
        t.Branch(name, buffers[name], f"{name}[{counter}]/F")
    vectors = {}
    for name, (ctype, _) in VECTORS.items():
        vectors[name] = ROOT.std.vector[ctype]()
        t.Branch(name, vectors[name])
    label = ROOT.std.string()
    t.Branch("label", label)
    constituents = ROOT.std.vector[ROOT.std.vector["float"]]()
    t.Branch("jet_constituents", constituents)

    for e in entries:
        for name in FLAT:
            buffers[name][0] = e[name]
        for name in COUNTED:
            values = e[name]
            buffers[name][: len(values)] = values
        for name, vec in vectors.items():
            vec.clear()
            for v in e[name]:
                vec.push_back(v)
        label.assign(e["label"])
        constituents.clear()
        for inner in e["jet_constituents"]:
            constituents.push_back(ROOT.std.vector["float"](inner))
        t.Fill()

    t.Write()
    f.Close()


def write_rntuple(ROOT, entries: list[dict]) -> None:
    cpp = {
        "float32": "float",
        "float64": "double",
        "int32": "std::int32_t",
        "int64": "std::int64_t",
        "uint32": "std::uint32_t",
        "bool": "bool",
        "int16": "std::int16_t",
        "uint8": "std::uint8_t",
    }
    f = ROOT.TFile(str(RNTUPLE_FILE), "RECREATE", "ROOT-written test RNTuple", 505)
    d = f.mkdir("ntuple")
    model = ROOT.RNTupleModel.Create()
    for name, (_, dtype, _) in FLAT.items():
        model.MakeField[cpp[np.dtype(dtype).name]](name)
    model.MakeField["std::vector<float>"]("jet_pt")
    writer = ROOT.RNTupleWriter.Append(model, "tree", d)
    entry = writer.CreateEntry()
    for e in entries:
        for name, (_, dtype, _) in FLAT.items():
            entry[name] = bool(e[name]) if dtype is np.bool_ else e[name]
        entry["jet_pt"] = ROOT.std.vector["float"](e["jet_pt"])
        writer.Fill(entry)
    del writer  # commits the RNTuple to the directory
    f.Close()


def root_check(ROOT, path: Path, branches: dict, names: list[str]) -> None:
    """Read the file back with ROOT's RDataFrame and compare with the Python numbers."""
    df = ROOT.RDataFrame(TREE_PATH, str(path))
    n = df.Count()
    results = {}
    for name in names:
        info = branches[name]
        col = name
        if info["dtype"] == "bool":  # RDF Sum/Min/Max on bools: go through an int column
            col = f"{name}_as_int"
            if info["kind"] == "jagged":
                df = df.Define(col, f"ROOT::VecOps::RVec<int>({name}.begin(), {name}.end())")
            else:
                df = df.Define(col, f"int({name})")
        r = {"sum": df.Sum(col), "min": df.Min(col), "max": df.Max(col)}
        if info["kind"] == "jagged":
            lc = f"{name}_len"
            df = df.Define(lc, f"int({name}.size())")
            r.update(count=df.Sum(lc), max_len=df.Max(lc), min_len=df.Min(lc))
        results[name] = r
    assert n.GetValue() == NUM_ENTRIES, (path, n.GetValue())
    for name, r in results.items():
        for key, ptr in r.items():
            got, want = float(ptr.GetValue()), float(branches[name][key])
            if not math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-9):
                raise SystemExit(f"{path.name}: ROOT says {name} {key} = {got}, Python says {want}")
    print(f"{path.name}: ROOT's RDataFrame agrees on {len(results)} branches")


def main() -> int:
    import ROOT

    ROOT.gROOT.SetBatch(True)
    entries = [gen_entry(i) for i in range(NUM_ENTRIES)]
    branches = python_expected(entries)

    write_ttree(ROOT, entries)
    root_check(ROOT, TTREE_FILE, branches, list(branches))
    write_rntuple(ROOT, entries)
    rntuple_names = [*FLAT, "jet_pt"]
    root_check(ROOT, RNTUPLE_FILE, branches, rntuple_names)

    expected = {
        "generator": "tests/data/make_root_files.py",
        "root_version": str(ROOT.gROOT.GetVersion()),
        "tree": TREE_PATH,
        "num_entries": NUM_ENTRIES,
        "cluster_size": AUTO_FLUSH,
        "files": {
            TTREE_FILE.name: {"kind": "TTree", "branches": list(branches)},
            RNTUPLE_FILE.name: {"kind": "RNTuple", "branches": rntuple_names},
        },
        "branches": branches,
        "skipped": SKIPPED,
    }
    EXPECTED_FILE.write_text(json.dumps(expected, indent=1) + "\n")
    for p in (TTREE_FILE, RNTUPLE_FILE, EXPECTED_FILE):
        print(f"wrote {p} ({p.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
