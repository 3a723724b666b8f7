"""Scores over a whole split, with Dask, and the pictures that show them.

Pixel metrics come from one Dask pass over every pixel of the split's tiles (no sampling): the
confusion counts at the threshold and two probability histograms (mining / other) from which the
ROC AUC follows. Per-polygon detection rasterizes polygon ids on the same grid and counts, per
polygon, the pixels predicted as mining.

Example
-------
>>> import miningxr
>>> report = miningxr.evaluate("s.zarr", "pred.zarr", split="test")  # doctest: +SKIP
>>> report["iou"]  # doctest: +SKIP
0.91
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .errors import EvaluateError, StoreError
from .grid import PIXEL_AREA_KM2, GridSlice
from .jsonio import json_dumps, write_json
from .labels import rasterize_blocks, read_polygons
from .paths import Location, Where, as_location
from .predict import open_predictions
from .store import open_regions
from .tiles import load_tile_index, tile_key

#: the splits :func:`evaluate` scores: the tile index's three, or every predicted pixel
SPLITS = ("train", "val", "test", "all")

BINS = 1000


def _split_mask(index: Any, split: str, gslice: GridSlice, chunks: Any) -> da.Array:
    """Pixel mask of the split's tiles on the grid slice, lazily: each block looks its tiles up
    by key, so memory grows with the block, never with the slice."""
    t = int(index.attrs["config"]["tile_size"])
    sel = index[index.split == split]
    keys = np.unique(tile_key(sel.tile_row.to_numpy(), sel.tile_col.to_numpy()))

    def block(block_info: Any = None) -> np.ndarray:
        (r0, r1), (c0, c1) = block_info[None]["array-location"]
        rows = (gslice.row0 + np.arange(r0, r1)) // t
        cols = (gslice.col0 + np.arange(c0, c1)) // t
        ur, ri = np.unique(rows, return_inverse=True)
        uc, ci = np.unique(cols, return_inverse=True)
        member = np.isin(tile_key(ur[:, None], uc[None, :]), keys)
        return member[ri[:, None], ci[None, :]]

    return da.map_blocks(block, chunks=chunks, dtype=bool, meta=np.empty((0, 0), bool))


def evaluate(
    store: Where,
    predictions: Any,
    *,
    split: str = "test",
    threshold: float = 0.5,
    polygons: Any = None,
    index: Any = None,
    out: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Dice, IoU, precision, recall, F1, AUC and per-polygon detection over one split.

    A sparse store is scored region by region and every predicted year against the mask (the
    polygons' year), so memory grows with a block, and time with the area predicted.

    Parameters
    ----------
    store
        The store holding the ``mining`` truth and tile index.
    predictions
        The path of a prediction store, or a probability DataArray from
        :func:`~miningxr.predict` (``(y, x)`` or ``(year, y, x)``).
    split
        ``"train"``, ``"val"``, ``"test"`` or ``"all"`` (every predicted pixel).
    polygons
        Mining polygons for per-polygon detection (a polygon counts as detected when at least half
        of its pixels in the split are predicted as mining).
    out
        Write the report as JSON to this path.

    Returns
    -------
    dict
        Metrics over everything scored, pixel counts, areas in km2 (true, predicted),
        per-polygon detection, and the same metrics ``per_year`` and ``per_region``.
    """
    if split not in SPLITS:
        raise EvaluateError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    gdf = read_polygons(polygons, require_columns=False) if polygons is not None else None
    if split != "all" and index is None:
        index = load_tile_index(store)
    pieces = _pieces(store, predictions)
    lazy = [_counts(pred, ds, split, threshold, index, gdf) for _, _, pred, ds in pieces]
    layout = _layout(None if gdf is None else len(gdf))
    counts = [
        {k: int(v[at.start]) if k in ("tp", "fp", "fn", "tn") else v[at] for k, at in layout.items()}
        for v in dask.compute(*lazy)
    ]
    total = _sum(counts)
    if total["pixels"] == 0:
        where = ", ".join(sorted({f"{name} {GridSlice.of_coords(p).describe()}" for name, _, p, _ in pieces}))
        raise EvaluateError(
            f"no pixel to score: the {split!r} split has no predicted pixel in {where} (predictions "
            "over another region or year, or all no-data). Predict the store's region, or evaluate "
            "another --split"
        )
    report: dict[str, Any] = {"split": split, "threshold": threshold, **_metrics(total)}
    report["per_year"] = {
        str(y): _metrics(_sum([c for (_, yy, _, _), c in zip(pieces, counts, strict=True) if yy == y]))
        for y in sorted({y for _, y, _, _ in pieces})
    }
    report["per_region"] = {
        name: _metrics(_sum([c for (n, _, _, _), c in zip(pieces, counts, strict=True) if n == name]))
        for name in sorted({n for n, _, _, _ in pieces})
    }
    if out is not None:
        loc = as_location(out, what="the report file (out)")
        if loc.is_url:
            loc.parent.put(loc.name, (json_dumps(report) + "\n").encode())
        else:
            write_json(report, loc.local)
    return report


