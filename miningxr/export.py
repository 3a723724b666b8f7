"""Exports that GIS tools open: GeoTIFF/COG rasters and a GeoPackage of predicted mines.

Example
-------
>>> import miningxr
>>> miningxr.export(prob, "out/", threshold=0.5)  # doctest: +SKIP
{'probability': PosixPath('out/mining_probability.tif'), 'mask': ..., 'polygons': ...}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import rasterio.shutil
import xarray as xr
from rasterio import features
from shapely.geometry import shape

from .encoding import MASK_ATTRS
from .errors import StoreError
from .grid import CRS_GRID, PIXEL_AREA_KM2, RESOLUTION, GridSlice
from .labels import valid_polygons
from .paths import Where, staged
from .predict import open_predictions
from .store import check_output_folder, open_regions

#: the mask GeoTIFF's nodata: pixels without a prediction (no imagery) are neither 0 nor 1
MASK_NODATA = 255


def to_cog(
    da_: xr.DataArray,
    path: str | os.PathLike,
    *,
    nodata: Any = None,
    colormap: dict[int, tuple[int, int, int, int]] | None = None,
) -> Path:
    """Write a (y, x) DataArray on the grid as a Cloud-Optimized GeoTIFF with its CRS and transform,
    and a colour table (value -> RGBA) if given.

    Written with rasterio directly: rioxarray's ``to_raster`` measured 400 MB more for a
    4096 x 4096 float32 layer (it copies the array on its way to GDAL), this 140 MB.
    """
    values = np.asarray(da_.compute().values)
    height, width = values.shape
    tags = {k: str(v) for k, v in da_.attrs.items() if isinstance(v, (str, int, float))}
    profile: dict[str, Any] = {
        "width": width,
        "height": height,
        "count": 1,
        "dtype": values.dtype,
        "crs": CRS_GRID.to_wkt(),
        "transform": GridSlice.of_coords(da_).geobox.affine,
        "nodata": nodata,
    }
    with rasterio.Env(GDAL_CACHEMAX=COG_CACHE_MB):
        if colormap is None:
            with rasterio.open(path, "w", driver="COG", compress="DEFLATE", **profile) as dst:
                dst.write(values, 1)
                dst.update_tags(**tags)
            return Path(path)
        # the COG driver writes no colour table of its own; GDAL keeps a GeoTIFF's when copying
        with rasterio.MemoryFile() as mem:
            with mem.open(driver="GTiff", **profile) as tmp:
                tmp.write(values, 1)
                tmp.write_colormap(1, colormap)
                tmp.update_tags(**tags)
            with mem.open() as src:
                rasterio.shutil.copy(src, path, driver="COG", compress="DEFLATE")
    return Path(path)


#: GDAL block cache (MB) while writing a COG
COG_CACHE_MB = 64


def mine_polygons_from(prob: xr.DataArray, threshold: float = 0.5, min_pixels: int = 4) -> gpd.GeoDataFrame:
    """Polygons of predicted mining (probability >= threshold), with area in km2 (EPSG:4326).

    Patches, and holes in them, of fewer than ``min_pixels`` pixels are sieved away first (GDAL's
    sieve, 4-connected): a noisy map of millions of single pixels then costs what its mines cost
    (measured on 4096x4096 px: 864,000 shapes and 1.2 GB before, 11,000 and a few MB after).
    """
    mask = (prob.values >= threshold).view(np.uint8)  # NaN compares False: no prediction, no mine
    if min_pixels > 1:
        mask = features.sieve(mask, size=min_pixels, connectivity=4)
    transform = GridSlice.of_coords(prob).geobox.affine
    # 4-connected patches: an 8-connected polygonization joins pixels that touch only at a corner
    # into one ring that touches itself ("Ring Self-intersection", invalid in GEOS and GIS tools)
    recs = [
        {"geometry": shape(geom), "pixels": 0}
        for geom, v in features.shapes(mask, mask=mask.astype(bool), transform=transform, connectivity=4)
        if v == 1
    ]
    gdf = gpd.GeoDataFrame(recs, columns=["geometry", "pixels"], geometry="geometry", crs=CRS_GRID.to_wkt())
    gdf["geometry"] = valid_polygons(gdf.geometry)
    # the grid is equal-area: area / pixel area is an exact pixel count
    gdf["pixels"] = np.rint(gdf.area / (RESOLUTION * RESOLUTION)).astype(int)
    gdf = gdf[gdf.pixels >= min_pixels].reset_index(drop=True)
    gdf["AREA"] = gdf.pixels * PIXEL_AREA_KM2
    out = gdf.to_crs("EPSG:4326")
    # reprojection can fold a ring of a few pixels onto itself: check again where it is written
    out["geometry"] = valid_polygons(out.geometry)
    return out


def export(
    prob: xr.DataArray,
    out_dir: Where,
    *,
    threshold: float = 0.5,
    min_pixels: int = 4,
    region: str | None = None,
) -> dict[str, Path]:
    """Write probability and mask COGs and a GeoPackage of predicted mine polygons.

    Parameters
    ----------
    prob
        ``mining_probability`` from :func:`~miningxr.predict` or
        :func:`~miningxr.open_predictions`: ``(y, x)``, or ``(year, y, x)`` for one COG per year.
    out_dir
        Folder for ``mining_probability[_REGION][_YEAR].tif``, ``mining_mask[...].tif`` and
        ``mining_predicted.gpkg`` (with ``year`` and ``region`` columns).
    threshold
        Probability at or above which a pixel counts as mining.
    min_pixels
        Smaller predicted patches are left out of the GeoPackage.
    region
        A name for the region, put in the file names and the GeoPackage.

    Returns
    -------
    dict
        Paths by kind and suffix: ``probability[_REGION][_YEAR]``, ``mask[...]``, ``polygons``.
    """
    return _export([(region, prob)], out_dir, threshold, min_pixels)


def export_store(
    store: Where,
    predictions: Where,
    out_dir: Where,
    *,
    threshold: float = 0.5,
    min_pixels: int = 4,
) -> dict[str, Path]:
    """:func:`export` every region and year of a sparse store that has predictions: one COG per
    region and year, and one GeoPackage of every predicted mine with its region and year."""
    pieces, first_error = [], None
    for node in open_regions(store).children.values():
        ds = node.to_dataset()
        try:
            pieces.append((ds.attrs["region"], open_predictions(predictions, ds)))
        except StoreError as e:  # a region not predicted (yet)
            first_error = first_error or e
    if not pieces and first_error is not None:
        raise first_error
    return _export(pieces, out_dir, threshold, min_pixels)


def _export(
    pieces: list[tuple[str | None, xr.DataArray]],
    out_dir: Where,
    threshold: float,
    min_pixels: int,
) -> dict[str, Any]:
    loc = check_output_folder(out_dir, holds="the GeoTIFFs and the GeoPackage")
    # in object storage: written in a local folder, each file uploaded whole at the end
    with staged(loc) as out:
        paths = _write_layers(pieces, out, threshold, min_pixels)
    if loc.is_url:
        return {k: loc / p.relative_to(out).as_posix() for k, p in paths.items()}
    return paths


def _write_layers(
    pieces: list[tuple[str | None, xr.DataArray]], out: Path, threshold: float, min_pixels: int
) -> dict[str, Path]:
    # one region and year at a time, computed, written and let go: memory holds one layer
    layers = [
        (region, year, prob.sel(year=year) if year is not None and "year" in prob.dims else prob)
        for region, prob in pieces
        for year in ([int(y) for y in prob.year.values] if "year" in prob.dims else [None])
    ]
    paths: dict[str, Path] = {}
    polygons = []
    for region, year, lazy in layers:
        prob = lazy.compute()
        if year is None and "year" in prob.coords and prob.coords["year"].ndim == 0:
            year = int(prob.coords["year"])
        if not np.isfinite(prob.values).any():
            continue  # a region predicted in other years only
        if not paths:
            out.mkdir(parents=True, exist_ok=True)
        suffix = "".join(f"_{part}" for part in (region, year) if part is not None)
        # uint8 from the start (xr.where would build an int64 array of the whole layer first)
        values = (prob.values >= threshold).view(np.uint8).copy()
        values[np.isnan(prob.values)] = MASK_NODATA
        mask = prob.copy(data=values).rename("mining")
        mask.attrs = dict(MASK_ATTRS)
        paths[f"probability{suffix}"] = to_cog(
            prob.astype(np.float32, copy=False), out / f"mining_probability{suffix}.tif", nodata=np.nan
        )
        paths[f"mask{suffix}"] = to_cog(mask, out / f"mining_mask{suffix}.tif", nodata=MASK_NODATA)
        gdf = mine_polygons_from(prob, threshold, min_pixels)
        polygons.append(gdf.assign(year=year if year is not None else -1, region=region or ""))
        del prob, mask, values
    if not paths:
        raise StoreError(
            f"the predictions hold no value over {GridSlice.of_coords(layers[0][2]).describe()}: "
            "nothing to export (predictions of another region or year?). Predict this "
            "region first, or export the region the predictions cover"
        )
    path = out / "mining_predicted.gpkg"
    if path.exists():
        path.unlink()
    pd.concat(polygons, ignore_index=True).to_file(path, layer="mining_predicted", driver="GPKG")
    paths["polygons"] = path
    return paths
