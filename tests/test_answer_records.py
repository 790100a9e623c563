"""ask's outputs as a STAC Item, and output folders that can be moved: no absolute path to anything inside."""

from __future__ import annotations

import json
import shutil

import pystac
import pystac.validation
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension

from tests.conftest import run_cli

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


def test_inputs_outside_the_folder_are_absolute(tmp_path, slovenia):
    result = run_cli("ask", slovenia.relative_to(slovenia.parents[1]), Q, "--out", tmp_path / "o", "--json",
                     cwd=slovenia.parents[1])
    assert result.returncode == 0, result.stderr
    answer = json.loads((tmp_path / "o" / "answer.json").read_text())
    assert answer["scenes"][0]["path"] == str(slovenia)
