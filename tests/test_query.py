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
