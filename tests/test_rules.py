"""The rule evaluator: sums of pass/fail tests are counted in bytes, with exactly the float path's values."""

from __future__ import annotations

import ast

import numpy as np
import pytest

from tscope.reason import rules
from tscope.reason.rules import compile_expression, default_rules, evaluate, evaluate_index


def _float_path(text: str, env: dict) -> np.ndarray:
    """The expression evaluated op by op in float32, as numpy does without the byte counts."""
    tree = compile_expression(text, "test")
    ops = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide,
           ast.BitAnd: np.logical_and, ast.BitOr: np.logical_or}
    cmp = {ast.Gt: np.greater, ast.GtE: np.greater_equal, ast.Lt: np.less, ast.LtE: np.less_equal}

    def run(node):
        if isinstance(node, ast.Expression):
            return run(node.body)
        if isinstance(node, ast.Constant):
            return np.float32(node.value)
        if isinstance(node, ast.Name):
            return env[node.id]
        if isinstance(node, ast.UnaryOp):
            return (np.logical_not if isinstance(node.op, ast.Invert) else np.negative)(run(node.operand))
        if isinstance(node, ast.BinOp):
            return ops[type(node.op)](run(node.left), run(node.right))
        assert isinstance(node, ast.Compare) and len(node.ops) == 1
        return cmp[type(node.ops[0])](run(node.left), run(node.comparators[0]))

    with np.errstate(divide="ignore", invalid="ignore"):
        return run(tree)


@pytest.fixture
def env():
    rng = np.random.default_rng(3)
    bands = {n: rng.uniform(-0.05, 0.6, (64, 80)).astype(np.float32) for n in ("a", "b", "c")}
    bands["a"][::7, ::5] = np.nan  # NaN fails every test, as in the float path
    return bands


@pytest.mark.parametrize("text", [
    "1 * (a > b) + 1 * (b > 0.2) + (c < 0.1) * 1",
    "1 * (a > b) + 1 * ((b > 0.2) & (c < 0.3)) + 1 * ~(a < 0.1) >= 2",
    "1 * (a > b) - 1 * (b > 0.2)",  # a difference leaves the counts: float32, never a wrapped byte
    "(1 * (a > b) + 1 * (c > 0.1)) * 0.5 + a",
    "(1 * (a > b) + 1 * (c > 0.1)) / (1 * (b > 0.3) + 1)",
    "-(1 * (a > b) + 1 * (c > 0.1))",
])
def test_counted_tests_equal_the_float_path(env, text):
    got = evaluate(compile_expression(text, "test"), env)
    want = _float_path(text, env)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_more_tests_than_a_byte_holds_are_summed_in_floats(env):
    text = " + ".join(["1 * (a > b)"] * 300)
    assert rules._tests_counted(compile_expression(text, "test").body) == 300
    got = evaluate(compile_expression(text, "test"), env)
    np.testing.assert_array_equal(got, np.where(env["a"] > env["b"], np.float32(300), np.float32(0)))


def test_dswe_water_is_unchanged_by_the_byte_counts(monkeypatch):
    rng = np.random.default_rng(5)
    bands = {n: rng.uniform(0, 0.4, (128, 128)).astype(np.float32)
             for n in ("blue", "green", "red", "nir", "swir16", "swir22")}
    indices = default_rules().indices
    counted = evaluate_index(indices, "dswe_tests", dict(bands))
    monkeypatch.setattr(rules, "_tests_counted", lambda node: None)  # the plain float32 path
    floats = evaluate_index(indices, "dswe_tests", dict(bands))
    assert counted.dtype == floats.dtype == np.float32
    np.testing.assert_array_equal(counted, floats)
    assert 0 < np.count_nonzero(counted >= 3) < counted.size
