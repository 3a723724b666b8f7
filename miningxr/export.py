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
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from rasterio import features
from shapely.geometry import shape

from .encoding import MASK_ATTRS
from .errors import StoreError
from .grid import CRS_GRID, PIXEL_AREA_KM2, RESOLUTION, GridSlice
from .labels import valid_polygons
from .store import check_output_folder

#: the mask GeoTIFF's nodata: pixels without a prediction (no imagery) are neither 0 nor 1
MASK_NODATA = 255


def _with_crs(da_: xr.DataArray) -> xr.DataArray:
    return da_.rio.write_crs(CRS_GRID.to_wkt()).rio.set_spatial_dims(x_dim="x", y_dim="y")


def to_cog(da_: xr.DataArray, path: str | os.PathLike, *, nodata: Any = None) -> Path:
    """Write a (y, x) DataArray as a Cloud-Optimized GeoTIFF with its CRS and transform."""
    out = _with_crs(da_.compute())
    if nodata is not None:
        out = out.rio.write_nodata(nodata)
    out.rio.to_raster(path, driver="COG", compress="DEFLATE")
    return Path(path)


def mine_polygons_from(prob: xr.DataArray, threshold: float = 0.5, min_pixels: int = 4) -> gpd.GeoDataFrame:
    """Polygons of predicted mining (probability >= threshold), with area in km2 (EPSG:4326)."""
    mask = (prob.fillna(0).values >= threshold).astype(np.uint8)
    transform = _with_crs(prob).rio.transform()
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
    prob: xr.DataArray, out_dir: str | os.PathLike, *, threshold: float = 0.5, min_pixels: int = 4
) -> dict[str, Path]:
    """Write probability and mask COGs and a GeoPackage of predicted mine polygons.

    Parameters
    ----------
    prob
        ``mining_probability`` from :func:`~miningxr.predict` (or read from a prediction store).
    out_dir
        Folder for ``mining_probability.tif``, ``mining_mask.tif`` and ``mining_predicted.gpkg``.
    threshold
        Probability at or above which a pixel counts as mining.
    min_pixels
        Smaller predicted patches are left out of the GeoPackage.

    Returns
    -------
    dict
        Paths by kind: ``probability``, ``mask``, ``polygons``.
    """
    out = Path(out_dir)
    check_output_folder(out, holds="the GeoTIFFs and the GeoPackage")
    prob = prob.compute()
    if not np.isfinite(prob.values).any():
        raise StoreError(
            f"the predictions hold no value over {GridSlice.of_coords(prob).describe()}: "
            "nothing to export (predictions of another region or year?). Predict this "
            "region first, or export the region the predictions cover"
        )
    out.mkdir(parents=True, exist_ok=True)
    mask = xr.where(prob.isnull(), MASK_NODATA, prob >= threshold).astype(np.uint8).rename("mining")
    mask.attrs.update(MASK_ATTRS)
    paths = {
        "probability": to_cog(prob.astype(np.float32), out / "mining_probability.tif", nodata=np.nan),
        "mask": to_cog(mask, out / "mining_mask.tif", nodata=MASK_NODATA),
    }
    gdf = mine_polygons_from(prob, threshold, min_pixels)
    path = out / "mining_predicted.gpkg"
    if path.exists():
        path.unlink()
    gdf.to_file(path, layer="mining_predicted", driver="GPKG")
    paths["polygons"] = path
    return paths
