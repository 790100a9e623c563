"""The STAC APIs tscope knows by name, and what each needs to be read from.

A catalogue maps tscope's collection names (``s2-l2a``, ``s1``) onto its own collection ids, says
how asset URLs are signed (Planetary Computer SAS tokens, requested by :mod:`tscope.stac.signing`)
and which credentials GDAL needs (Copernicus Data Space serves its assets from S3).
Any other STAC API is given by URL; tscope's aliases then become the first matching collection the
API lists (``s2-l2a``: ``sentinel-2-c1-l2a`` or ``sentinel-2-l2a``), or any literal collection id.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlparse

from tscope.errors import InputError

COLLECTION_ALIASES = ("s2-l2a", "s1")


@dataclass(frozen=True)
class Catalog:
    """A STAC API: ``collections`` maps tscope names to the API's collection ids."""

    name: str
    url: str
    collections: dict[str, str] = field(default_factory=dict)
    signer: str | None = None
    s3_endpoint: str | None = None
    token_url: str | None = None
    notes: str = ""
    discover: bool = False  # an API known only by URL: its collections are looked up, not assumed


    def collection_id(self, collection: str) -> str:
        """The API's collection id for ``collection`` (a tscope alias, or a literal id passed through)."""
        if collection in self.collections:
            return self.collections[collection]
        if self.discover:
            return collection
        if collection in COLLECTION_ALIASES:
            offered = ", ".join(self.collections) or "none"
            raise InputError(f"catalogue {self.name} has no {collection} collection (it offers {offered});"
                             " choose another --catalog or give the STAC collection id")
        return collection


CATALOGS = {
    "earth-search": Catalog(
        name="earth-search",
        url="https://earth-search.aws.element84.com/v1",
        collections={"s2-l2a": "sentinel-2-c1-l2a"},
        notes="Element 84 Earth Search v1: public COGs on AWS, no credentials",
    ),
    "planetary-computer": Catalog(
        name="planetary-computer",
        url="https://planetarycomputer.microsoft.com/api/stac/v1",
        collections={"s2-l2a": "sentinel-2-l2a", "s1": "sentinel-1-rtc"},
        signer="planetary-computer",
        token_url="https://planetarycomputer.microsoft.com/api/sas/v1/token/{collection}",
        notes="Microsoft Planetary Computer: assets signed with SAS tokens (PC_SDK_SUBSCRIPTION_KEY"
              " for collections that need a key, such as sentinel-1-rtc)",
    ),
    "cdse": Catalog(
        name="cdse",
        url="https://stac.dataspace.copernicus.eu/v1",
        collections={"s2-l2a": "sentinel-2-l2a"},
        s3_endpoint="eodata.dataspace.copernicus.eu",
        notes="Copernicus Data Space Ecosystem: assets on its S3 endpoint; set CDSE_S3_ACCESS_KEY and"
              " CDSE_S3_SECRET_KEY (S3 keys from the CDSE dashboard)",
    ),
}
CATALOG_ALIASES = {"earthsearch": "earth-search", "pc": "planetary-computer", "mpc": "planetary-computer",
                   "copernicus": "cdse", "copernicus-dataspace": "cdse"}
DEFAULT_CATALOG = "earth-search"


def resolve_catalog(name_or_url: str | None) -> Catalog:
    """A known catalogue by name, or any STAC API by http(s) URL (Earth Search's collection names)."""
    key = (name_or_url or DEFAULT_CATALOG).strip()
    key = CATALOG_ALIASES.get(key.lower(), key.lower()) if "://" not in key else key
    if key in CATALOGS:
        return CATALOGS[key]
    parsed = urlparse(key)
    if parsed.scheme in ("http", "https") and parsed.netloc:
        known = {c.url.rstrip("/"): c for c in CATALOGS.values()}
        if key.rstrip("/") in known:
            return known[key.rstrip("/")]
        return Catalog(name=key, url=key, discover=True)
    raise InputError(f"unknown --catalog {name_or_url!r}: give one of {', '.join(CATALOGS)} or an http(s) URL")


def gdal_credentials(catalog: Catalog) -> dict[str, str]:
    """GDAL options that let /vsis3/ read the catalogue's assets (empty when none are needed)."""
    if catalog.s3_endpoint is None:
        return {}
    key, secret = os.environ.get("CDSE_S3_ACCESS_KEY"), os.environ.get("CDSE_S3_SECRET_KEY")
    if not key or not secret:
        raise InputError(f"catalogue {catalog.name} serves its assets from S3: set CDSE_S3_ACCESS_KEY and"
                         " CDSE_S3_SECRET_KEY (create S3 keys in the Copernicus Data Space dashboard)")
    return {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "AWS_S3_ENDPOINT": catalog.s3_endpoint,
            "AWS_VIRTUAL_HOSTING": "FALSE", "AWS_HTTPS": "YES"}
