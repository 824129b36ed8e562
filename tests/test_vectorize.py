"""Vectorizer: padded jagged blocks, mask, sentinels, normalisation, selections; against a plain reference.

The reference builds the layout of padding ``"zeros"`` (0 in padded and masked slots, no extra features),
which the tests of the gather, the mask and the normalisation use (``Legacy``); the padding modes are
tested against it further down: they change only the masked slots and append features.
"""

from __future__ import annotations

import functools
import json

import awkward as ak
import numpy as np
import pytest
from conftest import TOY_SENTINEL

from mlaas4hep_lab.data.reader import TreeReader
from mlaas4hep_lab.data.specs import compute_specs
from mlaas4hep_lab.data.vectorize import Vectorizer, feature_names, jagged_buffers
from mlaas4hep_lab.params import load_params

Legacy = functools.partial(Vectorizer, padding="zeros")


def reference(arrays, flat, jdim, lo=None, hi=None, missing=(), shift=None, scale=None):
    """The straightforward construction: pad_none + fill_none per jagged branch, manual normalisation.

    ``lo``/``hi``: min-max; ``shift``/``scale``: (x - shift) / scale; neither: raw values.
    """
    cols, masks = [], []
    for name in sorted(flat):
        v = ak.to_numpy(ak.fill_none(arrays[name], np.nan)).astype(np.float64)
        cols.append(v[:, None])
        masks.append(np.ones((len(v), 1), bool))
    for name in sorted(jdim):
        k = jdim[name]
        padded = ak.pad_none(arrays[name], k, clip=True, axis=1)
        masks.append(ak.to_numpy(~ak.is_none(padded, axis=1)).reshape(len(arrays), k))
        cols.append(ak.to_numpy(ak.fill_none(padded, 0.0)).astype(np.float64).reshape(len(arrays), k))
    names = sorted(flat) + [n for n in sorted(jdim) for _ in range(jdim[n])]
    X = np.concatenate(cols, axis=1) if cols else np.zeros((len(arrays), 0))
    mask = np.concatenate(masks, axis=1) if masks else np.zeros((len(arrays), 0), bool)
    mask &= np.isfinite(X) & ~np.isin(X, np.asarray(missing, dtype=np.float64))
    for j, name in enumerate(names):
        if lo is not None:
            X[:, j] = (X[:, j] - lo[name]) / (hi[name] - lo[name])
        elif shift is not None:
            X[:, j] = (X[:, j] - shift[name]) / scale[name]
    X[~mask] = 0.0
    return X, mask


def assert_close(got, want):
    X, mask = got
    X_ref, mask_ref = want
    assert X.dtype == np.float32 and mask.dtype == bool
    assert X.shape == X_ref.shape and mask.shape == mask_ref.shape
    np.testing.assert_array_equal(mask, mask_ref)
    np.testing.assert_allclose(X, X_ref, rtol=2e-6, atol=2e-6)


@pytest.fixture(scope="module")
def toy(toy_data):
    with TreeReader(str(toy_data.sig)) as r:
        arrays = r.read(["Jet_pt", "Trk_nhits", "MET", "f_float32", "f_int16", "f_bool", "f_uint64"], 0, 3000)
    specs = compute_specs(toy_data.files, load_params(toy_data.params_json, missing_values=[TOY_SENTINEL]),
                          progress=False)
    return arrays, specs


FLAT = ["MET", "f_float32", "f_int16", "f_bool", "f_uint64"]


@pytest.mark.parametrize("k", [0, 1, 4, 10, 13])
def test_minmax_equals_reference(toy, k):
    arrays, specs = toy
    jdim = {"Jet_pt": k, "Trk_nhits": max(k - 1, 0)}
    counts = ak.to_numpy(ak.num(arrays["Jet_pt"]))
    assert (counts == 0).any() and (counts > k).any() or k >= 10  # shorter, longer and empty lists
    v = Legacy(FLAT, jdim, specs.minv, specs.maxv, missing_values=[TOY_SENTINEL])
    assert v.names == feature_names(FLAT, jdim, "zeros")
    assert_close(v(arrays), reference(arrays, FLAT, jdim, specs.minv, specs.maxv, [TOY_SENTINEL]))


