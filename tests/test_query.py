"""The question parser: tasks, classes with synonyms, units, and errors that list what it can answer."""

from __future__ import annotations

import pytest

from tscope.errors import InputError
from tscope.reason.query import parse_query


@pytest.mark.parametrize(
    ("question", "task", "classes"),
    [
        ("What percentage of the image is covered by forest?", "coverage", ["forest"]),
        ("what % is woodland?", "coverage", ["forest"]),
        ("What is the area of the lakes in hectares?", "area", ["water"]),
        ("How large is the urban area?", "area", ["built_up"]),
        ("Which is larger, farmland or grassland?", "compare", ["cropland", "grassland"]),
        ("Does the forest border the water?", "adjacency", ["forest", "water"]),
        ("Is the river adjacent to the buildings?", "adjacency", ["water", "built_up"]),
        ("How far is the river from the settlement?", "distance", ["water", "built_up"]),
        ("How many water bodies are there?", "count", ["water"]),
        ("Is there any snow?", "existence", ["snow"]),
        ("Where is the bare soil located?", "locate", ["bare_soil"]),
        ("Where is the water relative to the forest?", "locate", ["water", "forest"]),
    ],
)
def test_tasks_and_classes(question, task, classes):
    q = parse_query(question)
    assert q.task == task
    assert q.classes == classes


def test_units_and_minimum_size():
    assert parse_query("What is the area of forest in km2?").unit == "km2"
    assert parse_query("How much water is there, in square metres? What area?").unit == "m2"
    assert parse_query("How far is the water from the forest in kilometres?").unit == "km"
    q = parse_query("How many lakes larger than 2 ha are there?")
    assert q.min_area_m2 == pytest.approx(20000)


def test_change_needs_two_scenes():
    q = parse_query("How much did the water area change between the two images?", n_scenes=2)
    assert (q.task, q.frames) == ("change", ["t1", "t2"])
    assert parse_query("How much forest is there?", n_scenes=2).task == "change"
    with pytest.raises(InputError, match="two scenes"):
        parse_query("How much did the water change?", n_scenes=1)


@pytest.mark.parametrize(
    ("question", "message"),
    [
        ("What is the meaning of life?", "cannot tell what"),
        ("What percentage is covered by dragons?", "no known land-cover class"),
        ("Does the forest border anything?", "needs two classes"),
        ("", "empty"),
    ],
)
def test_errors_list_what_it_can_answer(question, message):
    with pytest.raises(InputError, match=message) as info:
        parse_query(question)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("question", "task", "classes", "min_area"),
    [
        ("How many hectares of cropland are there?", "area", ["cropland"], None),
        ("How many lakes that cover over 2 ha are there?", "count", ["water"], 20000),
        ("How many ponds larger than 1,000 m2 are there?", "count", ["water"], 1000),
        ("How many lakes covering more than 1 ha are there?", "count", ["water"], 10000),
        ("Is the water more than 100 m from the forest?", "distance", ["water", "forest"], None),
        ("Is there less forest than grassland?", "compare", ["forest", "grassland"], None),
    ],
)
def test_phrasings_that_used_to_mislead_the_parser(question, task, classes, min_area):
    q = parse_query(question)
    assert (q.task, q.classes) == (task, classes)
    assert q.min_area_m2 == (pytest.approx(min_area) if min_area else None)


@pytest.mark.parametrize(
    ("question", "message"),
    [
        ("How many water bodies smaller than 1 ha are there?", "maximum size"),
        ("What proportion of the image is not forest?", "negates a class"),
        ("What percentage is non-forest?", "negates a class"),
    ],
)
def test_questions_it_cannot_honour_are_refused(question, message):
    with pytest.raises(InputError, match=message):
        parse_query(question)
