"""Vectorizer: padded jagged blocks, mask, sentinels, normalisation, selections; against a plain reference."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
from conftest import TOY_SENTINEL

from mlaas4hep_lab.data.reader import TreeReader
from mlaas4hep_lab.data.specs import compute_specs
from mlaas4hep_lab.data.vectorize import Vectorizer, feature_names, jagged_buffers
from mlaas4hep_lab.params import load_params


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
    v = Vectorizer(FLAT, jdim, specs.minv, specs.maxv, missing_values=[TOY_SENTINEL])
    assert v.names == feature_names(FLAT, jdim)
    assert_close(v(arrays), reference(arrays, FLAT, jdim, specs.minv, specs.maxv, [TOY_SENTINEL]))


def test_feature_names_and_layout(toy):
    arrays, specs = toy
    v = Vectorizer(["b", "a"], {"z": 2, "y": 1})
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
    X, mask = Vectorizer(["x"], {"j": 2}, normalization="none")(arrays)
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
    v = Vectorizer(["x", "i"], {"j": 3}, lo, hi, missing_values=[-999.0])
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
    X2, mask2 = Vectorizer(["x"], {}, lo, hi)(arrays)
    assert mask2[1, 0] and X2[1, 0] == pytest.approx(-99.9)


def test_standard_normalisation(toy):
    arrays, specs = toy
    jdim = {"Jet_pt": 5}
    v = Vectorizer(FLAT, jdim, specs.minv, specs.maxv, specs.mean, specs.std, normalization="standard",
                   missing_values=[TOY_SENTINEL])
    X, mask = v(arrays)
    assert_close((X, mask), reference(arrays, FLAT, jdim, missing=[TOY_SENTINEL], shift=specs.mean,
                                      scale=specs.std))
    # the sentinel-free MET column is (about) standardised over the whole toy sample, signal shifted up
    met = X[mask[:, 0], 0]
    assert abs(met.mean()) < 1 and 0.5 < met.std() < 2


def test_no_normalisation(toy):
    arrays, _ = toy
    X, mask = Vectorizer(FLAT, {"Trk_nhits": 10}, normalization="none")(arrays)
    assert_close((X, mask), reference(arrays, FLAT, {"Trk_nhits": 10}))


def test_large_offset_small_spread_keeps_its_resolution():
    """A float64 branch such as a time stamp (1.6e9 s, spread of seconds) must normalise to distinct values:
    normalise in float64 before storing float32 (float32 spacing at 1.6e9 is 128)."""
    t = 1.6e9 + np.random.default_rng(5).uniform(0.0, 8.0, 1000)
    arrays = ak.zip({"t": t}, depth_limit=1)
    lo, hi = {"t": float(t.min())}, {"t": float(t.max())}
    X, mask = Vectorizer(["t"], {}, lo, hi)(arrays)
    np.testing.assert_allclose(X[:, 0], (t - t.min()) / (t.max() - t.min()), atol=1e-4)
    jagged = ak.zip({"j": ak.unflatten(t, np.full(500, 2))}, depth_limit=1)
    X, mask = Vectorizer([], {"j": 2}, lo | {"j": lo["t"]}, hi | {"j": hi["t"]})(jagged)
    np.testing.assert_allclose(X.reshape(-1), (t - t.min()) / (t.max() - t.min()), atol=1e-4)


def test_constant_branch_does_not_divide_by_zero():
    arrays = ak.Array({"x": [5.0, 5.0], "j": [[2.0], [2.0, 2.0]]})
    X, mask = Vectorizer(["x"], {"j": 2}, {"x": 5.0, "j": 2.0}, {"x": 5.0, "j": 2.0})(arrays)
    assert np.isfinite(X).all() and (X == 0).all()
    np.testing.assert_array_equal(mask, [[True, True, False], [True, True, True]])


def test_keep_equals_vectorising_the_filtered_array(toy):
    arrays, specs = toy
    keep = ak.to_numpy(arrays["f_float32"] > 1.2) & ak.to_numpy(ak.num(arrays["Jet_pt"]) != 3)
    assert 0 < keep.sum() < len(keep)
    v = Vectorizer(FLAT, {"Jet_pt": 6, "Trk_nhits": 3}, specs.minv, specs.maxv, missing_values=[TOY_SENTINEL])
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
    v = Vectorizer(FLAT, jdim, specs.minv, specs.maxv, missing_values=[TOY_SENTINEL])
    for a in (sel, shuffled, arrays[1500:], arrays[::-3]):
        assert_close(v(a), reference(a, FLAT, jdim, specs.minv, specs.maxv, [TOY_SENTINEL]))


def test_list_array_and_inner_selection():
    base = ak.Array([[1.0, 2.0, 3.0], [], [4.0, 5.0], [6.0]])
    as_list_array = base[[3, 0, 2, 1, 0]]
    assert isinstance(ak.to_layout(as_list_array), ak.contents.ListArray)
    inner = base[base > 1.5]
    for j in (as_list_array, inner, ak.Array([[]] * 3)):
        arrays = ak.zip({"j": j}, depth_limit=1)
        X, mask = Vectorizer([], {"j": 2}, normalization="none")(arrays)
        assert_close((X, mask), reference(arrays, [], {"j": 2}))
    X, _ = Vectorizer([], {"j": 2}, normalization="none")(ak.zip({"j": as_list_array}, depth_limit=1))
    np.testing.assert_array_equal(X, [[6, 0], [1, 2], [4, 5], [0, 0], [1, 2]])


def test_missing_elements_inside_lists_are_masked():
    arrays = ak.Array({"j": [[1.0, None, 3.0], [None], []]})
    X, mask = Vectorizer([], {"j": 3}, normalization="none")(arrays)
    np.testing.assert_array_equal(mask, [[True, False, True], [False, False, False], [False, False, False]])
    np.testing.assert_array_equal(X, [[1, 0, 3], [0, 0, 0], [0, 0, 0]])


def test_missing_list_is_an_empty_list():
    """A None event (option type at list level, e.g. from ak.mask or a left join) must not drop rows."""
    arrays = ak.Array({"x": [1.0, 2.0, 3.0], "j": [[1.0, 2.0], None, [3.0]]})
    X, mask = Vectorizer(["x"], {"j": 2}, normalization="none")(arrays)
    assert X.shape == (3, 3)
    np.testing.assert_array_equal(mask, [[True, True, True], [True, False, False], [True, True, False]])
    np.testing.assert_array_equal(X, [[1, 1, 2], [2, 0, 0], [3, 3, 0]])


def test_fixed_size_arrays():
    regular = ak.to_regular(ak.Array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), axis=1)
    numpy2d = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    for j in (regular, ak.from_numpy(numpy2d, regulararray=False)):
        X, mask = Vectorizer([], {"j": 2}, normalization="none")(ak.zip({"j": j}, depth_limit=1))
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
