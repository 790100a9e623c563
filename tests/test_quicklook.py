"""Quicklooks a person can read, drawn from the pass that computed the masks (no second read)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from PIL import Image
from pyproj import CRS
from rasterio.windows import Window

from tscope.ask import ask
from tscope.geo.grid import Grid
from tscope.geo.preview import Preview
from tscope.geo.scene import open_scenes
from tscope.reason.backend import get_backend
from tscope.reason.query import parse_query
from tscope.report import CLASS_COLOURS, MIN_SIDE, NODATA_COLOUR, write_outputs


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _footer_rows(image: np.ndarray) -> int:
    """Height of the white legend strip under the map."""
    white = np.all(image == 255, axis=-1).mean(axis=1) > 0.5
    rows = 0
    while rows < len(white) and white[-1 - rows]:
        rows += 1
    return rows


def _has(image: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return bool(np.all(image == colour, axis=-1).any())


def test_preview_is_the_mean_of_valid_pixels_per_cell():
    grid = Grid(CRS.from_epsg(32633), Affine(10, 0, 0, 0, -10, 0), 11, 10)
    preview = Preview(grid, ["red"], max_side=4)  # cells of 3 x 3 px; windows of 4 straddle them
    assert preview.factor == 3 and preview.shape == (4, 4)
    values = np.arange(110, dtype=np.float32).reshape(10, 11)
    valid = np.ones((10, 11), bool)
    valid[:3, :3] = False  # a whole cell of nodata
    valid[4, 5] = False
    for window in grid.windows(4):
        rows = slice(window.row_off, window.row_off + window.height)
        cols = slice(window.col_off, window.col_off + window.width)
        preview.add(window, {"red": values[rows, cols]}, valid[rows, cols])
    for i in range(4):
        for j in range(4):
            cell = (slice(3 * i, 3 * i + 3), slice(3 * j, 3 * j + 3))
            if valid[cell].any():
                assert preview.band("red")[i, j] == np.float32(values[cell][valid[cell]].mean())
            else:
                assert not preview.valid[i, j] and np.isnan(preview.band("red")[i, j])
    # Coarsened by 2 (the cloud model's cells), it is the preview a pass would fill on cells of 6 x 6 px.
    direct = Preview(grid, ["red"], factor=6)
    direct.add(Window(0, 0, 11, 10), {"red": values}, valid)
    coarse = preview.coarsened(2)
    assert coarse.factor == 6 and coarse.shape == direct.shape == (2, 2)
    np.testing.assert_allclose(coarse.band("red"), direct.band("red"), rtol=1e-6)
    assert np.array_equal(coarse.valid, direct.valid)
    # An overlapping window (tiles of the model backend) leaves the means unchanged.
    preview.add(Window(0, 0, 11, 10), {"red": values}, valid)
    assert preview.band("red")[1, 1] == np.float32(values[3:6, 3:6][valid[3:6, 3:6]].mean())


def test_small_scene_is_enlarged_with_outlines_legend_and_scale_bar(tmp_path, slovenia):
    # The 100 x 101 px scene gave a 100 x 101 px PNG with no legend, masks filled without outlines.
    ask([slovenia], "Does the forest border the grassland?", out=tmp_path / "o")
    image = _png(tmp_path / "o" / "quicklook.png")
    footer = _footer_rows(image)
    assert footer >= 30
    map_part, legend = image[: len(image) - footer], image[len(image) - footer :]
    assert min(map_part.shape[:2]) >= MIN_SIDE
    forest, grassland = CLASS_COLOURS[0], CLASS_COLOURS[1]
    # Outlines are drawn in the class colour itself (fills are blended with the scene).
    assert _has(map_part, forest) and _has(map_part, grassland)
    # The legend swatches and the scale bar's black (bar and text) are in the image.
    assert _has(legend, forest) and _has(legend, grassland)
    assert np.all(legend < 40, axis=-1).sum() > 100
    # Upscaling is nearest: the 100-px scene's pixels are blocks of identical colour.
    zoom = map_part.shape[1] // 100
    assert zoom >= 5 and np.array_equal(map_part[0, 0], map_part[zoom - 1, zoom - 1])


def test_a_class_has_one_colour_in_every_frame(tmp_path, joplin_pair):
    # Colours followed the step index: vegetation was red at t1 and green (on green grass) at t2.
    ask(list(joplin_pair), "How much did the vegetation change between the two images?", out=tmp_path / "o")
    report = (tmp_path / "o" / "answer.md").read_text()
    colours = {step: hexc for hexc, step in re.findall(r"\| (#[0-9a-f]{6}) \| \[(\d\d_vegetation(?:_t2)?)\]", report)}
    assert set(colours) == {"01_vegetation", "02_vegetation_t2"}
    assert len(set(colours.values())) == 1
    for name in ("quicklook_t1.png", "quicklook_t2.png"):
        image = _png(tmp_path / "o" / name)
        assert _has(image[: len(image) - _footer_rows(image)], CLASS_COLOURS[0]), name


def test_stretch_uses_valid_pixels_only(tmp_path):
    # Two thirds of the scene are nodata (0): stretching over them washed the valid part out.
    size = 300
    reflectance = np.zeros((5, size, size), np.float32)
    red = np.linspace(0.2, 0.3, 100, dtype=np.float32)[None, :]  # bare soil, no cloud, no water
    for band, value in enumerate([0.05, 0.4 * red, red, 0.3, 0.2]):
        reflectance[band, :, 200:] = value
    path = tmp_path / "s.tif"
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=5, dtype="float32", nodata=0,
                       crs="EPSG:32633", transform=Affine(10, 0, 500000, 0, -10, 5_000_000)) as dst:
        dst.write(reflectance)
        dst.descriptions = ("blue", "green", "red", "nir", "swir16")
    ask([path], "What percentage of the image is covered by water?", out=tmp_path / "o")
    image = _png(tmp_path / "o" / "quicklook.png")
    map_part = image[: len(image) - _footer_rows(image)]
    scale = map_part.shape[1] / size
    valid_part = map_part[:, int(205 * scale):, 0].astype(int)
    assert valid_part.max() - valid_part.min() > 200  # the valid ramp spans the stretch
    assert np.all(map_part[:, : int(195 * scale)] == NODATA_COLOUR)


def test_writing_the_outputs_does_not_read_the_scene_again(tmp_path, slovenia, monkeypatch):
    # The quicklook re-read the whole scene through a WarpedVRT: 23 of 31 s on a 10980² tile.
    scenes = open_scenes([slovenia])
    query = parse_query("What percentage of the image is covered by forest?", n_scenes=1)
    trace = get_backend("spectral").reason(scenes, query)
    opened: list[str] = []
    real_open = rasterio.open

    def spy(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(rasterio, "open", spy)
    write_outputs(trace, scenes, tmp_path)
    assert str(slovenia) not in opened
    assert (tmp_path / "quicklook.png").is_file()
