"""params.json: the original format loads, new keys validate, errors name the key / file / position."""

from __future__ import annotations

import json
import warnings

import pytest

from mlaas4hep_lab.errors import ConfigError, InputFileError, MLaaSError
from mlaas4hep_lab.params import Params, load_params

ORIGINAL = (
    '{"nevts":3000,"shuffle":true,"chunk_size":1000,"epochs":50,"batch_size":256,"branch":"Events",'
    '"selected_branches":"","exclude_branches":"","hist":"pdfs",'
    '"redirector":"root://cms-xrd-global.cern.ch","verbose":1}'
)


def write(tmp_path, text: str, name: str = "params.json"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_original_params_json_loads_without_warning(tmp_path):
    path = write(tmp_path, ORIGINAL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an original key reported as unknown would fail here
        p = load_params(path)
    assert (p.nevts, p.shuffle, p.chunk_size, p.epochs, p.batch_size) == (3000, True, 1000, 50, 256)
    assert p.branch == "Events"
    assert p.selected_branches == [] and p.exclude_branches == []
    assert p.hist == "pdfs"
    assert p.redirector == "root://cms-xrd-global.cern.ch"
    assert p.verbose == 1
    # keys the original did not have keep their defaults
    assert p.identifier == [] and p.split == [0.64, 0.16, 0.20] and p.normalization == "minmax"


def test_toy_params_json_loads(toy_data):
    p = load_params(toy_data.params_json)
    assert p.identifier == ["EventId"]
    assert p.branch == "events" and p.nevts == -1 and p.verbose == 0


def test_dict_source_and_overrides():
    p = load_params({"chunk_size": 10}, chunk_size=20, epochs=2)
    assert p.chunk_size == 20 and p.epochs == 2
    assert load_params().chunk_size == Params().chunk_size


@pytest.mark.parametrize("key", ["selected_branches", "exclude_branches", "identifier"])
def test_comma_strings_become_lists(key):
    p = load_params({key: " Jet_pt , MET,,  nJet* "})
    assert getattr(p, key) == ["Jet_pt", "MET", "nJet*"]
    assert getattr(load_params({key: ["a", " b "]}), key) == ["a", "b"]
    assert getattr(load_params({key: ""}), key) == []


def test_booleans_as_written_in_the_wild():
    assert load_params({"shuffle": 0}).shuffle is False
    assert load_params({"shuffle": 1}).shuffle is True
    assert load_params({"shuffle": "False"}).shuffle is False
    assert load_params({"shuffle": "true"}).shuffle is True


def test_integral_float_accepted_for_int():
    assert load_params({"nevts": 3000.0}).nevts == 3000


@pytest.mark.parametrize(
    "key, value",
    [
        ("nevts", "3000"),
        ("chunk_size", 10.5),
        ("epochs", True),
        ("shuffle", "maybe"),
        ("shuffle", 2),
        ("branch", 5),
        ("selected_branches", ["a", 3]),
        ("identifier", 7),
        ("split", "0.6,0.2,0.2"),
        ("missing_values", ["-999"]),
        ("normalization", "zscore"),
        ("training", "forever"),
        ("max_jagged_length", "10"),
        ("max_jagged_length", 2.5),
        ("max_jagged_length", -3),
        ("read_buffer_mb", 0),
        ("read_buffer_mb", "lots"),
    ],
)
def test_wrong_type_names_the_key(tmp_path, key, value):
    path = write(tmp_path, json.dumps({key: value}))
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert info.value.key == key
    assert f"key {key!r}" in str(info.value)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, MLaaSError)


def test_nested_jagged_length_error_names_the_branch():
    with pytest.raises(ConfigError, match=r"max_jagged_length\.Jet_pt"):
        load_params({"max_jagged_length": {"Jet_pt": "x"}})
    p = load_params({"max_jagged_length": {"Jet_pt": 5, "Trk_nhits": 0.9}})
    assert p.max_jagged_length == {"Jet_pt": 5, "Trk_nhits": 0.9}


@pytest.mark.parametrize("key, value", [("chunk_size", 0), ("batch_size", -1), ("epochs", -1),
                                        ("nevts", 0), ("nevts", -5)])
def test_out_of_range_values(key, value):
    with pytest.raises(ConfigError) as info:
        load_params({key: value})
    assert info.value.key == key


def test_unknown_keys_warn_naming_them(tmp_path):
    path = write(tmp_path, json.dumps({"nevtts": 3000, "chunk_size": 7, "learning_rate": 0.1}))
    with pytest.warns(UserWarning) as record:
        p = load_params(path)
    assert p.chunk_size == 7 and p.nevts == -1
    message = str(record[0].message)
    assert "nevtts" in message and "learning_rate" in message
    assert str(path) in message
    # the known keys are not reported as unknown
    unknown_part = message.split("unknown keys ignored:")[1].split("(")[0]
    assert "chunk_size" not in unknown_part


def test_invalid_json_names_file_line_and_column(tmp_path):
    path = write(tmp_path, '{\n  "nevts": 3000,\n  "shuffle": tru\n}\n')
    with pytest.raises(ConfigError) as info:
        load_params(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "line 3" in msg and "column 14" in msg


def test_trailing_comma_is_reported_with_position(tmp_path):
    path = write(tmp_path, '{"nevts": 3000,\n "verbose": 1,\n}')
    with pytest.raises(ConfigError, match=r"line 3, column 1"):
        load_params(path)


def test_json_that_is_not_an_object(tmp_path):
    path = write(tmp_path, "[1, 2, 3]")
    with pytest.raises(ConfigError, match="JSON object"):
        load_params(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope" / "params.json"
    with pytest.raises(InputFileError) as info:
        load_params(path)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, OSError)


def test_split_two_fractions_get_an_empty_test_split():
    assert load_params({"split": [0.8, 0.2]}).split == [0.8, 0.2, 0.0]
    assert Params(split=[0.5, 0.5]).split == [0.5, 0.5, 0.0]
    assert load_params({"split": [0.7, 0.2, 0.1]}).split == pytest.approx([0.7, 0.2, 0.1])


@pytest.mark.parametrize("split", [[0.5, 0.4], [0.6, 0.3, 0.3], [1.0], [0.5, 0.25, 0.25, 0.0],
                                   [1.2, -0.1, -0.1], [True, False]])
def test_split_validation(split):
    with pytest.raises(ConfigError) as info:
        load_params({"split": split})
    assert info.value.key == "split"


def test_params_constructor_and_replace_validate():
    with pytest.raises(ConfigError):
        Params(chunk_size=0)
    p = Params(identifier="a,b")
    assert p.identifier == ["a", "b"]
    with pytest.raises(ConfigError):
        p.replace(normalization="bogus")
    assert p.replace(chunk_size=5).chunk_size == 5
    assert p.to_dict()["identifier"] == ["a", "b"]
