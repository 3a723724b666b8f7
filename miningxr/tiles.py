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
import io
import json
from collections.abc import Sequence
from typing import Any

import dask
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import xarray as xr
import zarr

from .config import BANDS, TileConfig, as_years
from .errors import TileError, YearError
from .grid import CRS_GRID, RESOLUTION, GridSlice, country_table, pixel_corner
from .paths import Location, Where, as_location
from .store import open_regions, open_store

SPLITS = ("train", "val", "test")
TILES_DIR = "_tiles"


def tile_index(
    store: Where | xr.Dataset,
    *,
    year: int | None = None,
    years: int | Sequence[int] | None = None,
    config: TileConfig | None = None,
    region: Any = None,
    save: bool = True,
) -> gpd.GeoDataFrame:
    """Index every tile of a store's ingested regions, split it spatially, compute band stats.

    A sparse store is indexed region by region (:func:`~miningxr.open_regions`): the work and
    memory grow with the shards that hold data, not with the distance between them.

    Parameters
    ----------
    store
        A store path, or a Dataset from :func:`~miningxr.open_store` (then nothing is saved).
    year, years
        The imagery year(s) to index (default: the latest ingested). With several, every
        ``(year, tile)`` with imagery is a sample; a place is in the same split in every year,
        so nothing leaks across years, and the mask is the polygons' (one per store).
    config
        Tile size, split block size, guard band, fractions, sampling.
    region
        Index only this region of the store.

    Returns
    -------
    geopandas.GeoDataFrame
        One row per year and tile: ``year``, ``tile_row``/``tile_col`` (global tile indices),
        ``row0``/``col0`` (global pixel of its top-left corner), ``region`` (the
        :func:`~miningxr.open_regions` node), ``country`` (ISO3 code of the tile's centre, ""
        at sea), ``mining_fraction``, ``valid_fraction``, ``positive``, ``split``
        (train/val/test/buffer), ``selected`` (kept for training after sampling). ``attrs``
        holds ``stats`` (per-band mean/std from the training samples), ``years``, ``year`` (the
        latest), ``config`` and ``store``.
    """
    cfg = config or TileConfig()
    if isinstance(store, xr.Dataset):
        parts = [store]
    elif region is not None:
        parts = [open_store(store, region=region)]
    else:
        parts = [node.to_dataset() for node in open_regions(store).children.values()]
    held = sorted({int(y) for ds in parts for y in ds.year.values})
    wanted = as_years(years) if years is not None else [int(year) if year is not None else held[-1]]
    lacking = [y for y in wanted if y not in held]
    if lacking:
        raise YearError(f"year(s) {lacking} not in the store's years {held}; pick from them (--years)")
    name = store if not isinstance(store, xr.Dataset) else parts[0].attrs.get("store", "the store")
    if "polygons" not in parts[0]["mining"].attrs:
        raise TileError(
            f"{name} has no mining mask yet: training needs one. Write it from mining polygons "
            f"with `miningxr ingest --store {name} ... --polygons FILE` or "
            f"`miningxr.write_mask({str(name)!r}, 'mines.gpkg')`"
        )
    t = cfg.tile_size
    lazy = [_tile_sums(ds, wanted, t) for ds in parts]
    computed = dask.compute(*lazy)
    places, per_year = [], []
    for ds, (sums, sumsq, nvalid, mine) in zip(parts, computed, strict=True):
        gslice = GridSlice.of_coords(ds)
        ny, nx = mine.shape
        tr, tc = np.meshgrid(
            np.arange(ny) + gslice.row0 // t, np.arange(nx) + gslice.col0 // t, indexing="ij"
        )
        places.append(
            pd.DataFrame(
                {
                    "tile_row": tr.ravel(),
                    "tile_col": tc.ravel(),
                    "region": ds.attrs.get("region", ""),
                    "mining_fraction": np.asarray(mine, dtype=np.float64).ravel(),
                }
            )
        )
        per_year.append(
            (
                sums.reshape(len(wanted), len(BANDS), -1),
                sumsq.reshape(len(wanted), len(BANDS), -1),
                nvalid.reshape(len(wanted), -1),
            )
        )
    place = pd.concat(places, ignore_index=True)
    place["row0"], place["col0"] = place.tile_row * t, place.tile_col * t
    place["positive"] = place.mining_fraction >= cfg.positive_threshold
    place["split"] = _split(place, cfg)
    place["country"] = _countries(place, t)
    # every (year, place): the split and the mask are the place's, the valid fraction the year's
    frames, sums_y, sumsq_y, nvalid_y = [], [], [], []
    for k, y in enumerate(wanted):
        nvalid = np.concatenate([n[k] for _, _, n in per_year]).astype(np.float64)
        frames.append(place.assign(year=y, valid_fraction=nvalid / (t * t)))
        sums_y.append(np.concatenate([s[k] for s, _, _ in per_year], axis=1))
        sumsq_y.append(np.concatenate([q[k] for _, q, _ in per_year], axis=1))
        nvalid_y.append(nvalid)
    df = pd.concat(frames, ignore_index=True)
    df["selected"] = _sample(df, cfg)
    stats = _stats(
        df,
        np.concatenate(sums_y, axis=1),
        np.concatenate(sumsq_y, axis=1),
        np.concatenate(nvalid_y),
        list(BANDS),
    )
    cols = [
        "year",
        "tile_row",
        "tile_col",
        "row0",
        "col0",
        "region",
        "country",
        "mining_fraction",
        "valid_fraction",
        "positive",
        "split",
        "selected",
    ]
    df = df[cols]
    x0, y1 = pixel_corner(df.row0.to_numpy(), df.col0.to_numpy())
    gdf = gpd.GeoDataFrame(
        df, geometry=shapely.box(x0, y1 - t * RESOLUTION, x0 + t * RESOLUTION, y1), crs=CRS_GRID.to_wkt()
    )
    gdf.attrs.update(
        stats=stats,
        years=wanted,
        year=wanted[-1],
        config=dataclasses.asdict(cfg),
        store=str(store) if not isinstance(store, xr.Dataset) else parts[0].attrs.get("store"),
    )
    if save and not isinstance(store, xr.Dataset):
        save_tile_index(gdf, store)
    return gdf


