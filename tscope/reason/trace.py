"""The Trace: what every backend returns and every writer consumes.

A trace is TerraScope's reasoning made explicit: ordered steps of text in which each ``[SEG]``
marker is bound to a georeferenced mask (and, for pairs, to the frame it was taken from), the
numbers computed from those masks, and the final answer. ``Trace.to_dict`` is ``answer.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tscope import __version__
from tscope.geo.mask import Mask
from tscope.geo.preview import Preview
from tscope.reason import measures
from tscope.reason.query import Query

SEG = "[SEG]"


@dataclass
class Step:
    """One reasoning step. ``mask`` is the id of the mask its ``[SEG]`` produced, if any."""

    text: str
    mask: str | None = None
    frame: str | None = None


@dataclass
class Number:
    """A number of the answer; ``None`` (JSON null) when it is undefined, with a note saying why."""

    value: float | int | bool | str | None
    unit: str = ""


@dataclass
class Trace:
    question: str
    query: Query
    backend: str
    steps: list[Step] = field(default_factory=list)
    numbers: dict[str, Number] = field(default_factory=dict)
    answer: str = ""
    masks: dict[str, Mask] = field(default_factory=dict)
    scenes: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tiles: list[dict] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    # What the TerraScope model itself answered (its <answer> text) and, for a multiple-choice
    # question, the option letter it chose; None with the spectral backend.
    model_answer: str | None = None
    choice: str | None = None
    # Per frame, the scene averaged onto a small grid by the pass that made the masks (quicklooks).
    previews: dict[str, Preview] = field(default_factory=dict)
    # Ground area of each finished mask, computed on first use: a pass over a tile-sized mask that
    # answer.json and the --json output would otherwise each repeat.
    mask_areas: dict[str, float] = field(default_factory=dict, repr=False)

    def add_mask(self, mask: Mask, text: str) -> str:
        """Record a ``[SEG]`` step producing ``mask``; returns the mask id (``01_forest``)."""
        mask_id = f"{len(self.masks) + 1:02d}_{mask.label}" + (f"_{mask.frame}" if mask.frame != "t1" else "")
        self.masks[mask_id] = mask
        if SEG not in text:
            text = f"{text} {SEG}"
        self.steps.append(Step(text=text, mask=mask_id, frame=mask.frame))
        return mask_id

    def mask_area(self, mask_id: str) -> float:
        """Ground area (m²) of mask ``mask_id``, measured once and kept in :attr:`mask_areas`."""
        if mask_id not in self.mask_areas:
            self.mask_areas[mask_id] = measures.area_m2(self.masks[mask_id])
        return self.mask_areas[mask_id]

    def say(self, text: str) -> None:
        self.steps.append(Step(text=text))

    def reasoning_text(self) -> str:
        """The steps in TerraScope's output form: ``<think>…[SEG]…</think><answer>…</answer>``."""
        return "<think>" + " ".join(s.text for s in self.steps) + f"</think><answer>{self.answer}</answer>"

    def to_dict(self) -> dict:
        masks = {}
        for mask_id, mask in self.masks.items():
            masks[mask_id] = {
                "class": mask.label,
                "frame": mask.frame,
                "source": mask.source,
                "area_m2": self.mask_area(mask_id),
                "file": self.outputs.get(f"mask:{mask_id}"),
            }
        return {
            "tscope_version": __version__,
            "question": self.question,
            "query": self.query.to_dict(),
            "backend": self.backend,
            "answer": self.answer,
            "model_answer": self.model_answer,
            "choice": self.choice,
            "numbers": {k: asdict(v) for k, v in self.numbers.items()},
            "steps": [asdict(s) for s in self.steps],
            "reasoning": self.reasoning_text(),
            "masks": masks,
            "scenes": self.scenes,
            "notes": self.notes,
            "tiles": self.tiles,
            "outputs": {k: v for k, v in self.outputs.items() if not k.startswith("mask:")},
        }
