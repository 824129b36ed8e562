"""Tests of the safe expression compiler (mlaas4hep_lab.data.expressions)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import awkward as ak
import numpy as np
import pytest

from mlaas4hep_lab.data import expressions
from mlaas4hep_lab.data.expressions import (
    ALLOWED_FUNCTIONS,
    MAX_DEPTH,
    MAX_LENGTH,
    MAX_NESTING,
    MAX_NODES,
    Expression,
    compile_expression,
    is_jagged,
)
from mlaas4hep_lab.errors import BranchNotFoundError, ExpressionError

N = np.array([0, 1, 2, 16, 17], dtype=np.int32)
X = np.array([-2.0, 0.5, 1.0, 4.0, 9.0])
PT = [[1.0, 2.0], [], [300.0], [5.0, 6.0, 7.0], [0.5]]


@pytest.fixture
def arrays() -> ak.Array:
    return ak.Array({"n": N, "x": X, "pt": ak.Array(PT)})


def ev(text: str, arrays: ak.Array):
    return compile_expression(text)(arrays)


def as_list(value):
    return value.tolist() if isinstance(value, (np.ndarray, ak.Array)) else value


def jagged_map(fn, lists):
    return [[fn(v) for v in lst] for lst in lists]


# --------------------------------------------------------------------------------------------------
# operators


@pytest.mark.parametrize(
    "text, expected",
    [
        ("n + 2", N + 2),
        ("x - n", X - N),
        ("n * x", N * X),
        ("x / 2", X / 2),
        ("x // 2", X // 2),
        ("n % 3", N % 3),
        ("n ** 2", N**2),
        ("abs(x) ** 0.5", np.abs(X) ** 0.5),
        ("n & 3", N & 3),
        ("n | 8", N | 8),
        ("n ^ 1", N ^ 1),
        ("-x", -X),
        ("+x", X),
        ("~n", ~N),
        ("not n", N == 0),
        ("~(n > 1)", ~(N > 1)),
        ("n < 2", N < 2),
        ("n <= 2", N <= 2),
        ("n > 2", N > 2),
        ("n >= 2", N >= 2),
        ("n == 2", N == 2),
        ("n != 2", N != 2),
        ("n > 0 and x > 0.5", (N > 0) & (X > 0.5)),
        ("n > 16 or x < 0", (N > 16) | (X < 0)),
        ("(n > 0) & (x > 0.5)", (N > 0) & (X > 0.5)),
        ("(n > 16) | (x < 0)", (N > 16) | (X < 0)),
        ("(n > 1) ^ (x > 1)", (N > 1) ^ (X > 1)),
        ("2 * (n + 1) - x / 4", 2 * (N + 1) - X / 4),
        ("True", np.ones(5, bool)),
        ("(n > 1) == True", N > 1),
        ("(n > 1) + 1", (N > 1) + 1),
        ("pi * n", math.pi * N),
        ("1.5e1", np.full(5, 15.0)),
    ],
)
def test_operators_on_flat(arrays, text, expected):
    out = ev(text, arrays)
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, expected)


def test_operator_precedence_follows_python(arrays):
    np.testing.assert_allclose(ev("-x ** 2", arrays), -(X**2))
    np.testing.assert_allclose(ev("2 ** 3 ** 2", arrays), np.full(5, 512))
    np.testing.assert_allclose(ev("n - 1 - 1", arrays), N - 2)


def test_integer_to_negative_power_is_float(arrays):
    with np.errstate(divide="ignore"):
        expected = 1.0 / N.astype(float)
    np.testing.assert_allclose(ev("n ** -1", arrays), expected)


def test_numpy_semantics_for_bad_values_without_warnings(arrays, recwarn):
    out = ev("x / (n - n)", arrays)
    assert np.isinf(out[1]) and np.isnan(ev("(n - n) / (n - n)", arrays)).all()
    np.testing.assert_array_equal(ev("n // 0", arrays), np.zeros(5))
    assert np.isnan(ev("log(x)", arrays)[0])
    assert np.isneginf(ev("log(x - x)", arrays)).all()
    assert np.isnan(ev("sqrt(x)", arrays)[0])
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


# --------------------------------------------------------------------------------------------------
# chained comparisons


@pytest.mark.parametrize(
    "chained, explicit",
    [
        ("1 <= n <= 16", "(1 <= n) & (n <= 16)"),
        ("16 >= n >= 1", "(16 >= n) & (n >= 1)"),
        ("1 < n < 17", "(1 < n) & (n < 17)"),
        ("17 > n > 1", "(17 > n) & (n > 1)"),
        ("0 < x <= n < 17", "(0 < x) & (x <= n) & (n < 17)"),
        ("1 <= n != 16", "(1 <= n) & (n != 16)"),
        ("2 < pt < 7", "(2 < pt) & (pt < 7)"),
    ],
)
def test_chained_comparisons_equal_the_explicit_and(arrays, chained, explicit):
    assert as_list(ev(chained, arrays)) == as_list(ev(explicit, arrays))


def test_range_cut_in_both_directions_means_the_range(arrays):
    expected = [False, True, True, True, False]
    assert ev("1<=n<=16", arrays).tolist() == expected
    assert ev("16>=n>=1", arrays).tolist() == expected
    # the reversed spelling must not silently mean "n >= 16 and n <= 1"
    assert ev("16<=n<=1", arrays).tolist() == [False] * 5


# --------------------------------------------------------------------------------------------------
# functions


ELEMENTWISE = {
    "log": math.log,
    "log10": math.log10,
    "log1p": math.log1p,
    "exp": math.exp,
    "sqrt": math.sqrt,
    "abs": abs,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "arctan": math.atan,
    "sinh": math.sinh,
    "cosh": math.cosh,
    "tanh": math.tanh,
    "floor": math.floor,
    "ceil": math.ceil,
}


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise_function_flat_and_jagged(name):
    fn = ELEMENTWISE[name]
    flat = np.array([0.25, 0.5, 1.5, 2.0])
    lists = [[0.25, 2.0], [], [1.5], [0.5, 1.0, 0.75]]
    data = ak.Array({"f": flat, "j": ak.Array(lists)})
    out_flat = ev(f"{name}(f)", data)
    assert isinstance(out_flat, np.ndarray)
    np.testing.assert_allclose(out_flat, [fn(v) for v in flat])
    out_j = ev(f"{name}(j)", data)
    assert is_jagged(out_j)
    got = out_j.tolist()
    want = jagged_map(fn, lists)
    assert [len(g) for g in got] == [len(w) for w in want]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w)


@pytest.mark.parametrize("name, fn", [("arcsin", math.asin), ("arccos", math.acos)])
def test_inverse_trig(name, fn):
    data = ak.Array({"f": np.array([-0.5, 0.0, 0.5]), "j": ak.Array([[0.1, -0.1], [], [1.0]])})
    np.testing.assert_allclose(ev(f"{name}(f)", data), [fn(v) for v in (-0.5, 0.0, 0.5)])
    got = ev(f"{name}(j)", data).tolist()
    np.testing.assert_allclose(got[0], [fn(0.1), fn(-0.1)])
    assert got[1] == [] and got[2] == pytest.approx([fn(1.0)])


def test_two_argument_functions(arrays):
    np.testing.assert_allclose(ev("arctan2(x, n)", arrays), np.arctan2(X, N))
    np.testing.assert_allclose(ev("hypot(x, n)", arrays), np.hypot(X, N))
    got = ev("hypot(pt, n)", arrays).tolist()
    assert got[3] == pytest.approx([math.hypot(v, 16) for v in (5, 6, 7)])
    assert got[1] == []


def test_where_and_clip_flat(arrays):
    np.testing.assert_allclose(ev("where(n > 1, x, -1)", arrays), np.where(N > 1, X, -1))
    np.testing.assert_allclose(ev("clip(x, 0, 2)", arrays), np.clip(X, 0, 2))


def test_where_and_clip_jagged(arrays):
    assert ev("where(pt > 2, pt, 0)", arrays).tolist() == [[0, 0], [], [300], [5, 6, 7], [0]]
    # a flat condition spreads over each event's list
    assert ev("where(n > 1, pt, 0)", arrays).tolist() == [[0, 0], [], [300], [5, 6, 7], [0.5]]
    assert ev("clip(pt, 1, 5)", arrays).tolist() == [[1, 2], [], [5], [5, 5, 5], [1]]


def test_min_max_two_arguments_are_elementwise(arrays):
    np.testing.assert_allclose(ev("min(x, n)", arrays), np.minimum(X, N))
    np.testing.assert_allclose(ev("max(x, n)", arrays), np.maximum(X, N))
    np.testing.assert_allclose(ev("max(x, n, 5)", arrays), np.maximum(np.maximum(X, N), 5))
    assert ev("max(pt, 5)", arrays).tolist() == [[5, 5], [], [300], [5, 6, 7], [5]]


def _nan_equal(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert (math.isnan(g) and math.isnan(w)) or g == pytest.approx(w)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("min(pt)", [1.0, math.nan, 300.0, 5.0, 0.5]),
        ("max(pt)", [2.0, math.nan, 300.0, 7.0, 0.5]),
        ("sum(pt)", [3.0, 0.0, 300.0, 18.0, 0.5]),
        ("mean(pt)", [1.5, math.nan, 300.0, 6.0, 0.5]),
        ("count(pt)", [2, 0, 1, 3, 1]),
        ("sum(pt > 1.5)", [1, 0, 1, 3, 0]),
        ("any(pt > 2)", [False, False, True, True, False]),
        ("all(pt > 2)", [False, True, True, True, False]),
    ],
)
def test_reductions_on_jagged_including_empty_lists(arrays, text, expected):
    out = ev(text, arrays)
    assert isinstance(out, np.ndarray), "a flat result is a numpy array"
    _nan_equal(out.tolist(), expected)


def test_reduction_dtypes(arrays):
    assert ev("count(pt)", arrays).dtype.kind == "i"
    assert ev("any(pt > 2)", arrays).dtype == np.bool_
    assert ev("min(pt)", arrays).dtype.kind == "f"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("min(x)", X),
        ("max(x)", X),
        ("sum(x)", X),
        ("mean(x)", X),
        ("count(x)", np.ones(5)),
        ("any(n > 1)", N > 1),
        ("all(n > 1)", N > 1),
        ("any(n)", N != 0),
    ],
)
def test_reductions_on_flat_are_identity(arrays, text, expected):
    out = ev(text, arrays)
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, expected)


def test_reductions_on_numpy_mapping():
    out = compile_expression("count(a) + sum(a)")({"a": np.array([1.0, 2.0])})
    np.testing.assert_allclose(out, [2.0, 3.0])


def test_reduced_jagged_combines_with_flat(arrays):
    np.testing.assert_allclose(
        ev("sum(pt) / max(n, 1)", arrays), np.array([3, 0, 300, 18, 0.5]) / np.maximum(N, 1)
    )


# --------------------------------------------------------------------------------------------------
# flat with jagged


def test_flat_with_jagged_broadcasts_per_event(arrays):
    out = ev("pt * n + x", arrays)
    assert is_jagged(out)
    want = [[v * n + x for v in lst] for lst, n, x in zip(PT, N.tolist(), X.tolist(), strict=True)]
    got = out.tolist()
    assert [len(g) for g in got] == [len(w) for w in want]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w)
    cmp = ev("pt > n", arrays)
    assert cmp.tolist() == [[True, True], [], [True], [False, False, False], [False]]


def test_is_jagged():
    assert is_jagged(ak.Array([[1], []]))
    assert is_jagged(ak.Array([[[1]], []]))
    assert not is_jagged(ak.Array([1, 2]))
    assert not is_jagged(np.array([[1, 2]]))
    assert not is_jagged(3.0)


def test_mapping_input_and_numpy_output():
    out = compile_expression("a * 2 + b")({"a": np.array([1, 2]), "b": ak.Array([0.5, 0.5])})
    assert isinstance(out, np.ndarray)
    assert out.tolist() == [2.5, 4.5]


def test_constant_expression_is_broadcast(arrays):
    out = ev("1 + 1", arrays)
    assert isinstance(out, np.ndarray) and out.tolist() == [2] * 5


def test_names_of_an_expression():
    e = compile_expression("log(Jet_pt) * nJet + pi + sum(Jet_eta > 1)")
    assert isinstance(e, Expression)
    assert e.names == frozenset({"Jet_pt", "nJet", "Jet_eta"})
    assert e.text == "log(Jet_pt) * nJet + pi + sum(Jet_eta > 1)"


def test_static_kind():
    kinds = {"j": "jagged", "f": "flat"}
    assert compile_expression("j * f").kind(kinds) == "jagged"
    assert compile_expression("sum(j) * f").kind(kinds) == "flat"
    assert compile_expression("max(j, f)").kind(kinds) == "jagged"
    assert compile_expression("max(j)").kind(kinds) == "flat"
    assert compile_expression("f + 1").kind(kinds) == "flat"


def test_missing_branch_at_evaluation(arrays):
    with pytest.raises(BranchNotFoundError) as info:
        compile_expression("pt + nn")(arrays)
    assert "'nn'" in str(info.value) and "'n'" in str(info.value)


# --------------------------------------------------------------------------------------------------
# rejections


def _column(message: str) -> int:
    m = re.search(r"at column (\d+)", message)
    assert m, f"no position in {message!r}"
    return int(m.group(1))


@pytest.mark.parametrize(
    "text, reason, col",
    [
        ("__import__('os').system('x')", "attribute", 17),
        ("x.__class__", "attribute", 2),
        ("lambda: 1", "lambda", 1),
        ("[i for i in x]", "comprehension", 1),
        ("x[0]", "subscript", 1),
        ("open('f')", "'open' is not allowed", 1),
        ("f(x=1)", "keyword", 3),
        ("log(x=1)", "keyword", 5),
        ('"str"', "string", 1),
        ("x + 'a'", "string", 5),
        ("f'{x}'", "f-string", 1),
        ("(y := 1)", "':='", 2),
        ("log(*x)", "'*'", 5),
        ("log(**x)", "'**'", 5),
        ("1 if x else 2", "where(c, a, b)", 1),
        ("x is None", "'is'", 6),
        ("x in y", "'in'", 6),
        ("x @ y", "MatMult", 1),
        ("(1, 2)", "tuple", 1),
        ("{1: 2}", "dict", 1),
        ("None", "None", 1),
        ("1j", "complex", 1),
        ("__x + 1", "'_'", 1),
        ("x + _y", "'_'", 5),
        ("log + 1", "is a function", 1),
        ("x.y(1)", "attribute", 2),
        ("(x)(1)", "'x' is not allowed", 1),
        ("log(1, 2)", "takes 1 argument", 1),
        ("where(x, 1)", "takes 3 arguments", 1),
        ("x +* 2", "syntax error", 4),
        ("log(x", "syntax error", 4),
        ("  x +* 2", "syntax error", 6),
        ("  x.y(1)", "attribute", 4),
        ("é + x.y(1)", "attribute", 6),
        ("x.__class__ + 1", "attribute", 2),
        ("`x`.y", "attribute", 4),
        ("a && && b", "syntax error", 6),
        ("`x", "unclosed backtick", 1),
        ("`` + 1", "between backticks", 1),
        ("!(x > 1) + 'a'", "string", 12),
        ("~1.5", "'~' failed", 1),
    ],
)
def test_rejected_with_reason_and_position(text, reason, col):
    with pytest.raises(ExpressionError) as info:
        compile_expression(text, where="new_branch.b.def")
    message = str(info.value)
    assert reason in message
    assert _column(message) == col
    assert "new_branch.b.def" in message
    assert info.value.col == col - 1
    assert isinstance(info.value, ValueError)


def test_unknown_function_suggests_and_lists_allowed():
    with pytest.raises(ExpressionError) as info:
        compile_expression("lgo(x)")
    message = str(info.value)
    assert "did you mean 'log'" in message
    for name in ("sqrt", "arctan2", "where", "clip"):
        assert name in message


def test_syntax_error_has_caret():
    with pytest.raises(ExpressionError) as info:
        compile_expression("x +* 2")
    lines = str(info.value).splitlines()
    assert lines[-2].strip() == "x +* 2"
    assert lines[-1].index("^") - lines[-2].index("x") == 3


@pytest.mark.parametrize("text", ["", "   ", "\t"])
def test_empty_expression(text):
    with pytest.raises(ExpressionError, match="empty"):
        compile_expression(text)


def test_not_a_string():
    with pytest.raises(ExpressionError, match="must be a string"):
        compile_expression(3)  # type: ignore[arg-type]


def test_too_long():
    with pytest.raises(ExpressionError, match="too long"):
        compile_expression("x+" * (MAX_LENGTH // 2) + "x")


@pytest.mark.parametrize(
    "text",
    [
        "-" * (MAX_DEPTH + 5) + "x",
        "+".join(["x"] * (MAX_DEPTH + 5)),
        "log(" * (MAX_DEPTH + 5) + "x" + ")" * (MAX_DEPTH + 5),
        "-" * 5000 + "x",
        "(" * 1000 + "x" + ")" * 1000,
    ],
)
def test_too_deep(text):
    with pytest.raises(ExpressionError, match="nest|syntax error"):
        compile_expression(text)


def test_just_below_the_depth_limit_is_fine():
    e = compile_expression("+".join(["x"] * 50))
    np.testing.assert_allclose(e({"x": np.array([1.0])}), [50.0])


# --------------------------------------------------------------------------------------------------
# bounded cost


@pytest.mark.parametrize(
    "text, reason, col",
    [
        ("9**9**9**9", "the constant 9**9**9 is too large (about 10**3.7e+08", 4),
        ("x * 9**9**9**9", "the constant 9**9**9 is too large", 8),
        ("10**400", "the constant 10**400 is too large (about 10**400", 1),
        ("(-10)**309", "is too large", 1),
        ("0.5 ** -2000", "the constant 0.5 ** -2000 is too large", 1),
        ("1e308*10", "the constant 1e308*10 gives inf (not a finite number", 1),
        ("x > exp(710)", "the constant exp(710) gives inf", 5),
        ("1/0", "gives inf", 1),
        ("log(0) + x", "the constant log(0) gives -inf", 1),
        ("sqrt(-1)", "gives nan", 1),
        ("1e999", "the number 1e999 is too large", 1),
        ("x + 1" + "0" * 400, "the number 1000000000", 5),
    ],
)
def test_constants_beyond_float64_are_refused_with_the_reason(text, reason, col):
    with pytest.raises(ExpressionError) as info:
        compile_expression(text, where="new_branch.big.def")
    message = str(info.value)
    assert reason in message and "new_branch.big.def" in message, message
    assert info.value.col == col - 1


def test_constant_folding_is_exact_while_int64_holds_then_float(arrays):
    assert ev("2**62 + (2**62 - 1)", arrays).tolist() == [2**63 - 1] * 5
    # past int64 an integer constant becomes the float it is (as an integer literal past int64 does),
    # never the wrapped-around int64
    for text, value in [("2**63", 2.0**63), ("2**62 * 4", 2.0**64), ("-(2**63) - 2**63", -(2.0**64)),
                        ("3**40", 3.0**40), ("abs(-2**62 * 2)", 2.0**63), ("2**1000", 2.0**1000),
                        ("10**308", 1e308), ("exp(709)", math.exp(709))]:
        out = ev(text, arrays)
        assert out.dtype == np.float64 and out[0] == pytest.approx(value, rel=1e-15), text
    assert ev("9**9", arrays).tolist() == [9**9] * 5 and ev("(-2)**63", arrays)[0] == -(2**63)


def test_brackets_nested_too_deeply_are_refused_on_the_text():
    fine = "(" * MAX_NESTING + "x" + ")" * MAX_NESTING
    assert compile_expression(fine).names == {"x"}
    for text in ("(" * 200 + "x" + ")" * 200, "log(" * (MAX_NESTING + 1) + "x" + ")" * (MAX_NESTING + 1),
                 "[" * 1000, "(" * 5000):
        with pytest.raises(ExpressionError) as info:
            compile_expression(text, where="flat_cut")
        message = str(info.value)
        assert f"brackets are nested too deeply (more than {MAX_NESTING} levels)" in message
        assert "flat_cut" in message and len(message) < 600   # long text: its start and the column


def test_too_many_nodes_are_refused_before_anything_is_built():
    text = "max(" + ", ".join(["x"] * MAX_NODES) + ")"   # shallow: one call, many arguments
    with pytest.raises(ExpressionError) as info:
        compile_expression(text, where="new_branch.m.def")
    message = str(info.value)
    assert f"expression is too large (more than {MAX_NODES} names" in message and "new_branch.m.def" in message
    assert len(message) < 600
    assert compile_expression("max(" + ", ".join(["x"] * 100) + ")").names == {"x"}


@pytest.mark.parametrize("text", ["-" * 9000 + "x", "x" + "+x" * 4000, "~" * 9999 + "1", "not " * 2400 + "x"])
def test_parser_limits_become_expression_errors(text):
    # CPython's parser raises MemoryError or RecursionError on these: both must come back as the
    # package's error, short, never as a crash of the caller
    with pytest.raises(ExpressionError) as info:
        compile_expression(text)
    assert "nested too deeply" in str(info.value) and len(str(info.value)) < 600


def test_preproc_reports_the_limits_with_the_key():
    from mlaas4hep_lab.data.preprocess import Preproc

    with pytest.raises(ExpressionError, match=r"new_branch\.big\.def.*9\*\*9\*\*9 is too large"):
        Preproc.from_json({"new_branch": {"big": {"def": "x * 9**9**9**9", "type": "flat"}}})
    with pytest.raises(ExpressionError, match=r"new_branch\.b\.cut.*brackets are nested too deeply"):
        Preproc.from_json({"new_branch": {"b": {"def": "x", "type": "flat", "cut": "(" * 200 + "x" + ")" * 200}}})


def test_unknown_branch_with_suggestion():
    with pytest.raises(BranchNotFoundError) as info:
        compile_expression("nJet + Jet_ptt", names=["nJet", "Jet_pt", "Jet_eta"], where="new_branch.a.def")
    message = str(info.value)
    assert "'Jet_ptt'" in message and "did you mean 'Jet_pt'" in message
    assert "new_branch.a.def" in message and "nJet + Jet_ptt" in message
    assert isinstance(info.value, KeyError)


def test_known_names_allow_functions_and_pi():
    e = compile_expression("log(a) * pi", names=["a"])
    assert e.names == {"a"}


def test_branch_named_like_a_function_when_names_say_so():
    e = compile_expression("count * 2", names=["count"])
    np.testing.assert_allclose(e({"count": np.array([1, 2])}), [2, 4])


def test_allowed_functions_cover_the_documented_whitelist():
    documented = (
        "log exp sqrt abs sin cos tan arctan2 sinh cosh tanh min max sum mean count any all where clip"
    )
    assert set(documented.split()) <= ALLOWED_FUNCTIONS


def test_errors_at_evaluation_carry_the_position():
    e = compile_expression("x & 1.5")
    with pytest.raises(ExpressionError) as info:
        e({"x": np.array([1.0, 2.0])})
    assert "'&' failed" in str(info.value) and info.value.col == 0


def test_no_code_evaluation_in_the_module():
    folder = Path(expressions.__file__).parent
    for module in ("expressions", "_expression_compiler", "_expression_functions", "_expression_text"):
        source = (folder / f"{module}.py").read_text()
        for token in ("eval" + "(", "exec" + "(", "compile" + "(", "__import__"):
            assert token not in source, (module, token)


def _compile_in_child(text: str, names: list[str]):
    return compile_expression(text, names)


@pytest.mark.parametrize("text, error", [("pt *", ExpressionError), ("ptt * 2", BranchNotFoundError)])
def test_errors_come_back_whole_from_a_worker_process(text, error):
    # the package's errors take other constructor arguments than the message they keep: they must still
    # unpickle (ProcessPoolExecutor, Dask, multiprocessing), as themselves, with their attributes
    import concurrent.futures
    import multiprocessing

    with pytest.raises(error) as local:
        compile_expression(text, ["pt", "eta"])
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        with pytest.raises(error) as remote:
            pool.submit(_compile_in_child, text, ["pt", "eta"]).result()
    assert type(remote.value) is type(local.value)
    assert str(remote.value) == str(local.value) and vars(remote.value) == vars(local.value)


# --------------------------------------------------------------------------------------------------
# names with '.' or '/', ROOT's && || !, count and len

SPLIT_NAMES = ["Muon.PT", "Muon.Eta", "Info/runNum", "Info/rhoIso", "MET.MET", "x"]


@pytest.fixture
def split_arrays() -> ak.Array:
    return ak.Array({"Muon.PT": ak.Array(PT), "Muon.Eta": ak.Array([[0.1, -2.0], [], [1.5], [0, 1, 2], [3.0]]),
                     "Info/runNum": N, "Info/rhoIso": X, "MET.MET": X * 10, "x": X})


def test_names_with_dots_and_slashes_between_backticks(split_arrays):
    e = compile_expression("`Info/runNum` * 2 + `MET.MET`", names=SPLIT_NAMES)
    assert e.names == {"Info/runNum", "MET.MET"}
    np.testing.assert_allclose(e(split_arrays), N * 2 + X * 10)
    out = compile_expression("sum(`Muon.PT` * (`Muon.Eta` > 0))")(split_arrays)
    assert out.tolist() == [1.0, 0.0, 300.0, 13.0, 0.5]


def test_plain_dotted_names_are_branches_as_in_rdataframe(split_arrays):
    plain = compile_expression("max(Muon.PT) + MET.MET", names=SPLIT_NAMES)
    quoted = compile_expression("max(`Muon.PT`) + `MET.MET`", names=SPLIT_NAMES)
    assert plain.names == quoted.names == {"Muon.PT", "MET.MET"}
    _nan_equal(plain(split_arrays).tolist(), quoted(split_arrays).tolist())
    # without known names (preproc.json is parsed before the tree is opened) the dotted name is kept whole
    assert compile_expression("Muon.PT > 10").names == {"Muon.PT"}


@pytest.mark.parametrize(
    "text, suggested",
    [
        ("Info + 1", "`Info/rhoIso`, `Info/runNum`"),      # the members of the object, quoted
        ("Info/runNum > 1", "`Info/rhoIso`, `Info/runNum`"),  # '/' unquoted is a division
        ("Muon > 1", "`Muon.Eta`, `Muon.PT`"),
        ("`Muon.Pt` > 1", "`Muon.PT`"),
        ("Muon.Pt > 1", "`Muon.PT`"),
    ],
)
def test_unknown_names_suggest_the_quoted_spelling(text, suggested):
    with pytest.raises(BranchNotFoundError) as info:
        compile_expression(text, names=SPLIT_NAMES, where="new_branch.b.def")
    message = str(info.value)
    assert f"did you mean {suggested}" in message, message
    assert "between backticks" in message and "new_branch.b.def" in message and repr(text) in message
    assert isinstance(info.value, KeyError)


def test_unknown_name_message_survives_pickling():
    import pickle

    with pytest.raises(BranchNotFoundError) as info:
        compile_expression("Info + 1", names=SPLIT_NAMES)
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value) and again.branch == "Info"


def test_attribute_of_a_branch_is_not_a_branch():
    with pytest.raises(BranchNotFoundError, match=r"attribute access \('.real'\) is not allowed"):
        compile_expression("x.real + 1", names=["x"])


def test_quoted_name_may_be_anything_but_is_only_a_name(split_arrays):
    # a quoted name is looked up, never evaluated: "__class__" or "_q0" are just (unknown) names
    for text in ("`__class__` + 1", "`_q0` + x", "`x + 1`"):
        with pytest.raises(BranchNotFoundError):
            compile_expression(text, names=SPLIT_NAMES)
    e = compile_expression("`x` + `_q0`", names=["x", "_q0"])
    np.testing.assert_allclose(e({"x": X, "_q0": X}), 2 * X)
    with pytest.raises(ExpressionError, match="'_'"):  # the placeholder spelling cannot be forged
        compile_expression("_q0 + `x`", names=["x", "_q0"])


@pytest.mark.parametrize(
    "root, python",
    [
        ("n > 1 && x < 5", "n > 1 and x < 5"),
        ("n > 1 || x < 0", "n > 1 or x < 0"),
        ("!(n > 1)", "not (n > 1)"),
        ("!n", "n == 0"),
        ("!n == 0", "(n == 0) == 0"),              # '!' binds tightly, as in C++
        ("n != 2 && !(x != 1)", "n != 2 and x == 1"),
        ("n>1&&x<5||!x", "(n > 1 and x < 5) or not x"),
        ("all(pt > 1 && pt < 10)", "all((pt > 1) & (pt < 10))"),
        ("count(!(pt > 5))", "count(pt <= 5)"),
    ],
)
def test_root_logical_operators(arrays, root, python):
    assert as_list(ev(root, arrays)) == as_list(ev(python, arrays))


def test_root_operators_are_not_rewritten_inside_strings():
    with pytest.raises(ExpressionError) as info:
        compile_expression("n > 1 && 'a&&b' != x")
    assert "strings are not allowed" in info.value.reason and info.value.col == 9


def test_error_columns_point_into_the_text_as_written():
    with pytest.raises(ExpressionError) as info:
        compile_expression("`Info/runNum` && lgo(x)")
    assert info.value.col == 17 and "did you mean 'log'" in str(info.value)
    lines = str(info.value).splitlines()
    assert lines[-2].strip() == "`Info/runNum` && lgo(x)"
    assert lines[-1].index("^") - lines[-2].index("`") == 17


@pytest.mark.parametrize(
    "text, expected",
    [
        ("count(pt > 1.5)", [1, 0, 1, 3, 0]),     # true values, as ROOT's Sum$(cond)
        ("len(pt > 1.5)", [2, 0, 1, 3, 1]),       # elements, as ROOT's Length$
        ("count(pt)", [2, 0, 1, 3, 1]),
        ("len(pt)", [2, 0, 1, 3, 1]),
        ("count(x > 0.7)", [0, 0, 1, 1, 1]),      # a flat condition: 1 where it holds
        ("len(x)", [1, 1, 1, 1, 1]),
        ("count(pt > 1.5) == sum(pt > 1.5)", [True] * 5),
    ],
)
def test_count_counts_true_values_and_len_counts_elements(arrays, text, expected):
    out = ev(text, arrays)
    assert out.tolist() == expected
    assert out.dtype.kind in "ib"


def test_count_of_a_boolean_branch_counts_its_true_values():
    data = ak.Array({"btag": ak.Array([[True, False, True], [], [False]]), "pt": ak.Array([[1.0, 2, 3], [], [4.0]])})
    assert ev("count(btag)", data).tolist() == [2, 0, 0]
    assert ev("len(btag)", data).tolist() == [3, 0, 1]
    assert ev("count(btag && pt > 1.5)", data).tolist() == [1, 0, 0]
    assert compile_expression("count(btag)").kind({"btag": "jagged"}) == "flat"


def test_cost_limits_hold_with_quoted_names_and_root_operators():
    text = " && ".join(f"`a.b{i}` > 0" for i in range(MAX_NODES // 3 + 1))
    with pytest.raises(ExpressionError, match="too large"):
        compile_expression(text)
    with pytest.raises(ExpressionError, match="nested too deeply"):
        compile_expression("!" * (MAX_DEPTH + 5) + "`a.b`")


def test_comparisons_count_as_integers_in_arithmetic():
    x = np.array([-1.0, 0.5, 2.0])
    assert compile_expression("(x > 0) + (x > 1)")({"x": x}).tolist() == [0, 1, 2]
    assert compile_expression("(x > 0) - (x > 1)")({"x": x}).tolist() == [0, 1, 0]
    assert compile_expression("-(x > 0)")({"x": x}).tolist() == [0, -1, -1]
    assert compile_expression("-True + 2 * (1 > 0) + 0 * x")({"x": x}).tolist() == [1, 1, 1]
    jets = ak.Array([[1.0, 2.5, 3.0], []])
    assert compile_expression("sum((j > 1) + (j > 2))")({"j": jets}).tolist() == [4, 0]
