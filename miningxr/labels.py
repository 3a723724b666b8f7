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
import threading
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from affine import Affine
from rasterio import features

from .grid import _X0, _Y1, CRS_GRID, RESOLUTION, GridSlice

log = logging.getLogger("miningxr")

REQUIRED_COLUMNS = ("ISO3_CODE", "COUNTRY_NAME", "AREA")


class LabelError(ValueError):
    """A polygon file or selection that cannot be used as labels."""


def read_polygons(path: str | os.PathLike | Any, *, country: str | None = None,
                  layer: str | None = None, require_columns: bool = True):
    """Read a mining-polygons GeoPackage into the grid CRS, checked and repaired.

    Parameters
    ----------
    path
        A GeoPackage (or any file pyogrio reads), or a GeoDataFrame already in memory.
    country
        Keep only polygons whose ``ISO3_CODE`` is this code.
    layer
        The layer to read; by default the only polygon layer, or ``mining_polygons``.

    Returns
    -------
    geopandas.GeoDataFrame
        In EPSG:6933, with ``attrs["name"]`` and ``attrs["checksum"]`` (sha256 of the file).
    """
    import geopandas as gpd
    import pyogrio

    if isinstance(path, gpd.GeoDataFrame):
        gdf = path.copy()
        name, checksum = gdf.attrs.get("name", "<memory>"), gdf.attrs.get("checksum") or _frame_checksum(gdf)
    else:
        path = Path(path)
        if not path.exists():
            raise LabelError(f"polygon file {path} does not exist")
        try:
            layers = pyogrio.list_layers(path)
        except Exception as e:  # pyogrio raises DataSourceError and friends
            raise LabelError(f"{path} is not a readable vector file ({e})") from e
        names = [str(n) for n, _ in layers]
        if layer is None:
            polys = [str(n) for n, t in layers if t and "polygon" in str(t).lower()]
            if "mining_polygons" in names:
                layer = "mining_polygons"
            elif len(polys) == 1:
                layer = polys[0]
            elif len(names) == 1:
                layer = names[0]
            else:
                raise LabelError(f"{path} has layers {names}; say which with layer=... (--layer)")
        elif layer not in names:
            raise LabelError(f"{path} has no layer {layer!r}; its layers are {names}")
        gdf = gpd.read_file(path, layer=layer)
        name, checksum = path.name, _file_checksum(path)

    if require_columns:
        missing = [c for c in REQUIRED_COLUMNS if c not in gdf.columns]
        if missing:
            raise LabelError(f"polygons lack column(s) {missing} of the mining-polygons schema "
                             f"{list(REQUIRED_COLUMNS)}; found {[c for c in gdf.columns if c != 'geometry']}")
    if gdf.crs is None:
        raise LabelError("the polygons have no CRS; set one (e.g. EPSG:4326) in the file or with .set_crs()")
    gdf = gdf.reset_index(drop=True)
    gdf["row_id"] = gdf.index
    empty = gdf.geometry.isna() | gdf.geometry.is_empty
    if empty.any():
        log.warning("dropping %d polygon(s) with empty geometry: row id(s) %s", int(empty.sum()),
                    list(gdf.row_id[empty])[:20])
        gdf = gdf[~empty]
    kinds = gdf.geom_type
    bad = ~kinds.isin(["Polygon", "MultiPolygon"])
    if bad.any():
        raise LabelError(f"{int(bad.sum())} geometr(y/ies) are not polygons ({sorted(set(kinds[bad]))}) at "
                         f"row id(s) {list(gdf.row_id[bad])[:20]}; mining labels must be (multi)polygons")
    invalid = ~gdf.geometry.is_valid
    if invalid.any():
        log.warning("repairing %d invalid polygon(s) with make_valid: row id(s) %s",
                    int(invalid.sum()), list(gdf.row_id[invalid])[:20])
        fixed = gdf.geometry[invalid].make_valid()
        # make_valid can return collections with lines; keep the polygonal part
        gdf.loc[invalid, "geometry"] = fixed.apply(_polygonal)
        gdf = gdf[~(gdf.geometry.isna() | gdf.geometry.is_empty)]
    if country is not None:
        code = country.strip().upper()
        if "ISO3_CODE" not in gdf.columns:
            raise LabelError("cannot select a country: the polygons have no ISO3_CODE column")
        sel = gdf[gdf["ISO3_CODE"] == code]
        if sel.empty:
            codes = sorted(set(gdf["ISO3_CODE"].dropna()))
            raise LabelError(f"no polygon has ISO3_CODE {code!r}; codes present: {codes[:30]}")
        gdf = sel
    if gdf.empty:
        raise LabelError("the polygon selection is empty")
    gdf = gdf.to_crs(CRS_GRID.to_wkt())
    gdf.attrs.update(name=name, checksum=checksum)
    return gdf


