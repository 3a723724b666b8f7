"""Landsat Collection 2 Level-2 scenes from a STAC catalog, composited per year with stackstac.

Scenes (from a STAC API such as Planetary Computer's or Earth Search's ``landsat-c2-l2``, or a
static catalog on disk or behind a URL) are read lazily by stackstac straight onto the grid slice
(EPSG:6933, 30 m, snapped to the global lattice), masked with ``QA_PIXEL`` (fill, dilated
cloud, cirrus, cloud, cloud shadow), and reduced to a per-year median with Dask. Values are
scaled with the Collection 2 Level-2 factors into the same units as the ``gee`` source, so both
land in the store as the same int16 numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..config import BANDS
from ..grid import RESOLUTION, GridSlice, as_region
from ._common import SourceError, check_years, encode_dn, landsat_dataset

log = logging.getLogger(__name__)

COLLECTION = "landsat-c2-l2"
FIRST_YEAR = 1982
#: our band name -> the asset key in Landsat C2 L2 STAC items (Planetary Computer, Earth Search)
ASSETS: dict[str, str] = {"blue": "blue", "green": "green", "red": "red", "nir": "nir08",
                          "swir1": "swir16", "swir2": "swir22", "thermal": "lwir11"}
QA_ASSET = "qa_pixel"
#: QA_PIXEL bits that make a pixel unusable: fill, dilated cloud, cirrus, cloud, cloud shadow
QA_MASK_BITS = (0, 1, 2, 3, 4)
#: Collection 2 Level-2 scaling: surface reflectance and surface temperature (kelvin)
SR_SCALE, SR_OFFSET = 2.75e-5, -0.2
ST_SCALE, ST_OFFSET = 0.00341802, 149.0


def qa_clear(qa: xr.DataArray, bits: Sequence[int] = QA_MASK_BITS) -> xr.DataArray:
    """True where ``QA_PIXEL`` flags none of ``bits`` (and the pixel was read at all)."""
    mask = sum(1 << b for b in bits)
    ok = qa.notnull()
    return ok & ((qa.fillna(0).astype(np.uint16) & mask) == 0)


def dn_to_ours(dn: xr.DataArray, band: str) -> xr.DataArray:
    """Collection 2 Level-2 integers (0 = no data) to the store's decoded units."""
    dn = dn.where(dn > 0)
    if band == "thermal":
        return (dn * ST_SCALE + ST_OFFSET - 273.15) / 100.0
    return dn * SR_SCALE + SR_OFFSET


def _nanmedian(values: np.ndarray) -> np.ndarray:
    # a pixel with no clear scene in the year is no data, not a reason for numpy to warn (and
    # warnings filters are not thread-safe, so the empty pixels are taken out instead)
    empty = np.isnan(values).all(axis=-1)
    if empty.any():
        values = np.where(empty[..., None], 0.0, values)
    out = np.nanmedian(values, axis=-1)
    out[empty] = np.nan
    return out


def clear_median(values: xr.DataArray, dim: str = "time") -> xr.DataArray:
    """Median over ``dim`` of the non-NaN values; NaN where there is none. One task per block."""
    return xr.apply_ufunc(_nanmedian, values, input_core_dims=[[dim]], dask="parallelized",
                          output_dtypes=[values.dtype])


def acquired(item) -> pd.Timestamp:
    """When a scene was taken: its ``datetime``, or the start of its range when it has none."""
    return pd.Timestamp(item.datetime or item.properties.get("start_datetime"))


def search_items(catalog: str | Path, bbox_lonlat: Sequence[float], years: Sequence[int], *,
                 collection: str = COLLECTION, query: Mapping | None = None) -> list:
    """STAC items intersecting a lon/lat bbox in the given years, from an API or a static catalog."""
    import pystac

    start, end = f"{min(years)}-01-01T00:00:00Z", f"{max(years)}-12-31T23:59:59Z"
    text = str(catalog)
    try:
        if text.startswith(("http://", "https://")) and not text.endswith(".json"):
            import pystac_client

            client = pystac_client.Client.open(text)
            search = client.search(collections=[collection], bbox=list(bbox_lonlat),
                                   datetime=f"{start}/{end}", query=dict(query or {}) or None)
            return list(search.items())
        root = pystac.read_file(text)
    except FileNotFoundError:
        raise SourceError(f"STAC catalog {catalog} not found; give a STAC API URL or the path of a "
                          "catalog.json / collection.json") from None
    except Exception as exc:
        raise SourceError(f"cannot read STAC catalog {catalog}: {type(exc).__name__}: {exc}") from None
    if isinstance(root, pystac.Item):
        candidates = [root]
    else:
        candidates = list(root.get_items(recursive=True))
    lo, hi = pd.Timestamp(start), pd.Timestamp(end)
    x0, y0, x1, y1 = bbox_lonlat
    items = []
    for item in candidates:
        when = acquired(item)
        ib = item.bbox
        if (lo <= when <= hi and ib is not None and ib[0] <= x1 and ib[2] >= x0 and ib[1] <= y1
                and ib[3] >= y0):
            items.append(item)
    return items