def test_feature_names_and_layout(toy):
    arrays, specs = toy
    v = Legacy(["b", "a"], {"z": 2, "y": 1})
    assert v.names == ["a", "b", "y[0]", "z[0]", "z[1]"]
    v = Vectorizer.from_specs(specs)
    assert v.names == specs.features and v.n_features == specs.n_features
    X, mask = v(arrays_for(specs, arrays))
    assert X.shape == (3000, specs.n_features)
    j = specs.features.index("Jet_pt[0]")
    np.testing.assert_array_equal(mask[:, j], ak.to_numpy(ak.num(arrays["Jet_pt"]) > 0))


def arrays_for(specs, arrays):
    """Records with every branch of the specs (those not in ``arrays`` filled with zeros)."""
    n = len(arrays)
    fields = {name: arrays[name] if name in arrays.fields else np.zeros(n) for name in specs.fkeys}
    fields |= {name: arrays[name] if name in arrays.fields else ak.Array([[]] * n) for name in specs.jkeys}
    return ak.zip(fields, depth_limit=1)


def test_mask_marks_real_values_only():
    arrays = ak.Array({"x": [1.0, 2.0, 3.0], "j": [[10.0, 20.0, 30.0], [], [40.0]]})
    X, mask = Legacy(["x"], {"j": 2}, normalization="none")(arrays)
    np.testing.assert_array_equal(mask, [[True, True, True], [True, False, False], [True, True, False]])
    np.testing.assert_array_equal(X, [[1, 10, 20], [2, 0, 0], [3, 40, 0]])


def test_sentinels_and_nans_are_masked_and_zero():
    arrays = ak.Array({
        "x": [1.0, -999.0, np.nan, 4.0, np.inf],
        "j": [[-999.0, 5.0], [np.nan], [], [3.0, -np.inf, 7.0], [1.0]],
        "i": np.array([-999, 1, 2, 3, 4], dtype=np.int32),
    })
    lo = {"x": 0.0, "j": 1.0, "i": 0.0}
    hi = {"x": 10.0, "j": 11.0, "i": 4.0}
    v = Legacy(["x", "i"], {"j": 3}, lo, hi, missing_values=[-999.0])
    assert v.names == ["i", "x", "j[0]", "j[1]", "j[2]"]
    X, mask = v(arrays)
    np.testing.assert_array_equal(mask, [
        [False, True, False, True, False],
        [True, False, False, False, False],
        [True, False, False, False, False],
        [True, True, True, False, True],
        [True, False, True, False, False],
    ])
    assert (X[~mask] == 0).all()
    np.testing.assert_allclose(X[3], [0.75, 0.4, 0.2, 0.0, 0.6], rtol=1e-6)
    assert_close((X, mask), reference(arrays, ["x", "i"], {"j": 3}, lo, hi, [-999.0]))
    # without declared sentinels -999 is a value like any other
    X2, mask2 = Legacy(["x"], {}, lo, hi)(arrays)
    assert mask2[1, 0] and X2[1, 0] == pytest.approx(-99.9)


def test_standard_normalisation(toy):
    arrays, specs = toy
    jdim = {"Jet_pt": 5}
    v = Legacy(FLAT, jdim, specs.minv, specs.maxv, specs.mean, specs.std, normalization="standard",
                   missing_values=[TOY_SENTINEL])
    X, mask = v(arrays)
    assert_close((X, mask), reference(arrays, FLAT, jdim, missing=[TOY_SENTINEL], shift=specs.mean,
                                      scale=specs.std))
    # the sentinel-free MET column is (about) standardised over the whole toy sample, signal shifted up
    met = X[mask[:, 0], 0]
    assert abs(met.mean()) < 1 and 0.5 < met.std() < 2


def test_no_normalisation(toy):
    arrays, _ = toy
    X, mask = Legacy(FLAT, {"Trk_nhits": 10}, normalization="none")(arrays)
    assert_close((X, mask), reference(arrays, FLAT, {"Trk_nhits": 10}))


