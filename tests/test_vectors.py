"""masks.geojson as a GIS reads it: geodesic areas, antimeridian and poles, bounded size and precision."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import shapely
from affine import Affine
from pyproj import CRS, Geod, Transformer
from shapely.geometry import shape

from tscope.geo.grid import Grid
from tscope.geo.mask import Mask
from tscope.geo.polygons import MAX_FEATURES, MAX_VERTICES, mask_polygons
from tscope.geo.writers import write_geojson_features
from tscope.reason import measures

WGS84 = Geod(ellps="WGS84")


def _mask(grid: Grid, data: np.ndarray) -> Mask:
    return Mask(data=data.copy(), valid=np.ones(grid.shape, bool), grid=grid, label="water")


def _features(tmp_path, mask: Mask) -> list[dict]:
    dst = tmp_path / "masks.geojson"
    write_geojson_features(dst, [(mask, {"class": mask.label, "step": "01_water", "frame": "t1"})])
    return json.loads(dst.read_text())["features"]


def _disc(n: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n] + 0.5
    return (xx - cx) ** 2 + (yy - cy) ** 2 < r**2


def _check_rfc7946(feature: dict) -> shapely.Geometry:
    """Valid, counter-clockwise exteriors, no edge jumping across the antimeridian, area of the ring as written."""
    geom = shape(feature["geometry"])
    assert geom.is_valid, shapely.is_valid_reason(geom)
    for part in shapely.get_parts(geom):
        assert part.exterior.is_ccw
        assert all(not ring.is_ccw for ring in part.interiors)
        lon, lat = np.asarray(part.exterior.coords).T
        along_pole = (np.abs(lat[1:]) == 90) & (np.abs(lat[:-1]) == 90)  # a cap closed round the pole
        assert np.all((np.abs(np.diff(lon)) <= 180) | along_pole)
    assert feature["properties"]["area_m2"] == pytest.approx(WGS84.geometry_area_perimeter(geom)[0], rel=1e-6)
    return geom


def test_web_mercator_areas_are_geodesic_per_feature(tmp_path):
    # A 600 km Web Mercator scene: one scale factor for the whole scene was +-6.8 % off at its edges.
    n = 600
    x0, y0 = Transformer.from_crs(4326, 3857, always_xy=True).transform(10.0, 48.0)
    grid = Grid(CRS.from_epsg(3857), Affine(1000, 0, x0, 0, -1000, y0), n, n)
    data = np.zeros(grid.shape, bool)
    data[10:60, 300:350] = True  # north edge
    data[540:590, 300:350] = True  # south edge
    features = _features(tmp_path, _mask(grid, data))
    assert len(features) == 2
    for feature, rows in zip(sorted(features, key=lambda f: -shape(f["geometry"]).centroid.y),
                             (slice(10, 60), slice(540, 590)), strict=True):
        _check_rfc7946(feature)
        alone = np.zeros(grid.shape, bool)
        alone[rows, 300:350] = True
        # The ground area of the region's pixels (areal scale per block) agrees with the ring's geodesic area.
        assert feature["properties"]["area_m2"] == pytest.approx(measures.area_m2(_mask(grid, alone)), rel=5e-3)


def test_antimeridian_scene_is_cut_not_drawn_round_the_world(tmp_path):
    # EPSG:32760 (UTM 60S) from 179.7°E to 179.7°W at 40°S.
    to_utm = Transformer.from_crs(4326, 32760, always_xy=True)
    x0, y0 = to_utm.transform(179.7, -40.0)
    x1, _ = to_utm.transform(-179.7, -40.0)
    n = 200
    size = (x1 - x0) / n
    grid = Grid(CRS.from_epsg(32760), Affine(size, 0, x0, 0, -size, y0 + n * size / 2), n, n)
    mask = _mask(grid, _disc(n, 100, 100, 60))
    features = _features(tmp_path, mask)
    assert len(features) == 1
    geom = _check_rfc7946(features[0])
    assert geom.geom_type == "MultiPolygon" and len(geom.geoms) == 2  # one part each side of 180°
    west, east = sorted(geom.geoms, key=lambda p: p.bounds[0])
    assert west.bounds[0] == pytest.approx(-180) and east.bounds[2] == pytest.approx(180)
    assert max(p.bounds[2] - p.bounds[0] for p in geom.geoms) < 1  # no part spans the globe
    assert features[0]["properties"]["area_m2"] == pytest.approx(measures.area_m2(mask), rel=2e-3)


@pytest.mark.parametrize("origin", [(-100_000, 100_000), (300_000, 100_000)], ids=["round-the-pole", "near-pole"])
def test_polar_stereographic_polygons_are_valid_and_wound_ccw(tmp_path, origin):
    n = 200
    grid = Grid(CRS.from_epsg(3413), Affine(1000, 0, origin[0], 0, -1000, origin[1]), n, n)
    mask = _mask(grid, _disc(n, 100, 100, 60))
    features = _features(tmp_path, mask)
    assert len(features) == 1
    geom = _check_rfc7946(features[0])
    if origin[0] < 0:
        assert geom.bounds[3] == pytest.approx(90)  # closed along the pole, RFC 7946 §3.1.9
    assert features[0]["properties"]["area_m2"] == pytest.approx(measures.area_m2(mask), rel=2e-3)


def test_vector_output_is_bounded_by_vertices_and_features_and_says_so():
    grid = Grid(CRS.from_epsg(32633), Affine(10, 0, 500000, 0, -10, 5_000_000), 512, 512)
    speckle = np.random.default_rng(0).random(grid.shape) < 0.5
    full = mask_polygons(_mask(grid, speckle), max_vertices=10**9, max_features=10**9)
    assert full.factor == 1 and not full.dropped
    bounded = mask_polygons(_mask(grid, speckle), max_vertices=20_000, max_features=100)
    assert bounded.factor > 1 and bounded.dropped > 0 and 0 < bounded.dropped_fraction < 1
    assert len(bounded.geometries) <= 100
    rings = sum(1 + len(p.interiors) for g in bounded.geometries for p in shapely.get_parts(g))
    assert shapely.get_num_coordinates(bounded.geometries).sum() - rings <= 20_000  # closing vertices aside


def test_a_2048_px_speckle_mask_writes_a_small_file_at_1e7_degrees(tmp_path):
    # Just under the old coarsening threshold a 2048² scene wrote 76 MB with 8-decimal coordinates.
    grid = Grid(CRS.from_epsg(32633), Affine(10, 0, 500000, 0, -10, 5_000_000), 2048, 2048)
    speckle = np.random.default_rng(1).random(grid.shape) < 0.5
    features = _features(tmp_path, _mask(grid, speckle))
    size = (tmp_path / "masks.geojson").stat().st_size
    assert len(features) <= MAX_FEATURES
    geoms = [shape(f["geometry"]) for f in features]
    rings = sum(1 + len(p.interiors) for g in geoms for p in shapely.get_parts(g))
    assert shapely.get_num_coordinates(geoms).sum() - rings <= MAX_VERTICES  # closing vertices aside
    assert size < 20 * 2**20
    text = (tmp_path / "masks.geojson").read_text()
    assert not re.search(r"\d\.\d{8}", text)  # ~1 cm: 7 decimals of a degree
