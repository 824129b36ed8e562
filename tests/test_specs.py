"""The first pass (specs): statistics equal numpy's, jagged lengths, events, JSON round trip, staleness."""

from __future__ import annotations

import json
import os

import awkward as ak
import numpy as np
import pytest
from conftest import (
    TOY_BKG_N,
    TOY_COUNTERS,
    TOY_FLAT,
    TOY_JAGGED,
    TOY_SENTINEL,
    TOY_SIG_N,
    toy_events,
    toy_write,
)

from mlaas4hep_lab.data.specs import compute_specs, load_specs, specs_fingerprint
from mlaas4hep_lab.errors import ConfigError, InputFileError, SpecsError, StaleSpecsError
from mlaas4hep_lab.params import load_params
from mlaas4hep_lab.pipeline import ensure_specs, load_inputs

FEATURE_FLAT = sorted((*TOY_FLAT, "Weight", "MET", *TOY_COUNTERS))


def toy_params(toy_data, **changes):
    return load_params(toy_data.params_json, **changes)


@pytest.fixture(scope="module")
def specs(toy_data):
    return compute_specs(toy_data.files, toy_params(toy_data, missing_values=[TOY_SENTINEL]), progress=False)


def both(toy_data, name, n=None):
    """The raw values of ``name`` over both files (the first ``n[i]`` entries of file i), as numpy."""
    n = n or [TOY_SIG_N, TOY_BKG_N]
    if name in TOY_COUNTERS:
        return np.concatenate([ak.to_numpy(ak.num(toy_data.raw[k][name[1:]][:m])) for k, m in zip(("sig", "bkg"), n)])
    parts = [toy_data.raw["sig"][name][: n[0]], toy_data.raw["bkg"][name][: n[1]]]
    if name in TOY_JAGGED:
        return np.concatenate([ak.to_numpy(ak.flatten(p)) for p in parts])
    return np.concatenate(parts)


def assert_stats(specs, name, values):
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isin(values, specs.missing_values)]  # sentinels are left out of every branch
    assert specs.minv[name] == values.min(), name
    assert specs.maxv[name] == values.max(), name
    assert specs.mean[name] == pytest.approx(values.mean(), rel=1e-9, abs=1e-12), name
    assert specs.std[name] == pytest.approx(values.std(), rel=1e-6), name


@pytest.mark.parametrize("name", [n for n in FEATURE_FLAT if n != "MET"])
def test_flat_statistics_equal_numpy(specs, toy_data, name):
    assert_stats(specs, name, both(toy_data, name))


@pytest.mark.parametrize("name", TOY_JAGGED)
def test_jagged_statistics_equal_numpy(specs, toy_data, name):
    assert_stats(specs, name, both(toy_data, name))


def test_declared_sentinels_are_excluded(specs, toy_data):
    met = both(toy_data, "MET")
    assert (met == TOY_SENTINEL).sum() > 1000  # the pattern is there
    assert_stats(specs, "MET", met[met != TOY_SENTINEL])
    assert specs.minv["MET"] > 0
    i16 = both(toy_data, "f_int16")
    assert (i16 == -999).sum() > 0  # an integer branch holding the sentinel value: left out too
    assert specs.mean["f_int16"] == pytest.approx(i16[i16 != -999].mean(), rel=1e-12)
    assert specs.missing_values == [TOY_SENTINEL]


def test_undeclared_sentinels_are_ordinary_values(toy_data):
    s = compute_specs(toy_data.files, toy_params(toy_data, selected_branches=["MET"]), progress=False)
    assert s.fkeys == ["MET"] and s.jkeys == []
    assert_stats(s, "MET", both(toy_data, "MET"))
    assert s.minv["MET"] == TOY_SENTINEL


