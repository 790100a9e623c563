"""``batch``: for each AOI, fetch -> stack -> ask, in parallel on Dask, resumable after any kill.

Layout of ``DIR``: ``manifest.json``; per AOI ``DIR/aois/<aoi-id>/`` with ``scenes/t1/`` (and
``t2/``) from fetch, ``stack/`` for a pre/post pair, ``answers/qNN-<slug>/`` from ask, and
``aoi.json``. AOI folders live in ``aois/`` and staging in ``.staging/aois/``, apart from tscope's own
files (``manifest.json``, ``.staging/locks/``), so no AOI id (``manifest.json``, ``locks``) can meet them.

Crash safety: an AOI is built in ``DIR/.staging/aois/<aoi-id>/`` and renamed onto ``DIR/aois/<aoi-id>``
when complete; that rename is the commit. While it is built, ``DIR/aois/<aoi-id>`` is a symbolic link
to the staging folder, so the scene paths recorded by ``ask`` are the final ones. A rerun treats a real
folder with ``aoi.json`` as done, and clears a link or a staging folder left by a killed run. Each
AOI holds an exclusive lock (``flock``, released by the kernel when its process dies) so a worker
orphaned by a killed run and the rerun never build the same AOI at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tscope import __version__
from tscope.errors import InputError, RuntimeFailure, TscopeError
from tscope.geo.vector import read_vector_wgs84
from tscope.geo.writers import rollback_on_failure, write_json
from tscope.stac.http import NetworkPolicy
from tscope.stac.load import LoadOptions
from tscope.stac.names import safe_name

log = logging.getLogger("tscope")
STAGING = ".staging"
AOIS = "aois"


@dataclass(frozen=True)
class BatchConfig:
    """Everything that decides an AOI's outputs (its JSON form is the manifest's ``config``).

    One ``datetimes`` range: the clearest scene of it; two: a pre/post pair (the clearest of each).
    """

    questions: tuple[str, ...]
    datetimes: tuple[str, ...]
    catalog: str = "earth-search"
    collection: str = "s2-l2a"
    max_cloud: float | None = None
    load: LoadOptions = field(default_factory=LoadOptions)
    backend: str = "spectral"
    backend_options: dict = field(default_factory=dict)
    policy: NetworkPolicy = field(default_factory=NetworkPolicy)

    def __post_init__(self) -> None:
        from tscope.stac.search import parse_datetime

        if not self.questions:
            raise InputError("give at least one --question (or --questions FILE)")
        if not 1 <= len(self.datetimes) <= 2:
            raise InputError("give --datetime once (one scene) or twice (before and after)")
        for text in self.datetimes:
            parse_datetime(text)
        from tscope.reason.query import parse_query

        # Every question is checked before anything is fetched: a typo fails in a second, not per AOI.
        for question in self.questions:
            parse_query(question, n_scenes=len(self.datetimes))

    def fingerprint(self) -> dict:
        """The JSON-stable form recorded in the manifest (network policy excluded: it changes no output)."""
        data = asdict(self)
        data.pop("policy")
        return json.loads(json.dumps(data))


# --- AOIs --------------------------------------------------------------------------------------


def read_aois(path: str | Path) -> list[tuple[str, dict]]:
    """(aoi id, GeoJSON geometry in EPSG:4326) per feature; ids from ``id``/``aoi_id``/``name``."""
    from shapely.geometry import mapping

    path = Path(path)
    frame = read_vector_wgs84(path)
    raw_ids = _feature_ids(path)
    aois, seen = [], set()
    for n, (_, row) in enumerate(frame.iterrows()):
        geom = row.geometry
        # A null geometry comes back as None or NaN, depending on the reader.
        if not hasattr(geom, "is_empty") or geom.is_empty or geom.area == 0:
            raise InputError(f"{path}: feature {n + 1} is not a polygon with an area")
        ident = next((row[k] for k in ("id", "aoi_id", "name") if k in frame.columns and _present(row[k])), None)
        if ident is None and n < len(raw_ids) and raw_ids[n] is not None:
            ident = raw_ids[n]
        aoi_id = safe_name(ident if ident is not None else f"aoi-{n + 1:03d}")
        if aoi_id in seen:
            raise InputError(f"{path}: AOI id {aoi_id!r} is used twice")
        seen.add(aoi_id)
        aois.append((aoi_id, dict(mapping(geom))))
    return aois


def _present(value: Any) -> bool:
    return value is not None and value == value and str(value) != ""


def _feature_ids(path: Path) -> list[Any]:
    """GeoJSON feature ``id`` members (geopandas drops them)."""
    if path.suffix.lower() not in (".geojson", ".json"):
        return []
    try:
        return [f.get("id") for f in json.loads(path.read_text(encoding="utf-8")).get("features", [])]
    except (OSError, ValueError, AttributeError):
        return []


def read_questions(questions: list[str] | None, questions_file: Path | None) -> tuple[str, ...]:
    out = [q.strip() for q in questions or [] if q.strip()]
    if questions_file is not None:
        if not questions_file.is_file():
            raise InputError(f"--questions {questions_file}: no such file")
        for line in questions_file.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                out.append(line.strip())
    return tuple(out)


def parse_resources(text: str | None) -> dict[str, float] | None:
    """``GPU=1,MEM=8e9`` -> {"GPU": 1.0, "MEM": 8e9} (Dask worker resources); None for none."""
    if not text:
        return None
    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            amount = float(value)
        except ValueError:
            amount = -1.0
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name.strip()) or not amount > 0:
            raise InputError(f"--resources: expected NAME=AMOUNT[,NAME=AMOUNT], got {part!r}")
        out[name.strip()] = amount
    return out


def question_slug(index: int, question: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", question.lower()).strip("-")[:40].rstrip("-") or "question"
    return f"q{index + 1:02d}-{slug}"


# --- one AOI (runs on a Dask worker) -----------------------------------------------------------

# The terrascope backend (its model) of each configuration, built once per worker process and reused
# by every AOI and question that process runs: a model is loaded per worker, not per AOI.
_MODELS: dict[str, Any] = {}
_MODELS_LOCK = threading.Lock()


def worker_backend(config: BatchConfig) -> Any:
    """The backend ``ask`` gets: the worker's cached terrascope backend, or the name of a cheap one."""
    if config.backend != "terrascope":
        return config.backend
    from tscope.reason.backend import get_backend

    key = json.dumps(config.backend_options, sort_keys=True)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = get_backend(config.backend, **config.backend_options)
        return _MODELS[key]