def test_large_offset_small_spread_keeps_its_resolution():
    """A float64 branch such as a time stamp (1.6e9 s, spread of seconds) must normalise to distinct values:
    normalise in float64 before storing float32 (float32 spacing at 1.6e9 is 128)."""
    t = 1.6e9 + np.random.default_rng(5).uniform(0.0, 8.0, 1000)
    arrays = ak.zip({"t": t}, depth_limit=1)
    lo, hi = {"t": float(t.min())}, {"t": float(t.max())}
    X, mask = Legacy(["t"], {}, lo, hi)(arrays)
    np.testing.assert_allclose(X[:, 0], (t - t.min()) / (t.max() - t.min()), atol=1e-4)
    jagged = ak.zip({"j": ak.unflatten(t, np.full(500, 2))}, depth_limit=1)
    X, mask = Legacy([], {"j": 2}, lo | {"j": lo["t"]}, hi | {"j": hi["t"]})(jagged)
    np.testing.assert_allclose(X.reshape(-1), (t - t.min()) / (t.max() - t.min()), atol=1e-4)


def test_constant_branch_does_not_divide_by_zero():
    arrays = ak.Array({"x": [5.0, 5.0], "j": [[2.0], [2.0, 2.0]]})
    X, mask = Legacy(["x"], {"j": 2}, {"x": 5.0, "j": 2.0}, {"x": 5.0, "j": 2.0})(arrays)
    assert np.isfinite(X).all() and (X == 0).all()
    np.testing.assert_array_equal(mask, [[True, True, False], [True, True, True]])


def test_keep_equals_vectorising_the_filtered_array(toy):
    arrays, specs = toy
    keep = ak.to_numpy(arrays["f_float32"] > 1.2) & ak.to_numpy(ak.num(arrays["Jet_pt"]) != 3)
    assert 0 < keep.sum() < len(keep)
    v = Legacy(FLAT, {"Jet_pt": 6, "Trk_nhits": 3}, specs.minv, specs.maxv, missing_values=[TOY_SENTINEL])
    X, mask = v(arrays, keep)
    X_ref, mask_ref = v(arrays[keep])
    np.testing.assert_array_equal(X, X_ref)
    np.testing.assert_array_equal(mask, mask_ref)
    assert len(X) == keep.sum()
    assert v(arrays, np.zeros(len(arrays), bool))[0].shape == (0, v.n_features)


def test_lists_after_an_event_selection(toy):
    """``arr[arr.x > 0]`` leaves IndexedArray/ListArray layouts whose lists do not start at 0."""
    arrays, specs = toy
    sel = arrays[arrays["f_float32"] > 1.0]
    assert isinstance(ak.to_layout(sel["Jet_pt"]), ak.contents.IndexedArray)
    shuffled = sel[np.random.default_rng(0).permutation(len(sel))]
    jdim = {"Jet_pt": 7, "Trk_nhits": 4}
    v = Legacy(FLAT, jdim, specs.minv, specs.maxv, missing_values=[TOY_SENTINEL])
    for a in (sel, shuffled, arrays[1500:], arrays[::-3]):
        assert_close(v(a), reference(a, FLAT, jdim, specs.minv, specs.maxv, [TOY_SENTINEL]))


def test_list_array_and_inner_selection():
    base = ak.Array([[1.0, 2.0, 3.0], [], [4.0, 5.0], [6.0]])
    as_list_array = base[[3, 0, 2, 1, 0]]
    assert isinstance(ak.to_layout(as_list_array), ak.contents.ListArray)
    inner = base[base > 1.5]
    for j in (as_list_array, inner, ak.Array([[]] * 3)):
        arrays = ak.zip({"j": j}, depth_limit=1)
        X, mask = Legacy([], {"j": 2}, normalization="none")(arrays)
        assert_close((X, mask), reference(arrays, [], {"j": 2}))
    X, _ = Legacy([], {"j": 2}, normalization="none")(ak.zip({"j": as_list_array}, depth_limit=1))
    np.testing.assert_array_equal(X, [[6, 0], [1, 2], [4, 5], [0, 0], [1, 2]])


