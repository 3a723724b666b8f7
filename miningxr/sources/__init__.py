"""Sources of Landsat annual composites, each returning the same lazy cube on the global grid.

``synthetic`` (the default: no account, no network), ``gee`` (Google Earth Engine through
xee) and ``stac`` (a STAC catalog through stackstac) return Datasets with the same dims,
bands, scaling and coordinates, so everything downstream treats them alike.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from typing import Any

import xarray as xr

from ..config import SyntheticConfig
from ..errors import SourceError
from ..grid import as_slice
from . import gee, stac, synthetic

#: every source, by the name ``source=`` takes: each opens the same cube on the global grid
OPENERS: dict[str, Callable[..., xr.Dataset]] = {
    "synthetic": synthetic.open_synthetic,
    "gee": gee.open_gee,
    "stac": stac.open_stac,
}
SOURCES = tuple(OPENERS)


def _opener(source: str) -> Callable[..., xr.Dataset]:
    if source not in OPENERS:
        raise SourceError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    return OPENERS[source]


def source_years(source: str, **options: Any) -> tuple[int, int]:
    """The first and last year a source can serve (synthetic: its config's; gee and stac: from
    the start of their archives to this year)."""
    _opener(source)
    if source == "synthetic":
        cfg = options.get("config") or SyntheticConfig()
        return int(cfg.first_year), int(cfg.last_year)
    first = gee.FIRST_YEAR if source == "gee" else stac.FIRST_YEAR
    return first, datetime.date.today().year


def open_landsat(
    region: Any,
    year: int | Sequence[int],
    source: str = "synthetic",
    *,
    chunks: int = 512,
    decode: bool = True,
    **options: Any,
) -> xr.Dataset:
    """Open Landsat annual composites for a region and year(s) as a lazy xarray cube.

    Parameters
    ----------
    region
        An ISO3 country code (``"ZAF"``), a lon/lat bbox ``(minx, miny, maxx, maxy)``, geometries,
        a :class:`~miningxr.grid.Region` or a :class:`~miningxr.grid.GridSlice`.
    year
        One year or a list of years.
    source
        ``"synthetic"``, ``"gee"`` or ``"stac"``.
    chunks
        Dask chunk size in pixels; blocks start on multiples of it on the global grid.
    decode
        Return decoded floats (default) or the packed int16 numbers the store holds.
    **options
        Passed to the source (e.g. ``config=`` for synthetic, ``catalog=`` for stac,
        ``project=``/``key_file=`` for gee).

    Returns
    -------
    xarray.Dataset
        ``landsat`` with dims ``(year, band, y, x)`` on the slice of the global EPSG:6933 grid
        that covers the region, with ``x``/``y`` pixel centres and ``spatial_ref``.

    Example
    -------
    >>> import miningxr
    >>> ds = miningxr.open_landsat((29.0, -26.0, 29.05, -25.95), 2020)
    >>> ds.band.values.tolist()
    ['blue', 'green', 'red', 'nir', 'swir1', 'swir2', 'thermal']
    """
    return _opener(source)(as_slice(region), year, chunks=chunks, decode=decode, **options)
