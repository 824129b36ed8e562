"""Tests of preproc.json handling (mlaas4hep_lab.data.preprocess)."""

from __future__ import annotations

import copy
import json
import math
import time

import awkward as ak
import numpy as np
import pytest
import uproot

from mlaas4hep_lab.data.expressions import is_jagged
from mlaas4hep_lab.data.preprocess import BranchCut, Cut, NewBranch, Preproc
from mlaas4hep_lab.errors import BranchNotFoundError, ConfigError, ExpressionError, InputFileError

# the example of the original project's documentation
ORIGINAL = {
    "new_branch": {
        "log_partonE": {
            "def": "log(partonE)",
            "type": "jagged",
            "cut_1": ["log_partonE<6.31", "any"],
            "cut_2": ["log_partonE>5.85", "all"],
            "remove": "False",
            "keys_to_remove": ["partonE"],
        },
        "nJets_square": {
            "def": "nJets**2",
            "type": "flat",
            "cut": "1<=nJets_square<=16",
            "remove": "False",
            "keys_to_remove": ["nJets"],
        },
    },
    "flat_cut": {"nLeptons": {"cut": "0<=nLeptons<=2", "remove": "False"}},
    "jagged_cut": {"partonPt": {"cut": ["partonPt>200", "all"], "remove": "False"}},
}

KINDS = {"partonE": "jagged", "partonPt": "jagged", "nJets": "flat", "nLeptons": "flat", "other": "flat"}


def original_arrays() -> ak.Array:
    return ak.Array(
        {
            "partonE": ak.Array([[400.0, 500.0], [300.0], [], [600.0], [450.0], [350.0, 420.0]]),
            "nJets": np.array([1, 2, 5, 0, 4, 3], dtype=np.int32),
            "nLeptons": np.array([0, 1, 2, 3, 2, 0], dtype=np.int32),
            "partonPt": ak.Array([[300.0, 250.0], [100.0], [], [500.0], [201.0, 199.0], [210.0, 205.0]]),
            "other": np.arange(6, dtype=np.float64),
        }
    )


# Hand-computed, event by event (log 400=5.99 log 500=6.21 log 300=5.70 log 600=6.40 log 450=6.11
# log 350=5.86 log 420=6.04):
#                  any(logE<6.31) all(logE>5.85) 1<=nJ^2<=16 0<=nLep<=2 all(pt>200)
# event 0          T              T              T (1)       T          T          -> keep
# event 1          T              F (5.70)       T (4)       T          F
# event 2 (empty)  F              T              F (25)      T          T
# event 3          F (6.40)       T              F (0)       F (3)      T
# event 4          T              T              T (16)      T          F (199)
# event 5          T              T              T (9)       T          T          -> keep
EXPECTED_KEEP = [True, False, False, False, False, True]


def write_json(tmp_path, data, name="preproc.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


# --------------------------------------------------------------------------------------------------
# the original example


def test_original_example_parses():
    p = Preproc.from_json(ORIGINAL)
    assert [nb.name for nb in p.new_branches] == ["log_partonE", "nJets_square"]
    log_e = p.new_branches[0]
    assert isinstance(log_e, NewBranch) and log_e.kind == "jagged" and log_e.remove is False
    assert [(c.expression.text, c.mode, c.key) for c in log_e.cuts] == [
        ("log_partonE<6.31", "any", "new_branch.log_partonE.cut_1"),
        ("log_partonE>5.85", "all", "new_branch.log_partonE.cut_2"),
    ]
    assert log_e.keys_to_remove == ["partonE"]
    sq = p.new_branches[1]
    assert sq.kind == "flat" and [(c.expression.text, c.mode) for c in sq.cuts] == [
        ("1<=nJets_square<=16", None)
    ]
    assert [(b.branch, b.remove) for b in p.flat_cuts] == [("nLeptons", False)]
    assert isinstance(p.jagged_cuts[0], BranchCut) and isinstance(p.jagged_cuts[0].cuts[0], Cut)
    assert p.jagged_cuts[0].cuts[0].mode == "all"
    assert p.input_branches() == {"partonE", "nJets", "nLeptons", "partonPt"}
    assert p.removed_branches() == {"partonE", "nJets"}
    assert p.new_branch_kinds() == {"log_partonE": "jagged", "nJets_square": "flat"}
    assert not p.is_empty()
    p.validate(KINDS)


def test_original_example_applies():
    arrays = original_arrays()
    p = Preproc.from_json(ORIGINAL)
    out, keep = p.apply(arrays)
    assert isinstance(keep, np.ndarray) and keep.dtype == np.bool_
    assert keep.tolist() == EXPECTED_KEEP
    assert len(out) == len(arrays), "apply does not filter"
    assert set(out.fields) == set(arrays.fields) | {"log_partonE", "nJets_square"}
    assert out["nJets_square"].tolist() == [1, 4, 25, 0, 16, 9]
    got = out["log_partonE"].tolist()
    want = [[math.log(v) for v in lst] for lst in arrays["partonE"].tolist()]
    assert [len(g) for g in got] == [len(w) for w in want]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w)
    # original fields are untouched
    assert out["partonPt"].tolist() == arrays["partonPt"].tolist()
    assert out["other"].tolist() == arrays["other"].tolist()