def _polygonal(geom):
    from shapely.geometry import MultiPolygon, Polygon

    if geom is None or isinstance(geom, (Polygon, MultiPolygon)):
        return geom
    parts = [g for g in getattr(geom, "geoms", []) if isinstance(g, (Polygon, MultiPolygon))]
    if not parts:
        return None
    from shapely.ops import unary_union

    return unary_union(parts)


def _file_checksum(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _frame_checksum(gdf) -> str:
    return hashlib.sha256(b"".join(gdf.geometry.to_wkb().values)).hexdigest()


# rasterio silences its own NotGeoreferencedWarning for the in-memory raster it burns into with
# ``warnings.catch_warnings``, which is not thread-safe: two Dask threads rasterizing at once
# leak the warning to the user. ``rasterize`` holds the GIL throughout, so taking turns costs no
# parallelism.
_RASTERIZE_LOCK = threading.Lock()


def burn_block(shapes, row0: int, col0: int, shape: tuple[int, int], *, dtype=np.uint8,
               all_touched: bool = False) -> np.ndarray:
    """Rasterize ``(geometry, value)`` pairs in grid CRS into the block whose top-left pixel is
    ``(row0, col0)`` on the global grid."""
    transform = Affine(RESOLUTION, 0, _X0 + col0 * RESOLUTION, 0, -RESOLUTION, _Y1 - row0 * RESOLUTION)
    with _RASTERIZE_LOCK:
        return features.rasterize(shapes, out_shape=shape, transform=transform, fill=0,
                                  all_touched=all_touched, dtype=dtype)


def _burn(parts: np.ndarray, row0: int, col0: int, shape: tuple[int, int], all_touched: bool,
          values: bool) -> np.ndarray:
    """Rasterize the polygons that intersect one block (given as WKB) into it."""
    import shapely

    wkbs, vals = parts.item()
    dtype = np.int32 if values else np.uint8
    if not wkbs:
        return np.zeros(shape, dtype)
    geoms = shapely.from_wkb(np.asarray(wkbs, dtype=object))
    return burn_block(zip(geoms, vals), row0, col0, shape, dtype=dtype, all_touched=all_touched)


def rasterize_blocks(gslice: GridSlice, polygons, row_chunks: tuple[int, ...], col_chunks: tuple[int, ...], *,
                     all_touched: bool = False, values: np.ndarray | None = None) -> da.Array:
    """A lazy ``(y, x)`` raster of polygons: one ``map_blocks`` task per block.

    The spatial index picks, on the client, only the polygons that touch each block, so each
    task carries and burns just those.
    """
    import shapely

    geoms = np.asarray(shapely.to_wkb(polygons.geometry.values), dtype=object)
    vals = np.ones(len(polygons), np.int64) if values is None else np.asarray(values)
    tree = polygons.sindex
    redges = np.concatenate([[0], np.cumsum(row_chunks)]) + gslice.row0
    cedges = np.concatenate([[0], np.cumsum(col_chunks)]) + gslice.col0
    parts = np.empty((len(row_chunks), len(col_chunks)), dtype=object)
    from shapely.geometry import box

    for i in range(len(row_chunks)):
        for j in range(len(col_chunks)):
            x0, x1 = _X0 + cedges[j] * RESOLUTION, _X0 + cedges[j + 1] * RESOLUTION
            y1, y0 = _Y1 - redges[i] * RESOLUTION, _Y1 - redges[i + 1] * RESOLUTION
            hit = tree.query(box(x0, y0, x1, y1), predicate="intersects")
            hit.sort()
            parts[i, j] = (list(geoms[hit]), list(vals[hit]))
    index = da.from_array(parts, chunks=1, name=False)

    def block(p: np.ndarray, block_info=None) -> np.ndarray:
        i, j = block_info[0]["chunk-location"]
        shape = (row_chunks[i], col_chunks[j])
        return _burn(p, int(redges[i]), int(cedges[j]), shape, all_touched, values is not None)

    return da.map_blocks(block, index, chunks=(row_chunks, col_chunks),
                         dtype=np.int32 if values is not None else np.uint8, meta=np.empty((0, 0)))


def mining_mask(obj: xr.Dataset | xr.DataArray, polygons: Any, *, all_touched: bool = False,
                country: str | None = None) -> xr.DataArray:
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
    gdf = polygons if hasattr(polygons, "sindex") and polygons.crs == CRS_GRID else \
        read_polygons(polygons, country=country)
    gslice = GridSlice.of_coords(obj)
    ref = obj["landsat"] if isinstance(obj, xr.Dataset) and "landsat" in obj else obj
    chunks = ref.chunksizes if ref.chunks is not None else {}
    row_chunks = tuple(chunks.get("y", (gslice.shape[0],)))
    col_chunks = tuple(chunks.get("x", (gslice.shape[1],)))
    data = rasterize_blocks(gslice, gdf, row_chunks, col_chunks, all_touched=all_touched)
    coords = {k: obj.coords[k] for k in ("y", "x")}
    if "spatial_ref" in obj.coords:
        coords["spatial_ref"] = obj.coords["spatial_ref"]
    return xr.DataArray(data, dims=("y", "x"), coords=coords, name="mining", attrs={
        "polygons": gdf.attrs.get("name", "<memory>"), "polygons_sha256": gdf.attrs.get("checksum", ""),
        "all_touched": int(all_touched), "grid_mapping": "spatial_ref", "flag_values": [0, 1],
        "flag_meanings": "other mining"})


def write_mask(store: str | os.PathLike, polygons: Any, *, region: Any = None, all_touched: bool = False,
               country: str | None = None, scheduler: str | None = None, progress: bool = True,
               force: bool = False):
    """Rasterize polygons into the store's ``mining`` variable for every ingested shard.

    Each shard is one Dask task tracked in the catalog, as for ingest. Returns an
    :class:`~miningxr.ingest.IngestReport`.
    """
    import time

    import zarr
    from .ingest import IngestReport, run_yearless_shards
    from .store import Catalog, open_store, store_layout, write_block

    t0 = time.perf_counter()
    layout = store_layout(store)
    gdf = read_polygons(polygons, country=country)
    ds = open_store(store, region=region, chunks=layout.shard)
    with Catalog(store) as cat:
        done = cat.shards("landsat", state="done")
    gslice = GridSlice.of_coords(ds)
    ids = sorted({(r, c) for r, c in zip(done.shard_row, done.shard_col)
                  if gslice.row0 <= r * layout.shard < gslice.row1
                  and gslice.col0 <= c * layout.shard < gslice.col1})
    mask = mining_mask(ds, gdf, all_touched=all_touched).data
    root = zarr.open_group(str(store), mode="r+")
    previous = root["mining"].attrs.get("polygons_sha256")
    new_file = previous not in (None, gdf.attrs["checksum"])
    root["mining"].attrs.update(polygons=gdf.attrs["name"], polygons_sha256=gdf.attrs["checksum"],
                                all_touched=int(all_touched))
    report = IngestReport(store=str(store), planned=len(ids))
    blocks = mask.to_delayed()
    rows = list(np.cumsum([0, *mask.chunks[0]]) + gslice.row0)
    cols = list(np.cumsum([0, *mask.chunks[1]]) + gslice.col0)

    def task(key):
        import dask

        _, r, c = key
        i, j = rows.index(r * layout.shard), cols.index(c * layout.shard)
        index = (slice(rows[i], rows[i + 1]), slice(cols[j], cols[j + 1]))
        return dask.delayed(write_block, pure=False)(str(store), "mining", index, blocks[i, j])

    run_yearless_shards(str(store), "mining", ids, gdf.attrs["name"], task, report, desc="rasterize masks",
                        scheduler=scheduler, progress=progress, force=force or new_file)
    report.seconds = time.perf_counter() - t0
    return report

