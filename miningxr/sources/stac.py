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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..config import BANDS
from ..encoding import encode_dn
from ..errors import SourceError
from ..grid import CRS_GRID, RESOLUTION, as_slice
from .common import check_years, landsat_dataset

log = logging.getLogger(__name__)

COLLECTION = "landsat-c2-l2"
FIRST_YEAR = 1982
#: our band name -> the asset key in Landsat C2 L2 STAC items (Planetary Computer, Earth Search,
#: stactools): the Landsat 8-9 keys; see :data:`MISSION_ASSETS` for the other missions
ASSETS: dict[str, str] = {
    "blue": "blue",
    "green": "green",
    "red": "red",
    "nir": "nir08",
    "swir1": "swir16",
    "swir2": "swir22",
    "thermal": "lwir11",
}
#: the asset keys per mission: Landsat 4, 5 and 7 call their one thermal band ``lwir``
MISSION_ASSETS: dict[str, dict[str, str]] = {
    "landsat-4": {**ASSETS, "thermal": "lwir"},
    "landsat-5": {**ASSETS, "thermal": "lwir"},
    "landsat-7": {**ASSETS, "thermal": "lwir"},
    "landsat-8": dict(ASSETS),
    "landsat-9": dict(ASSETS),
}
#: bands a scene may lack (L2SR scenes have surface reflectance only): that scene gives no value
#: for the band, and the year's composite of the band uses the scenes that have it
OPTIONAL_BANDS = ("thermal",)
QA_ASSET = "qa_pixel"
#: QA_PIXEL bits that make a pixel unusable: fill, dilated cloud, cirrus, cloud, cloud shadow
#: (bits 1 and 2 are always 0 on Landsat 4-7, so one rule serves every mission)
QA_MASK_BITS = (0, 1, 2, 3, 4)
#: Collection 2 Level-2 scaling, the same for every mission: surface reflectance and surface
#: temperature (kelvin)
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
    return xr.apply_ufunc(
        _nanmedian, values, input_core_dims=[[dim]], dask="parallelized", output_dtypes=[values.dtype]
    )


def acquired(item) -> pd.Timestamp:
    """When a scene was taken: its ``datetime``, or the start of its range when it has none."""
    return pd.Timestamp(item.datetime or item.properties.get("start_datetime"))


@dataclass(frozen=True)
class StacPreset:
    """What it takes to read Landsat C2 L2 from one public STAC catalog.

    Attributes
    ----------
    catalog, collection
        The STAC API and its Landsat Collection 2 Level-2 collection.
    sign
        Sign every asset href with the ``planetary-computer`` package before reading it.
    gdal_env
        GDAL configuration options for reading the assets (e.g. requester-pays S3).
    credentials
        What a user needs, in words (shown by ``--help`` and docs/sources.md).
    """

    name: str
    catalog: str
    collection: str = COLLECTION
    sign: bool = False
    gdal_env: Mapping[str, str] = field(default_factory=dict)
    credentials: str = ""


PRESETS: dict[str, StacPreset] = {
    "planetary-computer": StacPreset(
        "planetary-computer",
        "https://planetarycomputer.microsoft.com/api/stac/v1",
        sign=True,
        credentials="none to read: asset URLs are signed with short-lived SAS tokens by the "
        "planetary-computer package (pip install miningxr[stac]); set "
        "PC_SDK_SUBSCRIPTION_KEY for higher rate limits",
    ),
    "earth-search": StacPreset(
        "earth-search",
        "https://earth-search.aws.element84.com/v1",
        gdal_env={"AWS_REQUEST_PAYER": "requester"},
        credentials="AWS credentials from the standard chain (AWS_ACCESS_KEY_ID/"
        "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an instance role): the Landsat "
        "bucket s3://usgs-landsat is requester-pays, so reads are billed to your account",
    ),
}