def test_original_example_from_file(tmp_path):
    path = write_json(tmp_path, ORIGINAL)
    p = Preproc.from_json(path)
    assert p.apply(original_arrays())[1].tolist() == EXPECTED_KEEP
    assert Preproc.from_json(str(path)) == p
    assert p.source == str(path)


def test_to_dict_round_trip_and_booleans():
    p = Preproc.from_json(ORIGINAL)
    d = p.to_dict()
    assert d["new_branch"]["log_partonE"]["remove"] is False
    assert d["flat_cut"]["nLeptons"] == {"cut": "0<=nLeptons<=2", "remove": False}
    assert d["jagged_cut"]["partonPt"] == {"cut": ["partonPt>200", "all"], "remove": False}
    assert d["new_branch"]["log_partonE"]["cut_1"] == ["log_partonE<6.31", "any"]
    again = Preproc.from_json(json.loads(json.dumps(d)))
    assert again.to_dict() == d
    assert again.fingerprint() == p.fingerprint()


def test_fingerprint():
    p = Preproc.from_json(ORIGINAL)
    fp = p.fingerprint()
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert Preproc.from_json(copy.deepcopy(ORIGINAL)).fingerprint() == fp
    changed = copy.deepcopy(ORIGINAL)
    changed["flat_cut"]["nLeptons"]["cut"] = "0<=nLeptons<=3"
    assert Preproc.from_json(changed).fingerprint() != fp
    booleans = copy.deepcopy(ORIGINAL)
    for section in booleans.values():
        for entry in section.values():
            entry["remove"] = False
    assert Preproc.from_json(booleans).fingerprint() == fp
    assert Preproc.from_json(None).fingerprint() == Preproc.from_json({}).fingerprint()


# --------------------------------------------------------------------------------------------------
# remove: strings and booleans


@pytest.mark.parametrize(
    "value, expected",
    [("True", True), ("False", False), ("true", True), ("FALSE", False), (True, True), (False, False)],
)
def test_remove_strings_and_booleans(value, expected):
    data = {
        "new_branch": {"e2": {"def": "nJets * 2", "type": "flat", "remove": value}},
        "flat_cut": {"nLeptons": {"cut": "nLeptons < 3", "remove": value}},
    }
    p = Preproc.from_json(data)
    assert p.new_branches[0].remove is expected and p.flat_cuts[0].remove is expected
    assert p.removed_branches() == ({"e2", "nLeptons"} if expected else set())


def test_remove_defaults_to_false():
    p = Preproc.from_json({"flat_cut": {"nLeptons": {"cut": "nLeptons < 3"}}})
    assert p.flat_cuts[0].remove is False


