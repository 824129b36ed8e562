"""The chunk gather: every layout a jagged branch can have, several pieces, selected and shuffled rows,
against the straightforward awkward construction (pad_none + fill_none + to_numpy) on random data.
"""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest

from mlaas4hep_lab.data import _gather, _kernels
from mlaas4hep_lab.data.vectorize import PAD_MARGIN, Vectorizer

SENTINEL = -999.0
PADDINGS = ["multiplicity", "below", "mask", "multiplicity+mask", "zeros"]


def straightforward(arrays, flat, jdim, lo, hi, padding, groups):
    """X and mask with plain awkward operations, min-max normalisation, in feature order."""
    below = padding in ("multiplicity", "below", "multiplicity+mask")
    cols, masks = [], []
    for name in sorted(flat):
        v = ak.to_numpy(ak.fill_none(arrays[name], np.nan)).astype(np.float64)
        ok = np.isfinite(v) & (v != SENTINEL)
        x = (v - lo[name]) * (1.0 / (hi[name] - lo[name]))
        cols.append(np.where(ok, x, 0.0)[:, None])
        masks.append(ok[:, None])
    for name in sorted(jdim):
        k = jdim[name]
        # a missing list is an empty list; first, because ak.pad_none (awkward 2.14) misplaces the lists
        # of a ByteMaskedArray: pad_none(mask([[1.0], [], [2.0, 3.0]], [1, 1, 0]), 2) is
        # [None, None, [1.0, None]]
        padded = ak.pad_none(ak.fill_none(arrays[name], [], axis=0), k, clip=True, axis=1)
        real = ak.to_numpy(~ak.is_none(padded, axis=1)).reshape(len(arrays), k)
        v = ak.to_numpy(ak.fill_none(padded, np.nan)).astype(np.float64).reshape(len(arrays), k)
        ok = real & np.isfinite(v) & (v != SENTINEL)
        x = (v - lo[name]) * (1.0 / (hi[name] - lo[name]))
        cols.append(np.where(ok, x, -PAD_MARGIN if below else 0.0))
        masks.append(ok)
    jagged_mask = np.concatenate(masks[len(flat):], axis=1) if jdim else np.zeros((len(arrays), 0), bool)
    if padding.startswith("multiplicity"):
        for group in groups:
            n = ak.to_numpy(ak.num(ak.fill_none(arrays[group[0]], [], axis=0), axis=1)).astype(np.float64)
            name = f"len({group[0]})"
            cols.append(((n - lo[name]) * (1.0 / (hi[name] - lo[name])))[:, None])
            masks.append(np.ones((len(arrays), 1), bool))
    if padding.endswith("mask"):
        cols.append(jagged_mask.astype(np.float64))
        masks.append(np.ones(jagged_mask.shape, bool))
    return np.concatenate(cols, axis=1).astype(np.float32), np.concatenate(masks, axis=1)


def random_events(rng, n):
    """Flat and jagged branches of several dtypes, two collections, NaN, infinities and sentinels."""
    def values(size, dtype):
        v = (rng.normal(size=size) * 10).astype(dtype)
        if v.dtype.kind == "f":
            v[rng.random(size) < 0.04] = np.nan
            v[rng.random(size) < 0.02] = np.inf
            v[rng.random(size) < 0.05] = SENTINEL
        return v

    jets, muons = rng.poisson(rng.uniform(0.5, 7), n), rng.poisson(0.8, n)
    return ak.Array({
        "met": values(n, np.float64), "nvtx": rng.integers(0, 60, n).astype(np.int32),
        "Jet_pt": ak.unflatten(values(jets.sum(), np.float32), jets),
        "Jet_eta": ak.unflatten(values(jets.sum(), np.float64), jets),
        "Jet_id": ak.unflatten(rng.integers(0, 7, jets.sum()).astype(np.int16), jets),
        "Mu_pt": ak.unflatten(values(muons.sum(), np.float32), muons),
        "Mu_q": ak.unflatten(rng.integers(-1, 2, muons.sum()).astype(np.int8), muons),
        "Trk_d0": ak.unflatten(values(5 * jets.sum(), np.float32), 5 * jets),  # long lists, 3 slots
    })


FLAT = ["met", "nvtx"]
JDIM = {"Jet_pt": 6, "Jet_eta": 6, "Jet_id": 6, "Mu_pt": 2, "Mu_q": 2, "Trk_d0": 3}
GROUPS = [["Jet_eta", "Jet_id", "Jet_pt"], ["Mu_pt", "Mu_q"], ["Trk_d0"]]
LO = {name: -20.0 for name in FLAT + list(JDIM)} | {f"len({g[0]})": 0.0 for g in GROUPS}
HI = {name: 25.0 for name in FLAT + list(JDIM)} | {f"len({g[0]})": 12.0 for g in GROUPS}