@contextlib.contextmanager
def _aoi_lock(out: Path, aoi_id: str) -> Iterator[None]:
    locks = out / STAGING / "locks"  # beside .staging/aois/, never inside an AOI's namespace
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{aoi_id}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _final(out: Path, aoi_id: str) -> Path:
    return out / AOIS / aoi_id


def _staging(out: Path, aoi_id: str) -> Path:
    return out / STAGING / AOIS / aoi_id


def _complete(final: Path) -> dict | None:
    """The record of a committed AOI folder, or None."""
    if final.is_symlink() or not final.is_dir() or not (final / "aoi.json").is_file():
        return None
    return json.loads((final / "aoi.json").read_text(encoding="utf-8"))


def _clear(final: Path, staging: Path) -> None:
    if final.is_symlink():
        final.unlink()
    elif final.exists():
        shutil.rmtree(final)  # an uncommitted real folder (cannot happen by rename, but be strict)
    if staging.exists():
        shutil.rmtree(staging)


def run_aoi(aoi_id: str, geometry: dict, config: BatchConfig, out: str) -> dict:
    """Build one AOI's outputs and commit them; returns its manifest entry (never raises for AOI failures)."""
    out_dir = Path(out).absolute()
    final, staging = _final(out_dir, aoi_id), _staging(out_dir, aoi_id)
    started = time.monotonic()
    with _aoi_lock(out_dir, aoi_id):
        record = _complete(final)
        if record is not None:
            return record | {"seconds": 0.0}
        _clear(final, staging)
        staging.mkdir(parents=True)
        final.parent.mkdir(exist_ok=True)
        final.symlink_to(Path("..") / STAGING / AOIS / aoi_id, target_is_directory=True)
        try:
            record = _build(aoi_id, geometry, config, final)
            write_json(final / "aoi.json", record)
            final.unlink()
            os.rename(staging, final)
        except Exception as exc:  # noqa: BLE001 - an AOI's failure is recorded, the batch goes on
            _clear(final, staging)
            reason = str(exc) if isinstance(exc, TscopeError) else f"{type(exc).__name__}: {exc}"
            return {"status": "failed", "reason": " ".join(reason.split())[:500],
                    "seconds": round(time.monotonic() - started, 3)}
    return record | {"seconds": round(time.monotonic() - started, 3)}


