"""The embedded spectral backend: class masks from the index rules of ``models/spectral.toml``.

It is an honest baseline, not the VLM: each class is a threshold on a published spectral index.
The scene is read once, window by window; each window's bands feed every rule the question needs
(plus the cloud rule), so memory holds one window of bands and one boolean image per class.
Clouds and cloud shadows come, in this order, from the product's own scene classification (SCL),
from ukis-csmask's trained model when it is installed (:mod:`tscope.reason.clouds`), or from the
HOT rule.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from tscope.errors import InputError
from tscope.geo.checks import check_scene
from tscope.geo.mask import Mask
from tscope.geo.preview import Preview, preview_bands
from tscope.geo.scene import Scene
from tscope.memory import reusing_freed_memory
from tscope.reason import clouds
from tscope.reason.backend import Progress
from tscope.reason.query import Query
from tscope.reason.rules import Rule, RuleSet, evaluate, evaluate_index, index_bands, load_rules, otsu_from_histogram
from tscope.reason.solve import solve
from tscope.reason.trace import SEG, Number, Trace

HIST_BINS = 1024
T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger("tscope")


def _in_order(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Sequence[T], ahead: int) -> Iterator[R]:
    """``pool.map(fn, items)`` with at most ``ahead`` calls in flight: ``map`` submits every item at once,
    and finished windows then wait in memory whenever the consuming thread falls behind."""
    pending: deque[Future[R]] = deque(pool.submit(fn, item) for item in items[:ahead])
    for item in items[ahead:]:
        yield pending.popleft().result()
        pending.append(pool.submit(fn, item))
    while pending:
        yield pending.popleft().result()


class SpectralBackend:
    name = "spectral"

    def __init__(self, rules: RuleSet | str | None = None, block: int = 512, mask_clouds: bool = True,
                 workers: int = 2, cloud_model: bool = True):
        self.rules = rules if isinstance(rules, RuleSet) else load_rules(rules)
        self.block = block
        self.mask_clouds = mask_clouds
        self.workers = max(1, workers)
        self.cloud_model = cloud_model

    # --- masks -------------------------------------------------------------------------------

    def _use_model(self, scene: Scene, classes: Sequence[str]) -> bool:
        """Whether ukis-csmask masks this scene's clouds: installed, bands there, and no SCL to defer to."""
        wanted = self.mask_clouds or "cloud" in classes
        return wanted and self.cloud_model and not scene.has("scl") and clouds.usable(scene)

    def _select(self, scene: Scene, classes: Sequence[str], model: bool = False
                ) -> tuple[dict[str, Rule], Rule | None]:
        bands = set(scene.bands)
        # With the model, "cloud" is its cloud class, not a rule.
        chosen = {cls: self.rules.rule_for(cls, bands) for cls in classes if not (model and cls == "cloud")}
        seen: dict[int, str] = {}
        for cls, rule in chosen.items():
            if id(rule) in seen:
                raise InputError(
                    f"the spectral backend cannot tell {seen[id(rule)].replace('_', ' ')} from"
                    f" {cls.replace('_', ' ')} (one rule maps both): {rule.source}"
                )
            seen[id(rule)] = cls
        cloud = None
        if self.mask_clouds and not model and "cloud" not in classes and scene.kind == "optical":
            cloud = next((r for r in self.rules.rules if r.cls == "cloud" and set(r.needs) <= bands), None)
        return chosen, cloud

    def _shadow_water(self, scene: Scene) -> clouds.WaterTest | None:
        """The rules' ``shadow_water`` test for the cloud model's shadow cells, when the rules and bands have it."""
        name = "shadow_water"
        if name not in self.rules.indices or not index_bands(self.rules.indices, name) <= set(clouds.BANDS_6):
            return None
        if not all(scene.has(b) for b in clouds.BANDS_6):
            return None
        return lambda bands: evaluate_index(self.rules.indices, name, dict(bands))

    def _env(self, bands: dict[str, np.ndarray], rules: Sequence[Rule], extra: dict) -> dict:
        env: dict = dict(bands)
        env.update(extra)
        for rule in rules:
            for name in rule.indices:
                if name not in env:
                    if name not in self.rules.indices:
                        raise InputError(f"rule for {rule.cls} uses unknown index or band {name!r}")
                    evaluate_index(self.rules.indices, name, env)
        return env

    def _thresholds(self, scene: Scene, rules: Sequence[Rule], needs: list[str]) -> dict[str, float]:
        """Per-scene thresholds (Otsu over the valid pixels), from histograms accumulated per window."""
        specs = [t for r in rules for t in r.thresholds]
        if not specs:
            return {}
        hists = {}
        for spec in specs:
            lo, hi = spec.range
            width = hi - lo
            edges = np.linspace(lo - 2 * width, hi + 2 * width, HIST_BINS + 1)
            hists[spec.name] = (np.zeros(HIST_BINS, np.int64), edges)
        for window in scene.windows(self.block):
            bands, valid = scene.read(needs, window)
            env = self._env(bands, [], {})
            for spec in specs:
                values = evaluate_index(self.rules.indices, spec.index, env)[valid]
                counts, edges = hists[spec.name]
                counts += np.histogram(values[np.isfinite(values)], bins=edges)[0]
        out = {}
        for spec in specs:
            counts, edges = hists[spec.name]
            value = otsu_from_histogram(counts, edges) if counts.sum() else float("nan")
            if not np.isfinite(value):
                value = spec.fallback
            out[spec.name] = float(np.clip(value, *spec.range))
        return out

    def masks_for(
        self, scene: Scene, classes: Sequence[str], progress: Progress | None = None
    ) -> tuple[dict[str, Mask], dict]:
        """Boolean masks of ``classes`` on ``scene.grid`` plus statistics on nodata and clouds."""
        use_model = self._use_model(scene, classes)
        rules, cloud_rule = self._select(scene, classes, use_model)
        active = list(rules.values()) + ([cloud_rule] if cloud_rule else [])
        needs = sorted({b for r in active for b in r.needs} | ({"blue"} if not active else set()))
        # Before any work: refuse values that are not what the rules expect (uncalibrated SAR, DN read as
        # reflectance, a wrong offset); warnings go into the report.
        checked = sorted(set(needs) | (set(clouds.BANDS_6) & set(scene.bands) if use_model else set()))
        loading = clouds.start_loading(scene) if use_model else None
        warnings = check_scene(scene, checked)
        shape = scene.grid.shape
        data = {cls: np.zeros(shape, dtype=bool) for cls in classes}
        valid_all = np.zeros(shape, dtype=bool)
        nodata_px = cloud_px = shadow_px = 0
        # The quicklook's bands, and the cloud model's input, come from this same pass: no second read.
        shown = preview_bands(scene.bands)
        preview = Preview(scene.grid, [*shown, *(b for b in clouds.input_bands(scene) if b not in shown)]
                          if use_model else shown)
        read_needs = sorted(set(needs) | set(preview.names))
        windows = list(scene.windows(self.block))
        excluding = self.mask_clouds and "cloud" not in classes

        def classify(window):
            bands, valid = scene.read(read_needs, window)
            env = self._env(bands, active, thresholds)
            nodata = int(valid.size - np.count_nonzero(valid))
            preview.add(window, bands, valid)
            cloudy = 0
            if cloud_rule is not None:
                cloud = np.asarray(evaluate(cloud_rule.compiled, env), dtype=bool) & valid
                cloudy = int(np.count_nonzero(cloud))
                valid &= ~cloud
            classes_here = {cls: np.asarray(evaluate(rule.compiled, env), dtype=bool) & valid
                            for cls, rule in rules.items()}
            return window, valid, nodata, cloudy, classes_here

        # Two windows in flight: GDAL decompression and numpy release the GIL, so reading one window
        # overlaps computing the other (and the cloud model's load, started before the checks). The cloud
        # model runs once the pass has filled its input (about a second on its coarse grid) and its classes
        # are applied to the masks after it.
        # The windows' buffers are reused while the passes run and given back once they end; each
        # thread reads through one handle of its own (the Otsu thresholds of SAR water take a pass first).
        with reusing_freed_memory(), scene.reading():
            thresholds = self._thresholds(scene, active, needs)
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                done = _in_order(pool, classify, windows, ahead=2 * self.workers)
                for i, (window, valid, nodata, cloudy, classes_here) in enumerate(done):
                    rows = slice(int(window.row_off), int(window.row_off + window.height))
                    cols = slice(int(window.col_off), int(window.col_off + window.width))
                    nodata_px += nodata
                    cloud_px += cloudy
                    valid_all[rows, cols] = valid
                    for cls, block in classes_here.items():
                        data[cls][rows, cols] = block
                    if progress:
                        progress(i + 1, len(windows))
                if loading is not None:
                    loading.result()
        cloud_map = (clouds.model_cloud_map(scene, clouds.model_input(preview, scene), self._shadow_water(scene))
                     if use_model else None)
        if cloud_map is not None:
            for window in windows:
                rows = slice(int(window.row_off), int(window.row_off + window.height))
                cols = slice(int(window.col_off), int(window.col_off + window.width))
                found = cloud_map.window(window)
                if found is None:
                    continue  # a clear window: the masks and counts stand as the pass left them
                cloud, shadow = found
                valid = valid_all[rows, cols]
                cloud &= valid
                if "cloud" in classes:
                    data["cloud"][rows, cols] = cloud
                elif excluding:
                    shadow &= valid
                    cloud_px += int(np.count_nonzero(cloud)) + int(np.count_nonzero(shadow))
                    shadow_px += int(np.count_nonzero(shadow))
                    valid &= ~(cloud | shadow)  # a view: valid_all itself; the masks clear themselves from it
        total = shape[0] * shape[1]
        stats = {
            "nodata_percent": 100.0 * nodata_px / total,
            # One definition with fetch's sidecar: cloud as a share of the pixels that hold data.
            "cloud_percent": 100.0 * cloud_px / max(1, total - nodata_px),
            "cloud_shadow_percent": (100.0 * shadow_px / max(1, total - nodata_px)
                                     if cloud_map is not None and excluding else None),
            "cloud_rule": cloud_map.source if cloud_map is not None and excluding else
            (cloud_rule.source if cloud_rule else None),
            "thresholds": thresholds,
            "warnings": warnings,
            "preview": preview,
        }
        if not valid_all.any():
            what = "nodata or cloud" if cloud_px else "nodata"
            raise InputError(f"{scene.path.name}: every pixel is {what}; nothing to measure")
        masks = {
            cls: Mask(data=data[cls], valid=valid_all, grid=scene.grid, label=cls, frame=scene.frame,
                      source=rules[cls].source if cls in rules else cloud_map.source)
            for cls in classes
        }
        return masks, stats

    # --- reasoning ---------------------------------------------------------------------------

    def reason(self, scenes: Sequence[Scene], query: Query, progress: Progress | None = None) -> Trace:
        trace = Trace(question=query.question, query=query, backend=self.name,
                      scenes=[s.describe() for s in scenes])
        by_frame = {s.frame: s for s in scenes}
        masks: dict[tuple[str, str], Mask] = {}
        total_steps = len(query.frames)
        for done, frame in enumerate(query.frames):
            scene = by_frame[frame]

            def sub_progress(i: int, n: int, done: int = done) -> None:
                if progress:
                    progress(done * n + i, total_steps * n)

            frame_masks, stats = self.masks_for(scene, query.classes, sub_progress)
            trace.previews[frame] = stats["preview"]
            for warning in stats["warnings"]:
                log.warning(warning)
                trace.notes.append(f"{frame}: {warning}")
            suffix = f"_{frame}" if len(query.frames) > 1 else ""
            trace.numbers[f"nodata_percent{suffix}"] = Number(round(stats["nodata_percent"], 4), "%")
            trace.numbers[f"cloud_percent{suffix}"] = Number(round(stats["cloud_percent"], 4), "%")
            if stats["cloud_shadow_percent"] is not None:
                trace.numbers[f"cloud_shadow_percent{suffix}"] = Number(round(stats["cloud_shadow_percent"], 4), "%")
            if stats["cloud_rule"]:
                shadows = "" if stats["cloud_shadow_percent"] is None else \
                    f", of which {stats['cloud_shadow_percent']:.1f}% cloud shadow"
                trace.notes.append(f"{frame}: clouds excluded by {stats['cloud_rule']}"
                                   f" ({stats['cloud_percent']:.1f}% of the pixels with data{shadows})")
            elif scene.kind == "optical" and "cloud" not in query.classes:
                trace.notes.append(f"{frame}: no cloud test possible with bands {', '.join(scene.bands)}")
            if stats["nodata_percent"]:
                trace.notes.append(f"{frame}: {stats['nodata_percent']:.1f}% of pixels are nodata and excluded")
            for name, value in stats["thresholds"].items():
                trace.numbers[f"threshold_{name}{suffix}"] = Number(round(value, 4))
            for cls in query.classes:
                mask = frame_masks[cls]
                image = f"Image: {frame}. " if len(query.frames) > 1 else ""
                trace.add_mask(mask, f"{image}I segment the {query.label(cls)} {SEG} ({mask.source}).")
                masks[(cls, frame)] = mask
        trace.notes.append("spectral backend: masks are index thresholds (models/spectral.toml), not the VLM")
        solve(query, masks, trace)
        excluded = max(  # nodata, plus cloud over what remains (cloud is a share of the pixels with data)
            float(trace.numbers[k.replace("cloud", "nodata")].value)
            + float(trace.numbers[k].value) * (100 - float(trace.numbers[k.replace("cloud", "nodata")].value)) / 100
            for k in trace.numbers if k.startswith("cloud_percent")
        )
        if excluded > 50:
            # Say it in the answer itself: a number over a sliver of the scene is easy to misread.
            trace.answer += f" Caution: {excluded:.0f}% of the scene is nodata or cloud and was not counted."
        return trace