def vectorizer(padding):
    return Vectorizer(FLAT, JDIM, LO, HI, normalization="minmax", missing_values=[SENTINEL],
                      padding=padding, groups=GROUPS)


def assert_same(got, want):
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-6)


def layouts(arrays, rng):
    """The same events as the layouts uproot and the cuts hand over."""
    n = len(arrays)
    yield "contiguous", arrays
    big = ak.concatenate([arrays[:3], arrays, arrays[:5]])
    yield "slice of a larger block", big[3:3 + n]
    keep = ak.Array({f: arrays[f][arrays[f] > -5] if f.startswith("Mu") else arrays[f] for f in arrays.fields})
    yield "objects removed by a cut (ListArray)", keep
    yield "indexed (event selection)", arrays[rng.permutation(n)]
    optional = ak.mask(arrays, rng.random(n) < 0.9)
    yield "missing events", ak.Array({f: optional[f] for f in arrays.fields})


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("seed", range(4))
def test_gather_equals_the_straightforward_construction(padding, seed):
    rng = np.random.default_rng(seed)
    arrays = random_events(rng, int(rng.integers(1, 400)))
    v = vectorizer(padding)
    for what, events in layouts(arrays, rng):
        want = straightforward(events, FLAT, JDIM, LO, HI, padding, GROUPS)
        assert_same(v(events), want)
        keep = rng.random(len(events)) < 0.6
        assert_same(v(events, keep), tuple(a[keep] for a in want)), what


@pytest.mark.parametrize("padding", ["multiplicity", "multiplicity+mask"])
def test_pieces_and_shuffled_rows_equal_concatenating_then_permuting(padding):
    rng = np.random.default_rng(7)
    parts = [random_events(rng, n) for n in (120, 1, 0, 333)]
    parts[3] = parts[3][10:]  # a slice whose lists start inside its content
    whole = ak.concatenate(parts)
    want = straightforward(whole, FLAT, JDIM, LO, HI, padding, GROUPS)
    v = vectorizer(padding)
    for rows in (None, rng.permutation(len(whole)), rng.permutation(len(whole))[:50], np.zeros(0, np.int64),
                 np.array([len(whole) - 1] * 3)):
        got = v.gather(parts, rows)
        assert_same(got, want if rows is None else tuple(a[rows] for a in want))


def test_order_shuffles_the_rows_in_place_like_indexing():
    rng = np.random.default_rng(3)
    parts = [random_events(rng, 700), random_events(rng, 301)]
    v = vectorizer("multiplicity+mask")
    rows = np.sort(rng.choice(1001, 800, replace=False))
    order = rng.permutation(800)
    want = v.gather(parts, rows[order])
    got = v.gather(parts, rows, order)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    with pytest.raises(ValueError, match="order has 3 rows for 800 events"):
        v.gather(parts, rows, order[:3])


@pytest.mark.parametrize("dtype", [np.float32, np.bool_, np.int64])
def test_permute_rows_in_place(dtype):
    rng = np.random.default_rng(1)
    for n in (0, 1, 2, 1000):
        A = (rng.random((n, 7)) * 100).astype(dtype)
        order = rng.permutation(n)
        want = A[order]
        _kernels.permute_rows(A, order)
        np.testing.assert_array_equal(A, want)
    with pytest.raises(ValueError, match="C-contiguous"):
        _kernels.permute_rows(np.zeros((4, 3), np.float32)[:, :2], np.arange(4))


def test_branches_of_a_collection_share_their_lists_only_when_laid_out_alike():
    rng = np.random.default_rng(5)
    arrays = random_events(rng, 300)
    jet = _gather.lists_rows([_buffers(arrays["Jet_pt"])], None)
    assert _gather.lists_rows([_buffers(arrays["Jet_eta"])], None, like=jet).starts is jet.starts
    muon = _gather.lists_rows([_buffers(arrays["Mu_pt"])], None, like=jet)
    assert muon.starts is not jet.starts and len(muon.starts) == 300
    cut = arrays["Jet_eta"][arrays["Jet_eta"] > 0]
    assert _gather.lists_rows([_buffers(cut)], None, like=jet).starts is not jet.starts