def _build(aoi_id: str, geometry: dict, config: BatchConfig, final: Path) -> dict:
    from tscope.ask import ask
    from tscope.geo.stack import stack_scenes
    from tscope.stac.fetch import FetchRequest, fetch
    from tscope.stac.load import group_items
    from tscope.stac.search import SearchRequest, search

    scenes: list[Path] = []
    fetched = []
    for i, period in enumerate(config.datetimes, start=1):
        request = FetchRequest(
            search=SearchRequest(geometry=geometry, datetime=period, catalog=config.catalog,
                                 collection=config.collection, max_cloud=config.max_cloud),
            load=config.load,
        )
        groups = group_items(search(request.search, config.policy), config.load.bands)
        best = min(groups, key=lambda g: (_mean_cloud(g), g[0].datetime.isoformat() if g[0].datetime else "",
                                          g[0].id))
        summary = fetch(request, final / "scenes" / f"t{i}", policy=config.policy, items=best)
        scene = summary["scenes"][0]
        scenes.append(final / "scenes" / f"t{i}" / scene["file"])
        fetched.append({"frame": f"t{i}", "datetime": period, "file": f"scenes/t{i}/{scene['file']}",
                        "items": scene["items"], "aoi_cloud_percent": scene["aoi_cloud_percent"],
                        "aoi_nodata_percent": scene["aoi_nodata_percent"]})
    if len(scenes) == 2:
        stacked = stack_scenes(scenes, final / "stack", root=final.parent)
        scenes = list(stacked.files)
    answers = {}
    for index, question in enumerate(config.questions):
        slug = question_slug(index, question)
        trace = ask(scenes, question, backend=worker_backend(config), out=final / "answers" / slug, overwrite=True,
                    root=final.parent)
        answers[slug] = {"question": question, "answer": trace.answer,
                         "numbers": {k: v.value for k, v in trace.numbers.items()}}
    return {"status": "done", "aoi": aoi_id, "geometry": geometry, "scenes": fetched,
            "inputs": [str(p.relative_to(final)) for p in scenes], "answers": answers,
            "tscope_version": __version__}


def _mean_cloud(group: list[Any]) -> float:
    values = [i.properties.get("eo:cloud_cover") for i in group]
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else 0.0


# --- the whole batch (the driver) --------------------------------------------------------------


@dataclass
class BatchSummary:
    out: Path
    results: dict[str, dict]
    skipped: list[str]

    @property
    def failed(self) -> list[str]:
        return [k for k, v in self.results.items() if v.get("status") != "done"]

    def to_dict(self) -> dict:
        return {"out": str(self.out), "aois": self.results, "skipped": self.skipped, "failed": self.failed,
                "done": len(self.results) - len(self.failed)}


