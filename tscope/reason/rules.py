"""The declarative rules of ``models/spectral.toml`` and a safe evaluator for their expressions.

Expressions are parsed with :mod:`ast` and only arithmetic, comparisons, ``& | ~``, numbers, names
and ``log10`` are allowed, so a rules file can never run code.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from tscope.errors import InputError

_BINOPS = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide,
           ast.BitAnd: np.logical_and, ast.BitOr: np.logical_or}
_CMPOPS = {ast.Gt: np.greater, ast.GtE: np.greater_equal, ast.Lt: np.less, ast.LtE: np.less_equal,
           ast.Eq: np.equal, ast.NotEq: np.not_equal}
_FUNCS = {"log10": np.log10}


def _check(node: ast.AST, where: str) -> None:
    allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare, ast.Name, ast.Load, ast.Constant,
               ast.Invert, ast.USub, ast.Call, *_BINOPS, *_CMPOPS)
    for sub in ast.walk(node):
        if not isinstance(sub, allowed):
            raise ValueError(f"{where}: {type(sub).__name__} is not allowed in a rule expression")
        if isinstance(sub, ast.Call) and not (isinstance(sub.func, ast.Name) and sub.func.id in _FUNCS):
            raise ValueError(f"{where}: only {', '.join(_FUNCS)} may be called")
        if isinstance(sub, ast.Call) and (sub.keywords or len(sub.args) != 1):
            raise ValueError(f"{where}: {sub.func.id}() takes one argument")
        # float("abc") would fail only when the rule runs, as an internal error: numbers only.
        if isinstance(sub, ast.Constant) and (isinstance(sub.value, bool) or not isinstance(sub.value, int | float)):
            raise ValueError(f"{where}: {sub.value!r} is not a number")


@cache
def names_in(expr: ast.Expression) -> frozenset[str]:
    """The bands, indices and thresholds ``expr`` names (cached: a pass asks for every window)."""
    return frozenset(n.id for n in ast.walk(expr) if isinstance(n, ast.Name) and n.id not in _FUNCS)


def _is_test(node: ast.AST) -> bool:
    """Whether ``node`` is a pass/fail test: its value is boolean whatever the bands."""
    return (isinstance(node, ast.Compare)
            or (isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitAnd | ast.BitOr))
            or (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Invert)))


@cache
def _tests_counted(node: ast.AST) -> int | None:
    """How many tests ``node`` counts when it is a sum of ``1 * (test)`` terms (DSWE's form), else None."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        for one, test in ((node.left, node.right), (node.right, node.left)):
            if isinstance(one, ast.Constant) and one.value == 1 and _is_test(test):
                return 1
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _tests_counted(node.left), _tests_counted(node.right)
        if left is not None and right is not None:
            return left + right
    return None


def _count(node: ast.BinOp, env: Mapping[str, np.ndarray | float]) -> np.ndarray:
    """A sum of ``1 * (test)`` terms as uint8: each test's booleans viewed as 0/1 bytes and added, a tenth
    of the cost of float32 products and sums (DSWE's five tests were a quarter of a window's rules)."""
    if isinstance(node.op, ast.Mult):
        test = node.right if _is_test(node.right) else node.left
        return np.asarray(_eval(test, env)).view(np.uint8)
    return np.add(_count(node.left, env), _count(node.right, env))


def _float(value):
    """A uint8 count as float32, the values the float path gives, wherever it meets other arithmetic."""
    return value.astype(np.float32) if isinstance(value, np.ndarray) and value.dtype == np.uint8 else value


def _eval(node: ast.AST, env: Mapping[str, np.ndarray | float]):
    if isinstance(node, ast.Expression):
        return _eval(node.body, env)
    if isinstance(node, ast.Constant):
        # float32 like the bands: a Python float would turn 1 * (a > b) into float64 (twice the memory traffic).
        return np.float32(node.value)
    if isinstance(node, ast.Name):
        return env[node.id]
    if isinstance(node, ast.UnaryOp):
        value = _float(_eval(node.operand, env))
        return np.logical_not(value) if isinstance(node.op, ast.Invert) else np.negative(value)
    if isinstance(node, ast.BinOp):
        counted = _tests_counted(node)
        if counted is not None and counted <= np.iinfo(np.uint8).max:
            return _count(node, env)
        return _BINOPS[type(node.op)](_float(_eval(node.left, env)), _float(_eval(node.right, env)))
    if isinstance(node, ast.Compare):
        left, result = _float(_eval(node.left, env)), None
        for op, comp in zip(node.ops, node.comparators, strict=True):
            right = _float(_eval(comp, env))
            part = _CMPOPS[type(op)](left, right)
            result = part if result is None else np.logical_and(result, part)
            left = right
        return result
    if isinstance(node, ast.Call):
        return _FUNCS[node.func.id](*(_float(_eval(a, env)) for a in node.args))
    raise ValueError(f"unsupported node {type(node).__name__}")


def evaluate(expr: ast.Expression, env: Mapping[str, np.ndarray | float]) -> np.ndarray:
    """Evaluate a checked expression over arrays in ``env`` (float math; NaN compares False).

    A module-level recursive function, not a closure: a self-referencing closure would be a
    reference cycle holding every window's arrays until the cyclic garbage collector runs.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return _float(_eval(expr, env))


def compile_expression(text: str, where: str) -> ast.Expression:
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"{where}: {exc.msg} in {text!r}") from None
    _check(tree, where)
    return tree


@dataclass(frozen=True)
class Threshold:
    """A per-scene threshold computed from the histogram of ``index`` over the valid pixels."""

    name: str
    index: str
    method: str
    range: tuple[float, float]
    fallback: float


@dataclass(frozen=True)
class Rule:
    cls: str
    needs: tuple[str, ...]
    expression: str
    source: str
    compiled: ast.Expression = field(repr=False, compare=False)
    thresholds: tuple[Threshold, ...] = ()
    same_as: tuple[str, ...] = ()

    @property
    def indices(self) -> set[str]:
        return names_in(self.compiled) - set(self.needs) - {t.name for t in self.thresholds}


@dataclass(frozen=True)
class RuleSet:
    indices: dict[str, ast.Expression]
    index_text: dict[str, str]
    rules: tuple[Rule, ...]

    def classes(self) -> list[str]:
        out: list[str] = []
        for rule in self.rules:
            for name in (rule.cls, *rule.same_as):
                if name not in out:
                    out.append(name)
        return out

    def rule_for(self, cls: str, bands: set[str]) -> Rule:
        """The first rule for ``cls`` whose bands the scene has, or an InputError saying why not."""
        candidates = [r for r in self.rules if cls == r.cls or cls in r.same_as]
        if not candidates:
            raise InputError(
                f"the spectral backend has no rule for {cls.replace('_', ' ')}; it maps "
                + ", ".join(c.replace("_", " ") for c in self.classes())
                + " (use --backend terrascope for other classes)"
            )
        for rule in candidates:
            if set(rule.needs) <= bands:
                return rule
        need = min(candidates, key=lambda r: len(set(r.needs) - bands))
        raise InputError(
            f"{cls.replace('_', ' ')} needs {', '.join(sorted(set(need.needs) - bands))}; this scene has "
            + ", ".join(sorted(bands))
        )


def index_bands(indices: Mapping[str, ast.Expression], name: str) -> set[str]:
    """The bands index ``name`` reads, through the indices it uses."""
    out: set[str] = set()
    for used in names_in(indices[name]):
        out |= index_bands(indices, used) if used in indices else {used}
    return out


def evaluate_index(indices: Mapping[str, ast.Expression], name: str, env: dict) -> np.ndarray:
    """Index ``name`` over the bands in ``env``, computing (and caching in ``env``) the indices it uses."""
    if name not in env:
        for used in names_in(indices[name]):
            if used in indices:
                evaluate_index(indices, used, env)
        env[name] = evaluate(indices[name], env)
    return env[name]


def _load(text: str, where: str) -> RuleSet:
    from tscope.geo.bands import COMMON_NAMES

    spec = tomllib.loads(text)
    index_text = dict(spec.get("indices", {}))
    indices: dict[str, ast.Expression] = {}
    for name, text in index_text.items():
        expr = compile_expression(text, f"{where} index {name}")
        # An index may use bands and indices defined above it (DSWE's tests reuse MNDWI and NDVI);
        # only earlier ones, so there is never a cycle.
        unknown = names_in(expr) - set(COMMON_NAMES) - set(indices)
        if unknown:
            raise ValueError(f"{where} index {name}: {', '.join(sorted(unknown))} is neither a band common name"
                             " nor an index defined above it")
        indices[name] = expr
    rules = []
    for i, raw in enumerate(spec.get("rule", [])):
        label = f"{where} rule {i + 1} ({raw.get('class')})"
        needs = raw.get("needs")
        if not isinstance(needs, list) or not all(isinstance(b, str) and b in COMMON_NAMES for b in needs):
            raise ValueError(f"{label}: needs must be a list of band common names ({', '.join(COMMON_NAMES)})")
        thresholds = []
        for name, t in raw.get("threshold", {}).items():
            bounds = t.get("range")
            if not (isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(v, int | float) for v in bounds)):
                raise ValueError(f"{label}: threshold {name}.range must be two numbers")
            if t.get("index") not in indices:
                raise ValueError(f"{label}: threshold {name}.index must name an index")
            thresholds.append(Threshold(name, t["index"], t.get("method", "otsu"), tuple(bounds),
                                        float(t["fallback"])))
        compiled = compile_expression(raw["expression"], label)
        # Every band the rule touches, directly or through an index, must be declared in needs, so a
        # scene without it gets "X needs B" instead of a failure halfway through the scene.
        used = set()
        for name in names_in(compiled) | {t.index for t in thresholds}:
            if name in indices:
                used |= index_bands(indices, name)
            elif name in COMMON_NAMES:
                used.add(name)
            elif name not in {t.name for t in thresholds}:
                raise ValueError(f"{label}: {name!r} is neither a band, an index nor a threshold")
        if used - set(needs):
            raise ValueError(f"{label}: uses {', '.join(sorted(used - set(needs)))} but needs does not list it")
        rules.append(Rule(
            cls=raw["class"], needs=tuple(needs), expression=raw["expression"], source=raw["source"],
            compiled=compiled, thresholds=tuple(thresholds), same_as=tuple(raw.get("same_as", ())),
        ))
    return RuleSet(indices, index_text, tuple(rules))


@cache
def default_rules() -> RuleSet:
    return _load(resources.files("tscope.rules").joinpath("spectral.toml").read_text(), "spectral.toml")


def load_rules(path: str | Path | None = None) -> RuleSet:
    """The shipped rules, or those of a user's TOML file of the same shape."""
    if path is None:
        return default_rules()
    path = Path(path)
    try:
        return _load(path.read_text(), path.name)
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"--rules {path}: {exc}") from None


def otsu(values: np.ndarray, bins: int = 256, value_range: tuple[float, float] | None = None) -> float:
    """Otsu's threshold of a 1-D sample (histogram based, so it also works on accumulated counts)."""
    hist, edges = np.histogram(values, bins=bins, range=value_range)
    return otsu_from_histogram(hist, edges)


def otsu_from_histogram(hist: np.ndarray, edges: np.ndarray) -> float:
    centres = (edges[:-1] + edges[1:]) / 2
    weight1 = np.cumsum(hist)
    weight2 = weight1[-1] - weight1
    mean_cum = np.cumsum(hist * centres)
    total = mean_cum[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean1 = mean_cum / weight1
        mean2 = (total - mean_cum) / weight2
        between = weight1 * weight2 * (mean1 - mean2) ** 2
    between = np.nan_to_num(between[:-1], nan=-1.0)
    if between.max() <= 0:
        return float("nan")
    # Between two well-separated modes every empty bin gives the same split: take the middle of
    # that plateau rather than its first bin, so the threshold sits in the valley.
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float(np.mean(edges[1:][best]))