def _pieces(store: Where, predictions: Any) -> list[tuple[str, int, xr.DataArray, xr.Dataset]]:
    """(region, year, prediction, store Dataset) for every region and year predicted."""
    regions = [node.to_dataset() for node in open_regions(store).children.values()]
    pieces = []
    if isinstance(predictions, (str, os.PathLike, Location)):
        first_error = None
        for ds in regions:
            try:
                pred = open_predictions(predictions, ds)
            except StoreError as e:  # a region of the store not predicted (yet)
                first_error = first_error or e
                continue
            pieces += [(ds.attrs["region"], int(y), pred.sel(year=y), ds) for y in pred.year.values]
        if not pieces and first_error is not None:
            raise first_error
        return pieces
    pred = predictions
    if "year" not in pred.dims:  # one year: a scalar `year` from predict, or none at all
        pred = pred.expand_dims("year") if "year" in pred.coords else pred.expand_dims(year=[0])
    years = [int(y) for y in pred.year.values]
    pred = pred.drop_vars([c for c in pred.coords if c not in ("y", "x")])  # only the grid matters
    have = GridSlice.of_coords(pred)
    for ds in regions:
        want = GridSlice.of_coords(ds)
        common = have.intersection(want)
        if common is None:
            continue
        part, truth = pred.isel(common.within(have)), ds.isel(common.within(want))
        pieces += [(ds.attrs["region"], y, part.isel(year=k), truth) for k, y in enumerate(years)]
    if not pieces:
        where = ", ".join(GridSlice.of_coords(ds).describe() for ds in regions)
        raise EvaluateError(
            f"the predictions cover {have.describe()}, the store {store} covers {where}: they do not "
            "overlap. Predict the store's region"
        )
    return pieces


def _block_counts(
    prob: np.ndarray, truth: np.ndarray, where: np.ndarray, ids: np.ndarray | None, threshold: float, n: int
) -> np.ndarray:
    """One block's counts as one vector (``_layout``): tp, fp, fn, tn, the probability
    histograms of mining and other pixels, and per polygon id its pixels and its hits."""
    where = where & np.isfinite(prob)
    truth = truth > 0
    hit = prob >= threshold
    pos, neg = truth & where, ~truth & where
    bins = np.clip((np.nan_to_num(prob) * BINS).astype(np.int32), 0, BINS - 1)
    parts = [
        np.array([(hit & pos).sum(), (hit & neg).sum(), (~hit & pos).sum(), (~hit & neg).sum()]),
        np.bincount(bins[pos], minlength=BINS),
        np.bincount(bins[neg], minlength=BINS),
    ]
    if ids is not None:
        inside = ids[where]
        parts += [np.bincount(inside, minlength=n + 1), np.bincount(ids[where & hit], minlength=n + 1)]
    return np.concatenate(parts).astype(np.int64)[None, None, :]


def _layout(n: int | None) -> dict[str, slice]:
    """Where each count lies in a :func:`_block_counts` vector."""
    out = {"tp": slice(0, 1), "fp": slice(1, 2), "fn": slice(2, 3), "tn": slice(3, 4)}
    out |= {"hpos": slice(4, 4 + BINS), "hneg": slice(4 + BINS, 4 + 2 * BINS)}
    if n is not None:
        end = 4 + 2 * BINS
        out |= {
            "polygon_pixels": slice(end, end + n + 1),
            "polygon_hits": slice(end + n + 1, end + 2 * n + 2),
        }
    return out


