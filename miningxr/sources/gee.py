"""Google Earth Engine through xee: ``LANDSAT/COMPOSITES/C02/T1_L2_ANNUAL`` on the global grid.

The request grid is the grid slice itself (``crs``, ``crs_transform`` and ``shape_2d`` from its
GeoBox), so Earth Engine resamples onto our pixels and nothing is reprojected here. Each
``computePixels`` request is one image, one band and at most ``request_side``² pixels, far under
Earth Engine's 48 MB limit. Transient errors (429 quota, 5xx, dropped connections) are retried
with exponential backoff and jitter up to a cap; anything else fails at once with Earth Engine's
message, which ``ingest`` records against the shard.

Credentials are never read into memory here except by google-auth itself, and never logged: the
workers receive a :class:`EarthEngineAuth` (a project id and a key *path*) and build credentials
from it when xee initialises Earth Engine on them.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..config import BANDS
from ..encoding import encode_dn
from ..errors import SourceError
from ..grid import as_slice
from .common import check_years, landsat_dataset

log = logging.getLogger(__name__)

COLLECTION = "LANDSAT/COMPOSITES/C02/T1_L2_ANNUAL"
FIRST_YEAR = 1984
#: environment variables read when no option is given
KEY_FILE_ENV = "MININGXR_GEE_KEY_FILE"
PROJECT_ENV = "MININGXR_GEE_PROJECT"
#: one request is one band of one image: 1024² float32 plus Earth Engine's mask byte is 5 MB,
#: a tenth of the 48 MB computePixels limit, and small enough that a retry wastes little
REQUEST_SIDE = 1024
REQUEST_BYTE_LIMIT = 48 * 2**20
#: a pixel value no composite can take; xee turns it into NaN, and we into the fill value
MASK_VALUE = -9999.0

_HOW_TO_AUTH = (
    "authenticate once with `earthengine authenticate` (or "
    "`gcloud auth application-default login`), or give a service-account key file with "
    f"--gee-key-file / key_file= / ${KEY_FILE_ENV}; set the Cloud project with "
    f"--gee-project / project= / ${PROJECT_ENV}"
)


@dataclass(frozen=True)
class EarthEngineAuth:
    """How to initialise Earth Engine on any machine: a project and, optionally, a key file path.

    Only the path travels to Dask workers; the key is read there by google-auth. The ``repr``
    names no secret.
    """

    project: str | None = None
    key_file: str | None = None

    @classmethod
    def from_options(
        cls, project: str | None = None, key_file: str | os.PathLike | None = None
    ) -> EarthEngineAuth:
        project = project or os.environ.get(PROJECT_ENV) or None
        key_file = key_file or os.environ.get(KEY_FILE_ENV) or None
        return cls(project, str(Path(key_file).expanduser()) if key_file else None)

    def credentials(self) -> Any:
        """Credentials from the key file, else those stored by ``earthengine authenticate``."""
        import ee

        if self.key_file:
            path = Path(self.key_file)
            if not path.is_file():
                raise SourceError(f"Earth Engine key file {path} does not exist; {_HOW_TO_AUTH}")
            try:
                email = json.loads(path.read_text())["client_email"]
            except (ValueError, KeyError, TypeError):
                # the message must not quote the file: it holds a private key
                raise SourceError(
                    f"{path} is not a service-account JSON key (no client_email); {_HOW_TO_AUTH}"
                ) from None
            return ee.ServiceAccountCredentials(email, key_file=str(path))
        return ee.data.get_persistent_credentials()

    def init_kwargs(self) -> dict[str, Any]:
        """``ee_init_kwargs`` for xee: credentials are made on the worker, not shipped to it."""
        kwargs: dict[str, Any] = {"credentials_function": self.credentials}
        if self.project:
            kwargs["project"] = self.project
        return kwargs


def initialize(auth: EarthEngineAuth) -> None:
    """Initialise Earth Engine in this process unless it already is, or say how to fix it."""
    import ee

    if ee.data.is_initialized():
        return
    try:
        credentials = auth.credentials()
        ee.Initialize(credentials, project=auth.project)
    except SourceError:
        raise
    except Exception as exc:  # google-auth, httplib2, requests, ee: many types, one remedy list
        reason = _short(exc)
        if _looks_offline(exc):
            raise SourceError(
                f"cannot reach Earth Engine ({reason}); source='gee' needs network "
                "access to earthengine.googleapis.com — check the connection or "
                "proxy, or use source='synthetic' offline"
            ) from None
        raise SourceError(f"Earth Engine is not authenticated ({reason}); {_HOW_TO_AUTH}") from None
    log.info(
        "Earth Engine initialised (project %s, %s)",
        auth.project or "default",
        "service-account key" if auth.key_file else "stored user credentials",
    )


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}"


def _looks_offline(exc: BaseException) -> bool:
    while exc is not None:
        # ConnectionError and TimeoutError are OSErrors; a missing file is not being offline
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
            return True
        name = type(exc).__name__.lower()
        if "transport" in name or "servernotfound" in name or "connection" in name:
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


_TRANSIENT = (
    "429",
    "too many",
    "quota",
    "rate limit",
    "resource exhausted",
    "500",
    "502",
    "503",
    "504",
    "internal error",
    "backend error",
    "unavailable",
    "deadline",
    "timed out",
    "try again",
)


def is_transient(exc: BaseException) -> bool:
    """Whether an Earth Engine error is worth retrying (quota, server, network), not a bad request."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    text = str(exc).lower()
    return any(t in text for t in _TRANSIENT)


