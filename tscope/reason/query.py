"""Questions -> structured queries.

A :class:`Query` says which measure answers the question (``task``), on which classes, in which
frames and units. The parser is deliberately plain: keyword patterns for the task, the class
vocabulary of ``models/classes.toml`` for the classes. What it cannot parse is an
:class:`~tscope.errors.InputError` that lists what it can answer.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources

from tscope.errors import InputError

TASKS = ("coverage", "area", "compare", "adjacency", "distance", "count", "existence", "locate", "change")
FREE = "free"  # a question no measure answers: only the TerraScope model answers it, as written

EXAMPLES = {
    "coverage": "What percentage of the image is covered by forest?",
    "area": "What is the area of water in hectares?",
    "compare": "Which is larger, forest or grassland?",
    "adjacency": "Does the forest border the water?",
    "distance": "How far is the water from the built-up area?",
    "count": "How many water bodies larger than 1 ha are there?",
    "existence": "Is there any snow?",
    "locate": "Where is the water located?",
    "change": "How much did the water area change between the two images?",
}

AREA_UNITS = {"m2": 1.0, "ha": 1e4, "km2": 1e6}
LENGTH_UNITS = {"m": 1.0, "km": 1e3}


@dataclass(frozen=True)
class ClassInfo:
    name: str
    label: str
    synonyms: tuple[str, ...]


@cache
def vocabulary() -> dict[str, ClassInfo]:
    text = resources.files("tscope.rules").joinpath("classes.toml").read_text()
    return {
        name: ClassInfo(name, spec["label"], tuple(s.lower() for s in spec["synonyms"]))
        for name, spec in tomllib.loads(text).items()
    }


@cache
def _class_pattern() -> tuple[re.Pattern, dict[str, str]]:
    lookup = {}
    for info in vocabulary().values():
        lookup[info.name.replace("_", " ")] = info.name
        for word in info.synonyms:
            lookup[word] = info.name
    words = sorted(lookup, key=len, reverse=True)
    pattern = re.compile(r"(?<![\w-])(" + "|".join(re.escape(w) for w in words) + r")(?![\w-])")
    return pattern, lookup


@dataclass
class Query:
    """A parsed question. ``classes`` in the order the question names them."""

    question: str
    task: str
    classes: list[str]
    frames: list[str] = field(default_factory=lambda: ["t1"])
    unit: str | None = None
    min_area_m2: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def label(self, name: str) -> str:
        return vocabulary()[name].label if name in vocabulary() else name


# Task keywords, tried in this order: the first that matches decides.
_TASK_PATTERNS = [
    ("change", r"\bchang\w*|\bincreas\w*|\bdecreas\w*|\bgain\w*|\blos[st]\b|\bgrow\w*|\bshr[ia]nk\w*"
               r"|\bbetween the two\b|\bbefore and after\b|\bt1\b.*\bt2\b"),
    ("area", r"\bhow many (hectares|ha|acres|km2|km²|m2|m²|square)\b"),
    ("distance", r"\bhow far\b|\bdistance\b|\bclosest\b|\bnearest\b|\bhow close\b"
                 r"|\b\d[\d,.]*\s*(m|km|metres?|meters?|kilomet\w*)\s+(from|of|away)\b"),
    ("adjacency", r"\bborder\w*|\badjacent\b|\badjoin\w*|\btouch\w*|\bnext to\b|\bneighbou?r\w*"
                  r"|\bshare\w* (a )?(common )?boundar\w*|\bcontiguous\b"),
    ("compare", r"\bwhich\b.*\b(larger|bigger|greater|more|smaller|less|dominant)\b"
                r"|\b(larger|bigger|greater|smaller)\b.*\bor\b|\bcompare\b|\b(more|less|fewer)\b.*\bthan\b"),
    ("count", r"\bhow many\b|\bnumber of\b|\bcount\b"),
    ("locate", r"\bwhere\b|\bwhich (part|side|corner|direction)\b|\blocat\w*\b|\bposition\b"),
    ("existence", r"^(is|are|does|do)\b.*\b(there|any|contain\w*|present|visible|exist\w*)\b"
                  r"|\bany\b.*\?$|\bpresence\b"),
    ("coverage", r"\bpercent\w*|%|\bproportion\b|\bfraction\b|\bshare\b|\bhow much of\b|\bcover\w*\b.*\bimage\b"
                 r"|\bratio\b"),
    ("area", r"\barea\b|\bhow (large|big|much)\b|\bkm2\b|\bkm²|\bhectares?\b|\bsquare\b|\bm2\b|\bm²|\bsurface\b"),
]


def _unit(text: str, task: str) -> str | None:
    if task == "distance":
        if re.search(r"\bkm\b|\bkilomet", text):
            return "km"
        if re.search(r"\bmet(er|re)s?\b|\bm\b", text):
            return "m"
        return None
    if re.search(r"km2|km²|km\^2|square kilomet|sq\.? ?km", text):
        return "km2"
    if re.search(r"\bhectares?\b|\bha\b", text):
        return "ha"
    if re.search(r"\bm2\b|m²|square met|sq\.? ?m\b", text):
        return "m2"
    return None


_AREA_VALUE = (r"([0-9][0-9,]*(?:\.[0-9]+)?)\s*(km2|km²|square kilomet\w*|hectares?|ha|m2|m²|square met\w*)"
               r"(?![\w²])")


def _area_value(number: str, unit: str) -> float:
    value = float(number.replace(",", ""))
    if unit.startswith(("km", "square kilomet")):
        return value * 1e6
    if unit.startswith(("ha", "hectare")):
        return value * 1e4
    return value


def _min_area(text: str) -> float | None:
    """The minimum region size a count or existence question states ("larger than 2 ha"), in m²."""
    upper = re.search(r"\b(?:smaller|less|fewer|under|below|at most|up to)\b(?: than)?\s*" + _AREA_VALUE, text)
    if upper:
        raise InputError("tscope counts regions of at least a size; a maximum size"
                         f" ({upper.group(0).strip()!r}) is not supported")
    match = re.search(r"\b(?:(?:larger|bigger|greater|more) than|at least|over|above|minimum(?: size)? of)\s*"
                      + _AREA_VALUE, text)
    return _area_value(match.group(1), match.group(2)) if match else None


class NotMeasurable(InputError):
    """The question is not one of the measurable tasks (the TerraScope model can still answer it)."""


# Options of a multiple-choice question, as TerraScope-Bench writes them: "A. ..." on lines of their own.
_OPTION = re.compile(r"^\s*\(?([A-Z])[.):]\s+\S", re.MULTILINE)


def choice_letters(question: str) -> str:
    """The option letters of a multiple-choice question ("" when it has fewer than two options)."""
    letters = "".join(m.group(1) for m in _OPTION.finditer(question))
    return letters if len(letters) >= 2 else ""


def free_query(question: str, n_scenes: int = 1) -> Query:
    """The query of a free-form question: the model answers it as written, on every frame given."""
    return Query(question=question, task=FREE, classes=[], frames=["t1", "t2"][:n_scenes])


def known_tasks_message() -> str:
    examples = "; ".join(f"{task}: {q!r}" for task, q in EXAMPLES.items())
    classes = ", ".join(info.label for info in vocabulary().values())
    return f"it can answer {examples}. Classes: {classes}"


def parse_query(question: str, n_scenes: int = 1) -> Query:
    """Parse ``question`` (about ``n_scenes`` scenes) into a :class:`Query`.

    A question no measure answers (no task, no known class, a negated class, or multiple-choice options)
    raises :class:`NotMeasurable`; other mistakes in a measurable question raise :class:`InputError`.
    """
    text = " ".join(question.lower().split())
    if not text:
        raise InputError("the question is empty; " + known_tasks_message())
    if choice_letters(question):
        raise NotMeasurable(f"{question.splitlines()[0]!r} is a multiple-choice question")
    pattern, lookup = _class_pattern()
    classes: list[str] = []
    for match in pattern.finditer(text):
        name = lookup[match.group(1)]
        if name not in classes:
            classes.append(name)
    if re.search(r"\bnot\b|\bnon-|\bother than\b|\bexcept\b|\bexcluding\b|\bwithout\b", text):
        raise NotMeasurable(f"{question!r} negates a class; ask about the class itself"
                            f" (e.g. {EXAMPLES['coverage']!r})")
    # "more ... than" also appears in thresholds ("more than 1 ha"): a comparison needs two classes.
    task = next((name for name, pat in _TASK_PATTERNS
                 if re.search(pat, text) and not (name == "compare" and len(classes) < 2)), None)
    if n_scenes == 2 and task != "change":
        # With a pair, a question about amounts is about their change ("how much water in each?").
        if task not in ("area", "coverage", None):
            raise InputError(f"with two scenes tscope answers change questions, not {task}; ask one scene")
        task = "change"
    if task == "change" and n_scenes != 2:
        raise InputError("a change question needs two scenes: tscope ask BEFORE.tif AFTER.tif \"...\"")
    if task is None:
        raise NotMeasurable(f"cannot tell what {question!r} asks; " + known_tasks_message())
    if not classes:
        raise NotMeasurable(
            f"no known land-cover class in {question!r}; classes: "
            + ", ".join(info.label for info in vocabulary().values())
        )
    needs_two = task in ("compare", "adjacency", "distance")
    if needs_two and len(classes) < 2:
        raise InputError(
            f"a {task} question needs two classes, found only {classes[0]!r}; e.g. {EXAMPLES[task]!r}"
        )
    keep = 2 if needs_two or task == "locate" else 1
    return Query(
        question=question,
        task=task,
        classes=classes[:keep],
        frames=["t1", "t2"] if task == "change" else ["t1"],
        unit=_unit(text, task),
        min_area_m2=_min_area(text) if task in ("count", "existence") else None,
    )