@pytest.mark.parametrize("value", ["yes", 1, None, "Tru", []])
def test_remove_bad_value_names_the_key(value):
    data = {"new_branch": {"log_E": {"def": "log(partonE)", "type": "jagged", "remove": value}}}
    with pytest.raises(ConfigError, match=r"new_branch\.log_E\.remove"):
        Preproc.from_json(data)


def test_keys_to_remove_single_string():
    p = Preproc.from_json(
        {"new_branch": {"e2": {"def": "nJets * 2", "type": "flat", "keys_to_remove": "nJets"}}}
    )
    assert p.new_branches[0].keys_to_remove == ["nJets"]
    assert p.removed_branches() == {"nJets"}


# --------------------------------------------------------------------------------------------------
# order does not matter


def _reversed(obj):
    if isinstance(obj, dict):
        return {k: _reversed(obj[k]) for k in reversed(list(obj))}
    return obj


def test_reordered_keys_give_identical_results():
    a = Preproc.from_json(ORIGINAL)
    b = Preproc.from_json(_reversed(ORIGINAL))
    assert list(_reversed(ORIGINAL)["new_branch"]) == ["nJets_square", "log_partonE"]
    assert a.to_dict() == b.to_dict() and a.fingerprint() == b.fingerprint()
    out_a, keep_a = a.apply(original_arrays())
    out_b, keep_b = b.apply(original_arrays())
    assert keep_a.tolist() == keep_b.tolist() == EXPECTED_KEEP
    for name in ("log_partonE", "nJets_square"):
        assert out_a[name].tolist() == out_b[name].tolist()


def test_dependency_declared_in_reverse_order():
    data = {
        "new_branch": {
            # uses two new branches defined later in the file
            "ratio": {"def": "log_pt - log_e", "type": "jagged", "cut": ["ratio < 0", "all"]},
            "log_pt": {"def": "log(partonPt)", "type": "jagged"},
            "log_e": {"def": "log(partonE)", "type": "jagged"},
            # a flat one built on a jagged new one
            "n_big": {"def": "count(ratio > -1)", "type": "flat"},
        }
    }
    p = Preproc.from_json(data)
    names = [nb.name for nb in p.new_branches]
    assert names.index("ratio") > names.index("log_pt") and names.index("ratio") > names.index("log_e")
    assert names.index("n_big") > names.index("ratio")
    assert p.input_branches() == {"partonPt", "partonE"}
    p.validate(KINDS)
    arrays = ak.Array(
        {"partonPt": ak.Array([[1.0, 10.0], [], [5.0]]), "partonE": ak.Array([[2.0, 20.0], [], [2.0]])}
    )
    out, keep = p.apply(arrays)
    expected = [[math.log(1 / 2), math.log(10 / 20)], [], [math.log(5 / 2)]]
    for g, w in zip(out["ratio"].tolist(), expected, strict=True):
        np.testing.assert_allclose(g, w)
    assert keep.tolist() == [True, True, False]
    assert out["n_big"].tolist() == [2, 0, 1]


def test_cycle_is_an_error_naming_the_branches():
    data = {
        "new_branch": {
            "a": {"def": "b + 1", "type": "flat"},
            "b": {"def": "c * 2", "type": "flat"},
            "c": {"def": "a - 1", "type": "flat"},
            "d": {"def": "nJets", "type": "flat"},
        }
    }
    with pytest.raises(ConfigError, match="cycle") as info:
        Preproc.from_json(data)
    message = str(info.value)
    for name in ("a", "b", "c"):
        assert f"{name} ->" in message or f"-> {name}" in message
    assert "d" not in message.split("cycle:")[1].split(";")[0]


def test_self_reference_is_a_cycle():
    with pytest.raises(ConfigError, match="cycle"):
        Preproc.from_json({"new_branch": {"a": {"def": "log(a)", "type": "flat"}}})


# --------------------------------------------------------------------------------------------------
# malformed preproc


