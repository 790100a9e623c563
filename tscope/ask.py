"""``ask``: the library function behind ``tscope ask`` (scenes + question -> Trace + outputs)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tscope.errors import InputError
from tscope.geo.remote import record_path
from tscope.geo.scene import ReadOptions, open_scenes
from tscope.reason.backend import Backend, Progress, get_backend
from tscope.reason.query import NotMeasurable, free_query, parse_query
from tscope.reason.trace import Trace
from tscope.report import default_out_dir, prepare_out_dir, write_outputs

log = logging.getLogger("tscope")


def ask(
    scenes: Sequence[str | Path],
    question: str,
    *,
    backend: str | Backend = "spectral",
    backend_options: dict[str, Any] | None = None,
    read_options: ReadOptions | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    write: bool = True,
    progress: Progress | None = None,
    root: str | Path | None = None,
) -> Trace:
    """Answer ``question`` over one scene (or a before/after pair) and write the outputs.

    A measurable question (coverage, area, ...) is answered from masks with the shared measures by
    either backend; any other question (free-form, multiple-choice) goes to the TerraScope model as
    written. Everything that can be checked before the work (scenes, question, backend, ``out``) is
    checked first, so bad input fails fast and leaves nothing behind. ``backend``: a name (built with
    ``backend_options``) or a backend already built (``tscope batch`` reuses one model per worker).
    Input paths are recorded relative to the output folder when they lie inside ``root`` (default:
    the output folder itself; ``batch`` passes its own folder), absolute otherwise, so an output
    folder can be moved whole.
    """
    name = backend if isinstance(backend, str) else backend.name
    opened = open_scenes(scenes, read_options)
    for scene in opened:
        log.info("%s %s: %d x %d px on %s, bands %s", scene.frame, scene.path, scene.grid.width, scene.grid.height,
                 scene.grid.crs.to_string() if scene.grid.crs else "no CRS", ", ".join(scene.bands))
    try:
        query = parse_query(question, n_scenes=len(opened))
    except NotMeasurable as exc:
        if name != "terrascope":
            raise InputError(f"{exc}. The {name} backend answers measurable questions only; free-form and"
                             " multiple-choice questions need --backend terrascope --model DIR") from None
        query = free_query(question, n_scenes=len(opened))
    log.info("question read as a %s question about %s", query.task, ", ".join(query.classes) or "no class")
    engine = get_backend(backend, **(backend_options or {})) if isinstance(backend, str) else backend
    out_dir = None
    if write:
        out_dir = prepare_out_dir(Path(out) if out else default_out_dir(scenes[0], question), overwrite)
    trace = engine.reason(opened, query, progress=progress)
    if out_dir is not None:
        for record, given in zip(trace.scenes, scenes, strict=True):
            record["path"] = record_path(given, out_dir, Path(root) if root else None)
        write_outputs(trace, opened, out_dir)
        trace.outputs["dir"] = str(out_dir)
    return trace
