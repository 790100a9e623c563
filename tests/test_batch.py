"""`tscope batch` on a Dask LocalCluster against the loopback STAC API: failures, SIGKILL and rerun."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rasterio
from rasterio.warp import transform_geom
from shapely.geometry import box, mapping

from tests.conftest import EXAMPLES, ROOT
from tests.stac_server import StacServer
from tscope.batch.run import read_aois
from tscope.errors import InputError

QUESTION = "What percentage of the image is covered by forest?"


def write_aois(path: Path) -> Path:
    """Four AOIs inside the Slovenia scene, and one in the Atlantic where no item exists."""
    with rasterio.open(EXAMPLES / "slovenia_s2.tif") as src:
        b, crs = src.bounds, src.crs
    half = (b.right - b.left) / 2
    features = []
    for i, (x, y) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
        x0, y0 = b.left + x * half + 40, b.bottom + y * half + 40
        geom = transform_geom(crs, "EPSG:4326", mapping(box(x0, y0, x0 + half - 80, y0 + half - 80)))
        features.append({"type": "Feature", "id": f"plot/{i}", "properties": {}, "geometry": geom})
    features.append({"type": "Feature", "properties": {"name": "atlantic"},
                     "geometry": mapping(box(-30.0, 40.0, -29.99, 40.01))})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def batch(aois: Path, out: Path, url: str, cwd: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "tscope", "batch", str(aois), "--question", QUESTION,
            "--datetime", "2015-08-01/2015-09-01", "--catalog", url, "--out", str(out), "--workers", "2",
            "--backoff", "0.05", "--retries", "1", "--json"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # A session of its own, so SIGKILL reaches the Dask workers too, as when a job is cancelled.
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def recorded(out: Path) -> dict:
    """The AOIs the manifest records so far (it exists, with none, from the start of a run)."""
    try:
        return json.loads((out / "manifest.json").read_text())["aois"]
    except (OSError, ValueError):
        return {}


def files_of(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def test_aoi_ids_are_read_and_sanitised(tmp_path):
    aois = read_aois(write_aois(tmp_path / "aois.geojson"))
    ids = [a for a, _ in aois]
    assert all(ids[i].startswith(f"plot_{i}_") for i in range(4)) and len(set(ids)) == 5  # '/' replaced + hash
    assert aois[4][0] == "atlantic" and all("/" not in a for a, _ in aois)
    dup = tmp_path / "dup.geojson"
    data = json.loads((tmp_path / "aois.geojson").read_text())
    data["features"][1]["id"] = data["features"][0]["id"]
    dup.write_text(json.dumps(data))
    with pytest.raises(InputError, match="used twice"):
        read_aois(dup)


def test_killed_run_resumes_to_identical_outputs(tmp_path):
    aois = write_aois(tmp_path / "aois.geojson")
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    with StacServer(tmp_path / "assets") as server:
        ref = batch(aois, out, server.url, work)
        stdout, stderr = ref.communicate(timeout=240)
        assert ref.returncode == 1, stderr  # the Atlantic AOI failed, so the run says so
        summary = json.loads(stdout)
        assert summary["done"] == 4 and summary["failed"] == ["atlantic"]
        assert "no sentinel-2-c1-l2a items" in summary["aois"]["atlantic"]["reason"]
        assert stderr.strip().splitlines()[-1].startswith("tscope: error: 1 of 5 AOIs failed")
        shutil.move(out, tmp_path / "reference")

        killed = batch(aois, out, server.url, work)
        deadline = time.monotonic() + 180
        while not recorded(out) and time.monotonic() < deadline and killed.poll() is None:
            time.sleep(0.02)
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait(timeout=30)
        at_kill = json.loads((out / "manifest.json").read_text())["aois"]
        assert len(at_kill) < 5, "the run finished before it could be killed"
        rerun = batch(aois, out, server.url, work)
        stdout, stderr = rerun.communicate(timeout=240)
        assert rerun.returncode == 1, stderr
        resumed = json.loads(stdout)
        assert set(resumed["skipped"]) == {k for k, v in at_kill.items() if v["status"] == "done"}
    reference = tmp_path / "reference"
    assert files_of(out) == files_of(reference)
    assert not [f for f in files_of(out) if ".staging/" in f and not f.endswith(".lock")]
    mismatch = [f for f in files_of(reference) if not f.endswith(".lock")
                and not filecmp.cmp(reference / f, out / f, shallow=False)]
    assert not mismatch, mismatch
    done = [p for p in (out / "aois").iterdir() if p.is_dir()]
    assert len(done) == 4 and all(not p.is_symlink() and (p / "aoi.json").is_file() for p in done)
    answer = json.loads(next(done[0].glob("answers/*/answer.json")).read_text())
    assert "Forest covers" in answer["answer"]
    # Recorded relative to the answer folder: the batch folder can be moved or shared whole.
    assert answer["scenes"][0]["path"].startswith("../../scenes/t1/")
    assert not [f for f in files_of(out) if f.endswith(".json") and str(out) in (out / f).read_text()]