def test_nan_and_inf_are_left_out(toy_write_tree):
    x = np.array([1.0, np.nan, 3.0, np.inf, -np.inf, 5.0])
    j = ak.Array([[np.nan, 2.0], [], [4.0], [np.inf], [1.0, 2.0, 3.0], []])
    path = toy_write_tree({"x": x, "j": j})
    s = compute_specs([str(path)], load_params({"verbose": 0}), progress=False)
    assert (s.minv["x"], s.maxv["x"], s.mean["x"]) == (1.0, 5.0, 3.0)
    assert (s.minv["j"], s.maxv["j"]) == (1.0, 4.0)
    assert s.mean["j"] == pytest.approx(np.mean([2.0, 4.0, 1.0, 2.0, 3.0]))


def test_std_of_values_with_a_large_offset(toy_write_tree):
    """A time stamp or run-like number: a large offset and a small spread (std must not collapse to 0)."""
    rng = np.random.default_rng(3)
    t = 1.6e9 + rng.normal(0.0, 1.0, 5000)
    path = toy_write_tree({"t": t})
    s = compute_specs([str(path)], load_params({"verbose": 0, "chunk_size": 1000}), progress=False)
    assert s.mean["t"] == pytest.approx(t.mean(), rel=1e-12)
    assert s.std["t"] == pytest.approx(t.std(), rel=1e-3)


# -- jagged lengths ---------------------------------------------------------------------------------
def lengths(toy_data, name, n=None):
    n = n or [TOY_SIG_N, TOY_BKG_N]
    return np.concatenate([ak.to_numpy(ak.num(toy_data.raw[k][name][:m])) for k, m in zip(("sig", "bkg"), n)])


@pytest.mark.parametrize("name", TOY_JAGGED)
def test_jdim_is_the_longest_list(specs, toy_data, name):
    longest = int(lengths(toy_data, name).max())
    assert longest == 10
    assert specs.jdim[name] == longest and specs.jagged_max[name] == longest


@pytest.mark.parametrize("name", TOY_JAGGED)
def test_length_quantiles(specs, toy_data, name):
    lens = lengths(toy_data, name)
    for q, got in specs.jagged_quantiles[name].items():
        assert got == int(np.quantile(lens, float(q), method="inverted_cdf")), (name, q)


def test_max_jagged_length_int_cap(toy_data):
    s = compute_specs(toy_data.files, toy_params(toy_data, max_jagged_length=4), progress=False)
    assert s.jdim == {"Jet_pt": 4, "Trk_nhits": 4}
    assert s.jagged_max == {"Jet_pt": 10, "Trk_nhits": 10}
    assert s.features[-10:] == [f"Jet_pt[{i}]" for i in range(4)] + [f"Trk_nhits[{i}]" for i in range(4)] + [
        "len(Jet_pt)", "len(Trk_nhits)"]  # the default padding's multiplicity features come last
    # a cap larger than the longest list does not pad beyond it
    s = compute_specs(toy_data.files, toy_params(toy_data, max_jagged_length=50), progress=False)
    assert s.jdim == {"Jet_pt": 10, "Trk_nhits": 10}


def test_max_jagged_length_quantile_and_mapping(toy_data):
    s = compute_specs(toy_data.files, toy_params(toy_data, max_jagged_length=0.5), progress=False)
    for name in TOY_JAGGED:
        want = int(np.quantile(lengths(toy_data, name), 0.5, method="inverted_cdf"))
        assert 0 < want < 10
        assert s.jdim[name] == want
    s = compute_specs(toy_data.files, toy_params(toy_data, max_jagged_length={"Jet_pt": 2}), progress=False)
    assert s.jdim == {"Jet_pt": 2, "Trk_nhits": 10}


