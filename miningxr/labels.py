"""Mining polygons: read, check, select, and rasterize them onto the global grid per block.

The polygons follow the global mining polygons v2 GeoPackage: ``ISO3_CODE``, ``COUNTRY_NAME``,
``AREA`` (km2) and a polygon geometry, usually in EPSG:4326. Any CRS is accepted and reprojected
to the grid's; invalid geometries are repaired and reported by row id.

Example
-------
>>> import miningxr
>>> ds = miningxr.open_landsat((29.0, -26.0, 29.1, -25.9), 2020)  # doctest: +SKIP
>>> mask = miningxr.mining_mask(ds, "mines.gpkg")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask.array as da
import geopandas as gpd
import numpy as np
import pyogrio
import shapely
import xarray as xr
import zarr
from dask.delayed import Delayed
from shapely.geometry import MultiPolygon, Polygon

from .catalog import NO_YEAR, Catalog, ShardKey
from .encoding import MASK_ATTRS
from .errors import LabelError
from .grid import CRS_GRID, GridSlice, as_slice, country_table, pixel_corner, sparse_cover
from .paths import Where, as_location, local_path
from .shards import IngestReport, MakeTask, run_shards, shard_writer
from .store import open_store, store_layout

if TYPE_CHECKING:
    pass

log = logging.getLogger("miningxr")

#: the mining-polygons schema (global mining polygons v1/v2); what a file lacks is derived
SCHEMA_COLUMNS = ("ISO3_CODE", "COUNTRY_NAME", "AREA")
#: how far (m) a polygon outside every outline of the coarse country table may lie and still
#: take the nearest country (coastal mines, tailings in estuaries)
COUNTRY_SNAP_M = 50_000.0


def parse_columns(items: Any) -> dict[str, str]:
    """``["ISO3_CODE=iso3", "AREA=area_km2"]`` or a mapping -> ``{ours: theirs}``, checked."""
    if items is None:
        return {}
    pairs: dict[str, str] = {}
    if isinstance(items, dict):
        pairs = {str(k): str(v) for k, v in items.items()}
    else:
        for text in items:
            ours, sep, theirs = str(text).partition("=")
            if not sep or not ours.strip() or not theirs.strip():
                raise LabelError(f"column mapping {text!r} is not OURS=THEIRS, e.g. ISO3_CODE=iso_a3")
            pairs[ours.strip()] = theirs.strip()
    unknown = [k for k in pairs if k not in SCHEMA_COLUMNS]
    if unknown:
        raise LabelError(
            f"column mapping names {unknown}, which are not in our schema "
            f"{list(SCHEMA_COLUMNS)}; map OURS=THEIRS, e.g. ISO3_CODE=iso_a3"
        )
    return pairs


def check_polygon_file(path: str | os.PathLike, layer: str | None = None) -> str:
    """Check that ``path`` is a readable vector file and pick its layer; return the layer name.

    Cheap (no feature is read): commands call it before any work starts.
    """
    path = local_path(path, what="the polygon file")
    if not path.exists():
        raise LabelError(
            f"polygon file {path} does not exist; give the path of a GeoPackage or "
            "shapefile of mining polygons (--polygons)"
        )
    try:
        layers = pyogrio.list_layers(path)
    except Exception as e:  # pyogrio raises DataSourceError and friends
        raise LabelError(f"{path} is not a readable vector file ({e})") from e
    names = [str(n) for n, _ in layers]
    if layer is None:
        polys = [str(n) for n, t in layers if t and "polygon" in str(t).lower()]
        if "mining_polygons" in names:
            return "mining_polygons"
        if len(polys) == 1:
            return polys[0]
        if len(names) == 1:
            return names[0]
        raise LabelError(f"{path} has layers {names}; say which with layer=... (--layer NAME)")
    if layer not in names:
        raise LabelError(f"{path} has no layer {layer!r}; its layers are {names} (--layer NAME)")
    return layer


def read_polygons(
    path: str | os.PathLike | Any,
    *,
    country: str | None = None,
    layer: str | None = None,
    columns: Any = None,
    require_columns: bool = True,
):
    """Read a mining-polygons file into the grid CRS, checked, repaired and completed.

    Real files vary, and each is accepted: the global mining polygons v1/v2 GeoPackages
    (``ISO3_CODE``, ``COUNTRY_NAME``, ``AREA`` km2, EPSG:4326); combined sets without ``AREA``;
    shapefiles with no country column in a projected CRS (Tang & Werner); GeoPackages with
    several layers. What a file lacks is derived: ``AREA`` in km2 on the equal-area grid,
    ``ISO3_CODE``/``COUNTRY_NAME`` by spatial join with the built-in country table.

    Parameters
    ----------
    path
        A GeoPackage, shapefile or any file pyogrio reads, or a GeoDataFrame already in memory.
    country
        Keep only polygons whose ``ISO3_CODE`` is this code.
    layer
        The layer to read; by default ``mining_polygons``, or the only polygon layer.
    columns
        The file's names for our columns: ``{"ISO3_CODE": "iso_a3", "AREA": "area_km2"}`` or
        ``["ISO3_CODE=iso_a3"]`` (``--columns``).
    require_columns
        Derive the country columns by spatial join when absent; False leaves them out (faster
        where no country is needed).

    Returns
    -------
    geopandas.GeoDataFrame
        In EPSG:6933 with ``ISO3_CODE``, ``COUNTRY_NAME`` and ``AREA``; ``attrs`` hold ``name``,
        ``checksum`` (sha256 of the file) and ``derived`` (the columns computed here).
    """
    mapping = parse_columns(columns)
    if isinstance(path, gpd.GeoDataFrame):
        gdf = path.copy()
        name, checksum = gdf.attrs.get("name", "<memory>"), gdf.attrs.get("checksum") or _frame_checksum(gdf)
    else:
        path = local_path(path, what="the polygon file")
        layer = check_polygon_file(path, layer)
        gdf = gpd.read_file(path, layer=layer)
        name, checksum = path.name, _file_checksum(path)
    absent = [theirs for theirs in mapping.values() if theirs not in gdf.columns]
    if absent:
        raise LabelError(
            f"the column mapping names {absent}, which the polygons lack; their "
            f"columns are {[c for c in gdf.columns if c != gdf.geometry.name]}"
        )
    gdf = gdf.rename(columns={theirs: ours for ours, theirs in mapping.items()})
    if gdf.crs is None:
        raise LabelError("the polygons have no CRS; set one (e.g. EPSG:4326) in the file or with .set_crs()")
    gdf = gdf.reset_index(drop=True)
    gdf["row_id"] = gdf.index
    empty = gdf.geometry.isna() | gdf.geometry.is_empty
    if empty.any():
        log.warning(
            "dropping %d polygon(s) with empty geometry: row id(s) %s",
            int(empty.sum()),
            gdf.row_id[empty].tolist()[:20],
        )
        gdf = gdf[~empty]
    kinds = gdf.geom_type
    bad = ~kinds.isin(["Polygon", "MultiPolygon"])
    if bad.any():
        raise LabelError(
            f"{int(bad.sum())} geometr(y/ies) are not polygons ({sorted(set(kinds[bad]))}) at "
            f"row id(s) {gdf.row_id[bad].tolist()[:20]}; mining labels must be (multi)polygons"
        )
    invalid = ~gdf.geometry.is_valid
    if invalid.any():
        log.warning(
            "repairing %d invalid polygon(s) with make_valid: row id(s) %s",
            int(invalid.sum()),
            gdf.row_id[invalid].tolist()[:20],
        )
        gdf["geometry"] = valid_polygons(gdf.geometry)
        gdf = gdf[~(gdf.geometry.isna() | gdf.geometry.is_empty)]
    gdf = gdf.to_crs(CRS_GRID.to_wkt())
    derived = []
    if "AREA" not in gdf.columns:
        gdf["AREA"] = gdf.geometry.area / 1e6  # km2 on the equal-area grid
        derived.append("AREA")
    if "ISO3_CODE" not in gdf.columns and (require_columns or country is not None) and not gdf.empty:
        gdf = _join_countries(gdf)
        derived += ["ISO3_CODE", "COUNTRY_NAME"]
    elif "ISO3_CODE" in gdf.columns and "COUNTRY_NAME" not in gdf.columns:
        table = country_table()
        gdf["COUNTRY_NAME"] = gdf["ISO3_CODE"].map(
            dict(zip(table["ISO3_CODE"], table["COUNTRY_NAME"], strict=True))
        )
        derived.append("COUNTRY_NAME")
    if derived:
        log.info("%s: derived column(s) %s", name, derived)
    if country is not None:
        code = country.strip().upper()
        sel = gdf[gdf["ISO3_CODE"] == code]
        if sel.empty:
            codes = sorted(set(gdf["ISO3_CODE"].dropna()))
            raise LabelError(f"no polygon has ISO3_CODE {code!r}; codes present: {codes[:30]}")
        gdf = sel
    if gdf.empty:
        raise LabelError("the polygon selection is empty")
    gdf.attrs.update(name=name, checksum=checksum, derived=derived)
    return gdf


def _join_countries(gdf):
    """``ISO3_CODE``/``COUNTRY_NAME`` of each polygon from the built-in country table: the country
    holding its representative point, else the nearest within :data:`COUNTRY_SNAP_M`."""
    table = country_table().to_crs(gdf.crs)[["ISO3_CODE", "COUNTRY_NAME", "geometry"]]
    points = gpd.GeoDataFrame(geometry=gdf.geometry.representative_point(), crs=gdf.crs)
    hit = gpd.sjoin(points, table, how="left", predicate="within")
    hit = hit[~hit.index.duplicated(keep="first")]
    lost = hit["ISO3_CODE"].isna()
    if lost.any():
        near = gpd.sjoin_nearest(points[lost.to_numpy()], table, how="left", max_distance=COUNTRY_SNAP_M)
        near = near[~near.index.duplicated(keep="first")]
        hit.loc[near.index, ["ISO3_CODE", "COUNTRY_NAME"]] = near[["ISO3_CODE", "COUNTRY_NAME"]].to_numpy()
    out = gdf.copy()
    out["ISO3_CODE"] = hit["ISO3_CODE"].to_numpy()
    out["COUNTRY_NAME"] = hit["COUNTRY_NAME"].to_numpy()
    n = int(out["ISO3_CODE"].isna().sum())
    if n:
        log.warning(
            "%d polygon(s) lie in no country of the built-in table (nor within %.0f km of one); "
            "their ISO3_CODE is empty",
            n,
            COUNTRY_SNAP_M / 1e3,
        )
    return out


def valid_polygons(geoms):
    """A GeoSeries with every geometry valid: invalid ones are repaired with ``make_valid``,
    keeping the polygonal part (make_valid may return a collection with lines or points)."""

    def fix(g: Any) -> Any:
        if g is None or g.is_valid:
            return g
        g = shapely.make_valid(g)
        if isinstance(g, (Polygon, MultiPolygon)):
            return g
        parts = [p for p in getattr(g, "geoms", []) if isinstance(p, (Polygon, MultiPolygon))]
        return shapely.union_all(parts) if parts else None

    return geoms.apply(fix)


def _file_checksum(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _frame_checksum(gdf) -> str:
    return hashlib.sha256(b"".join(gdf.geometry.to_wkb().values)).hexdigest()


def _burn(
    parts: np.ndarray, row0: int, col0: int, shape: tuple[int, int], all_touched: bool, values: bool
) -> np.ndarray:
    """Rasterize the polygons that intersect one block (given as WKB) into it."""
    wkbs, vals = parts.item()
    dtype = np.int32 if values else np.uint8
    if not wkbs:
        return np.zeros(shape, dtype)
    geoms = shapely.from_wkb(np.asarray(wkbs, dtype=object))
    block = GridSlice(row0, row0 + shape[0], col0, col0 + shape[1])
    return block.rasterize(zip(geoms, vals, strict=True), dtype=dtype, all_touched=all_touched)


def rasterize_blocks(
    gslice: GridSlice,
    polygons,
    row_chunks: tuple[int, ...],
    col_chunks: tuple[int, ...],
    *,
    all_touched: bool = False,
    values: np.ndarray | None = None,
) -> da.Array:
    """A lazy ``(y, x)`` raster of polygons: one ``map_blocks`` task per block.

    The spatial index picks, on the client, only the polygons that touch each block, so each
    task carries and burns just those.
    """
    geoms = np.asarray(shapely.to_wkb(polygons.geometry.values), dtype=object)
    vals = np.ones(len(polygons), np.int64) if values is None else np.asarray(values)
    tree = polygons.sindex
    redges = np.concatenate([[0], np.cumsum(row_chunks)]) + gslice.row0
    cedges = np.concatenate([[0], np.cumsum(col_chunks)]) + gslice.col0
    parts = np.empty((len(row_chunks), len(col_chunks)), dtype=object)
    for i in range(len(row_chunks)):
        for j in range(len(col_chunks)):
            x0, y1 = pixel_corner(redges[i], cedges[j])
            x1, y0 = pixel_corner(redges[i + 1], cedges[j + 1])
            hit = tree.query(shapely.box(x0, y0, x1, y1), predicate="intersects")
            hit.sort()
            parts[i, j] = (list(geoms[hit]), list(vals[hit]))
    index = da.from_array(parts, chunks=1, name=False)

    def block(p: np.ndarray, block_info=None) -> np.ndarray:
        i, j = block_info[0]["chunk-location"]
        shape = (row_chunks[i], col_chunks[j])
        return _burn(p, int(redges[i]), int(cedges[j]), shape, all_touched, values is not None)

    return da.map_blocks(
        block,
        index,
        chunks=(row_chunks, col_chunks),
        dtype=np.int32 if values is not None else np.uint8,
        meta=np.empty((0, 0)),
    )


def mining_mask(
    obj: xr.Dataset | xr.DataArray, polygons: Any, *, all_touched: bool = False, country: str | None = None
) -> xr.DataArray:
    """Rasterize mining polygons onto the grid of ``obj``, lazily, block by block.

    Parameters
    ----------
    obj
        Anything on the global grid with ``x``/``y`` coordinates (a cube from
        :func:`~miningxr.open_landsat` or :func:`~miningxr.open_store`); its chunks become
        the mask's.
    polygons
        A polygon file path or GeoDataFrame (see :func:`read_polygons`).
    all_touched
        Burn every pixel a polygon touches, not only those whose centre it covers.

    Returns
    -------
    xarray.DataArray
        ``mining`` uint8 ``(y, x)`` with obj's coordinates and CRS; attrs name the polygon file
        and its checksum.

    Example
    -------
    >>> mask = mining_mask(ds, "mines.gpkg")  # doctest: +SKIP
    >>> float(mask.mean())  # doctest: +SKIP
    0.07
    """
    gdf = (
        polygons
        if hasattr(polygons, "sindex") and polygons.crs == CRS_GRID
        else read_polygons(polygons, country=country)
    )
    gslice = GridSlice.of_coords(obj)
    ref = obj["landsat"] if isinstance(obj, xr.Dataset) and "landsat" in obj else obj
    chunks = ref.chunksizes if ref.chunks is not None else {}
    row_chunks = tuple(chunks.get("y", (gslice.shape[0],)))
    col_chunks = tuple(chunks.get("x", (gslice.shape[1],)))
    data = rasterize_blocks(gslice, gdf, row_chunks, col_chunks, all_touched=all_touched)
    coords = {k: obj.coords[k] for k in ("y", "x")}
    if "spatial_ref" in obj.coords:
        coords["spatial_ref"] = obj.coords["spatial_ref"]
    return xr.DataArray(
        data,
        dims=("y", "x"),
        coords=coords,
        name="mining",
        attrs={
            **MASK_ATTRS,
            "polygons": gdf.attrs.get("name", "<memory>"),
            "polygons_sha256": gdf.attrs.get("checksum", ""),
            "all_touched": int(all_touched),
            "grid_mapping": "spatial_ref",
        },
    )


def write_mask(
    store: Where,
    polygons: Any,
    *,
    region: Any = None,
    all_touched: bool = False,
    country: str | None = None,
    layer: str | None = None,
    columns: Any = None,
    scheduler: str | None = None,
    progress: bool = True,
    force: bool = False,
) -> IngestReport:
    """Rasterize polygons into the store's ``mining`` variable for every ingested shard.

    Each shard is one Dask task tracked in the catalog, as for ingest; shards already done are
    skipped unless ``force`` or the polygons changed. ``region`` limits it to the shards that
    region touches; ``layer`` and ``columns`` are as for :func:`read_polygons`.
    """
    t0 = time.perf_counter()
    layout = store_layout(store)
    gdf = read_polygons(polygons, country=country, layer=layer, columns=columns)
    with Catalog(store, readonly=True) as cat:
        done = cat.shards("landsat", state="done")
    ids = sorted({(int(r), int(c)) for r, c in zip(done.shard_row, done.shard_col, strict=True)})
    if region is not None:
        wanted = set(as_slice(region, layout.shard).shard_ids(layout.shard))
        ids = [i for i in ids if i in wanted]
    report = IngestReport(store=str(store), planned=len(ids))
    if not ids:
        raise LabelError(
            f"{store} holds no ingested shard{' in that region' if region is not None else ''} "
            "to rasterize masks into; ingest imagery there first (`miningxr ingest`)"
        )
    # rectangle by rectangle of whole shards holding imagery: never the empty space between them
    writers: dict[tuple[int, int], MakeTask] = {}
    for rect in sparse_cover(ids, layout.shard):
        ds = open_store(store, region=rect, chunks=layout.shard)
        mask = mining_mask(ds, gdf, all_touched=all_touched).data
        write = shard_writer(store, "mining", mask, rect, layout.shard)
        writers.update(dict.fromkeys(rect.shard_ids(layout.shard), write))
    root = zarr.open_group(as_location(store).zarr_store(), mode="r+")
    previous = root["mining"].attrs.get("polygons_sha256")
    new_file = previous not in (None, gdf.attrs["checksum"])
    root["mining"].attrs.update(
        polygons=gdf.attrs["name"], polygons_sha256=gdf.attrs["checksum"], all_touched=int(all_touched)
    )

    def task(key: ShardKey) -> Delayed:
        return writers[key[1:]](key)

    run_shards(
        store,
        "mining",
        [(NO_YEAR, r, c) for r, c in ids],
        gdf.attrs["name"],
        task,
        report,
        desc="rasterize masks",
        scheduler=scheduler,
        progress=progress,
        force=force or new_file,
    )
    report.seconds = time.perf_counter() - t0
    return report
