"""Bad input across every command: exit code, one `tscope: error:` line, no traceback, nothing left or lost.

Each case runs the CLI in a fresh folder holding a file of the user's. Inputs live in a shared folder
that must come out byte-identical; the case's folder must hold exactly what it held before (no empty
output folder, no half-written file, nothing of the user's deleted). Runtime failures (exit 1) are only
for valid input; everything the user can fix is exit 2 and names the file or option at fault.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import rasterio
from affine import Affine

from tests.conftest import DATA, EXAMPLES, ROOT

SLOVENIA = EXAMPLES / "slovenia_s2.tif"
T2 = DATA / "slovenia_s2_t2.tif"
NAIP = DATA / "naip_rgbn.tif"
LULC = DATA / "slovenia_lulc.tif"
Q = "What percentage of the image is covered by forest?"


def _copy_with(src: Path, dst: Path, **changes) -> Path:
    with rasterio.open(src) as s:
        profile, data, desc, tags = s.profile, s.read(), s.descriptions, s.tags()
    profile.update(changes)
    with rasterio.open(dst, "w", **profile) as d:
        d.write(data)
        d.update_tags(**tags)
        for i, text in enumerate(desc, start=1):
            if text:
                d.set_band_description(i, text)
    return dst


def _bench(path: Path, **row) -> Path:
    from tscope.bench.schema import write_bench
    from tscope.data import image as images
    from tscope.geo.scene import open_scene

    png = images.png_bytes(images.render(open_scene(SLOVENIA))[0])
    base = {"id": "s0", "image": {"bytes": png, "path": "s0.png"}, "question": Q,
            "candidates": {"A": "10%", "B": "50%"}, "answer": "A", "task_type": "coverage_percentage"}
    return write_bench([base | row], path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Every bad input of the table, built once."""
    d = tmp_path_factory.mktemp("inputs")
    raw = SLOVENIA.read_bytes()
    (d / "truncated.tif").write_bytes(raw[: len(raw) // 2])
    (d / "text.tif").write_text("this is not a raster\n")
    (d / "text.geojson").write_text("not json")
    (d / "null_geom.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"id": "a"}, "geometry": None}]}))
    with rasterio.open(d / "huge.tif", "w", driver="GTiff", width=200000, height=200000, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=Affine(10, 0, 500000, 0, -10, 5000000), tiled=True,
                       blockxsize=16384, blockysize=16384, sparse_ok=True) as _:
        pass
    with rasterio.open(SLOVENIA) as src:
        far = src.transform @ Affine.translation(0, 100000)
    _copy_with(SLOVENIA, d / "far.tif", transform=far)
    with rasterio.open(LULC) as src:
        _copy_with(LULC, d / "far_labels.tif", transform=src.transform @ Affine.translation(0, 100000))
    rules = (ROOT / "models" / "spectral.toml").read_text()
    (d / "rules_str.toml").write_text(rules.replace('expression = "ndvi > 0.7"', 'expression = "ndvi > \'high\'"')
                                      .replace('expression = "(ndvi > 0.55) & (ndmi > 0.28)"',
                                               'expression = "(ndvi > \'high\') & (ndmi > 0.28)"'))
    (d / "questions.txt").write_text("What percentage is covered by forest?\nwhat colour is the sky\n")
    (d / "aois.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"id": "a"}, "geometry": {
            "type": "Polygon", "coordinates": [[[14.5, 45.8], [14.51, 45.8], [14.51, 45.81], [14.5, 45.8]]]}}]}))
    _bench(d / "bad_rle.parquet", gt_masks=[{"label": "forest", "frame": "t1",
                                             "rle": {"size": [101, 100], "counts": "0000"}}])
    _bench(d / "huge_rle.parquet", gt_masks=[{"label": "forest", "frame": "t1",
                                              "rle": {"size": [100000, 100000], "counts": [10**10]}}])
    _bench(d / "huge_grid.parquet", source=str(SLOVENIA), grid={"crs": "EPSG:32633", "transform": [10, 0, 0, 0, -10, 0],
                                                                "width": 200000, "height": 200000})
    (d / "classes.json").write_text(json.dumps({"2": "forest"}))
    (d / "train.yaml").write_text("stage: [unclosed\n")
    return d


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    """Broken TerraScope checkpoint folders (tiny weights)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    sys.path.insert(0, str(Path(__file__).parent))
    import tiny_terrascope as tt

    d = tmp_path_factory.mktemp("ckpts")
    released = tt.write_released(d / "released")
    pickle_only = d / "pickle_only"
    shutil.copytree(released, pickle_only)
    for f in pickle_only.glob("*.safetensors*"):
        f.unlink()
    (pickle_only / "pytorch_model.bin").write_bytes(b"\x80\x04N.")
    missing = d / "missing_shard"
    shutil.copytree(released, missing)
    (missing / "model-00002-of-00002.safetensors").unlink()
    escaping = d / "escaping"
    shutil.copytree(released, escaping)
    index = json.loads((escaping / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: "../released/" + v for k, v in index["weight_map"].items()}
    (escaping / "model.safetensors.index.json").write_text(json.dumps(index))
    corrupt = d / "corrupt"
    shutil.copytree(released, corrupt)
    (corrupt / "model-00001-of-00002.safetensors").write_bytes(b"\xff" * 8 + b"{not a header")
    not_json = d / "not_json"
    shutil.copytree(released, not_json)
    (not_json / "config.json").write_text("{model_type: sa2va_chat")
    bad_index = d / "bad_index"
    shutil.copytree(released, bad_index)
    (bad_index / "model.safetensors.index.json").write_text("[1, 2")
    remote = d / "remote_code"
    shutil.copytree(released, remote)
    config = json.loads((remote / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    config["tokenizer_class"] = "EvilTokenizer"
    (remote / "tokenizer_config.json").write_text(json.dumps(config))
    (remote / "tokenizer.json").unlink()
    return d


@dataclass
class Case:
    id: str
    args: list[str]
    code: int = 2
    needs: str | None = None  # "model": the case needs torch + the checkpoint fixture
    setup: str | None = None  # what to put in the case's folder first
    says: str | None = None  # a word the error line must contain


CASES = [
    # --- ask ---
    Case("ask-no-file", ["ask", "missing.tif", Q], says="no such file"),
    Case("ask-text-file", ["ask", "{in}/text.tif", Q], says="text.tif"),
    Case("ask-truncated", ["ask", "{in}/truncated.tif", Q, "--out", "o"], says="truncated"),
    Case("ask-huge", ["ask", "{in}/huge.tif", Q, "--out", "o"], says="TSCOPE_MAX_PIXELS"),
    Case("ask-bad-question", ["ask", str(SLOVENIA), "what colour is the sky", "--out", "o"]),
    Case("ask-duplicate-bands", ["ask", str(NAIP), Q, "--bands", "red,red,blue,nir", "--out", "o"], says="twice"),
    Case("ask-unknown-band", ["ask", str(NAIP), Q, "--bands", "red,foo,blue,nir", "--out", "o"], says="foo"),
    Case("ask-quant-spectral", ["ask", str(SLOVENIA), Q, "--quant", "3bit", "--out", "o"], says="--quant"),
    Case("ask-quant-8bit-spectral", ["ask", str(SLOVENIA), Q, "--quant", "8bit", "--out", "o"],
         says="terrascope only"),
    Case("ask-terrascope-no-model", ["ask", str(SLOVENIA), Q, "--backend", "terrascope", "--out", "o"],
         says="--model"),
    Case("ask-out-is-file", ["ask", str(SLOVENIA), Q, "--out", "user.txt"], setup="file", says="not a folder"),
    Case("ask-out-proc", ["ask", str(SLOVENIA), Q, "--out", "/proc/x"], says="/proc"),
    Case("ask-existing-answer", ["ask", str(SLOVENIA), Q, "--out", "o"], setup="answer", says="--overwrite"),
    Case("ask-user-files-in-out", ["ask", str(SLOVENIA), Q, "--out", "o"], setup="user-out",
         says="not written by tscope"),
    Case("ask-masks-symlink", ["ask", str(SLOVENIA), Q, "--out", "o"], setup="masks-link", says="masks"),
    Case("ask-rules-string", ["ask", str(SLOVENIA), Q, "--rules", "{in}/rules_str.toml", "--out", "o"],
         says="not a number"),
    Case("ask-rules-missing", ["ask", str(SLOVENIA), Q, "--rules", "nope.toml", "--out", "o"]),
    Case("ask-bad-crs", ["ask", str(SLOVENIA), Q, "--assume-crs", "EPSG:0", "--out", "o"]),
    Case("ask-pair-no-overlap", ["ask", str(SLOVENIA), "{in}/far.tif",
                                 "How much did the vegetation change between the two images?", "--out", "o"],
         says="overlap"),
    Case("ask-three-scenes", ["ask", str(SLOVENIA), str(T2), str(T2), Q]),
    Case("ask-unknown-option", ["ask", str(SLOVENIA), Q, "--frobnicate"]),
    Case("ask-sar-format", ["ask", str(SLOVENIA), Q, "--sar-format", "magic"]),
    # --- stack ---
    Case("stack-truncated-second", ["stack", str(SLOVENIA), "{in}/truncated.tif", "--out", "s"], says="truncated"),
    Case("stack-no-overlap", ["stack", str(SLOVENIA), "{in}/far.tif", "--out", "s"], says="overlap"),
    Case("stack-huge-grid", ["stack", str(SLOVENIA), str(T2), "--resolution", "0.001", "--out", "s"],
         says="TSCOPE_MAX_PIXELS"),
    Case("stack-bad-crs", ["stack", str(SLOVENIA), str(T2), "--crs", "EPSG:0", "--out", "s"]),
    Case("stack-bad-resampling", ["stack", str(SLOVENIA), str(T2), "--resampling", "magic", "--out", "s"]),
    Case("stack-one-scene", ["stack", str(SLOVENIA), "--out", "s"]),
    Case("stack-out-proc", ["stack", str(SLOVENIA), str(T2), "--out", "/proc/x/y"], says="/proc"),
    # --- fetch ---
    Case("fetch-bad-datetime", ["fetch", "--bbox", "14.5", "45.8", "14.6", "45.9", "--datetime", "yesterday",
                                "--catalog", "http://127.0.0.1:9", "--out", "f"]),
    Case("fetch-bbox-and-aoi", ["fetch", "--bbox", "14.5", "45.8", "14.6", "45.9", "--aoi", "{in}/aois.geojson",
                                "--datetime", "2020-01-01/2020-02-01", "--out", "f"]),
    Case("fetch-null-aoi", ["fetch", "--aoi", "{in}/null_geom.geojson", "--datetime", "2020-01-01/2020-02-01",
                            "--catalog", "http://127.0.0.1:9", "--out", "f"], says="null_geom"),
    Case("fetch-text-aoi", ["fetch", "--aoi", "{in}/text.geojson", "--datetime", "2020-01-01/2020-02-01",
                            "--catalog", "http://127.0.0.1:9", "--out", "f"], says="text.geojson"),
    Case("fetch-unknown-catalog", ["fetch", "--bbox", "14.5", "45.8", "14.6", "45.9", "--datetime",
                                   "2020-01-01/2020-02-01", "--catalog", "nowhere", "--out", "f"]),
    # --- batch ---
    Case("batch-bad-question", ["batch", "{in}/aois.geojson", "--question", "what colour is the sky",
                                "--datetime", "2020-01-01/2020-02-01", "--catalog", "http://127.0.0.1:9",
                                "--out", "b"]),
    Case("batch-bad-questions-file", ["batch", "{in}/aois.geojson", "--questions", "{in}/questions.txt",
                                      "--datetime", "2020-01-01/2020-02-01", "--catalog", "http://127.0.0.1:9",
                                      "--out", "b"]),
    Case("batch-workers-0", ["batch", "{in}/aois.geojson", "--question", Q, "--datetime", "2020-01-01/2020-02-01",
                             "--catalog", "http://127.0.0.1:9", "--out", "b", "--workers", "0"], says="--workers"),
    Case("batch-null-aoi", ["batch", "{in}/null_geom.geojson", "--question", Q, "--datetime",
                            "2020-01-01/2020-02-01", "--catalog", "http://127.0.0.1:9", "--out", "b"]),
    Case("batch-three-datetimes", ["batch", "{in}/aois.geojson", "--question", Q, "--datetime", "2020-01-01/2020-02-01",
                                   "--datetime", "2020-03-01/2020-04-01", "--datetime", "2020-05-01/2020-06-01",
                                   "--out", "b"]),
    # --- data ---
    Case("data-synth-text-labels", ["data", "synth", str(SLOVENIA), "--labels", "{in}/text.tif", "--out", "d"],
         says="text.tif"),
    Case("data-synth-text-labels-classes", ["data", "synth", str(SLOVENIA), "--labels", "{in}/text.tif", "--classes",
                                            "{in}/classes.json", "--out", "d"], says="text.tif"),
    Case("data-synth-labels-elsewhere", ["data", "synth", str(SLOVENIA), "--labels", "{in}/far_labels.tif",
                                         "--out", "d"], says="overlap"),
    Case("data-synth-huge", ["data", "synth", "{in}/huge.tif", "--labels", str(LULC), "--out", "d"],
         says="TSCOPE_MAX_PIXELS"),
    Case("data-synth-truncated", ["data", "synth", "{in}/truncated.tif", "--labels", str(LULC), "--out", "d"],
         says="truncated"),
    Case("data-synth-unknown-task", ["data", "synth", str(SLOVENIA), "--labels", str(LULC), "--tasks", "magic",
                                     "--out", "d"]),
    Case("data-res-text-labels", ["data", "res", str(SLOVENIA), "--labels", "{in}/text.tif", "--classes",
                                  "{in}/classes.json", "--out", "d"], says="text.tif"),
    # --- bench ---
    Case("bench-eval-bad-rle", ["bench", "eval", "{in}/bad_rle.parquet", "--out", "e"], says="RLE"),
    Case("bench-eval-huge-rle", ["bench", "eval", "{in}/huge_rle.parquet", "--out", "e"], says="TSCOPE_MAX_PIXELS"),
    Case("bench-eval-huge-grid", ["bench", "eval", "{in}/huge_grid.parquet", "--out", "e"],
         says="TSCOPE_MAX_PIXELS"),
    Case("bench-eval-quant-spectral", ["bench", "eval", "{in}/bad_rle.parquet", "--quant", "8bit", "--out", "e"],
         says="terrascope only"),
    Case("bench-eval-not-parquet", ["bench", "eval", "{in}/text.tif", "--out", "e"], says="parquet"),
    Case("bench-build-huge", ["bench", "build", "{in}/huge.tif", "--labels", str(LULC), "--out", "b.parquet"],
         says="TSCOPE_MAX_PIXELS"),
    # --- train ---
    Case("train-bad-yaml", ["train", "stage1", "--config", "{in}/train.yaml", "--out", "t"]),
    # --- model ---
    Case("model-info-pickle-only", ["model", "info", "{ck}/pickle_only"], needs="model", says="pickle"),
    Case("model-info-missing-shard", ["model", "info", "{ck}/missing_shard"], needs="model", says="missing"),
    Case("model-info-index-escapes", ["model", "info", "{ck}/escaping"], needs="model", says="outside"),
    Case("model-info-corrupt-header", ["model", "info", "{ck}/corrupt"], needs="model", says="safetensors"),
    Case("model-info-config-not-json", ["model", "info", "{ck}/not_json"], needs="model", says="config.json"),
    Case("model-info-index-not-json", ["model", "info", "{ck}/bad_index"], needs="model", says="index"),
    Case("model-convert-dst-inside-src", ["model", "convert", "{ck}/released", "{ck}/released/sub"], needs="model",
         says="SRC"),
    Case("model-convert-dst-contains-src", ["model", "convert", "{ck}/released", "{ck}", "--overwrite"],
         needs="model", says="SRC"),
    Case("model-convert-foreign-dst", ["model", "convert", "{ck}/released", "user-folder", "--overwrite"],
         needs="model", setup="user-folder", says="not a tscope checkpoint"),
    Case("ask-model-remote-code", ["ask", str(SLOVENIA), Q, "--backend", "terrascope", "--model", "{ck}/remote_code",
                                   "--device", "cpu", "--out", "o"], needs="model", says="tokenizer"),
]


def _tree(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (folders, links and files with their content hash)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _setup(case: Case, cwd: Path) -> None:
    (cwd / "user-notes.txt").write_text("the user's own file\n")
    if case.setup == "file":
        (cwd / "user.txt").write_text("mine\n")
    elif case.setup == "answer":
        (cwd / "o").mkdir()
        (cwd / "o" / "answer.json").write_text("{}\n")
    elif case.setup == "user-out":
        (cwd / "o" / "masks").mkdir(parents=True)
        (cwd / "o" / "answer.md").write_text("my own notes\n")
        (cwd / "o" / "masks" / "01_forest.tif").write_bytes(b"my own raster")
    elif case.setup == "masks-link":
        (cwd / "precious").mkdir()
        (cwd / "precious" / "01_forest.tif").write_bytes(b"keep me")
        (cwd / "o").mkdir()
        (cwd / "o" / "masks").symlink_to(cwd / "precious", target_is_directory=True)
    elif case.setup == "user-folder":
        (cwd / "user-folder").mkdir()
        (cwd / "user-folder" / "thesis.tex").write_text("years of work\n")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, inputs: Path, request, tmp_path: Path):
    ck = request.getfixturevalue("checkpoints") if case.needs == "model" else None
    cwd = tmp_path / "case"
    cwd.mkdir()
    _setup(case, cwd)
    args = [a.format(**{"in": inputs, "ck": ck}) for a in case.args]
    shared = [inputs] + ([ck] if ck is not None else [])
    before = {str(d): _tree(d) for d in [cwd, *shared]}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("TSCOPE_MAX_PIXELS", None)
    result = subprocess.run([sys.executable, "-m", "tscope", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=300)
    lines = result.stderr.splitlines()
    assert result.returncode == case.code, result.stderr
    assert len(lines) == 1 and lines[0].startswith("tscope: error: "), result.stderr
    assert "Traceback" not in result.stderr and "Error:" not in lines[0].split("tscope: error: ", 1)[1][:40]
    if case.says:
        assert case.says.lower() in lines[0].lower(), lines[0]
    after = {str(d): _tree(d) for d in [cwd, *shared]}
    assert after == before  # nothing left behind, nothing of the user's (or the inputs) changed


def test_the_table_covers_every_command():
    commands = {c.args[0] for c in CASES}
    assert commands >= {"ask", "stack", "fetch", "batch", "data", "bench", "train", "model"}
    assert len(CASES) >= 40


def test_huge_input_passes_with_a_raised_limit(inputs: Path, monkeypatch):
    """The limit is a setting, not a wall: with TSCOPE_MAX_PIXELS raised, the size check lets the file through."""
    from tscope.errors import InputError
    from tscope.geo.scene import ReadOptions, open_scene

    options = ReadOptions(bands="pan")
    with pytest.raises(InputError, match="TSCOPE_MAX_PIXELS"):
        open_scene(inputs / "huge.tif", options)
    monkeypatch.setenv("TSCOPE_MAX_PIXELS", "1e11")
    assert open_scene(inputs / "huge.tif", options).grid.shape == (200000, 200000)
