"""Planetary Computer SAS tokens for the assets fetch downloads, under tscope's network policy.

The Planetary Computer serves its assets from Azure Blob Storage, readable with a short-lived SAS
token per collection (``GET /api/sas/v1/token/{collection}``, with ``Ocp-Apim-Subscription-Key``
for collections that need a key). The token is requested here with the same timeout and retries
as every other request (the ``planetary-computer`` package uses its own, unbounded ones), once per
collection, and only for items whose assets are about to be read: ``fetch --list`` requests none.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

from tscope.errors import RuntimeFailure
from tscope.stac.catalogs import Catalog
from tscope.stac.http import NetworkPolicy, call_with_policy

BLOB_SUFFIX = ".blob.core.windows.net"


def request_token(url: str, policy: NetworkPolicy) -> str:
    """One SAS token from ``url`` (a query string such as ``st=...&se=...&sig=...``)."""
    import requests
    from requests.adapters import HTTPAdapter

    headers = {}
    if os.environ.get("PC_SDK_SUBSCRIPTION_KEY"):
        headers["Ocp-Apim-Subscription-Key"] = os.environ["PC_SDK_SUBSCRIPTION_KEY"]

    def get() -> str:
        with requests.Session() as session:
            adapter = HTTPAdapter(max_retries=policy.urllib3_retry())
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            answer = session.get(url, headers=headers, timeout=(policy.connect_timeout, policy.timeout))
            answer.raise_for_status()
            token = answer.json().get("token")
        if not isinstance(token, str) or not token:
            raise RuntimeFailure(f"requesting a Planetary Computer token from {url}: the answer holds no token")
        return token

    return call_with_policy(get, f"requesting a Planetary Computer token ({url})", policy)


def sign_items(items: Sequence[Any], catalog: Catalog, policy: NetworkPolicy) -> list[Any]:
    """Copies of ``items`` whose blob-storage asset hrefs carry a SAS token (unchanged if the catalogue
    needs none). Tokens are requested once per collection."""
    if catalog.signer != "planetary-computer" or catalog.token_url is None:
        return list(items)
    tokens: dict[str, str] = {}
    signed = []
    for item in items:
        copy = item.clone()
        for asset in copy.assets.values():
            host = urlparse(asset.href).netloc
            if not host.endswith(BLOB_SUFFIX) or "sig=" in urlparse(asset.href).query:
                continue
            collection = copy.collection_id or ""
            if collection not in tokens:
                tokens[collection] = request_token(catalog.token_url.format(collection=collection), policy)
            asset.href = f"{asset.href}{'&' if '?' in asset.href else '?'}{tokens[collection]}"
        signed.append(copy)
    return signed