def test_max_jagged_length_wildcards_and_unknown_keys(toy_data):
    caps = {"*_pt": 3, "*": 6, "Trk_nhits": 5}  # an exact name wins; among patterns the first that matches
    s = compute_specs(toy_data.files, toy_params(toy_data, max_jagged_length=caps), progress=False)
    assert s.jdim == {"Jet_pt": 3, "Trk_nhits": 5}
    s = compute_specs(toy_data.files, toy_params(toy_data, max_jagged_length={"Jet_*": 2}), progress=False)
    assert s.jdim == {"Jet_pt": 2, "Trk_nhits": 10}
    with pytest.raises(ConfigError, match=r"'Jet_ptt' names no jagged branch.*Jet_pt"):
        compute_specs(toy_data.files, toy_params(toy_data, max_jagged_length={"Jet_ptt": 2}), progress=False)
    with pytest.raises(ConfigError, match=r"'Muon_\*' names no jagged branch"):
        compute_specs(toy_data.files, toy_params(toy_data, max_jagged_length={"Muon_*": 2}), progress=False)


# -- events -----------------------------------------------------------------------------------------
def test_events_per_file_and_total(specs, toy_data):
    assert specs.events == {"total": 10_000, str(toy_data.sig): 3000, str(toy_data.bkg): 7000}
    assert [(f["path"], f["entries"], f["used"]) for f in specs.files] == [
        (str(toy_data.sig), 3000, 3000), (str(toy_data.bkg), 7000, 7000)]
    assert specs.files[0]["size"] == toy_data.sig.stat().st_size


def test_nevts_uses_a_share_of_each_file(toy_data):
    s = compute_specs(toy_data.files, toy_params(toy_data, nevts=1000, chunk_size=128), progress=False)
    assert s.events == {"total": 1000, str(toy_data.sig): 300, str(toy_data.bkg): 700}
    assert [f["used"] for f in s.files] == [300, 700]
    assert_stats(s, "f_float64", both(toy_data, "f_float64", [300, 700]))
    assert_stats(s, "Jet_pt", both(toy_data, "Jet_pt", [300, 700]))


def test_result_does_not_depend_on_chunk_size(specs, toy_data):
    other = compute_specs(toy_data.files, toy_params(toy_data, missing_values=[TOY_SENTINEL], chunk_size=333),
                          progress=False)
    assert other.minv == specs.minv and other.maxv == specs.maxv and other.jdim == specs.jdim
    for name in specs.mean:
        assert other.mean[name] == pytest.approx(specs.mean[name], rel=1e-12)


# -- layout -----------------------------------------------------------------------------------------
def test_features_order(specs):
    assert specs.fkeys == FEATURE_FLAT  # identifier EventId left out
    assert specs.jkeys == ["Jet_pt", "Trk_nhits"]
    assert specs.features == FEATURE_FLAT + [f"Jet_pt[{i}]" for i in range(10)] + [
        f"Trk_nhits[{i}]" for i in range(10)] + ["len(Jet_pt)", "len(Trk_nhits)"]  # default padding
    assert specs.n_features == len(FEATURE_FLAT) + 22
    assert specs.identifier == ["EventId"]


def test_weight_and_identifier_are_not_features(toy_data):
    s = compute_specs(toy_data.files, toy_params(toy_data, weight="Weight", identifier="EventId,f_int8"),
                      progress=False)
    assert "Weight" not in s.fkeys and "EventId" not in s.fkeys and "f_int8" not in s.fkeys
    assert s.weight == "Weight" and s.identifier == ["EventId", "f_int8"]


def test_selected_and_excluded_branches(toy_data):
    s = compute_specs(toy_data.files, toy_params(toy_data, selected_branches="f_*,Jet_pt",
                                                 exclude_branches="f_u*"), progress=False)
    assert s.fkeys == sorted(n for n in TOY_FLAT if not n.startswith("f_u"))
    assert s.jkeys == ["Jet_pt"]


def test_files_with_different_branches(toy_data, toy_write_tree):
    other = toy_write_tree({k: v for k, v in toy_data.raw["sig"].items() if k != "f_int8"})
    with pytest.raises(ConfigError, match="f_int8"):
        compute_specs([str(toy_data.sig), str(other)], toy_params(toy_data), progress=False)