def test_the_values_of_several_pieces_stay_in_the_pieces():
    """A branch's raw values are not joined into one copy: its lists keep a view of each piece's values
    (the chunk's peak memory would otherwise hold every jagged branch's values twice)."""
    rng = np.random.default_rng(6)
    pieces = [random_events(rng, n) for n in (50, 80)]
    buffers = [_buffers(p["Jet_pt"][5:]) for p in pieces]
    jet = _gather.lists_rows(buffers, None)
    assert len(jet.parts) == 2 and all(np.shares_memory(part, content) for part, (_, _, content) in zip(jet.parts, buffers))
    eta = _gather.lists_rows([_buffers(p["Jet_eta"][5:]) for p in pieces], None, like=jet)
    assert eta.starts is jet.starts and all(np.shares_memory(part, p["Jet_eta"].layout.content.data)
                                            for part, p in zip(eta.parts, pieces))
    np.testing.assert_array_equal(jet.content, ak.to_numpy(ak.flatten(ak.concatenate([p["Jet_pt"][5:] for p in pieces]))))


def test_clipping_long_lists_keeps_the_first_values():
    lists = _gather.Lists(np.array([0, 7, 7]), np.array([7, 0, 2]), np.arange(9.0))
    short = _gather.clipped(lists, 3)
    assert short.content.tolist() == [0, 1, 2, 7, 8]
    assert short.starts.tolist() == [0, 3, 3] and short.lengths.tolist() == [3, 0, 2]


def _buffers(array):
    from mlaas4hep_lab.data.vectorize import jagged_buffers

    return jagged_buffers(array)


def test_buffers_are_reused_only_once_nothing_refers_to_them():
    from mlaas4hep_lab.data._buffers import Buffers

    buffers = Buffers(10, 3)
    X, _ = buffers.matrices(10, 3)
    X[:] = 1.0
    batch = X[2:4]  # a view, as a training batch is: its buffer stays lent
    del X
    other, _ = buffers.matrices(10, 3)
    other[:] = 2.0
    assert np.all(batch == 1.0) and len(buffers._lent["values"]) == 2
    del batch
    again, _ = buffers.matrices(4, 3)
    assert again.base is buffers._lent["values"][0] and again.shape == (4, 3)
    big, mask = buffers.matrices(11, 3)  # larger than announced: memory of its own
    assert not any(big.base is lent for lent in buffers._lent["values"]) and mask.shape == (11, 3)
    # every matrix starts on a 64-byte boundary (TensorFlow takes such memory without a copy)
    assert all(a.ctypes.data % 64 == 0 and a.flags.c_contiguous for a in (again, big, mask))


def test_a_consumer_that_keeps_views_of_chunks_sees_them_unchanged(toy_data):
    from mlaas4hep_lab.data.specs import compute_specs
    from mlaas4hep_lab.data.stream import ChunkStream
    from mlaas4hep_lab.params import load_params

    params = load_params(toy_data.params_json, chunk_size=700, prefetch=1)
    specs = compute_specs(toy_data.files, params, progress=False)
    with ChunkStream(toy_data.files, [1, 0], params, specs) as stream:
        heads = [(chunk.X[:50], chunk.mask[:50]) for chunk in stream]  # views only; the chunks are dropped
        for k, (X, mask) in enumerate(heads):
            fresh = stream.build(k)
            np.testing.assert_array_equal(X, fresh.X[:50])
            np.testing.assert_array_equal(mask, fresh.mask[:50])
        reused = [id(chunk.X.base) for chunk in stream]  # nothing kept this time: two buffers serve every chunk
        assert len(set(reused)) <= 3 and len(reused) == stream.n_chunks > 3


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint64, np.bool_])
def test_moments_equal_numpy(dtype):
    rng = np.random.default_rng(11)
    values = (rng.normal(size=5000) * 50 + 1e3).astype(dtype) if dtype != np.bool_ else rng.random(5000) < 0.3
    if np.dtype(dtype).kind == "f":
        values[::97], values[5::101], values[7::89] = np.nan, np.inf, -np.inf
    if np.dtype(dtype).kind in "fi":
        values[3::50] = -99
    nan, inf, n, lo, hi, mean, m2 = _kernels.moments(values, np.array([-99.0]))
    v = values.astype(np.float64)
    ok = np.isfinite(v) & (v != -99)
    assert (nan, inf) == (int(np.isnan(v).sum()), int(np.isinf(v).sum()))
    assert n == ok.sum() and (lo, hi) == (v[ok].min(), v[ok].max())
    assert mean == pytest.approx(v[ok].mean(), rel=1e-14)
    assert m2 == pytest.approx(((v[ok] - v[ok].mean()) ** 2).sum(), rel=1e-12)
    assert _kernels.moments(values[:0], np.zeros(0))[2] == 0
