"""TerraScope backend at scene scale on real Sentinel-2 data with a tiny random model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

pytest.importorskip("torch")
pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent))

import tiny_terrascope as tt  # noqa: E402

from tests.conftest import ROOT, run_cli  # noqa: E402
from tscope.model.backend import class_before  # noqa: E402
from tscope.model.tiling import stitch, tile_windows  # noqa: E402


@pytest.fixture(scope="module")
def native(tmp_path_factory) -> Path:
    return tt.write_native(tmp_path_factory.mktemp("ckpt") / "native", max_new_tokens=12)


def test_stitching_is_seamless():
    rng = np.random.default_rng(1)
    truth = rng.random((101, 100)) > 0.5
    windows = tile_windows(100, 101, 48, 16)
    assert len(windows) > 4
    tiles = {i: truth[int(w.row_off):int(w.row_off + w.height), int(w.col_off):int(w.col_off + w.width)]
             for i, w in enumerate(windows)}
    assert np.array_equal(stitch(truth.shape, windows, tiles), truth)
    # Each pixel is owned by exactly one tile: per-tile "ones" stitch to all ones, no gaps.
    ones = {i: np.ones((int(w.height), int(w.width)), bool) for i, w in enumerate(windows)}
    assert stitch(truth.shape, windows, ones).all()


def test_class_attribution_uses_the_words_before_seg():
    assert class_before("<think>First the lake") == "water"
    assert class_before("forest and then the built-up area") == "built_up"
    assert class_before("nothing here") is None


def test_ask_terrascope_scene_mode_writes_valid_outputs(native, slovenia, tmp_path):
    from tscope.ask import ask

    out = tmp_path / "out"
    trace = ask([slovenia], "What percentage of the image is covered by forest?", backend="terrascope",
                backend_options=dict(model=native, dtype="fp32", device="cpu", tile_overlap=16, scene_tile=64),
                out=out)
    assert len(trace.tiles) == 4 and {"id", "window", "answer", "text"} <= set(trace.tiles[0])
    mask = trace.masks["01_forest"]
    assert mask.grid.shape == (101, 100)
    with rasterio.open(slovenia) as src:
        assert mask.grid.transform == src.transform
    pct = trace.numbers["coverage_percent"].value
    assert pct == pytest.approx(100 * mask.counted.sum() / mask.valid.sum(), abs=1e-3)
    with rasterio.open(out / "masks" / "01_forest.tif") as cog:
        assert cog.crs.to_epsg() == 32633 and cog.nodata == 255
        assert np.array_equal(cog.read(1) == 1, mask.counted)
    geo = json.loads((out / "masks.geojson").read_text())
    assert geo["type"] == "FeatureCollection"
    assert "## Tiles" in (out / "answer.md").read_text()
    data = json.loads((out / "answer.json").read_text())
    assert data["backend"] == "terrascope" and len(data["tiles"]) == 4


def test_cli_change_pair_with_terrascope(native, joplin_pair, tmp_path):
    before, after = joplin_pair
    result = run_cli("ask", before, after, "How much did the built-up area change?", "--backend", "terrascope",
                     "--model", native, "--dtype", "fp32", "--device", "cpu", "--json", "--out", tmp_path / "o",
                     "--batch-tiles", "2", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no transformers warnings or progress bars: only tscope speaks on stderr
    data = json.loads(result.stdout)
    assert {m["frame"] for m in data["masks"].values()} == {"t1", "t2"}
    assert any("in batches of up to 2 sequences" in note for note in data["notes"])
    assert "net_m2" in data["numbers"]


def test_chat_returns_masks_per_image(native):
    from tscope.model.backend import TerraScopeBackend

    backend = TerraScopeBackend(native, dtype="fp32", device="cpu")
    images = [(np.random.default_rng(i).random((80, 120, 3)) * 255).astype(np.uint8) for i in range(2)]
    out = backend.chat(images, "Image: t2 where is the water?", max_new_tokens=10)
    assert len(out.masks) == len(out.frames) >= 1
    assert all(m.shape == (80, 120) and m.dtype == bool for m in out.masks)
    assert set(out.frames) <= {0, 1}


def test_benchmark_tiny_runs_on_cpu():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "model_latency.py"), "--tiny",
                             "--new-tokens", "8", "--segs", "1", "--samples", "1", "--batches", "1,2"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    header, _, row, paper = result.stdout.splitlines()[1:5]
    assert "s/sample b1" in header and "tiles/s b2" in header and "batched/unbatched (b2)" in header
    assert row.startswith("| tiny | CPU | none |") and paper.startswith("| paper | A100 | bf16 | 2.48 |")


def test_tile_reads_do_not_open_the_scene_per_tile(native, slovenia, tmp_path, monkeypatch):
    # Every tile's read opened the file anew; a pass keeps one handle per scene and thread.
    from tscope.ask import ask

    opened: list[str] = []
    real_open = rasterio.open
    monkeypatch.setattr(rasterio, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    opens = {}
    for tile in (64, 48):
        opened.clear()
        trace = ask([slovenia], "What percentage of the image is covered by forest?", backend="terrascope",
                    backend_options=dict(model=native, dtype="fp32", device="cpu", tile_overlap=16, scene_tile=tile),
                    out=tmp_path / str(tile))
        opens[len(trace.tiles)] = opened.count(str(slovenia))
    assert len(opens) == 2 and max(opens) > 2 * min(opens)  # more than twice the tiles at 48 px than at 64 px ...
    assert opens[max(opens)] == opens[min(opens)]  # ... and not one more open of the scene
