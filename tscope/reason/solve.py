"""From class masks to numbers and an answer: the measure a query names, phrased for people.

Both backends end here: the spectral backend with masks from its rules, the TerraScope backend at
scene scale with masks stitched from its ``[SEG]`` steps. The numbers always come from
:mod:`tscope.reason.measures`.
"""

from __future__ import annotations

import math
import re

import numpy as np

from tscope.errors import InputError
from tscope.geo.mask import Mask
from tscope.reason import measures
from tscope.reason.query import AREA_UNITS, LENGTH_UNITS, Query
from tscope.reason.trace import Number, Trace


def auto_area_unit(m2: float) -> str:
    if abs(m2) >= 1e6:
        return "km2"
    if abs(m2) >= 1e4:
        return "ha"
    return "m2"


def fmt_area(m2: float, unit: str | None = None) -> str:
    unit = unit or auto_area_unit(m2)
    shown = {"km2": "km²", "ha": "ha", "m2": "m²"}[unit]
    return f"{m2 / AREA_UNITS[unit]:,.{2 if unit != 'm2' else 0}f} {shown}"


def fmt_length(m: float, unit: str | None = None) -> str:
    unit = unit or ("km" if m >= 1000 else "m")
    return f"{m / LENGTH_UNITS[unit]:,.{2 if unit == 'km' else 0}f} {unit}"


def _name(query: Query, cls: str) -> str:
    return query.label(cls)


def common_validity(masks: list[Mask]) -> None:
    """Give every mask of a before/after pair the pixels valid at both dates, in place.

    Measures over a pair count only those pixels; narrowing the masks themselves means the COG
    written for each date holds exactly what the answer counted.
    """
    frames = {m.frame for m in masks}
    if len(frames) < 2:
        return
    both = np.logical_and.reduce([m.valid for m in masks])
    for m in masks:
        m.valid = both
        np.logical_and(m.data, both, out=m.data)


def undefined(trace: Trace, key: str, unit: str, why: str) -> None:
    """A number the question asks for that does not exist: null in answer.json, and a note why."""
    trace.numbers[key] = Number(None, unit)
    trace.notes.append(f"{key} is null: {why}")


def _on_image(trace: Trace, pixels: bool) -> None:
    """Relabel numbers for a plain image: positions are (col, row); without a ground sample distance,
    lengths and areas are pixel counts."""
    renamed = {}
    for key, number in trace.numbers.items():
        unit = "col,row" if number.unit == "lon,lat" else number.unit
        if pixels and unit in ("m2", "m"):
            key, unit = re.sub(r"_m2?$", "_px", key), "px"
        renamed[key] = Number(number.value, unit)
    trace.numbers = renamed


