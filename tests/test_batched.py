"""Batched interleaved decoding equals the single-prompt loop token for token and mask for mask (fp32)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent))

import tiny_terrascope as tt  # noqa: E402

from tscope.model.batched import BatchDecoder, Request, generate_batch  # noqa: E402
from tscope.model.interleave import generate  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    return tt.build_model(seed=3, max_new_tokens=24)


def _image(h: int, w: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _requests(tok) -> list[dict]:
    """Single images of different sizes (different tilings, so prompt lengths), a pair, optical + SAR;
    forced schedules with [SEG] at different steps and ends at different lengths, and free runs."""
    seg, eos = tok.convert_tokens_to_ids("[SEG]"), tok.eos_token_id
    plain = tok.convert_tokens_to_ids("a")

    def forced(schedule: dict[int, int]):
        return lambda step, greedy: schedule.get(step, plain)

    text = "<image>\nWhere is the water?"
    return [
        dict(images=[_image(64, 64, 0)], text=text, override=forced({1: seg, 4: seg, 6: eos})),
        dict(images=[_image(70, 130, 1)], text=text, override=forced({0: seg, 2: seg, 3: seg, 9: eos})),
        dict(images=[_image(64, 64, 2), _image(64, 64, 3)], text="<image>\nWhat changed?",
             override=forced({2: seg, 5: seg, 12: eos})),
        dict(images=[_image(90, 60, 4)], text=text, max_new_tokens=14),  # free run, ends on the length
        dict(images=[_image(64, 64, 5)], text=text, sar=_image(64, 64, 6), override=forced({0: seg, 5: seg, 7: eos})),
        dict(images=[_image(64, 96, 7), _image(64, 96, 8)], text="<image>\nWhat changed?", max_new_tokens=20),
        dict(images=[_image(64, 64, 9)], text=text, override=forced({3: eos})),  # no [SEG] at all
        dict(images=[_image(100, 90, 10)], text=text, override=forced({i: seg for i in range(30)}),
             max_new_tokens=400),  # max_segs
    ]


def _same(a, b) -> None:
    assert b.token_ids == a.token_ids and b.all_ids == a.all_ids and b.stop == a.stop and b.text == a.text
    assert b.seg_steps == a.seg_steps and b.frames == a.frames
    assert len(b.masks) == len(a.masks)
    for key in ("masks", "frame_masks", "regions", "region_sar"):
        assert all(np.array_equal(x, y) for x, y in zip(getattr(a, key), getattr(b, key), strict=True)), key
    for x, y in zip(a.seg_hidden, b.seg_hidden, strict=True):
        assert torch.allclose(x, y, atol=1e-5, rtol=0)
    assert torch.equal(a.prompt_ids, b.prompt_ids)


def test_batched_decoding_equals_the_single_prompt_loop(tiny):
    model, tok = tiny
    model.config.max_segs, saved = 4, model.config.max_segs
    try:
        specs = _requests(tok)
        model.sam_encodes = 0
        reference = [generate(model, tok, **s) for s in specs]
        single_encodes = model.sam_encodes
        runs = {}
        # Eight prompts through three slots: sequences leave at different steps and the queued ones join.
        # Region tokens all at once (padded chunks, repacked whenever there is padding) or one per step.
        for chunk in (None, 1):
            model.sam_encodes = 0
            decoder = BatchDecoder(model, tok, batch_size=3, region_chunk=chunk)
            decoder.repack_waste, decoder.repack_ratio = 0, 0.0
            requests = [Request(**s) for s in specs]
            decoder.run(requests)
            runs[chunk] = (decoder, requests, model.sam_encodes)
    finally:
        model.config.max_segs = saved
    assert {g.stop for g in reference} == {"eos", "max_new_tokens", "max_segs"}
    assert len({len(g.token_ids) for g in reference}) >= 5 and sum(len(g.masks) for g in reference) >= 10
    for _, requests, encodes in runs.values():
        assert encodes == single_encodes  # each image encoded once, only when a [SEG] needs it
        for ref, request in zip(reference, requests, strict=True):
            _same(ref, request.result)
    assert runs[None][0].repacks >= 1  # the padded cache was repacked at least once, and nothing changed
    assert runs[1][0].forwards > runs[None][0].forwards  # one region token per step: more, narrower steps


def test_follow_up_prompts_join_the_running_batch_and_reuse_encodings(tiny):
    model, tok = tiny
    specs = [_requests(tok)[i] for i in (0, 6)]
    reference = [generate(model, tok, **s) for s in specs]
    follow = generate(model, tok, specs[0]["images"], "<image>\nIs there any forest?", max_new_tokens=8)
    decoder = BatchDecoder(model, tok, batch_size=4)
    followed: list[Request] = []

    def ask_more(request: Request, gen) -> None:
        followed.append(decoder.submit(Request(images=request.images, text="<image>\nIs there any forest?",
                                               max_new_tokens=8, prepared=request.prepared)))

    first = [Request(**s) for s in specs]
    first[0].done = ask_more
    model.sam_encodes = 0
    decoder.run(iter(first))
    assert len(followed) == 1 and followed[0].prepared is first[0].prepared  # no second vision-tower pass
    _same(follow, followed[0].result)
    for ref, request in zip(reference, first, strict=True):
        _same(ref, request.result)


def test_batch_of_one_is_the_single_prompt_loop(tiny):
    model, tok = tiny
    spec = _requests(tok)[2]
    _same(generate(model, tok, **spec), generate_batch(model, tok, [Request(**spec)], batch_size=1)[0])


@pytest.fixture(scope="module")
def native(tmp_path_factory) -> Path:
    """The tiny checkpoint with at most 3 [SEG] per prompt and a short system text, to keep scene runs fast."""
    path = tt.write_native(tmp_path_factory.mktemp("ckpt") / "native", max_new_tokens=12)
    config = json.loads((path / "terrascope.json").read_text())
    config.update(max_segs=3, system_prompt="Answer briefly.\n")
    (path / "terrascope.json").write_text(json.dumps(config))
    return path


def test_scene_mode_decodes_tiles_in_batches_with_the_tile_by_tile_result(native, slovenia, tmp_path):
    from tscope.ask import ask

    question = "What percentage of the image is covered by forest?"
    traces = {}
    for batch in (1, 4):
        options = dict(model=native, dtype="fp32", device="cpu", tile_overlap=16, scene_tile=64, batch_tiles=batch,
                       max_new_tokens=6)
        traces[batch] = ask([slovenia], question, backend="terrascope", backend_options=options, write=False)
    one, four = traces[1], traces[4]
    assert len(four.tiles) == 4 and any(t["checks"] for t in four.tiles)  # questions and follow-up checks
    assert four.tiles == one.tiles
    assert np.array_equal(four.masks["01_forest"].data, one.masks["01_forest"].data)
    assert four.numbers["coverage_percent"].value == one.numbers["coverage_percent"].value
    assert any("at most 4 at once" in n for n in four.notes) and any("at most 1 at once" in n for n in one.notes)


def test_batch_loads_the_model_once_per_worker(native, slovenia, tmp_path, monkeypatch):
    """Two AOIs x two questions on one Dask worker (GPU=1 resource, as a GPU cluster runs it): one load."""
    import rasterio
    from distributed import LocalCluster
    from rasterio.warp import transform_geom
    from shapely.geometry import box, mapping

    import tscope.batch.run as batch_run
    import tscope.model.loading as loading
    from tests.stac_server import StacServer
    from tscope.batch.run import BatchConfig, run_batch

    with rasterio.open(slovenia) as src:
        b, crs = src.bounds, src.crs
    half = (b.right - b.left) / 2
    features = [{"type": "Feature", "id": f"half-{i}", "properties": {},
                 "geometry": transform_geom(crs, "EPSG:4326", mapping(box(b.left + i * half + 40, b.bottom + 40,
                                                                          b.left + (i + 1) * half - 40, b.top - 40)))}
                for i in range(2)]
    aois = tmp_path / "aois.geojson"
    aois.write_text(json.dumps({"type": "FeatureCollection", "features": features}))

    loads = []
    real_load = loading.load_terrascope

    def counted(*args, **kwargs):
        loads.append(args[0])
        return real_load(*args, **kwargs)

    monkeypatch.setattr(loading, "load_terrascope", counted)
    monkeypatch.setattr(batch_run, "_MODELS", {})
    options = dict(model=str(native), dtype="fp32", device="cpu", batch_tiles=2)
    with StacServer(tmp_path / "assets") as server:
        config = BatchConfig(questions=("What percentage of the image is covered by forest?",
                                        "What percentage of the image is covered by water?"),
                             datetimes=("2015-08-01/2015-09-01",), catalog=server.url, backend="terrascope",
                             backend_options=options)
        # A worker in this process (so the counter sees its loads), holding one GPU, as `dask worker
        # --resources GPU=1` would; each AOI task asks for it.
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0",
                          resources={"GPU": 1}) as cluster:
            summary = run_batch(aois, config, tmp_path / "out", scheduler=cluster.scheduler_address,
                                resources={"GPU": 1})
    assert summary.failed == [] and len(summary.results) == 2
    assert loads == [str(native)]  # one load for 2 AOIs x 2 questions
    answer = json.loads(next((tmp_path / "out").rglob("half-0/answers/q01-*/answer.json")).read_text())
    assert answer["backend"] == "terrascope"
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["config"]["backend_options"]["batch_tiles"] == 2


@pytest.mark.parametrize("extra, message", [
    (["--backend", "terrascope"], "--backend terrascope needs --model DIR"),
    (["--resources", "GPU=one"], "--resources: expected NAME=AMOUNT"),
    (["--backend", "terrascope", "--model", ".", "--batch-tiles", "0"], "--batch-tiles must be at least 1"),
])
def test_batch_model_options_are_checked_before_any_work(tmp_path, extra, message):
    from tests.conftest import run_cli

    aois = tmp_path / "aois.geojson"
    aois.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [
            [[14.0, 46.0], [14.01, 46.0], [14.01, 46.01], [14.0, 46.01], [14.0, 46.0]]]}}]}))
    result = run_cli("batch", aois, "--question", "What % is forest?", "--datetime", "2020-01-01/2020-02-01",
                     "--out", tmp_path / "out", *extra, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"tscope: error: {message}")
    assert not (tmp_path / "out").exists()



def test_sequences_that_stop_at_their_first_token_do_not_end_the_run(tiny):
    model, tok = tiny
    eos = tok.eos_token_id
    requests = [Request([_image(64, 64, i)], "<image>\nWhere?", override=lambda step, greedy: eos) for i in range(5)]
    BatchDecoder(model, tok, batch_size=2).run(iter(requests))  # every admitted batch empties at once
    assert all(r.result is not None and r.result.token_ids == [eos] and r.result.stop == "eos" for r in requests)


def test_official_reference_cases_decoded_together_match_the_official_outputs():
    """The release's own outputs (tests/reference, see test_official_reference.py), decoded together through
    three slots: ids, stops, regions, frames, [SEG] states and masks. The cases with at most a few [SEG]
    (a tiled image, pairs, a multiple-choice prompt; eos and length stops), to keep the test short."""
    from PIL import Image

    from tscope.model.loading import load_terrascope

    reference = Path(__file__).parent / "reference" / "data"
    chosen = ("large700x500_forced", "large700x500_free", "pair_forced", "pair_free", "mc_naip_forced")
    cases = [c for c in json.loads((reference / "cases.json").read_text())["cases"] if c["name"] in chosen]
    assert len(cases) == len(chosen)
    stops = {"eos": "eos", "gen_cap": "max_new_tokens", "seg_iterations_20": "max_segs"}
    loaded = load_terrascope(reference / "checkpoint", dtype="fp32", device="cpu")
    requests = []
    for spec in cases:
        schedule = {int(n): int(t) for n, t in spec["schedule"].items()}
        images = [np.asarray(Image.open(reference / name).convert("RGB")) for name in spec["images"]]
        requests.append(Request(images, spec["text"], max_new_tokens=spec["gen_cap"],
                                override=lambda n, greedy, s=schedule: s.get(n, greedy)))
    generate_batch(loaded.model, loaded.tokenizer, requests, batch_size=3)
    for spec, request in zip(cases, requests, strict=True):
        arrays, gen = np.load(reference / f"{spec['name']}.npz"), request.result
        assert gen.prompt_ids[0].tolist() == arrays["prompt_ids"].tolist(), spec["name"]
        assert gen.all_ids == arrays["generated_ids"].tolist() and gen.stop == stops[spec["stop"]], spec["name"]
        for k, seg in enumerate(spec["segs"]):
            offset = 256 * seg["frame"] if len(spec["images"]) > 1 else 0  # pair indices are global
            assert gen.frames[k] == seg["frame"]
            assert [int(i) + offset for i in gen.regions[k]] == seg["region_indices"]
            assert torch.allclose(gen.seg_hidden[k], torch.from_numpy(arrays[f"seg{k}_hidden"]), atol=1e-4)
            bits = arrays[f"seg{k}_mask_bits"]
            official = np.unpackbits(bits)[: int(np.prod(seg["mask_shape"]))].reshape(seg["mask_shape"]).astype(bool)
            mine = gen.frame_masks[k] if len(spec["images"]) > 1 else gen.masks[k]
            for a, b in zip(np.atleast_3d(mine.T).T, np.atleast_3d(official.T).T, strict=True):
                union = np.logical_or(a, b).sum()
                assert union == 0 or np.logical_and(a, b).sum() / union >= 0.99