def test_specs_with_preprocessing(toy_data):
    from mlaas4hep_lab.data.preprocess import Preproc

    pre = Preproc.from_json({
        "new_branch": {"ht": {"def": "sum(Jet_pt)", "type": "flat"}},
        "flat_cut": {"f_float32": {"cut": "f_float32 > 0", "remove": "False"}},
        "jagged_cut": {"Jet_pt": {"cut": ["Jet_pt > 25", "all"], "remove": False}},
    })
    s = compute_specs(toy_data.files, toy_params(toy_data), pre, progress=False)
    keep = {k: (toy_data.raw[k]["f_float32"] > 0) & ak.to_numpy(ak.all(toy_data.raw[k]["Jet_pt"] > 25, axis=1))
            for k in ("sig", "bkg")}
    assert s.events == {"total": int(keep["sig"].sum() + keep["bkg"].sum()),
                        str(toy_data.sig): int(keep["sig"].sum()), str(toy_data.bkg): int(keep["bkg"].sum())}
    assert "ht" in s.fkeys
    ht = np.concatenate([ak.to_numpy(ak.sum(toy_data.raw[k]["Jet_pt"], axis=1))[keep[k]] for k in ("sig", "bkg")])
    assert s.minv["ht"] == pytest.approx(ht.min()) and s.maxv["ht"] == pytest.approx(ht.max(), rel=1e-6)
    f32 = np.concatenate([toy_data.raw[k]["f_float32"][keep[k]] for k in ("sig", "bkg")])
    assert_stats(s, "f_float32", f32)
    jets = np.concatenate([ak.to_numpy(ak.flatten(toy_data.raw[k]["Jet_pt"][keep[k]])) for k in ("sig", "bkg")])
    assert_stats(s, "Jet_pt", jets)
    assert s.fingerprint != specs_fingerprint(toy_params(toy_data))


def test_new_branches_can_be_selected_and_excluded_by_name(toy_data):
    """make_plan means to let exclude_branches drop a new branch; selecting one must work as well."""
    from mlaas4hep_lab.data.preprocess import Preproc

    pre = Preproc.from_json({"new_branch": {"ht": {"def": "sum(Jet_pt)", "type": "flat"}}})
    s = compute_specs(toy_data.files, toy_params(toy_data, selected_branches="MET,ht"), pre, progress=False)
    assert s.fkeys == ["MET", "ht"]
    s = compute_specs(toy_data.files, toy_params(toy_data, exclude_branches="ht,f_*"), pre, progress=False)
    assert "ht" not in s.fkeys and "MET" in s.fkeys and "f_int8" not in s.fkeys


# -- JSON -------------------------------------------------------------------------------------------
def test_save_load_round_trip(specs, tmp_path):
    path = specs.save(tmp_path / "sub" / "specs.json")
    loaded = load_specs(path)
    assert loaded == specs
    assert loaded.to_dict() == specs.to_dict()
    data = json.loads(path.read_text())
    for key in ("jdim", "minv", "maxv", "fkeys", "jkeys", "nans", "events", "version", "features", "files",
                "tree"):
        assert key in data, key
    assert not list(tmp_path.glob("sub/*.tmp"))


def test_original_format_specs_load(tmp_path, toy_data):
    original = {"jdim": {"Jet_pt": 3}, "minv": {"MET": 0.0, "Jet_pt": 20.0}, "maxv": {"MET": 500.0, "Jet_pt": 300.0},
                "fkeys": ["MET"], "jkeys": ["Jet_pt"], "nans": {"MET": 0.0, "Jet_pt": -0.07}}
    path = tmp_path / "specs.json"
    path.write_text(json.dumps(original))
    s = load_specs(path)
    assert s.features == ["MET", "Jet_pt[0]", "Jet_pt[1]", "Jet_pt[2]"]
    assert s.minv == original["minv"] and s.maxv == original["maxv"] and s.nans == original["nans"]
    assert s.normalization == "minmax"
    s.check(toy_data.files, specs_fingerprint(toy_params(toy_data)))  # nothing to compare: accepted


