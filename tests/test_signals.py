"""Ctrl-C, SIGTERM and SIGKILL while work is under way: exit 130/143 with one line, nothing half-written,
and a rerun that succeeds (ask) or resumes (batch)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from tests.conftest import ROOT
from tests.stac_server import StacServer
from tests.test_batch import QUESTION, files_of, recorded, write_aois

Q = "What percentage of the image is covered by forest?"


@pytest.fixture(scope="module")
def big_scene(tmp_path_factory) -> Path:
    """A 2400² four-band scene of 60-px blocks of forest, grass and water: a few seconds of work."""
    path = tmp_path_factory.mktemp("big") / "big.tif"
    rng = np.random.default_rng(0)
    kinds = rng.integers(0, 3, (40, 40))
    # red, green, blue, nir reflectance * 10000 for forest, grass, water
    table = np.array([[300, 500, 300, 4500], [800, 1000, 600, 3000], [300, 500, 700, 200]], np.uint16)
    with rasterio.open(path, "w", driver="GTiff", width=2400, height=2400, count=4, dtype="uint16",
                       crs="EPSG:32633", transform=Affine(10, 0, 500000, 0, -10, 5100000), tiled=True,
                       compress="deflate") as dst:
        for i, name in enumerate(("red", "green", "blue", "nir")):
            dst.write(np.kron(table[kinds, i], np.ones((60, 60), np.uint16)), i + 1)
            dst.set_band_description(i + 1, name)
    return path


def _start(*args: str, cwd: Path, group: bool = False) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "tscope", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=group)


def _wait_for(condition, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, f"finished before the signal: {proc.communicate()}"
        assert time.monotonic() < deadline, "the work never started"
        time.sleep(0.01)


def _reading(proc: subprocess.Popen, path: Path):
    """True while ``proc`` has ``path`` open: the scene is being read, the work is under way."""
    def check() -> bool:
        fds = f"/proc/{proc.pid}/fd"
        try:
            return any(os.readlink(f"{fds}/{fd}") == str(path) for fd in os.listdir(fds))
        except OSError:
            return False
    return check


def _leftovers(folder: Path) -> list[str]:
    return [str(p.relative_to(folder)) for p in folder.rglob("*")] if folder.exists() else []


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="watches /proc to signal mid-read")
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ask_interrupted_exits_128_plus_signal_and_leaves_nothing(big_scene, tmp_path, signum, code):
    out = tmp_path / "out"
    proc = _start("ask", str(big_scene), Q, "--out", str(out), cwd=tmp_path)
    _wait_for(_reading(proc, big_scene), proc)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert stderr.splitlines() == [f"tscope: error: interrupted by {signal.Signals(signum).name}"]
    assert not _leftovers(out)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="watches /proc to signal mid-write")
def test_ask_killed_while_writing_then_rerun_succeeds_clean(big_scene, tmp_path):
    out = tmp_path / "out"
    proc = _start("ask", str(big_scene), Q, "--out", str(out), cwd=tmp_path)
    _wait_for(lambda: any(p.name.endswith(".partial") for p in _iter(out)), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "answer.json").exists()
    # A SIGKILL runs no handler: usually a .partial file is left (the writer may just have renamed it;
    # the sweep of a left partial is pinned by test_safety.py::test_stale_partials_of_a_killed_run_are_swept).
    rerun = _start("ask", str(big_scene), Q, "--out", str(out), cwd=tmp_path)
    stdout, stderr = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, stderr
    assert "Forest covers" in stdout
    names = sorted(_leftovers(out))
    assert not [n for n in names if ".partial" in n or ".ovr.tmp" in n or "pending" in n], names
    assert (out / "answer.json").is_file()


def _iter(folder: Path):
    return folder.rglob("*") if folder.exists() else iter(())


def test_batch_interrupted_then_resumed_with_aoi_ids_that_look_like_tscope_files(tmp_path):
    """Ctrl-C (to the whole process group, as a terminal sends it) stops the Dask workers; the rerun
    resumes from the manifest. AOIs named ``manifest.json`` and ``locks`` stay in their own folders."""
    aois = write_aois(tmp_path / "aois.geojson")
    data = json.loads(aois.read_text())
    data["features"][0]["id"], data["features"][1]["id"] = "manifest.json", "locks"
    data["features"] = data["features"][:4]
    aois.write_text(json.dumps(data))
    out = tmp_path / "out"
    args = ["batch", str(aois), "--question", QUESTION, "--datetime", "2015-08-01/2015-09-01", "--out", str(out),
            "--workers", "1", "--backoff", "0.05", "--retries", "1", "--json"]
    with StacServer(tmp_path / "assets") as server:
        proc = _start(*args, "--catalog", server.url, cwd=tmp_path, group=True)
        _wait_for(lambda: len(recorded(out)) >= 1, proc, seconds=120)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        assert stderr.splitlines() == ["tscope: error: interrupted by SIGINT"]
        at_stop = recorded(out)
        assert 1 <= len(at_stop) < 4
        rerun = _start(*args, "--catalog", server.url, cwd=tmp_path)
        stdout, stderr = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, stderr
    summary = json.loads(stdout)
    assert set(summary["skipped"]) == set(at_stop) and summary["done"] == 4
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"manifest.json", "locks"} <= set(manifest["aois"])
    assert (out / "aois" / "manifest.json" / "aoi.json").is_file() and (out / "aois" / "locks" / "aoi.json").is_file()
    assert not [f for f in files_of(out) if ".staging/" in f and not f.endswith(".lock")]
