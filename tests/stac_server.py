"""A STAC API on 127.0.0.1 for the fetch and batch tests: item search with pagination, COG assets
served with HTTP range requests, and fault injection (5xx, delays, truncated transfers).

Items follow Earth Search v1's structure for ``sentinel-2-c1-l2a`` (asset keys by common name,
``eo:bands``/``raster:bands`` per asset, ``proj:code``/``proj:epsg``, ``eo:cloud_cover``,
``s2:processing_baseline``, ``earthsearch:boa_offset_applied``). Their pixels are real: each asset
is one band of a real Sentinel-2 scene from tests/data or examples/ (see tests/data/README.md); the
``scl`` asset is the real eo-learn land-cover label of the same pixels recoded into SCL classes.
Only loopback addresses are used.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import rasterio
from rasterio.warp import transform_geom
from shapely.geometry import box, mapping, shape

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
EXAMPLES = ROOT / "examples"
COLLECTION = "sentinel-2-c1-l2a"
# Earth Search asset key -> (Sentinel-2 band id, index in the 13-band L1C files, resolution, wavelength µm)
S2_ASSETS = {
    "coastal": ("B01", 1, 60, 0.443), "blue": ("B02", 2, 10, 0.49), "green": ("B03", 3, 10, 0.56),
    "red": ("B04", 4, 10, 0.665), "rededge1": ("B05", 5, 20, 0.704), "rededge2": ("B06", 6, 20, 0.74),
    "rededge3": ("B07", 7, 20, 0.783), "nir": ("B08", 8, 10, 0.842), "nir08": ("B8A", 9, 20, 0.865),
    "nir09": ("B09", 10, 60, 0.945), "swir16": ("B11", 12, 20, 1.61), "swir22": ("B12", 13, 20, 2.19),
}
# eo-learn LULC class -> SCL class: 4 vegetation, 5 not vegetated, 6 water, 11 snow (0 stays no data).
LULC_TO_SCL = {1: 4, 2: 4, 3: 4, 4: 4, 5: 6, 6: 6, 7: 5, 8: 5, 9: 5, 10: 11}


@dataclass
class SceneSpec:
    """One item: a real 13-band file, its date, and how its DNs are stored."""

    source: Path
    date: str  # ISO datetime, UTC
    cloud_cover: float
    boa_offset_applied: bool  # False: DNs carry the +1000 offset of baseline >= 04.00
    baseline: str = "05.10"
    tile: str = "33TWM"


def default_scenes() -> list[SceneSpec]:
    """The three eo-learn Slovenia scenes as three items (two clear, one hazy), both offset encodings."""
    return [
        SceneSpec(DATA / "slovenia_s2_hazy.tif", "2015-07-11T10:00:26Z", 71.0, True),
        SceneSpec(EXAMPLES / "slovenia_s2.tif", "2015-08-20T10:00:16Z", 2.0, False),
        SceneSpec(DATA / "slovenia_s2_t2.tif", "2015-08-30T10:00:26Z", 4.0, True),
    ]


def item_id(spec: SceneSpec) -> str:
    stamp = datetime.fromisoformat(spec.date.replace("Z", "+00:00")).strftime("%Y%m%dT%H%M%S")
    return f"S2A_T{spec.tile}_{stamp}_L2A"


def build_assets(specs: list[SceneSpec], folder: Path) -> dict[str, dict]:
    """Write one COG per band per scene (plus ``scl``) into ``folder``; returns item dicts without hrefs."""
    folder.mkdir(parents=True, exist_ok=True)
    with rasterio.open(DATA / "slovenia_lulc.tif") as src:
        lulc = src.read(1)
    scl = np.zeros_like(lulc)
    for klass, code in LULC_TO_SCL.items():
        scl[lulc == klass] = code
    items = {}
    for spec in specs:
        iid = item_id(spec)
        with rasterio.open(spec.source) as src:
            dn = src.read()
            crs, transform, width, height = src.crs, src.transform, src.width, src.height
            bounds = src.bounds
        assets = {}
        for key, (band_id, index, res, wl) in S2_ASSETS.items():
            band = dn[index - 1].astype(np.uint32)
            if not spec.boa_offset_applied:
                band = np.where(band > 0, band + 1000, 0)
            _write_cog(folder / f"{iid}_{band_id}.tif", band.astype(np.uint16), crs, transform)
            assets[key] = {
                "file": f"{iid}_{band_id}.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "title": f"{key} - {res}m", "eo:bands": [{"name": band_id, "common_name": key,
                                                          "center_wavelength": wl}],
                "gsd": res, "proj:shape": [height, width], "proj:transform": list(transform)[:6],
                "raster:bands": [{"nodata": 0, "data_type": "uint16", "bits_per_sample": 15,
                                  "spatial_resolution": res, "scale": 0.0001, "offset": -0.1}],
                "roles": ["data", "reflectance"],
            }
        _write_cog(folder / f"{iid}_SCL.tif", scl.astype(np.uint8), crs, transform)
        assets["scl"] = {
            "file": f"{iid}_SCL.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "title": "Scene classification map (SCL)", "proj:shape": [height, width],
            "proj:transform": list(transform)[:6],
            "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 20}],
            "roles": ["data", "reflectance"],
        }
        assets["thumbnail"] = {"file": None, "type": "image/jpeg", "roles": ["thumbnail"], "title": "Thumbnail"}
        footprint = transform_geom(crs, "EPSG:4326", mapping(box(*bounds)))
        items[iid] = {
            "type": "Feature", "stac_version": "1.0.0", "id": iid, "collection": COLLECTION,
            "stac_extensions": [
                "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
                "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
                "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
                "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
            ],
            "geometry": footprint, "bbox": list(shape(footprint).bounds),
            "properties": {
                "datetime": spec.date, "platform": "sentinel-2a", "constellation": "sentinel-2",
                "instruments": ["msi"], "eo:cloud_cover": spec.cloud_cover, "proj:epsg": crs.to_epsg(),
                "proj:code": f"EPSG:{crs.to_epsg()}", "mgrs:utm_zone": int(spec.tile[:2]),
                "mgrs:latitude_band": spec.tile[2], "mgrs:grid_square": spec.tile[3:],
                "grid:code": f"MGRS-{spec.tile}", "s2:processing_baseline": spec.baseline,
                "s2:product_type": "S2MSI2A", "earthsearch:boa_offset_applied": spec.boa_offset_applied,
            },
            "assets": assets,
        }
    return items


RECORDED = DATA / "stac"
# Synthetic surface of the recorded items' windows, as stored reflectance x 10000 (before any offset):
# the west half is forest, the east half water; SCL says vegetation / water, with a cloudy north-east
# quarter. SAR is linear gamma0 (forest 0.08, water 0.005).
SYNTH = {"coastal": (300, 300), "blue": (250, 600), "green": (500, 800), "red": (300, 200),
         "rededge1": (900, 150), "rededge2": (2200, 120), "rededge3": (2800, 100), "nir": (3200, 100),
         "nir08": (3300, 100), "nir09": (3300, 80), "swir16": (1300, 50), "swir22": (600, 30)}
SAR = {"vv": (0.08, 0.005), "vh": (0.02, 0.001)}


def recorded_features(name: str) -> list[dict]:
    """Real recorded STAC items of ``tests/data/stac/<name>.json`` (see tests/data/README.md)."""
    return json.loads((RECORDED / f"{name}.json").read_text())["features"]


def recorded_collections(name: str) -> list[dict]:
    return json.loads((RECORDED / f"{name}.json").read_text())["collections"]


def item_crs(feature: dict) -> str:
    props = feature["properties"]
    return props.get("proj:code") or f"EPSG:{props['proj:epsg']}"


def window_box(feature: dict, lon: float, lat: float, size_m: float = 1200.0) -> tuple[float, float, float, float]:
    """A ``size_m`` square of the item's own grid around (lon, lat), edges on its 60 m pixels."""
    from rasterio.warp import transform as warp

    xs, ys = warp("EPSG:4326", item_crs(feature), [lon], [lat])
    x0, y0 = np.floor(xs[0] / 60.0) * 60.0, np.floor(ys[0] / 60.0) * 60.0
    return (x0, y0, x0 + size_m, y0 + size_m)