def test_missing_elements_inside_lists_are_masked():
    arrays = ak.Array({"j": [[1.0, None, 3.0], [None], []]})
    X, mask = Legacy([], {"j": 3}, normalization="none")(arrays)
    np.testing.assert_array_equal(mask, [[True, False, True], [False, False, False], [False, False, False]])
    np.testing.assert_array_equal(X, [[1, 0, 3], [0, 0, 0], [0, 0, 0]])


def test_missing_list_is_an_empty_list():
    """A None event (option type at list level, e.g. from ak.mask or a left join) must not drop rows."""
    arrays = ak.Array({"x": [1.0, 2.0, 3.0], "j": [[1.0, 2.0], None, [3.0]]})
    X, mask = Legacy(["x"], {"j": 2}, normalization="none")(arrays)
    assert X.shape == (3, 3)
    np.testing.assert_array_equal(mask, [[True, True, True], [True, False, False], [True, True, False]])
    np.testing.assert_array_equal(X, [[1, 1, 2], [2, 0, 0], [3, 3, 0]])


def test_fixed_size_arrays():
    regular = ak.to_regular(ak.Array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), axis=1)
    numpy2d = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    for j in (regular, ak.from_numpy(numpy2d, regulararray=False)):
        X, mask = Legacy([], {"j": 2}, normalization="none")(ak.zip({"j": j}, depth_limit=1))
        np.testing.assert_array_equal(X, [[1, 2], [4, 5]])
        assert mask.all()


def test_jagged_buffers_do_not_copy_and_reject_non_lists():
    content = np.arange(6, dtype=np.float32)
    arr = ak.unflatten(content, [2, 0, 4])
    starts, stops, values = jagged_buffers(arr)
    np.testing.assert_array_equal(starts, [0, 2, 2])
    np.testing.assert_array_equal(stops, [2, 2, 6])
    assert np.shares_memory(values, ak.to_layout(arr).content.data)
    with pytest.raises(TypeError, match="list of numbers"):
        jagged_buffers(ak.Array([1.0, 2.0]))


# -- padding the model can see ----------------------------------------------------------------------
MODES = ["multiplicity", "below", "mask", "multiplicity+mask", "zeros"]


@pytest.fixture(scope="module")
def toy_specs(toy_data):
    """Specs of the toy files with the default padding, per normalisation; ``capped``: lists cut at 4."""
    def make(**changes):
        params = load_params(toy_data.params_json, missing_values=[TOY_SENTINEL], **changes)
        return compute_specs(toy_data.files, params, progress=False)

    return {n: make(normalization=n) for n in ("minmax", "standard", "none")} | {
        "capped": make(normalization="none", max_jagged_length=4)}


def toy_counts(toy_data, name):
    """Per-event list lengths of ``name`` in both toy files, as written."""
    return np.concatenate([ak.to_numpy(ak.num(toy_data.raw[k][name])) for k in ("sig", "bkg")])


def test_the_default_padding_is_visible_to_the_model(toy_specs):
    specs = toy_specs["minmax"]
    assert load_params({}).padding == "multiplicity" == specs.padding
    assert specs.jagged_groups == [["Jet_pt"], ["Trk_nhits"]]  # independent lengths: one count each
    assert specs.features[-2:] == ["len(Jet_pt)", "len(Trk_nhits)"]


def test_no_object_differs_from_an_object_at_the_minimum():
    """The defect: an event with no muon and one whose muon has the smallest charge gave the same inputs."""
    arrays = ak.Array({"Muon_charge": [[], [-1.0]]})
    lo, hi = {"Muon_charge": -1.0}, {"Muon_charge": 1.0}
    X, _ = Legacy([], {"Muon_charge": 1}, lo, hi)(arrays)
    np.testing.assert_array_equal(X, [[0.0], [0.0]])
    for mode in MODES[:-1]:
        X, _ = Vectorizer([], {"Muon_charge": 1}, lo, hi, padding=mode)(arrays)
        assert (X[0] != X[1]).any(), mode


