"""measures against values computed by hand on small masks, in projected and geographic CRSs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from affine import Affine
from pyproj import CRS, Geod

from tscope.geo.grid import Grid
from tscope.geo.mask import Mask
from tscope.reason import measures

# A 10 m grid in UTM 33N on its central meridian (15°E), where the areal scale factor is 0.9996².
UTM = Grid(CRS.from_epsg(32633), Affine(10, 0, 500000, 0, -10, 5_000_000), 20, 10)
K0 = 0.9996


def mask(grid: Grid, pixels: list[tuple[int, int]] | np.ndarray, label: str = "a", valid=None) -> Mask:
    data = np.zeros(grid.shape, bool)
    if isinstance(pixels, np.ndarray):
        data = pixels.astype(bool)
    else:
        for r, c in pixels:
            data[r, c] = True
    valid = np.ones(grid.shape, bool) if valid is None else valid
    return Mask(data=data, valid=valid, grid=grid, label=label)


def test_area_and_coverage_projected():
    m = mask(UTM, [(0, 0), (0, 1), (5, 5)])
    # 3 pixels of 100 m² on the map = 300 / k0² m² on the ground.
    assert measures.area_m2(m) == pytest.approx(300 / K0**2, rel=1e-4)
    cov = measures.coverage(m)
    assert cov.percent == pytest.approx(100 * 3 / 200, rel=1e-9)


def test_nodata_is_never_counted():
    valid = np.ones(UTM.shape, bool)
    valid[:, 10:] = False  # half the image is nodata
    data = np.zeros(UTM.shape, bool)
    data[:, 5:15] = True  # 10 columns of class, 5 of them over nodata
    m = Mask(data=data, valid=valid, grid=UTM, label="a")
    assert measures.area_m2(m) == pytest.approx(50 * 100 / K0**2, rel=1e-4)
    assert measures.coverage(m).percent == pytest.approx(50.0)


def _ellipsoid_band_area(lat1: float, lat2: float, dlon: float) -> float:
    """Area on the WGS84 ellipsoid between two parallels over dlon degrees (authalic formula)."""
    a, f = 6378137.0, 1 / 298.257223563
    b = a * (1 - f)
    e = math.sqrt(1 - (b / a) ** 2)

    def q(phi: float) -> float:
        s = math.sin(phi)
        return s / (1 - e * e * s * s) + math.log((1 + e * s) / (1 - e * s)) / (2 * e)

    return abs(math.radians(dlon) * b * b / 2 * (q(math.radians(lat2)) - q(math.radians(lat1))))


def test_area_on_a_large_web_mercator_scene_is_geodesic_at_its_edges():
    # 600 km of Web Mercator in one block: one scale factor for the block was +-6.8 % off at its edges.
    from pyproj import Transformer

    x0, y0 = Transformer.from_crs(4326, 3857, always_xy=True).transform(10.0, 48.0)
    grid = Grid(CRS.from_epsg(3857), Affine(1000, 0, x0, 0, -1000, y0), 600, 600)
    to_lonlat = Transformer.from_crs(3857, 4326, always_xy=True)
    for rows in (slice(10, 60), slice(540, 590)):
        data = np.zeros(grid.shape, bool)
        data[rows, 300:350] = True
        # The square's outline, densified, in lon/lat: its geodesic area.
        t = np.linspace(0, 1, 51)[:-1]
        cols = np.concatenate([300 + 50 * t, np.full(50, 350), 350 - 50 * t, np.full(50, 300)])
        rws = np.concatenate([np.full(50, rows.start), rows.start + 50 * t, np.full(50, rows.stop), rows.stop - 50 * t])
        lon, lat = to_lonlat.transform(*(grid.transform @ (cols, rws)))
        expected = abs(Geod(ellps="WGS84").polygon_area_perimeter(lon, lat)[0])
        assert measures.area_m2(mask(grid, data)) == pytest.approx(expected, rel=2e-3)


def test_area_geographic_is_geodesic():
    # 0.01° pixels at 60°N: an equal-angle pixel there covers about half the ground of one at the equator.
    grid = Grid(CRS.from_epsg(4326), Affine(0.01, 0, 10.0, 0, -0.01, 60.05), 10, 10)
    data = np.zeros(grid.shape, bool)
    data[2:4, :] = True  # rows 2 and 3: latitudes 60.03 .. 60.01, full width 0.1°
    m = mask(grid, data)
    expected = _ellipsoid_band_area(60.01, 60.03, 0.1)
    assert measures.area_m2(m) == pytest.approx(expected, rel=1e-6)
    equator = Grid(CRS.from_epsg(4326), Affine(0.01, 0, 10.0, 0, -0.01, 0.05), 10, 10)
    ratio = measures.area_m2(m) / measures.area_m2(mask(equator, data))
    assert ratio == pytest.approx(math.cos(math.radians(60.02)), rel=2e-2)  # the ellipsoid adds ~1%


def test_distance_edge_to_edge():
    a = mask(UTM, [(3, 2)], "a")
    b = mask(UTM, [(3, 8)], "b")
    # Columns 2 and 8: five empty pixels between them = 50 m on the map.
    d = measures.distance(a, b)
    assert d.metres == pytest.approx(50 / K0, rel=1e-3)
    diagonal = measures.distance(mask(UTM, [(0, 0)]), mask(UTM, [(4, 3)], "b"))
    # Gap of 3 rows and 2 columns between the facing corners.
    assert diagonal.metres == pytest.approx(math.hypot(30, 20) / K0, rel=1e-3)


def test_distance_zero_when_touching_and_nan_when_absent():
    assert measures.distance(mask(UTM, [(1, 1)]), mask(UTM, [(1, 2)], "b")).metres == 0
    assert math.isnan(measures.distance(mask(UTM, []), mask(UTM, [(1, 2)], "b")).metres)


def test_distance_geographic():
    grid = Grid(CRS.from_epsg(4326), Affine(0.001, 0, 10.0, 0, -0.001, 45.0), 50, 50)
    a = mask(grid, [(10, 10)])
    b = mask(grid, [(10, 30)], "b")
    d = measures.distance(a, b)
    lat = 45.0 - 0.0105
    expected = Geod(ellps="WGS84").inv(10.011, lat, 10.030, lat)[2]
    assert d.metres == pytest.approx(expected, rel=1e-3)


def test_adjacency_and_shared_boundary():
    data_a = np.zeros(UTM.shape, bool)
    data_a[:, :5] = True
    data_b = np.zeros(UTM.shape, bool)
    data_b[2:6, 5:9] = True  # touches A along 4 pixel edges
    r = measures.adjacency(mask(UTM, data_a), mask(UTM, data_b, "b"))
    assert r.borders
    assert r.shared_boundary_m == pytest.approx(40 / K0, rel=0.05)
    diagonal_only = measures.adjacency(mask(UTM, [(0, 0)]), mask(UTM, [(1, 1)], "b"))
    assert not diagonal_only.borders


# A 600 x 600 grid of 10 m pixels on UTM 33N's central meridian: ground metres are map metres / k0.
BIG = Grid(CRS.from_epsg(32633), Affine(10, 0, 500000, 0, -10, 5_000_000), 600, 600)


@pytest.mark.parametrize("degrees", [0, 30, 45, 60, 90])
def test_shared_boundary_of_a_straight_edge_is_its_ground_length(degrees):
    # Two halves of a disc of radius 250 px split by a line through its centre: the shared boundary is
    # the diameter, 5 km on the map, whatever the angle. Counting pixel edges measured +41 % at 45°.
    yy, xx = np.mgrid[:600, :600] + 0.5
    theta = math.radians(degrees)
    side = (xx - 300) * math.sin(theta) - (yy - 300) * math.cos(theta)
    disc = (xx - 300) ** 2 + (yy - 300) ** 2 < 250**2
    r = measures.adjacency(mask(BIG, disc & (side > 0)), mask(BIG, disc & (side <= 0), "b"))
    assert r.borders
    assert abs(r.shared_boundary_m / (5000 / K0) - 1) < 0.05


@pytest.mark.parametrize("radius", [200, 30])
def test_shared_boundary_of_a_circle_is_its_circumference(radius):
    # A lake (disc) in a ring of forest: the shared boundary is the circle, 2πr (pixel edges: +27 %).
    yy, xx = np.mgrid[:600, :600] + 0.5
    d2 = (xx - 300) ** 2 + (yy - 300) ** 2
    lake, shore = d2 < radius**2, (d2 >= radius**2) & (d2 < (radius + 20) ** 2)
    r = measures.adjacency(mask(BIG, lake), mask(BIG, shore, "b"))
    assert abs(r.shared_boundary_m / (2 * math.pi * radius * 10 / K0) - 1) < 0.05


def test_count_with_minimum_size():
    data = np.zeros(UTM.shape, bool)
    data[0:2, 0:2] = True  # 4 px region
    data[5, 5] = True  # 1 px region
    data[7:10, 10:13] = True  # 9 px region
    data[0, 19] = data[1, 18] = True  # diagonal neighbours: two 4-connected 1 px regions, as traced in GeoJSON
    m = mask(UTM, data)
    assert measures.count(m, min_area=0).count == 5
    assert measures.count(m, min_area=350).count == 2  # 4 px (400 m²) and 9 px
    default = measures.count(m)  # default: at least 4 pixels
    assert default.count == 2
    assert default.region_areas_m2[0] == pytest.approx(900 / K0**2, rel=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_regions_labelled_in_strips_are_the_regions_of_the_whole_mask(monkeypatch, seed):
    # Strips of 3 rows: snakes and U shapes cross many strip boundaries and join only further down.
    from scipy import ndimage

    grid = Grid(CRS.from_epsg(32633), Affine(10, 0, 500000, 0, -10, 5_000_000), 37, 29)
    data = np.random.default_rng(seed).random(grid.shape) > 0.45
    data[:, 3] = data[:, 9] = True
    data[-1, 3:10] = True  # a U whose arms meet only in the last row
    m = mask(grid, data)
    labels, n = ndimage.label(m.counted, structure=measures.CONNECTIVITY)
    whole = sorted(np.bincount(labels.ravel())[1:] * 100 / K0**2, reverse=True)
    monkeypatch.setattr(measures, "REGION_STRIP", 3)
    strips = measures.count(m, min_area=0)
    assert strips.count == n
    np.testing.assert_allclose(strips.region_areas_m2, whole, rtol=1e-3)


def test_region_areas_weigh_each_pixel_by_its_own_row_on_a_geographic_grid(monkeypatch):
    # At 60-70°N a degree grid's pixel areas shrink by a third from the bottom row to the top: each region's
    # area is the sum of its own pixels' areas, also when it is summed over the class pixels of a strip.
    from rasterio.windows import Window
    from scipy import ndimage

    grid = Grid(CRS.from_epsg(4326), Affine(0.5, 0, 10, 0, -0.5, 70), 23, 20)
    data = np.random.default_rng(7).random(grid.shape) > 0.5
    m = mask(grid, data)
    labels, n = ndimage.label(m.counted, structure=measures.CONNECTIVITY)
    weights = np.broadcast_to(grid.pixel_area(Window(0, 0, grid.width, grid.height)), grid.shape)
    whole = sorted(np.bincount(labels.ravel(), weights=weights.ravel())[1:], reverse=True)
    assert weights[0, 0] < 0.7 * weights[-1, 0]
    monkeypatch.setattr(measures, "REGION_STRIP", 4)
    np.testing.assert_allclose(measures.count(m, min_area=0).region_areas_m2, whole, rtol=1e-9)


def test_existence():
    assert not measures.existence(mask(UTM, [(0, 0)])).present  # one pixel is noise
    assert measures.existence(mask(UTM, [(0, 0)]), min_area=0).present


def test_locate_parts_and_relative_direction():
    nw = mask(UTM, [(0, 0), (1, 1)])
    assert measures.locate(nw).position == "north-west"
    se = mask(UTM, [(9, 19)], "b")
    assert measures.locate(se).position == "south-east"
    centre = mask(UTM, [(5, 10)])
    assert measures.locate(centre).position == "centre"
    rel = measures.locate(se, relative_to=nw)
    assert rel.direction == "south-east"
    assert 90 < rel.bearing_deg < 180
    assert measures.locate(mask(UTM, [])).position == "absent"


def test_change_counts_only_pixels_valid_at_both_dates():
    before = np.zeros(UTM.shape, bool)
    before[0:5, 0:10] = True  # 50 px
    after = np.zeros(UTM.shape, bool)
    after[0:5, 5:15] = True  # 50 px, 25 shared
    valid_after = np.ones(UTM.shape, bool)
    valid_after[0, :] = False  # a cloud row at t2 hides 10 px of before and 10 of after
    t1 = Mask(before, np.ones(UTM.shape, bool), UTM, "water", "t1")
    t2 = Mask(after, valid_after, UTM, "water", "t2")
    r = measures.change(t1, t2)
    px = 100 / K0**2
    assert r.area_t1_m2 == pytest.approx(40 * px, rel=1e-4)
    assert r.area_t2_m2 == pytest.approx(40 * px, rel=1e-4)
    assert r.gain_m2 == pytest.approx(20 * px, rel=1e-4)
    assert r.loss_m2 == pytest.approx(20 * px, rel=1e-4)
    assert r.net_m2 == pytest.approx(0, abs=1e-6)


def test_compare():
    a = mask(UTM, [(0, 0), (0, 1), (0, 2)], "forest")
    b = mask(UTM, [(5, 5)], "water")
    r = measures.compare(a, b)
    assert r.larger == "forest"
    assert r.ratio == pytest.approx(3)


def test_masks_on_different_grids_are_refused():
    other = Grid(UTM.crs, Affine(20, 0, 500000, 0, -20, 5_000_000), 20, 10)
    with pytest.raises(ValueError):
        measures.compare(mask(UTM, [(0, 0)]), mask(other, [(0, 0)], "b"))


def test_distance_is_zero_for_corner_contact_and_matches_brute_force():
    assert measures.distance(mask(UTM, [(2, 2)]), mask(UTM, [(3, 3)], "b")).metres == 0
    rng = np.random.default_rng(3)
    for _ in range(20):
        a = np.zeros(UTM.shape, bool)
        b = np.zeros(UTM.shape, bool)
        a[rng.integers(0, 10, 3), rng.integers(0, 8, 3)] = True
        b[rng.integers(0, 10, 3), rng.integers(12, 20, 3)] = True
        ra, ca = np.nonzero(a)
        rb, cb = np.nonzero(b)
        # Brute force over all pixel pairs: gap between the squares' edges, in map metres.
        gaps = [math.hypot(max(abs(int(c1) - int(c2)) - 1, 0) * 10, max(abs(int(r1) - int(r2)) - 1, 0) * 10)
                for r1, c1 in zip(ra, ca, strict=True) for r2, c2 in zip(rb, cb, strict=True)]
        got = measures.distance(mask(UTM, a), mask(UTM, b, "b")).metres
        assert got == pytest.approx(min(gaps) / K0, rel=1e-3, abs=1e-6)


def test_touching_distance_reports_where_they_touch():
    d = measures.distance(mask(UTM, [(2, 2), (8, 8)]), mask(UTM, [(3, 3)], "b"))
    assert d.metres == 0
    assert d.point_a == d.point_b == pytest.approx(UTM.pixel_lonlat(2.5, 2.5))
