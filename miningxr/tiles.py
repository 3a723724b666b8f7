"""The 64x64 tile index of a store, its spatial train/val/test split, and band statistics.

Tiles sit on the global grid at multiples of the tile size, so they never straddle a chunk.
One Dask pass over the store computes, per tile, the mining fraction, the valid-data fraction
and per-band sums; the split assigns whole blocks of tiles to one split (stratified by mining),
drops tiles next to another split's (a guard band, so neighbours never straddle splits), and the
normalization statistics come from the training tiles' sums.

The index is saved as GeoParquet (tile outlines in EPSG:6933) at ``<store>/_tiles/tiles.parquet``
with its statistics and config in ``tiles.json`` beside it.

Example
-------
>>> import miningxr
>>> index = miningxr.tile_index("s.zarr")  # doctest: +SKIP
>>> index.groupby("split").positive.sum()  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import dask
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import xarray as xr
import zarr

from .config import BANDS, TileConfig
from .errors import TileError, YearError
from .grid import CRS_GRID, RESOLUTION, GridSlice, pixel_corner
from .store import open_store

SPLITS = ("train", "val", "test")
TILES_DIR = "_tiles"


def tile_index(
    store: str | os.PathLike | xr.Dataset,
    *,
    year: int | None = None,
    config: TileConfig | None = None,
    region: Any = None,
    save: bool = True,
) -> gpd.GeoDataFrame:
    """Index every tile of a store's ingested region, split it spatially, compute band stats.

    Parameters
    ----------
    store
        A store path, or a Dataset from :func:`~miningxr.open_store` (then nothing is saved).
    year
        The imagery year the statistics come from (default: the latest ingested).
    config
        Tile size, split block size, guard band, fractions, sampling.

    Returns
    -------
    geopandas.GeoDataFrame
        One row per tile: ``tile_row``/``tile_col`` (global tile indices), ``row0``/``col0``
        (global pixel of its top-left corner), ``mining_fraction``, ``valid_fraction``,
        ``positive``, ``split`` (train/val/test/buffer), ``selected`` (kept for training after
        sampling). ``attrs`` holds ``stats`` (per-band mean/std), ``year``, ``config``, ``store``.
    """
    cfg = config or TileConfig()
    ds = store if isinstance(store, xr.Dataset) else open_store(store, region=region)
    if year is None:
        year = int(ds.year.values[-1])
    if year not in ds.year.values:
        raise YearError(
            f"year {year} is not in the store's years {[int(y) for y in ds.year.values]}; "
            "pick one of them (--year)"
        )
    if "polygons" not in ds["mining"].attrs:
        name = store if not isinstance(store, xr.Dataset) else ds.attrs.get("store", "the store")
        raise TileError(
            f"{name} has no mining mask yet: training needs one. Write it from mining polygons "
            f"with `miningxr ingest --store {name} ... --polygons FILE` or "
            f"`miningxr.write_mask({str(name)!r}, 'mines.gpkg')`"
        )
    t = cfg.tile_size
    gslice = GridSlice.of_coords(ds)
    if gslice.row0 % t or gslice.col0 % t:
        raise TileError(f"the region does not start on a multiple of the tile size {t}")
    img = ds["landsat"].sel(year=year).transpose("band", "y", "x")
    valid = img.notnull().all("band")
    filled = img.fillna(0.0)
    coarse = {"y": t, "x": t}
    sums = filled.coarsen(coarse, boundary="trim").sum()
    sumsq = (filled * filled).coarsen(coarse, boundary="trim").sum()
    nvalid = valid.coarsen(coarse, boundary="trim").sum()
    mine = (ds["mining"] > 0).coarsen(coarse, boundary="trim").mean()
    sums, sumsq, nvalid, mine = dask.compute(sums.data, sumsq.data, nvalid.data, mine.data)
    ny, nx = mine.shape
    tr, tc = np.meshgrid(np.arange(ny) + gslice.row0 // t, np.arange(nx) + gslice.col0 // t, indexing="ij")
    df = pd.DataFrame(
        {
            "tile_row": tr.ravel(),
            "tile_col": tc.ravel(),
            "row0": tr.ravel() * t,
            "col0": tc.ravel() * t,
            "mining_fraction": np.asarray(mine, dtype=np.float64).ravel(),
            "valid_fraction": np.asarray(nvalid, dtype=np.float64).ravel() / (t * t),
        }
    )
    df["positive"] = df.mining_fraction >= cfg.positive_threshold
    df["split"] = _split(df, cfg)
    df["selected"] = _sample(df, cfg)
    stats = _stats(
        df,
        sums.reshape(len(BANDS), -1),
        sumsq.reshape(len(BANDS), -1),
        np.asarray(nvalid).ravel(),
        list(img.band.values),
    )
    x0, y1 = pixel_corner(df.row0.to_numpy(), df.col0.to_numpy())
    gdf = gpd.GeoDataFrame(
        df, geometry=shapely.box(x0, y1 - t * RESOLUTION, x0 + t * RESOLUTION, y1), crs=CRS_GRID.to_wkt()
    )
    gdf.attrs.update(
        stats=stats,
        year=year,
        config=dataclasses.asdict(cfg),
        store=str(store) if not isinstance(store, xr.Dataset) else ds.attrs.get("store"),
    )
    if save and not isinstance(store, xr.Dataset):
        save_tile_index(gdf, store)
    return gdf


def _split(df: pd.DataFrame, cfg: TileConfig) -> np.ndarray:
    """Whole blocks of tiles per split, stratified by mining, with a guard band between splits."""
    b = cfg.block_tiles
    block = list(zip(df.tile_row // b, df.tile_col // b, strict=True))
    df = df.assign(block=pd.Series(block, index=df.index))
    per_block = df.groupby("block").agg(mine=("mining_fraction", "mean"), pos=("positive", "sum"))
    # deterministic shuffle, then sort by mining so every split gets mines and background
    rng = np.random.default_rng(cfg.seed)
    per_block["r"] = rng.random(len(per_block))
    per_block = per_block.sort_values(["pos", "mine", "r"], ascending=[False, False, True])
    fractions = np.asarray(cfg.fractions, dtype=float) / sum(cfg.fractions)
    counts = np.zeros(3)
    assign = {}
    for k, blk in enumerate(per_block.index):
        # largest deficit first: after k blocks, split s should hold k * fraction[s]
        deficit = (k + 1) * fractions - counts
        s = int(np.argmax(deficit))
        counts[s] += 1
        assign[blk] = s
    split = np.array([assign[blk] for blk in block])
    # guard band: drop tiles that have a tile of another split within buffer_tiles
    rows = (df.tile_row - df.tile_row.min()).to_numpy()
    cols = (df.tile_col - df.tile_col.min()).to_numpy()
    grid = np.full((rows.max() + 1, cols.max() + 1), -1)
    grid[rows, cols] = split
    keep = np.ones(len(df), bool)
    r = cfg.buffer_tiles
    if r > 0:
        padded = np.pad(grid, r, constant_values=-1)
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                nb = padded[rows + r + dy, cols + r + dx]
                keep &= (nb == -1) | (nb == split)
    names = np.array(SPLITS, dtype=object)[split]
    names[~keep] = "buffer"
    return names


def _sample(df: pd.DataFrame, cfg: TileConfig) -> np.ndarray:
    """Training keeps every positive and ``negative_ratio`` negatives per positive; val/test keep all."""
    ok = (df.valid_fraction >= cfg.min_valid_fraction) & (df.split != "buffer")
    selected = ok.to_numpy().copy()
    train = (df.split == "train") & ok
    if cfg.negative_ratio is not None:
        neg = np.flatnonzero(train & ~df.positive)
        n_keep = round(cfg.negative_ratio * int((train & df.positive).sum()))
        rng = np.random.default_rng(cfg.seed + 1)
        drop = rng.permutation(neg)[n_keep:]
        selected[drop] = False
    return selected


def _stats(df, sums, sumsq, nvalid, bands) -> dict:
    train = ((df.split == "train") & df.selected).to_numpy()
    if not train.any():
        raise TileError(
            "the training split has no usable tile; ingest a larger region or lower min_valid_fraction"
        )
    n = nvalid[train].sum()
    mean = sums[:, train].sum(axis=1) / n
    var = sumsq[:, train].sum(axis=1) / n - mean**2
    std = np.sqrt(np.maximum(var, 1e-12))
    return {
        "bands": [str(b) for b in bands],
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
    }


def _paths(store: str | os.PathLike) -> tuple[Path, Path]:
    d = Path(store) / TILES_DIR
    return d / "tiles.parquet", d / "tiles.json"


def save_tile_index(index: gpd.GeoDataFrame, store: str | os.PathLike) -> Path:
    """Write the index (GeoParquet) and its stats/config (JSON) inside the store."""
    parquet, meta = _paths(store)
    if not parquet.parent.exists():
        # a Zarr group of its own, so zarr sees no foreign object at the store's root
        zarr.open_group(str(store), mode="r+", zarr_format=3).require_group(TILES_DIR)
    index.to_parquet(parquet)
    meta.write_text(json.dumps({k: index.attrs[k] for k in ("stats", "year", "config", "store")}, indent=2))
    return parquet


def load_tile_index(store: str | os.PathLike) -> gpd.GeoDataFrame:
    """Read the index saved by :func:`tile_index`, with its attrs."""
    parquet, meta = _paths(store)
    if not parquet.exists():
        raise TileError(
            f"{store} has no tile index yet; build one with `miningxr.tile_index({str(store)!r})`"
        )
    gdf = gpd.read_parquet(parquet)
    gdf.attrs.update(json.loads(meta.read_text()))
    return gdf
