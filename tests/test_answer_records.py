"""ask's outputs as a STAC Item, and output folders that can be moved: no absolute path to anything inside."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pystac
import pystac.validation
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension

from tests.conftest import DATA, run_cli
from tscope.stac.acquired import EARLIEST, LATEST, acquisition

Q = "Does the forest border the grassland?"


def test_answer_folder_is_a_stac_item_and_moves_whole(tmp_path, slovenia):
    out = tmp_path / "answers" / "q1"
    out.mkdir(parents=True)
    shutil.copy(slovenia, out / "scene.tif")  # an input inside the output folder
    result = run_cli("ask", out / "scene.tif", Q, "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    moved = tmp_path / "elsewhere"
    shutil.move(out, moved)
    answer = json.loads((moved / "answer.json").read_text())
    assert answer["scenes"][0]["path"] == "scene.tif"
    assert str(tmp_path) not in "".join(p.read_text(errors="ignore") for p in moved.glob("*.json"))
    assert str(tmp_path) not in (moved / "answer.md").read_text()
    assert answer["outputs"]["stac_item"] == "item.json"

    record = json.loads((moved / "item.json").read_text())
    pystac.validation.validate_dict(record, extensions=[])  # the core Item schema, offline
    item = pystac.Item.from_dict(record)
    assert item.properties["tscope:question"] == Q and item.properties["tscope:task"] == "adjacency"
    assert ProjectionExtension.ext(item).code == "EPSG:32633"
    masks = {k: a for k, a in item.assets.items() if "mask" in (a.roles or [])}
    assert set(masks) == {"mask_01_forest", "mask_02_grassland"}
    for key, asset in item.assets.items():
        assert asset.href.startswith("./") and (moved / asset.href).is_file(), key
    band = RasterExtension.ext(masks["mask_01_forest"]).bands[0]
    assert band.nodata == 255 and band.data_type == "uint8"
    assert FileExtension.ext(masks["mask_01_forest"]).size == (moved / "masks/01_forest.tif").stat().st_size
    assert masks["mask_01_forest"].roles == ["data", "mask"]
    assert [link.href for link in item.links if link.rel == "derived_from"] == ["scene.tif"]
    # The scene's own ACQUISITION tag, not the file's modification time.
    assert record["properties"]["datetime"] == "2015-08-20T10:07:28Z" and "start_datetime" not in record["properties"]
    assert item.properties["tscope:acquisition_source"] == {"t1": "ACQUISITION tag"}


def test_inputs_outside_the_folder_are_absolute(tmp_path, slovenia):
    result = run_cli("ask", slovenia.relative_to(slovenia.parents[1]), Q, "--out", tmp_path / "o", "--json",
                     cwd=slovenia.parents[1])
    assert result.returncode == 0, result.stderr
    answer = json.loads((tmp_path / "o" / "answer.json").read_text())
    assert answer["scenes"][0]["path"] == str(slovenia)


def test_a_scene_without_a_date_is_recorded_as_unknown(tmp_path):
    """No date in the file: datetime null over the whole range STAC can express, said to be unknown;
    never the file's modification time (the old value) or the Unix epoch."""
    result = run_cli("ask", DATA / "naip_rgbn.tif", "What percentage of the image is covered by forest?",
                     "--out", tmp_path / "o", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "o" / "item.json").read_text())
    pystac.validation.validate_dict(record, extensions=[])
    props = record["properties"]
    assert props["datetime"] is None
    assert (props["start_datetime"], props["end_datetime"]) == ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z")
    assert props["tscope:acquisition_source"] == {"t1": "unknown"}
    assert pystac.Item.from_dict(record).common_metadata.end_datetime == LATEST


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_acquisition_sources(tmp_path):
    # GDAL's Sentinel-1 SAFE and Sentinel-2 drivers' product metadata, as a GeoTIFF written from them keeps it.
    safe = acquisition({"ACQUISITION_START_TIME": "2024-04-19T04:59:04.123456",
                        "ACQUISITION_STOP_TIME": "2024-04-19T04:59:16.5", "MISSION_ID": "S1A"})
    assert (safe.start, safe.end, safe.when) == (at("2024-04-19T04:59:04.123456"), at("2024-04-19T04:59:16.5"), None)
    s2 = acquisition({"PRODUCT_START_TIME": "2015-08-13T10:24:06.637Z",
                      "PRODUCT_STOP_TIME": "2015-08-13T10:24:06.637Z"})
    assert s2.start == s2.end == s2.when == at("2015-08-13T10:24:06.637")  # one instant
    assert acquisition({"ACQUISITION_START_TIME": "UNK", "ACQUISITION_STOP_TIME": "UNK"}).source == "unknown"
    # fetch's tags: the first item's time, and the items' range for a mosaic.
    mosaic = acquisition({"ACQUISITION": "2025-07-31T13:02:45Z", "ACQUISITION_START": "2025-07-31T13:02:45Z",
                          "ACQUISITION_END": "2025-07-31T13:02:59Z"})
    assert (mosaic.when, mosaic.end) == (at("2025-07-31T13:02:45"), at("2025-07-31T13:02:59"))
    # A STAC item's own times come first.
    item = acquisition({"STAC_DATETIME": "2020-01-02T03:04:05+00:00", "ACQUISITION": "2019-01-01"})
    assert item.when == at("2020-01-02T03:04:05") and item.source == "STAC item"
    # A date alone is that day; TIFFTAG_DATETIME is when the file was made: an upper bound only.
    day = acquisition({"ACQUISITION": "2015-08-20"})
    assert (day.start, day.end, day.when) == (at("2015-08-20T00:00:00"), at("2015-08-20T23:59:59"), None)
    made = acquisition({"TIFFTAG_DATETIME": "2021:03:04 05:06:07"})
    assert (made.start, made.end, made.when) == (EARLIEST, at("2021-03-04T05:06:07"), None)
    # fetch's sidecar beside a local file, only when it describes that file.
    scene = tmp_path / "2015-08-20_S2A.tif"
    scene.write_bytes(b"")
    sidecar = {"type": "Feature", "properties": {"datetime": "2015-08-20T10:00:16Z"},
               "assets": {"data": {"href": "./2015-08-20_S2A.tif"}}}
    scene.with_suffix(".json").write_text(json.dumps(sidecar))
    found = acquisition({"ACQUISITION": "2015-08-20"}, scene)
    assert found.when == at("2015-08-20T10:00:16") and found.source == "STAC item 2015-08-20_S2A.json"
    sidecar["assets"]["data"]["href"] = "./other.tif"
    scene.with_suffix(".json").write_text(json.dumps(sidecar))
    assert acquisition({}, scene).source == "unknown"
    assert acquisition({}, Path("/nonexistent/x.tif")).known is False