@pytest.mark.parametrize("normalization", ["minmax", "standard", "none"])
def test_padded_slot_differs_from_every_real_normalised_value(toy, toy_specs, normalization):
    arrays, _ = toy
    specs = toy_specs[normalization]
    v = Vectorizer.from_specs(specs)
    X, mask = v(arrays_for(specs, arrays))
    n_data = len(specs.fkeys) + sum(specs.jdim.values())
    assert n_data < specs.n_features
    assert (~mask[:, :n_data]).any(axis=0).sum() >= 20 + 1  # every jagged column and MET have masked slots
    n_flat = len(specs.fkeys)
    for j, name in enumerate(specs.features[:n_data]):
        branch = name.split("[")[0]
        lo, hi, mu, sd = (table[branch] for table in (specs.minv, specs.maxv, specs.mean, specs.std))
        padded, real = X[~mask[:, j], j], X[mask[:, j], j]
        if j < n_flat:  # a flat branch's missing values keep 0 (see the vectorize module docstring)
            assert (padded == 0).all(), name
            continue
        # a jagged slot: a tenth of the range below the smallest value
        pad = {"minmax": -0.1, "standard": (lo - mu) / sd - 0.1 * (hi - lo) / sd, "none": lo - 0.1 * (hi - lo)}
        np.testing.assert_allclose(padded, pad[normalization], rtol=1e-6)
        if real.size and padded.size:
            assert padded.max() < real.min(), name


def test_sentinels_and_nans_get_the_pad_value_in_jagged_columns_and_0_in_flat_ones():
    arrays = ak.Array({
        "x": [1.0, -999.0, np.nan, 4.0, np.inf],
        "j": [[-999.0, 5.0], [np.nan], [], [3.0, -np.inf, 7.0], [1.0]],
        "i": np.array([-999, 1, 2, 3, 4], dtype=np.int32),
    })
    lo, hi = {"x": 0.0, "j": 1.0, "i": 0.0}, {"x": 10.0, "j": 11.0, "i": 4.0}
    X0, mask0 = Legacy(["x", "i"], {"j": 3}, lo, hi, missing_values=[-999.0])(arrays)
    X, mask = Vectorizer(["x", "i"], {"j": 3}, lo, hi, missing_values=[-999.0], padding="below")(arrays)
    np.testing.assert_array_equal(mask, mask0)
    jagged = np.zeros_like(mask)
    jagged[:, 2:] = True
    # jagged slots (padding, sentinels, NaN, inf) go below the minimum; flat ones keep 0 as before
    assert (X[~mask & jagged] == np.float32(-0.1)).all() and (X[~mask & ~jagged] == 0).all()
    assert (X0[~mask] == 0).all()
    np.testing.assert_array_equal(X[mask], X0[mask])


@pytest.mark.parametrize("mode", MODES)
def test_a_padding_mode_changes_only_masked_slots_and_appends_features(toy, toy_specs, mode):
    arrays, _ = toy
    specs = toy_specs["minmax"]
    args = (specs.fkeys, specs.jdim, specs.minv, specs.maxv)
    kw = {"missing_values": [TOY_SENTINEL], "groups": specs.jagged_groups}
    records = arrays_for(specs, arrays)
    X0, mask0 = Legacy(*args, **kw)(records)
    X, mask = Vectorizer(*args, padding=mode, **kw)(records)
    n0 = X0.shape[1]
    np.testing.assert_array_equal(mask[:, :n0], mask0)
    np.testing.assert_array_equal(X[:, :n0][mask0], X0[mask0])
    nf = len(specs.fkeys)
    assert (X[:, :nf][~mask0[:, :nf]] == 0).all()  # flat missing values keep 0 in every mode
    assert (X[:, nf:n0][~mask0[:, nf:]] == np.float32(0.0 if mode in ("zeros", "mask") else -0.1)).all()
    assert mask[:, n0:].all()  # the appended features are real values on every event
    extra = X[:, n0:]
    if "multiplicity" in mode:
        n_jets = ak.to_numpy(ak.num(arrays["Jet_pt"]))
        lo, hi = specs.minv["len(Jet_pt)"], specs.maxv["len(Jet_pt)"]
        np.testing.assert_allclose(extra[:, 0], (n_jets - lo) / (hi - lo), rtol=1e-6)
        extra = extra[:, len(specs.jagged_groups):]
    if "mask" in mode:
        np.testing.assert_array_equal(extra, mask0[:, len(specs.fkeys):].astype(np.float32))
    else:
        assert extra.shape[1] == 0