def solve(query: Query, masks: dict[tuple[str, str], Mask], trace: Trace) -> None:
    """Compute the query's measure from ``masks[(class, frame)]``; add numbers, a step, the answer."""
    common_validity(list(masks.values()))
    task, classes = query.task, query.classes
    a = masks[(classes[0], "t1")]
    label_a = _name(query, classes[0])
    n = trace.numbers
    plain, pixels = a.grid.crs is None, a.grid.units == "px"
    if pixels and query.unit:
        raise InputError(f"the image has no ground scale, so there are no {query.unit}: pass --gsd METRES"
                         " (metres per pixel) or ask without a unit for pixels")

    def area_text(m2: float, unit: str | None = None) -> str:
        return f"{m2:,.0f} px" if pixels else fmt_area(m2, unit)

    def length_text(m: float, unit: str | None = None) -> str:
        return f"{m:,.0f} px" if pixels else fmt_length(m, unit)
    if task == "coverage":
        r = measures.coverage(a)
        n["coverage_percent"] = Number(round(r.percent, 4), "%")
        n["area_m2"] = Number(round(r.area_m2, 3), "m2")
        n["valid_area_m2"] = Number(round(r.valid_area_m2, 3), "m2")
        answer = f"{label_a.capitalize()} covers {r.percent:.1f}% of the image's valid area" \
                 f" ({area_text(r.area_m2)} of {area_text(r.valid_area_m2)})."
    elif task == "area":
        area = measures.area_m2(a)
        unit = query.unit or auto_area_unit(area)
        n["area_m2"] = Number(round(area, 3), "m2")
        if not pixels:
            n[f"area_{unit}"] = Number(round(area / AREA_UNITS[unit], 6), unit)
        answer = f"{label_a.capitalize()} covers {area_text(area, unit)}."
    elif task == "compare":
        b = masks[(classes[1], "t1")]
        r = measures.compare(a, b)
        n["area_a_m2"] = Number(round(r.area_a_m2, 3), "m2")
        n["area_b_m2"] = Number(round(r.area_b_m2, 3), "m2")
        n["larger"] = Number(r.larger)
        label_b = _name(query, classes[1])
        if math.isfinite(r.ratio):
            n["ratio"] = Number(round(r.ratio, 4))
        else:
            missing = label_b if r.area_a_m2 else label_a
            undefined(trace, "ratio", "", f"there is no {missing}" if r.area_a_m2 or r.area_b_m2
                      else f"there is neither {label_a} nor {label_b}")
        big, small = (label_a, label_b) if r.area_a_m2 >= r.area_b_m2 else (label_b, label_a)
        if r.larger == "tie" and r.area_a_m2 == 0:
            answer = f"Neither {label_a} nor {label_b} is present."
        elif r.larger == "tie":
            answer = f"{label_a.capitalize()} and {label_b} cover the same area, {area_text(r.area_a_m2)}."
        else:
            times = f"{r.ratio:.1f} times as much" if math.isfinite(r.ratio) else f"and there is no {small}"
            smaller = query.question.lower().lstrip().startswith("which") and re.search(
                r"\b(smaller|less|least|fewer)\b", query.question.lower())
            lead = f"{small.capitalize()} is smaller" if smaller else f"{big.capitalize()} is larger"
            answer = f"{lead}: {area_text(max(r.area_a_m2, r.area_b_m2))} of {big} against" \
                     f" {area_text(min(r.area_a_m2, r.area_b_m2))} of {small} ({times})."
    elif task == "adjacency":
        b = masks[(classes[1], "t1")]
        r = measures.adjacency(a, b)
        label_b = _name(query, classes[1])
        n["borders"] = Number(r.borders)
        n["shared_boundary_m"] = Number(round(r.shared_boundary_m, 3), "m")
        if r.borders:
            answer = f"Yes, {label_a} borders {label_b} along {length_text(r.shared_boundary_m)}."
        else:
            d = measures.distance(a, b)
            if math.isfinite(d.metres):
                n["distance_m"] = Number(round(d.metres, 3), "m")
            else:
                missing = label_a if not a.counted.any() else label_b
                undefined(trace, "distance_m", "m", f"there is no {missing} in the image")
            gap = f" (the closest they come is {length_text(d.metres)})" if math.isfinite(d.metres) else ""
            answer = f"No, {label_a} does not border {label_b}{gap}."
    elif task == "distance":
        b = masks[(classes[1], "t1")]
        r = measures.distance(a, b)
        label_b = _name(query, classes[1])
        if not math.isfinite(r.metres):
            missing = label_a if not a.counted.any() else label_b
            undefined(trace, "distance_m", "m", f"there is no {missing} in the image")
            answer = f"There is no {missing} in the image, so no distance can be measured."
        else:
            n["distance_m"] = Number(round(r.metres, 3), "m")
            if r.point_a:
                n["point_a"] = Number(f"{r.point_a[0]:.6f},{r.point_a[1]:.6f}", "lon,lat")
                n["point_b"] = Number(f"{r.point_b[0]:.6f},{r.point_b[1]:.6f}", "lon,lat")
            answer = f"The shortest edge-to-edge distance from {label_a} to {label_b} is" \
                     f" {length_text(r.metres, query.unit)}."
    elif task == "count":
        r = measures.count(a, query.min_area_m2)
        n["count"] = Number(r.count, "regions")
        n["min_area_m2"] = Number(round(r.min_area_m2, 3), "m2")
        if r.region_areas_m2:
            n["largest_region_m2"] = Number(round(r.region_areas_m2[0], 3), "m2")
        answer = f"There {'is' if r.count == 1 else 'are'} {r.count} {label_a} region" \
                 f"{'' if r.count == 1 else 's'} of at least {area_text(r.min_area_m2)}."
    elif task == "existence":
        r = measures.existence(a, query.min_area_m2)
        n["present"] = Number(r.present)
        n["regions"] = Number(r.regions, "regions")
        n["largest_region_m2"] = Number(round(r.largest_m2, 3), "m2")
        if r.present:
            answer = f"Yes, there is {label_a}: {r.regions} region{'' if r.regions == 1 else 's'}," \
                     f" the largest {area_text(r.largest_m2)}."
        else:
            answer = f"No, there is no {label_a} region of at least {area_text(r.min_area_m2)}."
    elif task == "locate":
        other = masks.get((classes[1], "t1")) if len(classes) > 1 else None
        r = measures.locate(a, other)
        n["position"] = Number(r.position)
        if r.centroid:
            n["centroid"] = Number(f"{r.centroid[0]:.6f},{r.centroid[1]:.6f}", "lon,lat")
        if r.position == "absent":
            answer = f"There is no {label_a} in the image."
        elif r.direction:
            n["direction"] = Number(r.direction)
            n["bearing_deg"] = Number(round(r.bearing_deg, 2), "deg")
            answer = f"{label_a.capitalize()} lies mainly {r.direction} of the {_name(query, classes[1])}" \
                     f" (bearing {r.bearing_deg:.0f}°), in the {r.position} of the image."
        else:
            where = "the centre" if r.position == "centre" else f"the {r.position}"
            at = f"column {r.centroid[0]:.0f}, row {r.centroid[1]:.0f}" if plain else \
                f"{r.centroid[0]:.5f}, {r.centroid[1]:.5f}"
            answer = f"{label_a.capitalize()} lies mainly in {where} of the image (centroid {at})."
    elif task == "change":
        b = masks[(classes[0], "t2")]
        r = measures.change(a, b)
        for key in ("area_t1_m2", "area_t2_m2", "gain_m2", "loss_m2", "net_m2", "common_valid_m2"):
            n[key] = Number(round(getattr(r, key), 3), "m2")
        if math.isfinite(r.percent):
            n["percent_change"] = Number(round(r.percent, 4), "%")
        else:
            undefined(trace, "percent_change", "%", f"there is no {label_a} at t1 to take a percentage of")
        unit = query.unit
        pct = f" ({r.percent:+.1f}%)" if math.isfinite(r.percent) else ""
        answer = f"{label_a.capitalize()} went from {area_text(r.area_t1_m2, unit)} to" \
                 f" {area_text(r.area_t2_m2, unit)}: a net change of {'+' if r.net_m2 >= 0 else '-'}" \
                 f"{area_text(abs(r.net_m2), unit)}{pct}, with {area_text(r.gain_m2, unit)} gained and" \
                 f" {area_text(r.loss_m2, unit)} lost."
    else:
        raise ValueError(f"unknown task {task}")
    if plain:
        _on_image(trace, pixels)
    trace.say(answer)
    trace.answer = answer
