"""`tscope ask` on what rasterio opens by name (http(s) URLs, /vsicurl/ paths) and on STAC items (file
or URL), served on 127.0.0.1 with fetch's retry and timeout options."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import EXAMPLES, run_cli
from tests.stac_server import COLLECTION, StacServer

Q = "What percentage of the image is covered by forest?"


@pytest.fixture()
def server(tmp_path):
    with StacServer(tmp_path / "assets") as srv:
        shutil.copy(EXAMPLES / "slovenia_s2.tif", tmp_path / "assets" / "slovenia_s2.tif")
        yield srv


def answer(*args, out) -> dict:
    result = run_cli("ask", *args, "--out", out, "--json", "--backoff", "0.05")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_urls_and_vsicurl_answer_like_the_local_file(server, tmp_path):
    local = answer(EXAMPLES / "slovenia_s2.tif", Q, out=tmp_path / "local")
    url = f"{server.url}/assets/slovenia_s2.tif"
    for name, given in (("http", url), ("vsicurl", f"/vsicurl/{url}")):
        remote = answer(given, Q, out=tmp_path / name)
        assert remote["numbers"] == local["numbers"]
        assert remote["scenes"][0]["path"] == given  # recorded as given, not mangled into http:/
    assert any(method == "GET" and status == 206 for method, _, status in server.log)  # range reads


def test_remote_reads_retry_on_5xx(server, tmp_path):
    server.faults.errors["/assets/slovenia_s2.tif"] = [503, 502]
    remote = answer(f"{server.url}/assets/slovenia_s2.tif", Q, out=tmp_path / "o")
    assert "Forest covers" in remote["answer"]
    statuses = [s for _, p, s in server.log if p == "/assets/slovenia_s2.tif"]
    assert statuses[:2] == [503, 502]
    server.faults.errors["/assets/slovenia_s2.tif"] = [503] * 10
    failed = run_cli("ask", f"{server.url}/assets/slovenia_s2.tif", Q, "--out", tmp_path / "f", "--retries", "1",
                     "--backoff", "0.05")
    assert failed.returncode == 1  # a network failure (GDAL logs each retry before the one error line)
    assert failed.stderr.strip().splitlines()[-1].startswith("tscope: error:") and "503" in failed.stderr
    missing = run_cli("ask", f"{server.url}/assets/nope.tif", Q, "--out", tmp_path / "m")
    assert missing.returncode == 2 and "nope.tif: cannot be opened" in missing.stderr
    assert not (tmp_path / "f").exists() and not (tmp_path / "m").exists()


def test_stac_item_url_and_file(server, tmp_path):
    iid = "S2A_T33TWM_20150820T100016_L2A"
    by_url = answer(f"{server.url}/collections/{COLLECTION}/items/{iid}", Q, out=tmp_path / "url")
    assert "Forest covers" in by_url["answer"]
    assert any("scene classification" in note for note in by_url["notes"])  # the scl asset, by common name
    item = tmp_path / "item.json"
    item.write_text(json.dumps(server.item_json(iid)))
    by_file = answer(item, Q, out=tmp_path / "file")
    assert by_file["numbers"] == by_url["numbers"]
    for folder in ("url", "file"):  # the item's acquisition time, not the Unix epoch
        record = json.loads((tmp_path / folder / "item.json").read_text())["properties"]
        assert record["datetime"] == "2015-08-20T10:00:16Z" and record["tscope:acquisition_source"] == {
            "t1": "STAC item"}
    local = answer(EXAMPLES / "slovenia_s2.tif", Q, "--no-cloud-mask", out=tmp_path / "local")
    # The item's DNs carry the +1000 baseline offset; read with its -0.1, they are the local file's values.
    assert by_url["numbers"]["coverage_percent"]["value"] == pytest.approx(
        local["numbers"]["coverage_percent"]["value"], abs=1.0)
    not_item = tmp_path / "other.json"
    not_item.write_text('{"type": "FeatureCollection", "features": []}')
    bad = run_cli("ask", not_item, Q, "--out", tmp_path / "bad")
    assert bad.returncode == 2 and "not a STAC item" in bad.stderr