def test_multiplicity_features_are_the_per_event_counts(toy, toy_data, toy_specs):
    """The count is the list's full length (not capped at the padded length); its specs statistics are
    those of the lengths, so it is normalised like any branch."""
    arrays, _ = toy
    specs = toy_specs["capped"]
    assert specs.jdim == {"Jet_pt": 4, "Trk_nhits": 4}
    X, mask = Vectorizer.from_specs(specs)(arrays_for(specs, arrays))
    for name in ("Jet_pt", "Trk_nhits"):
        counts = ak.to_numpy(ak.num(arrays[name]))
        assert (counts > 4).any()
        col = specs.features.index(f"len({name})")
        np.testing.assert_array_equal(X[:, col], counts)
        assert mask[:, col].all()
        every = toy_counts(toy_data, name)
        key = f"len({name})"
        assert (specs.minv[key], specs.maxv[key]) == (every.min(), every.max())
        assert specs.mean[key] == pytest.approx(every.mean(), rel=1e-12)
        assert specs.std[key] == pytest.approx(every.std(), rel=1e-12)


def test_branches_of_one_collection_share_one_multiplicity(toy_write_tree):
    rng = np.random.default_rng(3)
    n_jet, n_mu = rng.integers(0, 6, 800), rng.integers(0, 3, 800)
    data = {"HT": rng.uniform(0, 500, 800),
            "Jet_pt": ak.unflatten(rng.uniform(20, 200, n_jet.sum()), n_jet),
            "Jet_eta": ak.unflatten(rng.uniform(-2, 2, n_jet.sum()), n_jet),
            "Mu_pt": ak.unflatten(rng.uniform(5, 50, n_mu.sum()), n_mu)}
    path = str(toy_write_tree(data))
    params = load_params({"selected_branches": ["HT", "Jet_*", "Mu_*"], "normalization": "none", "verbose": 0})
    specs = compute_specs([path], params, progress=False)
    assert specs.jagged_groups == [["Jet_eta", "Jet_pt"], ["Mu_pt"]]
    assert specs.features[-2:] == ["len(Jet_eta)", "len(Mu_pt)"]
    X, _ = Vectorizer.from_specs(specs)(ak.Array(data))
    np.testing.assert_array_equal(X[:, -2:], np.stack([n_jet, n_mu], axis=1))


def test_feature_order_of_every_padding():
    flat, jdim, groups = ["b", "a"], {"z": 2, "y": 1, "w": 1}, [["z", "w"]]
    base = ["a", "b", "w[0]", "y[0]", "z[0]", "z[1]"]
    masks = ["mask(w[0])", "mask(y[0])", "mask(z[0])", "mask(z[1])"]
    assert feature_names(flat, jdim, "zeros") == feature_names(flat, jdim, "below") == base
    assert feature_names(flat, jdim, "multiplicity", groups) == base + ["len(w)", "len(y)"]
    assert feature_names(flat, jdim, "multiplicity") == base + ["len(w)", "len(y)", "len(z)"]
    assert feature_names(flat, jdim, "mask", groups) == base + masks
    assert feature_names(flat, jdim, "multiplicity+mask", groups) == base + ["len(w)", "len(y)"] + masks
    assert feature_names(flat, jdim) == feature_names(flat, jdim, "multiplicity")
    assert Vectorizer(flat, jdim, padding="multiplicity+mask", groups=groups).names == \
        feature_names(flat, jdim, "multiplicity+mask", groups)


def write_bundle_folder(folder, specs_dict, params_dict):
    """A bundle folder with these specs and params (the vectorizer needs no model file)."""
    folder.mkdir()
    (folder / "specs.json").write_text(json.dumps(specs_dict))
    (folder / "params.json").write_text(json.dumps(params_dict))
    (folder / "preproc.json").write_text("{}")
    (folder / "manifest.json").write_text(json.dumps({"name": "old", "backend": "torch",
                                                      "features": specs_dict["features"]}))
    return folder