def recorded_assets(features: list[dict], folder: Path, lon: float, lat: float, nodata: bool = False) -> dict:
    """Real recorded items whose image assets tscope reads are replaced by synthetic COGs on each item's
    real grid (CRS, pixel size and pixel phase), cropped to a 1.2 km window around (lon, lat); their
    ``proj:shape``/``proj:transform`` describe that window. Everything else is the recorded metadata.
    ``nodata``: every pixel of the window is nodata."""
    from affine import Affine

    from tscope.stac.load import item_bands

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for feature in features:
        import pystac

        feature = json.loads(json.dumps(feature))
        item = pystac.Item.from_dict(feature, migrate=False)
        minx, miny, maxx, maxy = window_box(feature, lon, lat)
        for name, key in item_bands(item).items():
            asset = feature["assets"][key]
            raster = (asset.get("raster:bands") or [{}])[0]
            res = float(raster.get("spatial_resolution") or (asset.get("proj:transform") or [10])[0] or 10)
            if name == "scl":
                res = 20.0
            size = int(round((maxx - minx) / res))
            transform = Affine(res, 0, minx, 0, -res, maxy)
            west = np.arange(size)[None, :] < size // 2
            north_east = (~west) & (np.arange(size)[:, None] < size // 2)
            if name in SAR:
                forest, water = SAR[name]
                data = np.where(west, forest, water).astype(np.float32) + np.zeros((size, 1), np.float32)
                fill = float(raster.get("nodata", -32768))
            elif name == "scl":
                data = np.where(west, 4, np.where(north_east, 9, 6)).astype(np.uint8) + np.zeros((size, 1), np.uint8)
                fill = 0
            else:
                forest, water = SYNTH.get(name, (1000, 1000))
                offset_dn = 1000 if feature["properties"].get("earthsearch:boa_offset_applied") is not True else 0
                data = (np.where(west, forest, water) + offset_dn).astype(np.uint16) + np.zeros((size, 1), np.uint16)
                fill = 0
            if nodata:
                data[:] = fill
            file = f"{safe(feature['id'])}_{key}.tif"
            _write_cog(folder / file, data, item_crs(feature), transform, nodata=fill)
            asset["file"] = file
            asset["proj:shape"] = [size, size]
            asset["proj:transform"] = list(transform)[:6]
        props = feature["properties"]
        if "proj:shape" in props:  # item-level grid: the 10 m window
            props["proj:shape"] = [int((maxy - miny) / 10), int((maxx - minx) / 10)]
            props["proj:transform"] = [10.0, 0.0, minx, 0.0, -10.0, maxy]
        feature.pop("links", None)
        out[feature["id"]] = feature
    return out


def safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def _write_cog(path: Path, data: np.ndarray, crs, transform, nodata: float = 0) -> None:
    profile = dict(driver="COG", width=data.shape[1], height=data.shape[0], count=1, dtype=data.dtype, crs=crs,
                   transform=transform, nodata=nodata, compress="DEFLATE", blocksize=128)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


@dataclass
class Faults:
    """Fault injection, consumed as requests arrive (all counters are per path prefix)."""

    errors: dict[str, list[int]] = field(default_factory=dict)  # prefix -> status codes to answer first
    delay: dict[str, float] = field(default_factory=dict)  # prefix -> seconds to sleep before answering
    truncate: dict[str, float] = field(default_factory=dict)  # prefix -> fraction of the body actually sent
    empty: bool = False  # every search matches nothing


class StacServer:
    """``with StacServer(folder) as server:`` -> ``server.url``; ``server.log`` records each request.

    ``recorded``: serve real recorded items (see :func:`recorded_assets`) instead of the Slovenia
    ones, with ``collections`` their real collection documents.
    """

    def __init__(self, folder: Path, specs: list[SceneSpec] | None = None, page_size: int = 1,
                 recorded: dict[str, dict] | None = None, collections: list[dict] | None = None):
        self.folder = folder
        self.items = recorded if recorded is not None else build_assets(specs or default_scenes(), folder)
        self.collections = {c["id"]: c for c in collections or []}
        self.token_requests: list[str] = []
        self.bodies: list[dict] = []  # the parameters of every search, as the server received them
        self.page_size = page_size
        self.faults = Faults()
        self.log: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> StacServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.log.append((method, path, status))

    def take_error(self, path: str) -> int | None:
        with self._lock:
            for prefix, codes in self.faults.errors.items():
                if path.startswith(prefix) and codes:
                    return codes.pop(0)
        return None

    # --- STAC documents ---------------------------------------------------------------------

    def item_json(self, iid: str) -> dict:
        item = json.loads(json.dumps(self.items[iid]))
        coll = item["collection"]
        for asset in item["assets"].values():
            if "file" not in asset:
                continue  # a recorded asset tscope does not read keeps its real href
            file = asset.pop("file")
            asset["href"] = f"{self.url}/assets/{file}" if file else f"{self.url}/thumbnails/{iid}.jpg"
        item["links"] = [
            {"rel": "self", "href": f"{self.url}/collections/{coll}/items/{iid}", "type": "application/geo+json"},
            {"rel": "parent", "href": f"{self.url}/collections/{coll}", "type": "application/json"},
            {"rel": "collection", "href": f"{self.url}/collections/{coll}", "type": "application/json"},
            {"rel": "root", "href": f"{self.url}/", "type": "application/json"},
        ]
        return item

    def landing(self) -> dict:
        return {
            "type": "Catalog", "stac_version": "1.0.0", "id": "earth-search-loopback",
            "description": "A loopback STAC API for tests",
            "conformsTo": [
                "https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search",
                "https://api.stacspec.org/v1.0.0/item-search#query", "https://api.stacspec.org/v1.0.0/collections",
                "https://api.stacspec.org/v1.0.0/ogcapi-features", "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
                "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
            ],
            "links": [
                {"rel": "self", "href": f"{self.url}/", "type": "application/json"},
                {"rel": "root", "href": f"{self.url}/", "type": "application/json"},
                {"rel": "data", "href": f"{self.url}/collections", "type": "application/json"},
                {"rel": "conformance", "href": f"{self.url}/conformance", "type": "application/json"},
                {"rel": "search", "href": f"{self.url}/search", "type": "application/geo+json", "method": "GET"},
                {"rel": "search", "href": f"{self.url}/search", "type": "application/geo+json", "method": "POST"},
            ],
        }

    def search(self, params: dict) -> dict:
        with self._lock:
            self.bodies.append(json.loads(json.dumps(params)))
        matched = [] if self.faults.empty else [iid for iid in sorted(self.items) if self._matches(iid, params)]
        start = int(params.get("token") or 0)
        limit = min(int(params.get("limit") or self.page_size), self.page_size)
        page = matched[start:start + limit]
        links = []
        if start + limit < len(matched):
            body = dict(params, token=str(start + limit))
            links.append({"rel": "next", "href": f"{self.url}/search", "method": "POST", "body": body,
                          "type": "application/geo+json"})
        return {"type": "FeatureCollection", "features": [self.item_json(i) for i in page], "links": links,
                "numberMatched": len(matched), "numberReturned": len(page)}

    def _matches(self, iid: str, params: dict) -> bool:
        item = self.items[iid]
        collections = params.get("collections")
        if collections and item["collection"] not in collections:
            return False
        area = params.get("intersects")
        area = shape(area) if area else (box(*params["bbox"]) if params.get("bbox") else None)
        if area is not None and not area.intersects(shape(item["geometry"])):
            return False
        when = datetime.fromisoformat(item["properties"]["datetime"].replace("Z", "+00:00"))
        if params.get("datetime"):
            start, _, end = params["datetime"].partition("/")
            end = end or start
            if start not in ("", "..") and when < _parse(start, False):
                return False
            if end not in ("", "..") and when > _parse(end, True):
                return False
        for prop, ops in (params.get("query") or {}).items():
            value = item["properties"].get(prop)
            for op, bound in ops.items():
                if value is None or not {"lt": value < bound, "lte": value <= bound, "gt": value > bound,
                                         "gte": value >= bound, "eq": value == bound}[op]:
                    return False
        return True


def _parse(text: str, end: bool) -> datetime:

    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        text += "T23:59:59.999999+00:00" if end else "T00:00:00+00:00"
    stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def _handler(server: StacServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet: the test output is the log we want
            pass

        def _send(self, status: int, body: bytes, ctype: str = "application/json", extra: dict | None = None,
                  send_body: bool = True, length: int | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if send_body:
                self.wfile.write(body)
            server.record(self.command, self.path, status)

        def _json(self, obj: dict, status: int = 200) -> None:
            self._send(status, json.dumps(obj).encode(), "application/geo+json" if "features" in obj
                       else "application/json", send_body=self.command != "HEAD")

        def _faults(self, path: str) -> bool:
            for prefix, seconds in server.faults.delay.items():
                if path.startswith(prefix):
                    time.sleep(seconds)
            code = server.take_error(path)
            if code is not None:
                self._send(code, json.dumps({"code": "Injected", "description": f"injected {code}"}).encode())
                return True
            return False

        def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
            self.do_GET()

        def do_GET(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            if self._faults(url.path):
                return
            if url.path.startswith("/assets/"):
                return self._asset(url.path)
            if url.path in ("", "/"):
                return self._json(server.landing())
            if url.path == "/conformance":
                return self._json({"conformsTo": server.landing()["conformsTo"]})
            documents = server.collections or {COLLECTION: self._collection()}
            if url.path == "/collections":
                return self._json({"collections": list(documents.values()), "links": []})
            if url.path.startswith("/collections/") and url.path.count("/") == 2:
                cid = url.path.split("/")[2]
                if cid in documents:
                    return self._json(documents[cid])
                return self._send(404, b'{"code": "NotFoundError"}')
            match = re.fullmatch(r"/collections/[^/]+/items/([^/]+)", url.path)
            if match and match.group(1) in server.items:
                return self._json(server.item_json(match.group(1)))
            if url.path.startswith("/api/sas/v1/token/"):
                server.token_requests.append(url.path.rsplit("/", 1)[-1])
                return self._json({"msft:expiry": "2099-01-01T00:00:00Z", "token": "st=2099&sig=loopback"})
            if url.path == "/search":
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                params: dict = {k: query[k] for k in ("datetime", "token", "limit") if k in query}
                if "collections" in query:
                    params["collections"] = query["collections"].split(",")
                if "bbox" in query:
                    params["bbox"] = [float(v) for v in query["bbox"].split(",")]
                for key in ("intersects", "query"):
                    if key in query:
                        params[key] = json.loads(query[key])
                return self._json(server.search(params))
            self._send(404, b'{"code": "NotFound"}')

        def do_POST(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self._faults(url.path):
                return
            if url.path == "/search":
                return self._json(server.search(json.loads(body or b"{}")))
            self._send(404, b'{"code": "NotFound"}')

        def _collection(self) -> dict:
            return {"type": "Collection", "id": COLLECTION, "stac_version": "1.0.0", "description": "loopback",
                    "license": "proprietary", "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]},
                                                         "temporal": {"interval": [[None, None]]}},
                    "links": [{"rel": "self", "href": f"{server.url}/collections/{COLLECTION}"}]}

        def _asset(self, path: str) -> None:
            file = server.folder / Path(path).name
            if not file.is_file():
                return self._send(404, b"not found", "text/plain")
            data = file.read_bytes()
            headers = {"Accept-Ranges": "bytes"}
            status, body = 200, data
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if match:
                start = int(match.group(1))
                end = min(int(match.group(2)) if match.group(2) else len(data) - 1, len(data) - 1)
                if start >= len(data):
                    return self._send(416, b"", "text/plain", {"Content-Range": f"bytes */{len(data)}"})
                status, body = 206, data[start:end + 1]
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            fraction = next((f for p, f in server.faults.truncate.items() if path.startswith(p)), None)
            if fraction is not None and self.command == "GET":
                # Announce the whole body, send only part of it, and hang up: a truncated transfer.
                self._send(status, body[: int(len(body) * fraction)], "image/tiff", headers, length=len(body))
                self.close_connection = True
                return
            self._send(status, body, "image/tiff", headers, send_body=self.command != "HEAD")

    return Handler