def test_bad_specs_files(tmp_path):
    with pytest.raises(InputFileError):
        load_specs(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"jdim": {},\n "minv": }')
    with pytest.raises(SpecsError, match="line 2, column 10"):
        load_specs(bad)
    bad.write_text('{"jdim": {}, "minv": {}}')
    with pytest.raises(SpecsError, match="missing keys"):
        load_specs(bad)
    bad.write_text(json.dumps({"jdim": {}, "minv": {}, "maxv": {}, "fkeys": ["x"], "jkeys": [], "version": 99}))
    with pytest.raises(SpecsError, match="version 99"):
        load_specs(bad)


# -- staleness --------------------------------------------------------------------------------------
@pytest.fixture
def saved(toy_copy):
    """Specs of the copied toy files, saved next to them; returns (toy_copy, params, path)."""
    params = toy_params(toy_copy)
    path = compute_specs(toy_copy.files, params, progress=False).save(toy_copy.dir / "specs.json")
    return toy_copy, params, path


def test_fresh_specs_are_accepted(saved):
    toy, params, path = saved
    load_specs(path).check(toy.files, specs_fingerprint(params), str(path))
    # settings that do not change the specs do not make them stale
    other = params.replace(epochs=9, batch_size=7, shuffle=False, chunk_size=17, seed=3, verbose=2)
    load_specs(path).check(toy.files, specs_fingerprint(other), str(path))
    inputs = load_inputs(toy.files_txt, toy.labels_txt, other)
    assert ensure_specs(inputs, path) == load_specs(path)


def test_rewritten_file_makes_specs_stale(saved):
    toy, params, path = saved
    toy_write(toy.bkg, toy_events(6000, seed=5, id0=0))
    with pytest.raises(StaleSpecsError) as info:
        load_specs(path).check(toy.files, specs_fingerprint(params), str(path))
    assert str(toy.bkg) in str(info.value) and str(path) in str(info.value)
    with pytest.raises(StaleSpecsError):
        ensure_specs(load_inputs(toy.files_txt, toy.labels_txt, params), path)
    # recompute=True replaces them
    fresh = ensure_specs(load_inputs(toy.files_txt, toy.labels_txt, params), path, recompute=True, progress=False)
    assert fresh.events["total"] == 9000 and load_specs(path).events["total"] == 9000


def test_same_size_but_modified_file_makes_specs_stale(saved):
    toy, params, path = saved
    st = toy.sig.stat()
    os.utime(toy.sig, (st.st_atime, st.st_mtime + 60))
    with pytest.raises(StaleSpecsError, match="mtime"):
        load_specs(path).check(toy.files, specs_fingerprint(params), str(path))


@pytest.mark.parametrize("change", [{"exclude_branches": "f_int8"}, {"selected_branches": "f_*"},
                                    {"identifier": ""}, {"nevts": 500}, {"missing_values": [-999.0]},
                                    {"max_jagged_length": 3}, {"weight": "Weight"}, {"branch": "other"}])
def test_params_that_matter_make_specs_stale(saved, change):
    toy, params, path = saved
    with pytest.raises(StaleSpecsError, match="other params"):
        load_specs(path).check(toy.files, specs_fingerprint(params.replace(**change)), str(path))


def test_preproc_makes_specs_stale(saved):
    from mlaas4hep_lab.data.preprocess import Preproc

    toy, params, path = saved
    pre = Preproc.from_json({"flat_cut": {"MET": {"cut": "MET > 0", "remove": False}}})
    with pytest.raises(StaleSpecsError):
        load_specs(path).check(toy.files, specs_fingerprint(params, pre), str(path))


@pytest.mark.parametrize("files", [["sig"], ["bkg", "sig"], ["sig", "bkg", "sig"], ["sig", "other"]])
def test_other_files_make_specs_stale(saved, files):
    toy, params, path = saved
    paths = [str(toy.dir / f"{name}.root") for name in files]
    with pytest.raises(StaleSpecsError, match="lists files"):
        load_specs(path).check(paths, specs_fingerprint(params), str(path))