def test_specs_and_bundles_written_before_padding_give_the_old_X(toy, toy_data, tmp_path):
    from mlaas4hep_lab.bundle import Bundle
    from mlaas4hep_lab.data.specs import Specs, specs_fingerprint
    from mlaas4hep_lab.errors import StaleSpecsError

    arrays, _ = toy
    legacy = load_params(toy_data.params_json, missing_values=[TOY_SENTINEL], padding="zeros")
    specs = compute_specs(toy_data.files, legacy, progress=False)
    old = {k: v for k, v in specs.to_dict().items() if k not in ("padding", "jagged_groups")}
    old_specs = Specs.from_dict(old)
    assert old_specs.padding == "zeros" and old_specs.features == specs.features
    records = arrays_for(specs, arrays)
    want = reference(records, specs.fkeys, specs.jdim, specs.minv, specs.maxv, [TOY_SENTINEL])
    assert_close(Vectorizer.from_specs(old_specs)(records), want)
    # a bundle of that time: no padding key in its params.json either; new runs' default is not applied
    old_params = {k: v for k, v in legacy.to_dict().items() if k != "padding"}
    bundle = Bundle(write_bundle_folder(tmp_path / "bundle", old, old_params))
    assert bundle.params.padding == "zeros"
    X, mask, _ = bundle.vectorize(records)
    np.testing.assert_array_equal(X, Vectorizer.from_specs(old_specs)(records)[0])
    assert_close((X, mask), want)
    # the old specs still match params that ask for the old padding, and are stale for the new default
    old_specs.check(toy_data.files, specs_fingerprint(legacy))
    with pytest.raises(StaleSpecsError, match="padding"):
        old_specs.check(toy_data.files, specs_fingerprint(legacy.replace(padding="multiplicity")))


def test_a_bundle_vectorises_raw_events_with_its_own_padding(toy, toy_data, toy_specs, tmp_path):
    """What the inference service's raw-events route calls: the multiplicities come from the raw lists."""
    from mlaas4hep_lab.bundle import Bundle

    arrays, _ = toy
    specs = toy_specs["minmax"]
    params = load_params(toy_data.params_json, missing_values=[TOY_SENTINEL])
    bundle = Bundle(write_bundle_folder(tmp_path / "bundle", specs.to_dict(), params.to_dict()))
    assert bundle.params.padding == bundle.vectorizer.padding == "multiplicity"
    records = arrays_for(specs, arrays)
    X, mask, _ = bundle.vectorize(records)
    X_ref, mask_ref = Vectorizer.from_specs(specs)(records)
    np.testing.assert_array_equal(X, X_ref)
    np.testing.assert_array_equal(mask, mask_ref)
    assert bundle.features == specs.features and X.shape[1] == len(bundle.features)


def test_padding_is_validated_with_the_key_name():
    from mlaas4hep_lab.errors import ConfigError

    for mode in MODES:
        assert load_params({"padding": mode}).padding == mode
    for bad in ("zero", None, 0, ["mask"]):
        with pytest.raises(ConfigError, match="padding"):
            load_params({"padding": bad})
    with pytest.raises(ConfigError, match="padding"):
        Vectorizer(["x"], {}, padding="counts")


def test_specs_whose_features_disagree_with_their_padding_are_refused():
    from mlaas4hep_lab.data.specs import Specs
    from mlaas4hep_lab.errors import SpecsError

    specs = Specs(fkeys=["a"], jkeys=["j"], jdim={"j": 2}, minv={}, maxv={}, padding="multiplicity",
                  features=["a", "j[0]", "j[1]"])
    with pytest.raises(SpecsError, match="recompute"):
        Vectorizer.from_specs(specs)
    with pytest.raises(SpecsError, match="newer version"):
        Specs.from_dict({"fkeys": ["a"], "jkeys": [], "jdim": {}, "minv": {}, "maxv": {}, "padding": "fancy"})
