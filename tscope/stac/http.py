"""Network policy for STAC APIs and COG assets: timeouts, retries with backoff, clear errors.

Two clients touch the network: pystac-client (``requests``) for the API, and GDAL (libcurl, through
rasterio and odc-stac) for the COG assets, read with HTTP range requests. Both get the same policy:
bounded timeouts, retries with exponential backoff on connection errors and on 429/5xx answers,
and errors that say what failed. A read that ends early (a truncated transfer or a short file) is
an error in GDAL, and loading fails on any read error, so no scene is ever written from a partial
asset; writers are atomic on top of that.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tscope.errors import InputError, RuntimeFailure

RETRY_STATUS = (429, 500, 502, 503, 504)


@dataclass(frozen=True)
class NetworkPolicy:
    """Timeouts (seconds) and retries shared by the STAC API client and GDAL's asset reads.

    The n-th retry waits ``backoff * 2**(n-1)`` seconds (at most ``backoff_max``).
    """

    timeout: float = 60.0
    connect_timeout: float = 10.0
    retries: int = 4
    backoff: float = 1.0
    backoff_max: float = 30.0

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.connect_timeout <= 0:
            raise InputError("--timeout must be positive")
        if self.retries < 0:
            raise InputError("--retries must be 0 or more")

    def urllib3_retry(self) -> Any:
        """A ``urllib3.Retry`` for every method (STAC search is a POST, and it is idempotent)."""
        from urllib3.util.retry import Retry

        return Retry(
            total=self.retries, connect=self.retries, read=self.retries, status=self.retries,
            backoff_factor=self.backoff, backoff_max=self.backoff_max, status_forcelist=RETRY_STATUS,
            allowed_methods=None, raise_on_status=True, respect_retry_after_header=True,
        )

    def gdal_options(self) -> dict[str, str]:
        """GDAL configuration options for /vsicurl/ reads of COG assets.

        GDAL doubles GDAL_HTTP_RETRY_DELAY after each retry (exponential backoff) and, since 3.10,
        retries the codes in GDAL_HTTP_RETRY_CODES; GDAL_HTTP_TIMEOUT bounds each request.
        """
        return {
            "GDAL_HTTP_TIMEOUT": str(int(max(1, round(self.timeout)))),
            "GDAL_HTTP_CONNECTTIMEOUT": str(int(max(1, round(self.connect_timeout)))),
            "GDAL_HTTP_MAX_RETRY": str(self.retries),
            "GDAL_HTTP_RETRY_DELAY": str(self.backoff),
            "GDAL_HTTP_RETRY_CODES": ",".join(map(str, RETRY_STATUS)),
            # Do not list directories next to each asset: one GET per file is what a COG needs.
            "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
            "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF,.jp2,.JP2",
            "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
            "GDAL_HTTP_MULTIPLEX": "YES",
            "VSI_CACHE": "TRUE",
        }


@contextlib.contextmanager
def gdal_env(policy: NetworkPolicy, extra: dict[str, str] | None = None) -> Iterator[None]:
    """A rasterio/GDAL environment with ``policy`` (and catalogue credentials) for asset reads."""
    import rasterio

    with rasterio.Env(**policy.gdal_options(), **(extra or {})):
        yield


def stac_api_io(policy: NetworkPolicy, headers: dict[str, str] | None = None) -> Any:
    """pystac-client's ``StacApiIO`` with ``policy``'s timeouts and retries."""
    from pystac_client.stac_api_io import StacApiIO

    return StacApiIO(headers=headers, timeout=(policy.connect_timeout, policy.timeout),
                     max_retries=policy.urllib3_retry())


def describe_network_error(exc: BaseException, what: str, policy: NetworkPolicy) -> RuntimeFailure | None:
    """A one-line RuntimeFailure for a network failure while doing ``what``, or None if it is not one."""
    import requests
    from pystac_client.exceptions import APIError

    status = _status_of(exc)
    if status in (401, 403):
        return RuntimeFailure(f"{what}: access refused (HTTP {status}); check the catalogue credentials")
    if isinstance(exc, requests.exceptions.Timeout) or _caused_by(exc, "TimeoutError", "ReadTimeoutError",
                                                                    "ConnectTimeoutError"):
        return RuntimeFailure(f"{what}: no answer within {policy.timeout:g} s (after {policy.retries} retries)")
    if isinstance(exc, requests.exceptions.RetryError) or _caused_by(exc, "MaxRetryError"):
        return RuntimeFailure(f"{what}: still failing after {policy.retries} retries ({_root(exc)})")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return RuntimeFailure(f"{what}: cannot connect ({_root(exc)})")
    if isinstance(exc, requests.exceptions.HTTPError) or isinstance(exc, APIError):
        code = f"HTTP {status}" if status else "error"
        return RuntimeFailure(f"{what}: the server answered {code}: {_short(str(exc))}")
    return None


def _status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None) or getattr(exc, "status_code", None)
    return int(status) if status else None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        for arg in getattr(current, "args", ()):
            if isinstance(arg, BaseException):
                yield from _chain(arg)
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            yield from _chain(reason)
        current = current.__cause__ or current.__context__


def _caused_by(exc: BaseException, *names: str) -> bool:
    return any(type(e).__name__ in names for e in _chain(exc))


def _root(exc: BaseException) -> str:
    last = exc
    for last in _chain(exc):  # noqa: B007 - we want the deepest
        pass
    return _short(f"{type(last).__name__}: {last}")


def _short(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def call_with_policy(fn: Callable[[], Any], what: str, policy: NetworkPolicy) -> Any:
    """Run ``fn`` and turn any network failure into a one-line RuntimeFailure."""
    try:
        return fn()
    except (InputError, RuntimeFailure):
        raise
    except Exception as exc:  # noqa: BLE001 - mapped to a clear message below, or re-raised
        failure = describe_network_error(exc, what, policy)
        if failure is None:
            raise
        raise failure from exc