def open_stac(region: Any, years: int | Sequence[int], *, catalog: str | Path | None = None,
              chunks: int = 512, decode: bool = True, collection: str = COLLECTION,
              assets: Mapping[str, str] | None = None, qa_bits: Sequence[int] = QA_MASK_BITS,
              query: Mapping | None = None, items: Sequence | None = None) -> xr.Dataset:
    """Open per-year median composites of Landsat C2 L2 scenes from a STAC catalog, lazily.

    Parameters
    ----------
    region
        A region or a :class:`~miningxr.grid.GridSlice`.
    years
        Years to composite; each needs at least one scene over the region.
    catalog
        A STAC API URL (searched with pystac-client) or the path/URL of a static
        ``catalog.json``/``collection.json``.
    collection
        Collection to search in an API.
    assets
        Our band name -> asset key, default :data:`ASSETS`.
    qa_bits
        ``QA_PIXEL`` bits that mask a pixel.
    query
        Extra STAC API query, e.g. ``{"eo:cloud_cover": {"lt": 60}}``.
    items
        Items to use instead of searching ``catalog``.

    Example
    -------
    >>> ds = open_stac("ZAF", 2020, catalog="https://earth-search.aws.element84.com/v1")  # doctest: +SKIP
    """
    import stackstac

    yrs = check_years(years, FIRST_YEAR, pd.Timestamp.now().year, "stac")
    gslice = region if isinstance(region, GridSlice) else as_region(region).slice(1)
    assets = dict(assets or ASSETS)
    bbox = gslice.geobox.geographic_extent.boundingbox
    if items is None:
        if catalog is None:
            raise SourceError("source='stac' needs a catalog: a STAC API URL or a static catalog path "
                              "(catalog= / --stac-catalog)")
        items = search_items(catalog, (bbox.left, bbox.bottom, bbox.right, bbox.top), yrs,
                             collection=collection, query=query)
    by_year: dict[int, list] = {}
    for item in items:
        by_year.setdefault(acquired(item).year, []).append(item)
    absent = [y for y in yrs if not by_year.get(y)]
    if absent:
        raise SourceError(f"no STAC scene over {gslice} in year(s) {absent} "
                          f"(catalog {catalog or 'items given'}); pick years with scenes, or check "
                          "the collection name and the catalog's coverage")
    missing = [a for a in [*assets.values(), QA_ASSET] if a not in items[0].assets]
    if missing:
        raise SourceError(f"STAC items lack asset(s) {missing}; map our bands to the catalog's "
                          f"asset keys with assets= (found {sorted(items[0].assets)})")

    gb = gslice.geobox
    bounds = tuple(gb.boundingbox)  # left, bottom, right, top: on the 30 m lattice already
    rows, cols = gslice.block_chunks(chunks)
    composites = []
    for year in yrs:
        # rescale=False: we apply the C2 L2 factors ourselves so every asset is treated alike;
        # all scenes of a year in one chunk along time, so the median is one task per block
        stack = stackstac.stack(
            by_year[year], assets=[*assets.values(), QA_ASSET], epsg=int(gb.crs.epsg),
            resolution=RESOLUTION, bounds=bounds, snap_bounds=False, chunksize=(-1, 1, rows, cols),
            dtype=np.dtype("float64"), fill_value=np.nan, rescale=False, xy_coords="center",
            properties=False, band_coords=False)
        if stack.sizes["x"] != gb.shape.x or stack.sizes["y"] != gb.shape.y:
            raise SourceError(f"stackstac returned {stack.sizes} for a {gb.shape} slice")
        clear = qa_clear(stack.sel(band=QA_ASSET), qa_bits)
        bands = [clear_median(dn_to_ours(stack.sel(band=assets[b]).where(clear), b)) for b in BANDS]
        composites.append(xr.concat(bands, dim="band", coords="minimal", compat="override"))
    cube = xr.concat(composites, dim="year", coords="minimal", compat="override")
    dn = cube.transpose("year", "band", "y", "x").data
    dn = dn.rechunk((1, 1, rows, cols)).map_blocks(encode_dn, dtype=np.int16)
    return landsat_dataset(dn, gslice, yrs, "stac",
                           attrs={"stac_catalog": str(catalog or "items"), "stac_collection": collection},
                           decode=decode)