def _client(workers: int, scheduler: str | None, resources: dict[str, float] | None = None) -> tuple[Any, Any]:
    from distributed import Client, LocalCluster

    # Dask logs every worker start and stop at INFO, and its shutdown noise at WARNING: quieter than
    # tscope's own level, unless -v asked for them (see tscope.cli.options.route_library_messages).
    level = max(logging.WARNING, log.getEffectiveLevel(), logging.getLogger("distributed").getEffectiveLevel())
    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.worker",
                 "distributed.core", "distributed.http.proxy"):
        logging.getLogger(name).setLevel(level)
    if scheduler:
        try:
            return Client(scheduler, timeout=30), None
        except (OSError, TimeoutError) as exc:
            raise RuntimeFailure(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
    with _workers_ignore_ctrl_c():
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                               resources=resources or None)
    return Client(cluster), cluster


@contextlib.contextmanager
def _workers_ignore_ctrl_c() -> Iterator[None]:
    """Worker processes started in this block ignore SIGINT (an ignored signal survives exec).

    A terminal's Ctrl-C reaches the whole process group: the driver alone must handle it and stop the
    cluster, not every worker with its own KeyboardInterrupt traceback.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_batch(aois_path: str | Path, config: BatchConfig, out: str | Path, *, workers: int = 2,
              scheduler: str | None = None, overwrite: bool = False,
              progress: Callable[[int, int], None] | None = None,
              resources: dict[str, float] | None = None) -> BatchSummary:
    """Run every AOI not yet done; the manifest is updated as each one finishes.

    ``resources`` (e.g. ``{"GPU": 1}``): what each AOI task holds on its worker (Dask worker resources),
    so a worker started with ``--resources GPU=1`` runs one AOI at a time; the local cluster's workers
    get them too."""
    from tscope.batch.manifest import open_manifest

    aois = read_aois(aois_path)
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    if scheduler is None and workers < 1:
        raise InputError("--workers must be at least 1")
    with rollback_on_failure() as made:  # a run that fails before any work leaves no empty folder
        made.mkdir(out)
        manifest = open_manifest(out, config.fingerprint(), restart=overwrite)
        if overwrite:
            for aoi_id, _ in aois:
                _clear(_final(out, aoi_id), _staging(out, aoi_id))
        # Recorded before any AOI starts, so an interrupted run is resumed by the next, not refused.
        manifest.save()
    todo = [(a, g) for a, g in aois if not (manifest.done(a) and _complete(_final(out, a)) is not None)]
    skipped = [a for a, _ in aois if a not in {t for t, _ in todo}]
    results = {a: manifest.aois[a] for a in skipped}
    if todo:
        from distributed import as_completed

        client, cluster = _client(workers, scheduler, resources)
        try:
            futures = {client.submit(run_aoi, a, g, config, str(out), pure=False, retries=0,
                                     resources=resources or None): a for a, g in todo}
            for n, future in enumerate(as_completed(futures), start=1):
                aoi_id = futures[future]
                try:
                    entry = future.result()
                except Exception as exc:  # noqa: BLE001 - a worker crash is this AOI's failure
                    entry = {"status": "failed", "reason": f"worker failed: {type(exc).__name__}: {exc}"}
                seconds = entry.pop("seconds", None)
                manifest.record(aoi_id, _manifest_entry(entry))
                results[aoi_id] = manifest.aois[aoi_id] | ({"seconds": seconds} if seconds is not None else {})
                log.info("%s: %s", aoi_id, entry.get("status"))
                if progress:
                    progress(n, len(todo))
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    ordered = {a: results[a] for a, _ in aois if a in results}
    return BatchSummary(out=out, results=ordered, skipped=skipped)


def _manifest_entry(entry: dict) -> dict:
    if entry.get("status") == "done":
        return {"status": "done", "answers": {k: v["answer"] for k, v in entry.get("answers", {}).items()},
                "inputs": entry.get("inputs", [])}
    return {"status": "failed", "reason": entry.get("reason", "unknown")}
