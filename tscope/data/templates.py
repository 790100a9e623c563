"""Question templates and chain-of-thought phrasing for the Terra-CoT L1 tasks.

Every question here is phrased so that :func:`tscope.reason.query.parse_query` reads it as the task
it belongs to (the tests check this), so the spectral backend can answer the same questions. A chain
of thought names each region before its ``[SEG]`` and quotes the numbers it derives, in the form the
TerraScope model is trained on: ``<think>…[SEG]…</think><answer>…</answer>``.
"""

from __future__ import annotations

import random

SEG = "[SEG]"

QUESTIONS = {
    "existence": ["Is there any {a} in the image?", "Is there any {a} visible in this image?",
                  "Does the image contain any {a}?"],
    "counting": ["How many separate {a} regions are there in the image?",
                 "How many distinct {a} regions can be seen?", "Count the separate {a} regions in the image."],
    "localisation": ["Where is the {a} located in the image?", "In which part of the image is the {a} located?"],
    "area": ["What is the area of {a} in {unit_words}?", "How large is the {a} area, in {unit_words}?"],
    "coverage": ["What percentage of the image is covered by {a}?", "What proportion of the image is {a}, in percent?"],
    "boundary": ["Does the {a} border the {b}?", "Is the {a} adjacent to the {b}?", "Does the {a} touch the {b}?"],
    "distance": ["How far is the {a} from the {b}, in metres?",
                 "What is the distance between the {a} and the {b} in metres?"],
    "damage": ["How many buildings were destroyed between the two images?",
               "How many buildings were destroyed between the pre-event and post-event images?"],
}

UNIT_WORDS = {"ha": "hectares", "m2": "square metres", "km2": "square kilometres"}
UNIT_SHOWN = {"ha": "ha", "m2": "m²", "km2": "km²"}


def question(task: str, rng: random.Random, a: str = "", b: str = "", unit: str = "ha") -> str:
    return rng.choice(QUESTIONS[task]).format(a=a, b=b, unit_words=UNIT_WORDS.get(unit, unit))


def think(steps: list[str], answer: str) -> str:
    """The gpt turn: reasoning steps inside ``<think>``, the short answer inside ``<answer>``."""
    return "<think>" + " ".join(steps) + "</think><answer>" + answer + "</answer>"


def segment_step(name: str, image: str | None = None) -> str:
    """The step that names a region before its ``[SEG]``."""
    where = f"In the {image} image, " if image else ""
    return f"{where}I segment the {name} {SEG}." if where else f"I segment the {name} {SEG}."


def fmt_area(m2: float, unit: str) -> str:
    scale = {"ha": 1e4, "m2": 1.0, "km2": 1e6}[unit]
    return f"{m2 / scale:.{0 if unit == 'm2' else 2}f} {UNIT_SHOWN[unit]}"


def area_unit(m2: float) -> str:
    """Hectares from one hectare up (tiles are rarely square kilometres), square metres below."""
    return "ha" if m2 >= 1e4 else "m2"


def fmt_pct(percent: float) -> str:
    return f"{percent:.1f}%"


def fmt_m(metres: float) -> str:
    return f"{metres:.0f} m"