def stac_preset(name: str) -> StacPreset:
    """The :class:`StacPreset` called ``name``; a clear error naming the presets otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise SourceError(
            f"unknown STAC preset {name!r}; choose one of {', '.join(PRESETS)} or give "
            "catalog= (--stac-catalog) yourself"
        ) from None


def search_items(
    catalog: str | Path,
    bbox_lonlat: Sequence[float],
    years: Sequence[int],
    *,
    collection: str = COLLECTION,
    query: Mapping | None = None,
) -> list:
    """STAC items intersecting a lon/lat bbox in the given years, from an API or a static catalog."""
    import pystac

    start, end = f"{min(years)}-01-01T00:00:00Z", f"{max(years)}-12-31T23:59:59Z"
    text = str(catalog)
    try:
        if text.startswith(("http://", "https://")) and not text.endswith(".json"):
            import pystac_client

            client = pystac_client.Client.open(text)
            search = client.search(
                collections=[collection],
                bbox=list(bbox_lonlat),
                datetime=f"{start}/{end}",
                query=dict(query or {}) or None,
            )
            return list(search.items())
        root = pystac.read_file(text)
    except FileNotFoundError:
        raise SourceError(
            f"STAC catalog {catalog} not found; give a STAC API URL or the path of a "
            "catalog.json / collection.json"
        ) from None
    except Exception as exc:
        raise SourceError(f"cannot read STAC catalog {catalog}: {type(exc).__name__}: {exc}") from None
    if isinstance(root, pystac.Item):
        candidates = [root]
    elif isinstance(root, (pystac.Catalog, pystac.Collection)):
        candidates = list(root.get_items(recursive=True))
    else:
        raise SourceError(f"{catalog} is a STAC {type(root).__name__}, not a catalog, collection or item")
    lo, hi = pd.Timestamp(start), pd.Timestamp(end)
    x0, y0, x1, y1 = bbox_lonlat
    items = []
    for item in candidates:
        when = acquired(item)
        ib = item.bbox
        if (
            lo <= when <= hi
            and ib is not None
            and ib[0] <= x1
            and ib[2] >= x0
            and ib[1] <= y1
            and ib[3] >= y0
        ):
            items.append(item)
    return items


def mission(item: Any) -> str | None:
    """The Landsat mission of an item, ``"landsat-8"`` style: from ``platform``, else its id."""
    props = item.properties
    platform = str(props.get("platform") or props.get("eo:platform") or "").lower().replace("_", "-")
    if platform.startswith("landsat-") and platform[8:].isdigit():
        return f"landsat-{int(platform[8:])}"
    ident = str(item.id)
    # Collection 2 product ids: LXSS_..., e.g. LE07_L2SP_..., LT05_..., LC08_...
    if len(ident) >= 4 and ident[0] == "L" and ident[2:4].isdigit():
        return f"landsat-{int(ident[2:4])}"
    return None


def _absolute_href(item: Any, key: str) -> str:
    """An asset's href resolved against the item's own location (static catalogs store them
    relative, e.g. ``./LC08_..._SR_B5.TIF``, as stactools and pystac's SELF_CONTAINED write them)."""
    asset = item.assets[key]
    return str(asset.get_absolute_href() or asset.href)


def prepare_items(
    items: Sequence, assets: Mapping[str, str] | None = None, *, sign: Callable[[str], str] | None = None
) -> tuple[list[dict], dict[str, int]]:
    """Items as dicts whose assets are named by our bands (and ``qa_pixel``), hrefs absolute.

    Each item's asset keys are looked up by its own mission (:data:`MISSION_ASSETS`), or taken
    from ``assets`` when given. A scene without one of :data:`OPTIONAL_BANDS` simply lacks that
    band (stackstac reads it as no data); a scene without a required band is an error that names
    it. Returns the items and the number of scenes per mission.
    """
    out: list[Any] = []
    missions: dict[str, int] = {}
    lacking: list[Any] = []
    for item in items:
        m = mission(item)
        keys = dict(assets) if assets is not None else MISSION_ASSETS.get(m or "", ASSETS)
        wanted = {**keys, QA_ASSET: QA_ASSET}
        have = set(item.assets)
        missing = [k for b, k in wanted.items() if k not in have and b not in OPTIONAL_BANDS]
        if missing:
            lacking.append((item.id, missing, sorted(have)))
            continue
        d = item.to_dict(include_self_link=False, transform_hrefs=False)
        new = {}
        for ours, key in wanted.items():
            if key in have:
                a = dict(d["assets"][key])
                href = _absolute_href(item, key)
                a["href"] = sign(href) if sign else href
                new[ours] = a
        d["assets"] = new
        out.append(d)
        missions[m or "unknown"] = missions.get(m or "unknown", 0) + 1
    if lacking:
        ident, missing, found = lacking[0]
        raise SourceError(
            f"{len(lacking)} STAC item(s) lack asset(s) we need, e.g. {ident}: {missing} "
            f"(it has {found}); map our bands to the catalog's asset keys with assets= "
            f"(our bands: {list(BANDS)})"
        )
    return out, missions


def _signer(preset: StacPreset | None) -> Callable[[str], str] | None:
    if preset is None or not preset.sign:
        return None
    try:
        import planetary_computer
    except ImportError:
        raise SourceError(
            f"the {preset.name} preset signs asset URLs with the planetary-computer "
            "package: pip install 'miningxr[stac]'"
        ) from None
    return planetary_computer.sign_url


def open_stac(
    region: Any,
    years: int | Sequence[int],
    *,
    catalog: str | Path | None = None,
    preset: str | None = None,
    chunks: int = 512,
    decode: bool = True,
    collection: str | None = None,
    assets: Mapping[str, str] | None = None,
    qa_bits: Sequence[int] = QA_MASK_BITS,
    query: Mapping | None = None,
    items: Sequence | None = None,
    gdal_env: Mapping[str, str] | None = None,
) -> xr.Dataset:
    """Open per-year median composites of Landsat C2 L2 scenes from a STAC catalog, lazily.

    Parameters
    ----------
    region, years
        Where (any region, or a :class:`~miningxr.grid.GridSlice`) and which years to composite;
        each year needs at least one scene over the region.
    catalog
        A STAC API URL (searched with pystac-client) or the path/URL of a static
        ``catalog.json``/``collection.json``; relative asset hrefs are resolved against each
        item's own location.
    preset
        ``"planetary-computer"`` or ``"earth-search"`` (:data:`PRESETS`): the catalog, its
        collection, and how its assets are read (signed URLs; requester-pays S3).
    collection
        Collection to search in an API (default ``landsat-c2-l2``).
    assets
        Our band name -> asset key for every item. By default each item's keys follow its
        mission (:data:`MISSION_ASSETS`: ``lwir11`` on Landsat 8-9, ``lwir`` on 4-7).
    qa_bits
        ``QA_PIXEL`` bits that mask a pixel.
    query
        Extra STAC API query, e.g. ``{"eo:cloud_cover": {"lt": 60}}``.
    items
        Items to use instead of searching ``catalog``.
    gdal_env
        Extra GDAL options for reading the assets (on top of the preset's).

    Example
    -------
    >>> ds = open_stac("ZAF", 2020, preset="planetary-computer")  # doctest: +SKIP
    """
    import stackstac

    yrs = check_years(years, FIRST_YEAR, pd.Timestamp.now().year, "stac")
    gslice = as_slice(region)
    pre = stac_preset(preset) if preset else None
    catalog = catalog or (pre.catalog if pre else None)
    collection = collection or (pre.collection if pre else COLLECTION)
    env = {**(pre.gdal_env if pre else {}), **(gdal_env or {})}
    bbox = gslice.geobox.geographic_extent.boundingbox
    if items is None:
        if catalog is None:
            raise SourceError(
                "source='stac' needs a catalog: a STAC API URL or a static catalog path "
                "(catalog= / --stac-catalog), or a preset (preset= / --stac-preset: "
                f"{', '.join(PRESETS)})"
            )
        items = search_items(
            catalog, (bbox.left, bbox.bottom, bbox.right, bbox.top), yrs, collection=collection, query=query
        )
    by_year: dict[int, list] = {}
    for item in items:
        by_year.setdefault(acquired(item).year, []).append(item)
    absent = [y for y in yrs if not by_year.get(y)]
    if absent:
        raise SourceError(
            f"no STAC scene over {gslice.describe()} in year(s) {absent} "
            f"(catalog {catalog or 'items given'}); pick years with scenes, or check "
            "the collection name and the catalog's coverage"
        )
    sign = _signer(pre)
    prepared = {y: prepare_items(by_year[y], assets, sign=sign) for y in yrs}

    gb = gslice.geobox
    bounds = tuple(gb.boundingbox)  # left, bottom, right, top: on the 30 m lattice already
    rows, cols = gslice.block_chunks(chunks)
    stack_env = None
    if env:
        stack_env = stackstac.DEFAULT_GDAL_ENV.updated(always=dict(env))
    composites = []
    for year in yrs:
        year_items, missions = prepared[year]
        log.info("stac %d: %d scene(s) %s", year, len(year_items), missions)
        # rescale=False: we apply the C2 L2 factors ourselves so every asset is treated alike;
        # all scenes of a year in one chunk along time, so the median is one task per block. An
        # asset a scene lacks (thermal of an L2SR scene) is read as NaN for that scene only.
        stack = stackstac.stack(
            year_items,
            assets=[*BANDS, QA_ASSET],
            epsg=CRS_GRID.epsg,
            resolution=RESOLUTION,
            bounds=bounds,
            snap_bounds=False,
            chunksize=(-1, 1, rows, cols),
            dtype=np.dtype("float64"),
            fill_value=np.nan,
            rescale=False,
            xy_coords="center",
            properties=False,
            band_coords=False,
            **({"gdal_env": stack_env} if stack_env else {}),
        )
        if stack.sizes["x"] != gb.shape.x or stack.sizes["y"] != gb.shape.y:
            raise SourceError(f"stackstac returned {stack.sizes} for a {gb.shape} slice")
        clear = qa_clear(stack.sel(band=QA_ASSET), qa_bits)
        bands = [clear_median(dn_to_ours(stack.sel(band=b).where(clear), b)) for b in BANDS]
        composites.append(xr.concat(bands, dim="band", coords="minimal", compat="override"))
    cube = xr.concat(composites, dim="year", coords="minimal", compat="override")
    dn = cube.transpose("year", "band", "y", "x").data
    dn = dn.rechunk((1, 1, rows, cols)).map_blocks(encode_dn, dtype=np.int16)
    return landsat_dataset(
        dn,
        gslice,
        yrs,
        "stac",
        attrs={
            "stac_catalog": str(catalog or "items"),
            "stac_collection": collection,
            **({"stac_preset": pre.name} if pre else {}),
        },
        decode=decode,
    )
