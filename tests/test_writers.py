"""Atomic writes: a failed block leaves the previous output (or nothing), never a half-written one."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import CRS
from rasterio.enums import Resampling

from tscope.geo.grid import Grid
from tscope.geo.mask import Mask
from tscope.geo.writers import MASK_NODATA, atomic_dir, atomic_path, sweep_partials, write_mask_cog


def test_atomic_path_replaces_only_on_success(tmp_path):
    dst = tmp_path / "answer.json"
    dst.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(dst) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert dst.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["answer.json"]
    with atomic_path(dst) as tmp:
        tmp.write_text("new")
    assert dst.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["answer.json"]


def test_atomic_dir_replaces_only_on_success(tmp_path):
    dst = tmp_path / "model"
    dst.mkdir()
    (dst / "weights.safetensors").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(dst) as tmp:
        (tmp / "weights.safetensors").write_text("half")
        raise RuntimeError("killed mid-write")
    assert (dst / "weights.safetensors").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no hidden staging folder left
    with atomic_dir(dst) as tmp:
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in dst.iterdir()) == ["config.json"]  # replaced whole, not merged
    with atomic_dir(tmp_path / "new" / "nested") as tmp:
        (tmp / "a").write_text("a")
    assert (tmp_path / "new" / "nested" / "a").read_text() == "a"


def test_mask_cog_has_the_cog_drivers_overviews_and_layout(tmp_path):
    # The overviews are built before the COG copy (the driver computing them cost half the write):
    # the file must be what the COG driver itself writes, levels, layout and values.
    grid = Grid(CRS.from_epsg(32633), Affine(10, 0, 399960, 0, -10, 5100000), 1300, 1100)
    rng = np.random.default_rng(0)
    data = rng.random(grid.shape) > 0.6
    valid = np.ones(grid.shape, bool)
    valid[:40] = False
    mask = Mask(data=data.copy(), valid=valid, grid=grid, label="water")
    write_mask_cog(tmp_path / "m.tif", mask)
    expected = np.where(valid, data.astype(np.uint8), MASK_NODATA)
    with rasterio.open(tmp_path / "m.tif") as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.profile["blockxsize"] == 512 and src.compression.name == "deflate"
        assert src.overviews(1) == [2, 4]  # halving until one 512-px tile holds it, as the driver does
        assert np.array_equal(src.read(1), expected)
        overview = src.read(1, out_shape=(550, 650), resampling=Resampling.nearest)
    assert np.array_equal(overview, expected[::2, ::2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tif"]  # the staged copy is gone
    # A killed run's staged copy is hidden and named after its output: the next run sweeps it.
    left = tmp_path / ".m.tif.k9x_2abc.partial.tif"
    left.write_bytes(b"")
    assert sweep_partials(tmp_path, ["m.tif"]) == [left]