def _counts(
    pred: xr.DataArray, ds: xr.Dataset, split: str, threshold: float, index: Any, gdf: Any
) -> da.Array:
    """Lazy confusion counts, probability histograms and polygon detection of one 2-D piece,
    as one vector (:func:`_layout`): one task a block reads its prediction, truth and split
    mask once and counts everything, and the blocks' vectors are summed (a tree reduction).
    Counting with whole-array Dask operations instead flattened each 2-D mask for
    ``bincount``, a rechunk (a P2P shuffle on a cluster) of every pixel."""
    gslice = GridSlice.of_coords(pred)
    chunks = pred.data.chunks if pred.chunks else ((gslice.shape[0],), (gslice.shape[1],))
    truth = ds["mining"].data.rechunk(chunks)
    prob = pred.data if pred.chunks else da.from_array(pred.values, chunks=chunks)
    if split == "all":
        where = da.ones(gslice.shape, dtype=bool, chunks=chunks)
    else:
        where = _split_mask(index, split, gslice, chunks)
    n = None if gdf is None else len(gdf)
    arrays = [prob, truth, where]
    if gdf is not None:
        arrays.append(rasterize_blocks(gslice, gdf, chunks[0], chunks[1], values=np.arange(1, len(gdf) + 1)))
    size = max(s.stop for s in _layout(n).values())

    def block(p: np.ndarray, t: np.ndarray, w: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
        return _block_counts(p, t, w, ids, threshold, n or 0)

    per_block = da.map_blocks(
        block,
        *arrays,
        new_axis=2,
        chunks=(tuple(1 for _ in chunks[0]), tuple(1 for _ in chunks[1]), (size,)),
        dtype=np.int64,
        meta=np.empty((0, 0, 0), np.int64),
    )
    return per_block.sum(axis=(0, 1))


def _sum(counts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for c in counts:
        for k, v in c.items():
            total[k] = total[k] + v if k in total else v
    total["pixels"] = int(sum(int(total.get(k, 0)) for k in ("tp", "fp", "fn", "tn")))
    return total


def _metrics(c: dict[str, Any]) -> dict[str, Any]:
    tp, fp, fn, tn = (int(c[k]) for k in ("tp", "fp", "fn", "tn"))
    out: dict[str, Any] = {
        "pixels": tp + fp + fn + tn,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "iou": _div(tp, tp + fp + fn),
        "dice": _div(2 * tp, 2 * tp + fp + fn),
        "precision": _div(tp, tp + fp),
        "recall": _div(tp, tp + fn),
        "auc": _auc(c["hpos"][:BINS], c["hneg"][:BINS]),
        "area_true_km2": (tp + fn) * PIXEL_AREA_KM2,
        "area_predicted_km2": (tp + fp) * PIXEL_AREA_KM2,
    }
    out["f1"] = out["dice"]
    if "polygon_pixels" in c:
        total, found = c["polygon_pixels"], c["polygon_hits"]
        present = np.flatnonzero(total[1:] > 0)
        frac = found[1:][present] / total[1:][present]
        out["polygons_in_split"] = len(present)
        out["polygons_detected"] = int((frac >= 0.5).sum())
        out["polygon_detection_rate"] = _div(int((frac >= 0.5).sum()), len(present))
    return out


def _div(a: float, b: float) -> float:
    return float(a) / float(b) if b else float("nan")


def _auc(hpos: np.ndarray, hneg: np.ndarray) -> float:
    """ROC AUC from probability histograms (exact up to the bin width; ties count half)."""
    P, N = hpos.sum(), hneg.sum()
    if P == 0 or N == 0:
        return float("nan")
    # P(score_pos > score_neg) + 0.5 P(equal bin)
    neg_below = np.concatenate([[0], np.cumsum(hneg)[:-1]])
    return float((hpos * (neg_below + 0.5 * hneg)).sum() / (P * N))


# --------------------------------------------------------------------------- plots


def _year_of(ds: xr.Dataset, prob: xr.DataArray) -> xr.DataArray:
    """The imagery of the year the prediction is of (the latest when it does not say)."""
    img = ds["landsat"]
    if "year" not in img.dims:
        return img
    if "year" in prob.coords and prob.coords["year"].ndim == 0 and int(prob.year) in img.year.values:
        return img.sel(year=int(prob.year))
    return img.isel(year=-1)


def false_colour(landsat: xr.DataArray, bands: Sequence[str] = ("swir2", "nir", "red")) -> np.ndarray:
    """An RGB image (float 0..1) of three bands with a 2-98 % stretch; mines show bright in SWIR."""
    rgb = np.stack([np.asarray(landsat.sel(band=b).values, np.float32) for b in bands], -1)
    lo, hi = float(np.nanpercentile(rgb, 2)), float(np.nanpercentile(rgb, 98))
    return np.clip((np.nan_to_num(rgb, nan=lo) - lo) / max(hi - lo, 1e-6), 0, 1)


def plot_tiles(
    ds: xr.Dataset,
    prob: xr.DataArray,
    index,
    path: str | os.PathLike,
    *,
    split: str = "test",
    n: int = 6,
    seed: int = 0,
    threshold: float = 0.5,
) -> Path:
    """PNG of sample tiles: true colour, false colour (SWIR2-NIR-red), truth, prediction."""
    t = int(index.attrs["config"]["tile_size"])
    gslice = GridSlice.of_coords(prob)
    inside = index[
        (index.row0 >= gslice.row0)
        & (index.row0 + t <= gslice.row1)
        & (index.col0 >= gslice.col0)
        & (index.col0 + t <= gslice.col1)
    ]
    if inside.empty:
        raise EvaluateError("the tile index has no tile inside the predicted region: nothing to plot")
    # the split's tiles with mining, else its tiles, else (a region the split missed) any tile
    of_split = inside[inside.split == split]
    cand = next(c for c in (of_split[of_split.positive], of_split, inside) if not c.empty)
    if cand is inside:
        split = "all"
    pick = cand.sample(min(n, len(cand)), random_state=seed)
    img = _year_of(ds, prob)
    # a Figure of its own, not pyplot's: no global state, no GUI backend, safe in threads
    fig = Figure(figsize=(10, 2.5 * len(pick)))
    axes = fig.subplots(len(pick), 4, squeeze=False)
    for row, (_, tile) in zip(axes, pick.iterrows(), strict=True):
        ys = slice(int(tile.row0 - gslice.row0), int(tile.row0 - gslice.row0 + t))
        xs = slice(int(tile.col0 - gslice.col0), int(tile.col0 - gslice.col0 + t))
        sub = img.isel(y=ys, x=xs)
        p = prob.isel(y=ys, x=xs).values
        row[0].imshow(false_colour(sub, ("red", "green", "blue")))
        row[1].imshow(false_colour(sub))
        row[2].imshow(ds["mining"].isel(y=ys, x=xs).values, vmin=0, vmax=1, cmap="gray")
        row[3].imshow(p, vmin=0, vmax=1, cmap="magma")
        row[3].contour(p >= threshold, levels=[0.5], colors="cyan", linewidths=0.8)
        for ax, title in zip(row, ("true colour", "SWIR2-NIR-red", "truth", "prediction"), strict=True):
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{split} tiles: truth vs prediction")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return Path(path)


def plot_map(
    ds: xr.Dataset,
    prob: xr.DataArray,
    path: str | os.PathLike,
    *,
    index=None,
    threshold: float = 0.5,
    max_pixels: int = 1024,
) -> Path:
    """PNG map of the whole region: false colour, truth outline, predicted mining, test tiles."""
    f = max(1, int(np.ceil(max(prob.shape) / max_pixels)))
    img = _year_of(ds, prob)
    small = img.coarsen(y=f, x=f, boundary="trim").mean().compute()
    p = prob.coarsen(y=f, x=f, boundary="trim").mean().compute()
    truth = (ds["mining"] > 0).coarsen(y=f, x=f, boundary="trim").mean().compute()
    extent = [float(p.x.min()) / 1e3, float(p.x.max()) / 1e3, float(p.y.min()) / 1e3, float(p.y.max()) / 1e3]
    fig = Figure(figsize=(14, 7))
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    axes[0].imshow(false_colour(small), extent=extent)
    axes[0].contour(truth.x / 1e3, truth.y / 1e3, truth.values, levels=[0.5], colors="yellow", linewidths=0.6)
    axes[0].set_title("SWIR2-NIR-red with mining polygons (yellow)")
    im = axes[1].imshow(p.values, vmin=0, vmax=1, cmap="magma", extent=extent)
    axes[1].contour(truth.x / 1e3, truth.y / 1e3, truth.values, levels=[0.5], colors="cyan", linewidths=0.6)
    axes[1].set_title(f"predicted probability (truth in cyan), threshold {threshold}")
    if index is not None:
        t = int(index.attrs["config"]["tile_size"]) * 30 / 1e3
        test = index[index.split == "test"]
        for geom in test.geometry.values[:5000]:
            x0, y0, _, _ = geom.bounds
            axes[1].add_patch(Rectangle((x0 / 1e3, y0 / 1e3), t, t, fill=False, ec="white", lw=0.2))
    fig.colorbar(im, ax=axes[1], fraction=0.04)
    for ax in axes:
        ax.set_xlabel("x (km, EPSG:6933)")
    axes[0].set_ylabel("y (km, EPSG:6933)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return Path(path)