class RetryingPixels:
    """``ee.data.computePixels`` with exponential backoff and jitter on transient errors.

    xee calls ``pixels[params]``; a permanent error, or a transient one that outlasts
    ``max_retries``, is raised as :class:`SourceError` carrying Earth Engine's message.
    """

    def __init__(self, max_retries: int = 6, initial_delay: float = 0.5, max_delay: float = 32.0):
        self.max_retries = max_retries
        self.initial_delay = initial_delay
        self.max_delay = max_delay

    def __getitem__(self, params: dict) -> np.ndarray:
        import ee

        for attempt in range(self.max_retries + 1):
            try:
                return ee.data.computePixels(params)
            except Exception as exc:
                if not is_transient(exc):
                    raise SourceError(f"Earth Engine refused the request: {_short(exc)}") from None
                if attempt == self.max_retries:
                    raise SourceError(
                        f"Earth Engine still failing after {attempt} retries: {_short(exc)}"
                    ) from None
                delay = min(self.max_delay, self.initial_delay * 2**attempt) * random.uniform(0.5, 1.0)
                log.info(
                    "Earth Engine transient error (%s); retry %d/%d in %.1f s",
                    _short(exc),
                    attempt + 1,
                    self.max_retries,
                    delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")


def _store_class():
    import xee

    class _Store(xee.EarthEngineStore):
        """xee's store with our retrying ``computePixels`` (xee's own retry catches every
        ``EEException``, permanent ones included; ours tells them apart)."""

        pixels: RetryingPixels = RetryingPixels()

        def image_to_array(self, image, pixels_getter=None, dtype=np.float32, **kwargs):
            return super().image_to_array(image, pixels_getter=self.pixels, dtype=dtype, **kwargs)

    return _Store


def ee_units_to_ours(values: xr.DataArray, band: str) -> xr.DataArray:
    """Earth Engine composite units (reflectance; thermal in kelvin) to the store's decoded units."""
    return (values - 273.15) / 100.0 if band == "thermal" else values


def open_gee(
    region: Any,
    years: int | Sequence[int],
    *,
    chunks: int = 512,
    decode: bool = True,
    project: str | None = None,
    key_file: str | os.PathLike | None = None,
    collection: str = COLLECTION,
    request_side: int = REQUEST_SIDE,
    max_retries: int = 6,
    initial_delay: float = 0.5,
    max_delay: float = 32.0,
    threads: int = 8,
) -> xr.Dataset:
    """Open Earth Engine's Landsat annual composites on a slice of the global grid, lazily.

    Parameters
    ----------
    region
        A region or a :class:`~miningxr.grid.GridSlice`.
    years
        Years to open; each must have a composite in ``collection``.
    chunks
        Dask chunk side in pixels (one task per year, band and chunk).
    project, key_file
        Cloud project and service-account JSON key; default ``$MININGXR_GEE_PROJECT`` and
        ``$MININGXR_GEE_KEY_FILE``, else the credentials of ``earthengine authenticate``.
    request_side
        Side of one ``computePixels`` request in pixels.
    max_retries, initial_delay, max_delay
        Backoff for transient errors, in seconds.
    threads
        Concurrent requests per Dask task.

    Example
    -------
    >>> ds = open_gee("ZAF", 2020, project="my-project")  # doctest: +SKIP
    """
    import ee
    import xee  # noqa: F401  (registers the "ee" engine)
    from xarray.backends.store import StoreBackendEntrypoint

    yrs = check_years(years, FIRST_YEAR, _dt.date.today().year, "gee")
    gslice = as_slice(region)
    if 4 * request_side**2 * 5 > REQUEST_BYTE_LIMIT:
        raise SourceError(f"request_side={request_side} exceeds Earth Engine's 48 MB request limit")
    auth = EarthEngineAuth.from_options(project, key_file)
    initialize(auth)

    gb = gslice.geobox
    a = gb.affine
    start, end = f"{min(yrs)}-01-01", f"{max(yrs) + 1}-01-01"
    images = ee.ImageCollection(collection).filterDate(start, end)
    store = _store_class().open(
        images,
        crs=str(gb.crs),
        crs_transform=(a.a, a.b, a.c, a.d, a.e, a.f),
        shape_2d=(gb.shape.x, gb.shape.y),
        primary_dim_name="time",
        chunk_store={"index": 1, "width": request_side, "height": request_side},
        mask_value=MASK_VALUE,
        ee_init_if_necessary=True,
        ee_init_kwargs=auth.init_kwargs(),
        executor_kwargs={"max_workers": threads},
        getitem_kwargs={"max_retries": 0},
    )
    store.pixels = RetryingPixels(max_retries, initial_delay, max_delay)
    try:
        raw = StoreBackendEntrypoint().open_dataset(store)
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(
            f"Earth Engine could not describe {collection} for {start}..{end}: {_short(exc)}"
        ) from None
    missing_bands = [b for b in BANDS if b not in raw.data_vars]
    if missing_bands:
        raise SourceError(f"{collection} has no band(s) {missing_bands}; found {list(raw.data_vars)}")
    times = pd.DatetimeIndex(raw["time"].values if raw.sizes.get("time") else [])
    have = {int(t.year): i for i, t in enumerate(times)}
    absent = [y for y in yrs if y not in have]
    if absent:
        span = f"it has {min(have)}..{max(have)} in that range" if have else "it has none in that range"
        raise SourceError(
            f"no Earth Engine composite for year(s) {absent} in {collection} ({span}); "
            "pick years the collection covers"
        )

    raw = raw.isel(time=[have[y] for y in yrs])
    # dask blocks start on multiples of `chunks` on the global grid, as every source's do
    rows, cols = gslice.block_chunks(chunks)
    raw = raw.chunk({"time": 1, "y": rows, "x": cols})
    cube = xr.concat([ee_units_to_ours(raw[b], b) for b in BANDS], dim="band")
    dn = cube.transpose("time", "band", "y", "x").data.map_blocks(encode_dn, dtype=np.int16)
    return landsat_dataset(dn, gslice, yrs, "gee", decode=decode, attrs={"gee_collection": collection})