def _tile_sums(ds: xr.Dataset, years: list[int], t: int) -> tuple[Any, Any, Any, Any]:
    """Lazy per-tile band sums, sums of squares and valid counts per year, and mining fraction."""
    gslice = GridSlice.of_coords(ds)
    if gslice.row0 % t or gslice.col0 % t:
        raise TileError(f"the region does not start on a multiple of the tile size {t}")
    img = ds["landsat"].sel(year=years).transpose("year", "band", "y", "x")
    valid = img.notnull().all("band")
    filled = img.fillna(0.0)
    coarse = {"y": t, "x": t}
    sums = filled.coarsen(coarse, boundary="trim").sum()
    sumsq = (filled * filled).coarsen(coarse, boundary="trim").sum()
    nvalid = valid.coarsen(coarse, boundary="trim").sum()
    mine = (ds["mining"] > 0).coarsen(coarse, boundary="trim").mean()
    return sums.data, sumsq.data, nvalid.data, mine.data


def _countries(place: pd.DataFrame, t: int) -> np.ndarray:
    """ISO3 code of the country holding each tile's centre (built-in table; "" for none)."""
    x, y = pixel_corner(place.row0.to_numpy() + t / 2, place.col0.to_numpy() + t / 2)
    points = gpd.GeoDataFrame(geometry=gpd.points_from_xy(x, y), crs=CRS_GRID.to_wkt()).to_crs("EPSG:4326")
    hit = gpd.sjoin(points, country_table()[["ISO3_CODE", "geometry"]], how="left", predicate="within")
    hit = hit[~hit.index.duplicated(keep="first")]
    return hit["ISO3_CODE"].fillna("").to_numpy(dtype=object)


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
    # guard band: drop tiles that have a tile of another split within buffer_tiles, looked up by
    # key (no dense grid: two regions far apart cost what their tiles cost)
    keys = tile_key(df.tile_row.to_numpy(), df.tile_col.to_numpy())
    order = np.argsort(keys)
    sorted_keys, sorted_split = keys[order], split[order]
    keep = np.ones(len(df), bool)
    r = cfg.buffer_tiles
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            nk = tile_key(df.tile_row.to_numpy() + dy, df.tile_col.to_numpy() + dx)
            at = np.minimum(np.searchsorted(sorted_keys, nk), len(keys) - 1)
            found = sorted_keys[at] == nk
            keep &= ~found | (sorted_split[at] == split)
    names = np.array(SPLITS, dtype=object)[split]
    names[~keep] = "buffer"
    return names


def tile_key(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """One int64 per tile position (tile indices are below 2**20 on the global grid)."""
    return (rows.astype(np.int64) + 1) * (1 << 24) + (cols.astype(np.int64) + 1)


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


_PARQUET, _META = f"{TILES_DIR}/tiles.parquet", f"{TILES_DIR}/tiles.json"


def save_tile_index(index: gpd.GeoDataFrame, store: Where) -> Location:
    """Write the index (GeoParquet) and its stats/config (JSON) inside the store; returns the
    index's location."""
    loc = as_location(store, what="the store")
    # a Zarr group of its own, so zarr sees no foreign object at the store's root
    zarr.open_group(loc.zarr_store(), mode="r+", zarr_format=3).require_group(TILES_DIR)
    buf = io.BytesIO()
    index.to_parquet(buf)
    # the stats first, the index last: a reader finds an index only with its stats beside it
    meta = {k: index.attrs[k] for k in ("stats", "years", "year", "config", "store")}
    loc.put(_META, json.dumps(meta, indent=2).encode())
    loc.put(_PARQUET, buf.getvalue())
    return loc / _PARQUET


def load_tile_index(store: Where) -> gpd.GeoDataFrame:
    """Read the index saved by :func:`tile_index`, with its attrs."""
    loc = as_location(store, what="the store")
    raw = loc.read_bytes(_PARQUET)
    meta = loc.read_bytes(_META)
    if raw is None or meta is None:
        raise TileError(
            f"{store} has no tile index yet; build one with `miningxr.tile_index({str(store)!r})`"
        )
    gdf = gpd.read_parquet(io.BytesIO(raw))
    gdf.attrs.update(json.loads(meta))
    return gdf