def test_bad_json_reports_file_line_and_column(tmp_path):
    text = '{\n  "flat_cut": {\n    "nLeptons": {"cut": "nLeptons < 3",}\n  }\n}\n'
    path = write_json(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        Preproc.from_json(path)
    message = str(info.value)
    assert "preproc.json" in message and "line 3" in message and "column" in message


def test_missing_file(tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        Preproc.from_json(tmp_path / "nope.json")


def test_duplicate_keys_are_an_error(tmp_path):
    path = write_json(tmp_path, '{"flat_cut": {"n": {"cut": "n > 1", "cut": "n < 3"}}}')
    with pytest.raises(ConfigError, match="duplicate key 'cut'"):
        Preproc.from_json(path)


@pytest.mark.parametrize(
    "data, key, words",
    [
        ({"new_branchs": {}}, "new_branchs", "new_branch, flat_cut, jagged_cut"),
        ({"new_branch": []}, "new_branch", "object"),
        ({"new_branch": {"e": {"def": 3, "type": "flat"}}}, "new_branch.e.def", "expression string"),
        ({"new_branch": {"e": {"type": "flat"}}}, "new_branch.e", "missing 'def'"),
        ({"new_branch": {"e": {"def": "nJets"}}}, "new_branch.e", "missing 'type'"),
        (
            {"new_branch": {"e": {"def": "nJets", "type": "scalar"}}},
            "new_branch.e.type",
            '"flat" or "jagged"',
        ),
        ({"new_branch": {"e": "nJets"}}, "new_branch.e", "expected an object"),
        (
            {"new_branch": {"e": {"def": "nJets", "type": "flat", "Cut": "e>1"}}},
            "new_branch.e.Cut",
            "valid keys",
        ),
        (
            {"new_branch": {"e": {"def": "nJets", "type": "flat", "keys_to_remove": [1]}}},
            "new_branch.e.keys_to_remove",
            "list",
        ),
        (
            {"new_branch": {"e": {"def": "nJets", "type": "flat", "cut": 5}}},
            "new_branch.e.cut",
            "expression string",
        ),
        ({"new_branch": {"2e": {"def": "nJets", "type": "flat"}}}, "new_branch.2e", "identifier"),
        ({"new_branch": {"sum": {"def": "nJets", "type": "flat"}}}, "new_branch.sum", "function"),
        (
            {"flat_cut": {"n": {"cut": "n > 1", "remove": "False", "typo": 1}}},
            "flat_cut.n.typo",
            "cut, cut_1 ... cut_N, remove",
        ),
        ({"jagged_cut": {"pt": {"cut": ["pt > 1"]}}}, "jagged_cut.pt.cut", "two items"),
        ({"jagged_cut": {"pt": {"cut": ["pt > 1", "any", "x"]}}}, "jagged_cut.pt.cut", "two items"),
        ({"jagged_cut": {"pt": {"cut": ["pt > 1", "some"]}}}, "jagged_cut.pt.cut", '"any" or "all"'),
        ({"jagged_cut": {"pt": {"cut_3": [1, "any"]}}}, "jagged_cut.pt.cut_3", "expression string"),
        ({"jagged_cut": {"pt": ["pt > 1", "any"]}}, "jagged_cut.pt", "expected an object"),
    ],
)
def test_malformed_entries_name_the_key(data, key, words):
    with pytest.raises(ConfigError) as info:
        Preproc.from_json(data)
    message = str(info.value)
    assert f"'{key}'" in message, message
    assert words in message, message


def test_top_level_not_an_object(tmp_path):
    with pytest.raises(ConfigError, match="top level"):
        Preproc.from_json(write_json(tmp_path, "[1, 2]"))


def test_bad_expression_names_the_key_path():
    with pytest.raises(ExpressionError) as info:
        Preproc.from_json({"new_branch": {"e": {"def": "nJets.__class__", "type": "flat"}}})
    assert "new_branch.e.def" in str(info.value) and "attribute" in str(info.value)
    with pytest.raises(ExpressionError, match=r"jagged_cut\.pt\.cut_2"):
        Preproc.from_json({"jagged_cut": {"pt": {"cut_2": ["open('x')", "any"]}}})


def test_bad_source_type():
    with pytest.raises(ConfigError):
        Preproc.from_json(42)


def test_empty_preproc():
    for source in (None, {}, {"new_branch": {}, "flat_cut": {}, "jagged_cut": {}}, "{}"):
        p = Preproc.from_json(source)
        assert p.is_empty()
        assert p.to_dict() == {}
        arrays = original_arrays()
        out, keep = p.apply(arrays)
        assert out is arrays and keep.tolist() == [True] * len(arrays)


def test_json_text_source():
    assert Preproc.from_json(json.dumps(ORIGINAL)) == Preproc.from_json(ORIGINAL)


# --------------------------------------------------------------------------------------------------
# cuts


def test_cut_numbering_any_order_all_and_together():
    data = {"flat_cut": {"nJets": {"cut_10": "nJets < 5", "cut_2": "nJets > 0", "cut": "nJets != 2"}}}
    p = Preproc.from_json(data)
    assert [c.key for c in p.flat_cuts[0].cuts] == [
        "flat_cut.nJets.cut",
        "flat_cut.nJets.cut_2",
        "flat_cut.nJets.cut_10",
    ]
    keep = p.apply(original_arrays())[1]
    nj = original_arrays()["nJets"].to_numpy()
    assert keep.tolist() == ((nj < 5) & (nj > 0) & (nj != 2)).tolist()


def test_jagged_any_and_all_on_empty_lists():
    arrays = ak.Array({"pt": ak.Array([[], [1.0], [300.0]])})
    any_p = Preproc.from_json({"jagged_cut": {"pt": {"cut": ["pt > 200", "any"]}}})
    all_p = Preproc.from_json({"jagged_cut": {"pt": {"cut": ["pt > 200", "all"]}}})
    assert any_p.apply(arrays)[1].tolist() == [False, False, True]
    assert all_p.apply(arrays)[1].tolist() == [True, False, True]


def test_jagged_cut_with_a_flat_expression_is_fine():
    p = Preproc.from_json({"jagged_cut": {"partonPt": {"cut": ["count(partonPt) >= 2", "any"]}}})
    p.validate(KINDS)
    assert p.apply(original_arrays())[1].tolist() == [True, False, False, False, True, True]


def test_flat_cut_with_a_jagged_result_suggests_the_list_form():
    p = Preproc.from_json(
        {"new_branch": {"lpt": {"def": "log(partonPt)", "type": "jagged", "cut": "lpt > 5"}}}
    )
    with pytest.raises(ConfigError) as info:
        p.apply(original_arrays())
    message = str(info.value)
    assert "new_branch.lpt.cut" in message and '"any"' in message and '"all"' in message
    with pytest.raises(ConfigError, match=r"new_branch\.lpt\.cut"):
        p.validate(KINDS)


def test_string_cut_under_jagged_cut_is_rejected_at_apply():
    p = Preproc.from_json({"jagged_cut": {"partonPt": {"cut": "partonPt > 200"}}})
    with pytest.raises(ConfigError, match=r"jagged_cut\.partonPt\.cut.*\"any\""):
        p.apply(original_arrays())


def test_cut_on_a_plain_branch_reads_it_and_cuts_reference_new_branches():
    data = {
        "flat_cut": {"other": {"cut": "other + twice >= 5"}},
        "new_branch": {"twice": {"def": "nJets * 2", "type": "flat"}},
    }
    p = Preproc.from_json(data)
    assert p.input_branches() == {"other", "nJets"}
    other = np.arange(6)
    nj = original_arrays()["nJets"].to_numpy()
    assert p.apply(original_arrays())[1].tolist() == (other + 2 * nj >= 5).tolist()


def test_deeper_jagged_cut_reduces_all_levels():
    arrays = ak.Array({"h": ak.Array([[[1, 2], [3]], [[]], [[5], [0]]])})
    any_p = Preproc.from_json({"jagged_cut": {"h": {"cut": ["h > 2", "any"]}}})
    all_p = Preproc.from_json({"jagged_cut": {"h": {"cut": ["h > 0", "all"]}}})
    assert any_p.apply(arrays)[1].tolist() == [True, False, True]
    assert all_p.apply(arrays)[1].tolist() == [True, True, False]


# --------------------------------------------------------------------------------------------------
# declared type


def test_declared_type_is_checked_at_apply():
    flat_but_jagged = Preproc.from_json({"new_branch": {"lpt": {"def": "log(partonPt)", "type": "flat"}}})
    with pytest.raises(ConfigError) as info:
        flat_but_jagged.apply(original_arrays())
    assert "'lpt'" in str(info.value) and "declared flat" in str(info.value)
    jagged_but_flat = Preproc.from_json({"new_branch": {"s": {"def": "sum(partonPt)", "type": "jagged"}}})
    with pytest.raises(ConfigError, match="'s' is declared jagged"):
        jagged_but_flat.apply(original_arrays())


def test_declared_type_is_checked_by_validate():
    p = Preproc.from_json({"new_branch": {"lpt": {"def": "log(partonPt) * nJets", "type": "flat"}}})
    with pytest.raises(ConfigError, match=r"new_branch\.lpt\.type"):
        p.validate(KINDS)


# --------------------------------------------------------------------------------------------------
# validate


def test_validate_unknown_branch_suggests():
    p = Preproc.from_json({"new_branch": {"e": {"def": "log(partonEE)", "type": "jagged"}}})
    with pytest.raises(BranchNotFoundError) as info:
        p.validate(KINDS, where="tree 'events' of f.root")
    message = str(info.value)
    assert "'partonEE'" in message and "did you mean 'partonE'" in message
    assert "new_branch.e.def" in message and "tree 'events' of f.root" in message


def test_validate_unknown_cut_branch_and_keys_to_remove():
    with pytest.raises(BranchNotFoundError, match="did you mean 'nLeptons'"):
        Preproc.from_json({"flat_cut": {"nLepton": {"cut": "nLepton < 3"}}}).validate(KINDS)
    with pytest.raises(BranchNotFoundError, match="keys_to_remove"):
        Preproc.from_json(
            {"new_branch": {"e": {"def": "nJets", "type": "flat", "keys_to_remove": ["nJet"]}}}
        ).validate(KINDS)
    with pytest.raises(BranchNotFoundError, match=r"jagged_cut\.partonPt\.cut"):
        Preproc.from_json({"jagged_cut": {"partonPt": {"cut": ["partonPtt > 1", "any"]}}}).validate(KINDS)


def test_validate_flat_cut_on_jagged_branch_and_reverse():
    with pytest.raises(ConfigError, match=r"flat_cut\.partonPt.*jagged branch; put it under jagged_cut"):
        Preproc.from_json({"flat_cut": {"partonPt": {"cut": "count(partonPt) > 1"}}}).validate(KINDS)
    with pytest.raises(ConfigError, match=r"jagged_cut\.nJets.*flat branch; put it under flat_cut"):
        Preproc.from_json({"jagged_cut": {"nJets": {"cut": ["nJets > 1", "any"]}}}).validate(KINDS)


def test_validate_new_branch_shadowing_a_tree_branch():
    with pytest.raises(ConfigError, match="has the name of a branch"):
        Preproc.from_json({"new_branch": {"nJets": {"def": "nLeptons", "type": "flat"}}}).validate(KINDS)


def test_apply_unknown_branch():
    p = Preproc.from_json({"flat_cut": {"nJets": {"cut": "nJet > 1"}}})
    with pytest.raises(BranchNotFoundError, match="did you mean 'nJets'"):
        p.apply(original_arrays())


# --------------------------------------------------------------------------------------------------
# arrays


def test_apply_on_filtered_arrays():
    arrays = original_arrays()
    filtered = arrays[np.array([True, False, True, True, True, True])]
    out, keep = Preproc.from_json(ORIGINAL).apply(filtered)
    assert keep.tolist() == [True, False, False, False, True]
    assert out["nJets_square"].tolist() == [1, 25, 0, 16, 9]


def test_apply_replaces_nothing_and_shares_buffers():
    arrays = original_arrays()
    out, _ = Preproc.from_json(ORIGINAL).apply(arrays)
    assert np.shares_memory(ak.to_numpy(out["other"]), ak.to_numpy(arrays["other"]))
    assert is_jagged(out["log_partonE"]) and not is_jagged(out["nJets_square"])


def test_root_file_round_trip(tmp_path):
    path = tmp_path / "events.root"
    jet_pt = ak.Array([[50.0, 20.0], [], [10.0], [45.0, 40.0, 35.0]])
    jet_eta = ak.Array([[0.5, -2.6], [], [1.0], [3.0, 0.1, -0.2]])
    with uproot.recreate(path) as f:
        f.mktree(
            "events",
            {"nJet": np.int32, "Jet_pt": "var * float32", "Jet_eta": "var * float32", "met": np.float64},
        )
        f["events"].extend(
            {
                "nJet": np.array([2, 0, 1, 3], dtype=np.int32),
                "Jet_pt": jet_pt,
                "Jet_eta": jet_eta,
                "met": np.array([10.0, 80.0, 30.0, 5.0]),
            }
        )
    tree = uproot.open(path)["events"]
    arrays = tree.arrays()
    kinds = {name: ("jagged" if is_jagged(arrays[name]) else "flat") for name in arrays.fields}
    assert kinds["Jet_pt"] == "jagged" and kinds["nJet"] == "flat"
    data = {
        "new_branch": {
            "Jet_logpt": {"def": "log(Jet_pt)", "type": "jagged", "cut": ["Jet_logpt > log(30)", "any"]},
            "ht": {"def": "sum(Jet_pt)", "type": "flat", "remove": "True"},
            "central_pt": {"def": "where(abs(Jet_eta) < 2.5, Jet_pt, 0)", "type": "jagged"},
        },
        "flat_cut": {"met": {"cut": "met < 50"}},
        "jagged_cut": {"Jet_eta": {"cut": ["abs(Jet_eta) < 2.9", "all"]}},
    }
    p = Preproc.from_json(data)
    p.validate(kinds, where=f"tree 'events' of {path.name}")
    out, keep = p.apply(arrays)
    # event 0: pt 50 > 30, |eta| < 2.9 all, met 10 -> keep; event 1: no jet -> any fails;
    # event 2: pt 10 fails; event 3: eta 3.0 fails the all
    assert keep.tolist() == [True, False, False, False]
    np.testing.assert_allclose(out["ht"].to_numpy(), [70.0, 0.0, 10.0, 120.0])
    assert out["central_pt"].tolist() == [[50.0, 0.0], [], [10.0], [0.0, 40.0, 35.0]]
    assert p.removed_branches() == {"ht"}
    passed = out[keep]
    assert passed["Jet_logpt"].tolist() == [pytest.approx([math.log(50), math.log(20)])]


# --------------------------------------------------------------------------------------------------
# speed: vectorised, no loop over events


def _big(n_events: int, n_fields: int) -> ak.Array:
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 13, n_events)
    offsets = np.zeros(n_events + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    index = ak.index.Index64(offsets)
    contents = [
        ak.contents.ListOffsetArray(
            index, ak.contents.NumpyArray(rng.uniform(0, 100, offsets[-1]).astype(np.float32))
        )
        for _ in range(n_fields)
    ]
    return ak.Array(ak.contents.RecordArray(contents, [f"j{i}" for i in range(n_fields)], length=n_events))


def test_apply_is_vectorised():
    arrays = _big(200_000, 50)
    p = Preproc.from_json(
        {
            "new_branch": {"log_j1": {"def": "log(j1)", "type": "jagged"}},
            "jagged_cut": {"j0": {"cut": ["j0 > 30", "any"]}},
        }
    )
    t0 = time.perf_counter()
    out, keep = p.apply(arrays)
    elapsed = time.perf_counter() - t0
    # a loop over 200k events in Python would take seconds; the vectorised path takes milliseconds
    assert elapsed < 1.0, elapsed
    assert len(out.fields) == 51 and len(keep) == 200_000
    expected = ak.to_numpy(ak.any(arrays["j0"] > 30, axis=-1))
    assert np.array_equal(keep, expected)
