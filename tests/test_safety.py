"""Failure safety beyond the bad-input table: user files, stale partials, file modes, rotated scenes,
scratch copies of weights, pickles, library noise on stderr, and failed fetches."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from tests.conftest import DATA, EXAMPLES, ROOT, run_cli

SLOVENIA = EXAMPLES / "slovenia_s2.tif"
T2 = DATA / "slovenia_s2_t2.tif"
Q = "What percentage of the image is covered by forest?"
CHANGE = "How much did the vegetation change between the two images?"


def test_overwrite_removes_only_what_tscope_wrote(tmp_path):
    out = tmp_path / "o"
    assert run_cli("ask", SLOVENIA, "Does the forest border the grassland?", "--out", out).returncode == 0
    (out / "masks" / "my_labels.tif").write_bytes(b"the user's raster")
    (out / "notes.md").write_text("mine\n")
    result = run_cli("ask", SLOVENIA, "Is there any water?", "--out", out, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["01_water.tif", "my_labels.tif"]
    assert (out / "masks" / "my_labels.tif").read_bytes() == b"the user's raster"
    assert (out / "notes.md").read_text() == "mine\n"


def test_user_files_where_outputs_go_are_refused_not_deleted(tmp_path):
    out = tmp_path / "o"
    (out / "masks").mkdir(parents=True)
    (out / "quicklook.png").write_bytes(b"my picture")
    (out / "masks" / "01_forest.tif").write_bytes(b"my raster")
    for extra in ([], ["--overwrite"]):
        result = run_cli("ask", SLOVENIA, Q, "--out", out, *extra)
        assert result.returncode == 2 and "not written by tscope" in result.stderr
    assert (out / "quicklook.png").read_bytes() == b"my picture"
    assert (out / "masks" / "01_forest.tif").read_bytes() == b"my raster"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["masks", "masks/01_forest.tif", "quicklook.png"]


def test_stale_partials_of_a_killed_run_are_swept(tmp_path):
    out = tmp_path / "o"
    (out / "masks").mkdir(parents=True)
    stale = [out / ".answer.json.k3j_9zq1.partial", out / "masks" / ".01_forest.tif.ab12cd34.partial",
             out / "masks" / ".01_forest.tif.ab12cd34.partial.ovr.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    # What a SIGKILL between two outputs leaves: a complete mask and the record that tscope wrote it.
    (out / "masks" / "01_forest.tif").write_bytes(b"complete but orphaned")
    (out / ".tscope-pending.json").write_text(json.dumps(["masks/01_forest.tif"]))
    (out / ".keep.me.partial").write_text("not a tscope name: left alone")
    result = run_cli("ask", SLOVENIA, Q, "--out", out)
    assert result.returncode == 0, result.stderr
    assert not any(p.exists() for p in stale)
    assert (out / ".keep.me.partial").exists() and not (out / ".tscope-pending.json").exists()
    with rasterio.open(out / "masks" / "01_forest.tif") as src:
        assert src.count == 1


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_outputs_get_the_mode_open_would_give(tmp_path, umask, mode):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for args in (["ask", str(SLOVENIA), Q, "--out", str(tmp_path / "a")],
                 ["stack", str(SLOVENIA), str(T2), "--out", str(tmp_path / "s")]):
        result = subprocess.run([sys.executable, "-m", "tscope", *args], env=env, capture_output=True, text=True,
                                timeout=300, preexec_fn=lambda: os.umask(umask))
        assert result.returncode == 0, result.stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 8
    assert {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in files} == \
        {str(p.relative_to(tmp_path)): mode for p in files}


def _rotated(src: Path, dst: Path, degrees: float) -> Path:
    with rasterio.open(src) as s:
        profile, data, desc = s.profile, s.read(), s.descriptions
    profile["transform"] = s.transform @ Affine.rotation(degrees)
    with rasterio.open(dst, "w", **profile) as d:
        d.write(data)
        for i, text in enumerate(desc, start=1):
            d.set_band_description(i, text)
    return dst


def test_rotated_first_scene_of_a_pair_is_analysed_on_a_north_up_grid(tmp_path):
    rotated = _rotated(SLOVENIA, tmp_path / "rot.tif", 45)
    result = run_cli("ask", rotated, T2, CHANGE, "--out", tmp_path / "a", "--json")
    assert result.returncode == 0, result.stderr
    grid = json.loads(result.stdout)["scenes"][0]
    a, b, _, d, e, _ = grid["transform"]
    assert b == 0 and d == 0 and a == pytest.approx(10, rel=1e-3) and e == pytest.approx(-10, rel=1e-3)
    result = run_cli("stack", rotated, T2, "--out", tmp_path / "s", "--json")
    assert result.returncode == 0, result.stderr
    with rasterio.open(tmp_path / "s" / "t1.tif") as src:
        assert src.transform.b == 0 and src.transform.d == 0 and src.res == pytest.approx((10, 10), rel=1e-3)


def test_quantised_load_scratch_of_a_killed_process_is_swept(tmp_path, monkeypatch):
    import tempfile

    from tscope.model.loading import quant_scratch

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code = ("import sys, time; from tscope.model.loading import quant_scratch\n"
            "with quant_scratch() as tmp:\n"
            "    (tmp / 'weights.safetensors').write_bytes(b'x' * 1000); print(tmp, flush=True); time.sleep(60)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(tmp_path))
    killed = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    stale = Path(killed.stdout.readline().strip())
    live = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    in_use = Path(live.stdout.readline().strip())
    killed.kill()
    killed.wait()
    assert (stale / "weights.safetensors").exists()  # SIGKILL runs no cleanup: the copy stays ...
    try:
        with quant_scratch() as mine:
            assert mine.is_dir()
            assert not stale.exists()  # ... until the next quantised load sweeps it,
            assert (in_use / "weights.safetensors").exists()  # never one a live process holds
        assert not mine.exists()
    finally:
        live.kill()
        live.wait()


def test_native_loader_never_unpickles(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    sys.path.insert(0, str(Path(__file__).parent))
    import tiny_terrascope as tt

    from tscope.errors import InputError
    from tscope.model.loading import load_terrascope

    path = tt.write_native(tmp_path / "native")
    internvl = path / "internvl"
    weights = next(internvl.glob("*.safetensors"))
    from safetensors.torch import load_file

    torch.save(load_file(str(weights)), internvl / "pytorch_model.bin")
    weights.rename(internvl / "decoy.safetensors")
    for index in internvl.glob("*.index.json"):
        index.unlink()

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called on a pickle")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(InputError, match="safetensors"):
        load_terrascope(path, dtype="fp32", device="cpu")


def test_library_warnings_go_to_the_log(tmp_path):
    """A file without georeferencing makes rasterio warn; the user sees one line, or the warning with -v."""
    plain = tmp_path / "plain.tif"
    with rasterio.open(plain, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8") as dst:
        dst.write(np.zeros((1, 8, 8), "uint8"))
    quiet = run_cli("ask", plain, Q, "--out", tmp_path / "o")
    assert quiet.returncode == 2 and len(quiet.stderr.splitlines()) == 1, quiet.stderr
    loud = run_cli("-v", "ask", plain, Q, "--out", tmp_path / "o")
    assert loud.returncode == 2 and "NotGeoreferencedWarning" in loud.stderr
    assert loud.stderr.splitlines()[-1].startswith("tscope: error:")


def test_failed_fetch_leaves_no_folder(tmp_path):
    from tests.stac_server import StacServer

    out = tmp_path / "deep" / "out"
    with StacServer(tmp_path / "assets") as server:
        server.faults.errors["/assets/"] = [404] * 500
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        result = subprocess.run(
            [sys.executable, "-m", "tscope", "fetch", "--bbox", "14.553", "45.867", "14.562", "45.873", "--datetime",
             "2015-08-01/2015-09-01", "--catalog", server.url, "--out", str(out), "--retries", "0"],
            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("tscope: error:")
    assert not (tmp_path / "deep").exists()


def test_atomic_file_and_folder_writes_respect_the_umask(tmp_path):
    from tscope.geo.writers import atomic_dir, atomic_path

    mask = os.umask(0o022)
    os.umask(mask)
    with atomic_path(tmp_path / "file.json") as tmp:
        tmp.write_text("{}")
    with atomic_dir(tmp_path / "checkpoint") as tmp:
        (tmp / "weights.safetensors").write_bytes(b"")
    assert stat.S_IMODE((tmp_path / "file.json").stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "checkpoint").stat().st_mode) == 0o777 & ~mask
