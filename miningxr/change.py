"""Mining change over time: a temporal consistency rule, onset and closure years, area tables.

Yearly predictions flicker: one cloudy or hazy composite can drop a mine for a year, one bare
field can look like a mine for a year. :func:`consistent_mining` applies a majority rule over a
centred window of years (3 by default, as MapBiomas' temporal filter does), after bridging
years without a prediction, so that one noisy year neither opens nor closes a mine:

- a year with no prediction for a pixel (NaN: no clear scene) takes the state of the last
  year before it that had one: it is bridged, not counted as "not mined";
- years before the first prediction of a pixel, and after its last, stay unknown;
- a year is mined when most of the known years of its window are; a tie keeps its own state.

From the consistent series, :func:`onset_year` is the first mined year of each pixel (a pixel
mined from its first known year has its onset at or before that year) and :func:`closure_year`
the first year after its last mined one, for mines that closed. :func:`change_table` counts the
mined, new and lost km2 per year and group.

Example
-------
>>> import numpy as np, xarray as xr
>>> prob = xr.DataArray(np.array([0.1, 0.9, 0.2, 0.8, 0.9, np.nan, 0.9])[:, None, None],
...                     dims=("year", "y", "x"), coords={"year": np.arange(2000, 2007)})
>>> consistent_mining(prob).values.ravel().tolist()  # the 2001 spike is gone; 2005 is bridged
[0, 0, 1, 1, 1, 1, 1]
>>> onset_year(consistent_mining(prob)).item()
2002
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

from .config import ChangeConfig
from .errors import ConfigError, MiningxrError
from .evaluate import false_colour
from .export import mine_polygons_from, to_cog
from .grid import CRS_GRID, PIXEL_AREA_KM2, GridSlice, country_table
from .labels import rasterize_blocks, read_polygons
from .paths import Where, staged
from .predict import open_predictions, prediction_regions
from .store import check_output_folder, open_store

#: the states of :func:`consistent_mining`
NOT_MINED, MINED, UNKNOWN = 0, 1, -1
#: onset and closure rasters where a pixel has none
NO_YEAR_VALUE = 0


def temporal_rule(observed: np.ndarray, window: int = 3) -> np.ndarray:
    """The consistency rule on numpy series along the last axis: ``observed`` is 1 (mined),
    0 (not mined) or NaN (no prediction); returns int8 :data:`MINED`, :data:`NOT_MINED` or
    :data:`UNKNOWN`.

    >>> temporal_rule(np.array([0, 1, 0, 0, np.nan, 1, 1, 1.0])).tolist()
    [0, 0, 0, 0, 0, 1, 1, 1]
    """
    if window < 1 or window % 2 == 0:
        raise ConfigError(f"the temporal window must be an odd number of years >= 1, got {window}")
    obs = np.asarray(observed, dtype=np.float32)
    known = ~np.isnan(obs)
    n = obs.shape[-1]
    idx = np.arange(n)
    # bridge: each year takes the last known year at or before it
    filled = _forward_fill(obs, known, axis=-1)
    # unknown before the first and after the last prediction of a pixel
    first_known = np.argmax(known, axis=-1)[..., None]
    last_known = (n - 1 - np.argmax(known[..., ::-1], axis=-1))[..., None]
    inside = (idx >= first_known) & (idx <= last_known) & known.any(axis=-1, keepdims=True)
    filled = np.where(inside, filled, np.nan)
    # majority of the known years of a centred window; a tie keeps the year's own state
    half = window // 2
    pad = [(0, 0)] * (obs.ndim - 1) + [(half, half)]
    padded = np.pad(filled, pad, constant_values=np.nan)
    views = np.stack([padded[..., k : k + n] for k in range(window)], axis=-1)
    votes = np.nansum(views, axis=-1)
    count = np.sum(~np.isnan(views), axis=-1)
    mined = np.where(2 * votes > count, 1, np.where(2 * votes < count, 0, filled))
    return np.where(inside, mined, UNKNOWN).astype(np.int8)


def _forward_fill(a: np.ndarray, known: np.ndarray, axis: int) -> np.ndarray:
    """``a`` with each position along ``axis`` taking the last ``known`` one at or before it
    (positions before the first known one keep the first position's value)."""
    shape = [1] * a.ndim
    shape[axis] = a.shape[axis]
    last = np.where(known, np.arange(a.shape[axis]).reshape(shape), 0)
    np.maximum.accumulate(last, axis=axis, out=last)
    return np.take_along_axis(a, last, axis=axis)


def observed_mining(prob: xr.DataArray, threshold: float = 0.5) -> xr.DataArray:
    """The yearly predictions before the rule: 1 where ``prob >= threshold``, 0 below, NaN
    where there is no prediction."""
    return xr.where(prob.isnull(), np.nan, (prob >= threshold).astype(np.float32))


def consistent_mining(prob: xr.DataArray, config: ChangeConfig | None = None) -> xr.DataArray:
    """Mined or not, year by year, after the temporal consistency rule (see the module).

    ``prob`` is ``(year, y, x)`` mining probability (NaN where a year has no prediction), e.g.
    from :func:`~miningxr.open_predictions`. Returns int8 ``(year, y, x)``: 1 mined, 0 not,
    -1 unknown; lazily, one task per spatial chunk with every year.
    """
    cfg = config or ChangeConfig()
    if "year" not in prob.dims:
        raise ConfigError("change over time needs predictions with a year axis (year, y, x)")
    observed = observed_mining(prob, cfg.threshold)
    if observed.chunks is not None:
        observed = observed.chunk({"year": -1})
    out = xr.apply_ufunc(
        temporal_rule,
        observed,
        kwargs={"window": cfg.window},
        input_core_dims=[["year"]],
        output_core_dims=[["year"]],
        dask="parallelized",
        output_dtypes=[np.int8],
    ).transpose(*prob.dims)
    out.name = "mining"
    out.attrs.update(
        long_name="mining after the temporal consistency rule",
        flag_values=[UNKNOWN, NOT_MINED, MINED],
        flag_meanings="unknown not_mined mined",
        window=cfg.window,
        threshold=cfg.threshold,
    )
    return out


def onset_year(mined: xr.DataArray) -> xr.DataArray:
    """The first mined year of each pixel of a consistent series (0 where never mined)."""
    out = xr.apply_ufunc(  # lazily too: one task per spatial chunk of a dask series
        _first_mined,
        mined,
        kwargs={"years": np.asarray(mined["year"].values)},
        input_core_dims=[["year"]],
        dask="parallelized",
        output_dtypes=[np.int16],
    )
    return out.rename("onset_year").assign_attrs(long_name="first year of sustained mining", nodata=0)


def _first_mined(mined: np.ndarray, years: np.ndarray) -> np.ndarray:
    hit = mined == MINED
    return np.where(hit.any(-1), years[hit.argmax(-1)], NO_YEAR_VALUE).astype(np.int16)


def closure_year(mined: xr.DataArray) -> xr.DataArray:
    """The first year a pixel is not mined after its last mined year: a mine that closed
    (0 where it never was mined or still is at the end of the series)."""
    is_mined = mined == MINED
    reverse = is_mined.isel(year=slice(None, None, -1))
    last = mined.sizes["year"] - 1 - reverse.argmax("year")  # index of the last mined year
    after = last + 1
    closed = is_mined.any("year") & (after < mined.sizes["year"])
    next_state = mined.isel(year=after.clip(max=mined.sizes["year"] - 1))
    closed = closed & (next_state == NOT_MINED)
    years = mined["year"].isel(year=after.clip(max=mined.sizes["year"] - 1)).drop_vars("year")
    out = xr.where(closed, years, NO_YEAR_VALUE).astype(np.int16)
    return out.rename("closure_year").assign_attrs(long_name="first year after the mine closed", nodata=0)


def change_table(
    mined: xr.DataArray, groups: xr.DataArray | None = None, names: dict[int, str] | None = None
) -> pd.DataFrame:
    """Mined, new and lost km2 per year and group from a consistent series.

    ``groups`` is an integer ``(y, x)`` raster on the same grid (0 = in no group), e.g. polygon
    ids or countries rasterized; ``names`` names its values. Without it, one group ``all``.
    New km2 in a year are pixels mined that year and known as not mined the year before; lost,
    the reverse; the first year has no new or lost area. A group with nothing mined, new or lost
    in a year has no row for it.
    """
    state = np.asarray(mined.transpose("year", "y", "x").values).reshape(mined.sizes["year"], -1)
    ids = (
        np.asarray(groups.values).ravel().astype(np.int64)
        if groups is not None
        else np.ones(state.shape[1], np.int64)
    )
    n = int(ids.max()) + 1 if ids.size else 1
    is_mined = state == MINED
    # new: mined after a year known as not mined; lost: the reverse (unknown years count as neither)
    new = np.zeros_like(is_mined)
    lost = np.zeros_like(is_mined)
    new[1:] = is_mined[1:] & (state[:-1] == NOT_MINED)
    lost[1:] = (state[1:] == NOT_MINED) & is_mined[:-1]
    rows = []
    for k, year in enumerate(int(y) for y in mined.year.values):
        per = [np.bincount(ids, weights=a[k], minlength=n) for a in (is_mined, new, lost)]
        for g in np.flatnonzero(per[0] + per[1] + per[2] > 0) if groups is not None else [1]:
            if groups is not None and g == 0:
                continue  # in no group
            name = (names or {}).get(int(g), str(int(g))) if groups is not None else "all"
            rows.append((year, name, *(float(c[g]) * PIXEL_AREA_KM2 for c in per)))
    table = pd.DataFrame(rows, columns=["year", "group", "mined_km2", "new_km2", "lost_km2"]).astype(
        {"year": "int64", "group": "str", "mined_km2": "float64", "new_km2": "float64", "lost_km2": "float64"}
    )
    return table.sort_values(["group", "year"]).reset_index(drop=True)


def summary(table: pd.DataFrame) -> dict[str, Any]:
    """Totals of a change table: the first and last year's mined km2 and the km2 gained
    (``years`` is None for an empty table: nothing was mined in any year)."""
    by_year = table.groupby("year")[["mined_km2", "new_km2", "lost_km2"]].sum()
    if by_year.empty:
        return {"years": None, "mined_km2_first": 0.0, "mined_km2_last": 0.0, "new_km2": 0.0, "lost_km2": 0.0}
    return {
        "years": [int(by_year.index.min()), int(by_year.index.max())],
        "mined_km2_first": float(by_year.mined_km2.iloc[0]),
        "mined_km2_last": float(by_year.mined_km2.iloc[-1]),
        "new_km2": float(by_year.new_km2.sum()),
        "lost_km2": float(by_year.lost_km2.sum()),
    }


# --------------------------------------------------------------------------- against a reference


def flicker(series: xr.DataArray | np.ndarray, where: np.ndarray | None = None) -> float:
    """Mined/not-mined switches per pixel per decade of a ``(year, ...)`` series.

    ``series`` holds 1 (mined), 0 (not) and NaN or -1 (unknown); a switch is a change between
    two consecutive known years, gaps skipped. ``where`` (a boolean mask over the other axes)
    picks the pixels counted, e.g. those ever mined; by default all.

    >>> flicker(np.array([0, 1, 0, np.nan, 1, 1, 1, 1, 1, 1, 1.0]))  # 3 switches in 10 years
    3.0
    """
    a = np.asarray(series)
    switches, pixels = _switches(a, where)
    return float(switches / pixels / (a.shape[0] - 1) * 10) if pixels and a.shape[0] > 1 else 0.0


def _switches(series: np.ndarray, where: np.ndarray | None) -> tuple[int, int]:
    """The switches of :func:`flicker` and the number of pixels they were counted over."""
    a = np.asarray(series, dtype=np.float32)
    a = np.where(a < 0, np.nan, a).reshape(a.shape[0], -1)
    if where is not None:
        a = a[:, np.asarray(where).ravel()]
    if a.shape[1] == 0 or a.shape[0] < 2:
        return 0, a.shape[1]
    # forward-fill along time so that a gap neither switches nor hides a switch
    known = ~np.isnan(a)
    filled = _forward_fill(a, known, axis=0)
    switches = (np.abs(np.diff(filled, axis=0)) > 0.5) & known[1:]
    return int(switches.sum()), a.shape[1]


def change_accuracy(
    mined: xr.DataArray,
    truth: xr.DataArray,
    *,
    mine_ids: xr.DataArray | None = None,
    opened: dict[int, int] | None = None,
    observed: xr.DataArray | None = None,
) -> dict[str, Any]:
    """How well a consistent series follows a reference: area per year, onset years, flicker.

    ``mined`` is a :func:`consistent_mining` series and ``truth`` the true ``(year, y, x)``
    mining (1/0) on the same grid and years, e.g. the synthetic source's
    :func:`~miningxr.sources.synthetic.mining_truth`. Either may be lazy: they are read a strip
    of chunk rows at a time, so memory stays at one strip of every year. Returns:

    - ``per_year``: year, true and found km2, and their relative error;
    - ``onset_mae_years``: for each mine of ``mine_ids`` (a ``(y, x)`` raster of ids over each
      mine's first footprint) that ``opened`` (id -> year) after the first year, the median
      onset found over its footprint against its opening year; the mean absolute error over
      the mines found, and ``mines_missed``, those with no onset at all;
    - ``flicker``: switches per pixel per decade over the pixels ever mined in the truth, the
      series or ``observed`` (the thresholded yearly predictions before the rule, NaN where
      unknown), of each of them.
    """
    years = [int(y) for y in mined.year.values]
    mined = mined.transpose("year", "y", "x")
    truth = truth.transpose("year", "y", "x")
    if [int(y) for y in truth.year.values] != years or truth.shape != mined.shape:
        raise ConfigError("the truth must cover the same years and pixels as the series it checks")
    found = np.zeros(len(years))
    true = np.zeros(len(years))
    switches = dict.fromkeys(("truth", "consistent", "observed"), 0)
    pixels = 0
    wanted = {mid: y for mid, y in (opened or {}).items() if years[0] < y <= years[-1]}
    onsets: dict[int, list[np.ndarray]] = {}  # the mines whose first footprint is in the grid
    step = mined.chunks[1][0] if mined.chunks is not None else mined.sizes["y"]
    for r0 in range(0, mined.sizes["y"], step):
        rows = {"y": slice(r0, r0 + step)}
        m = np.asarray(mined.isel(rows).values)
        t = np.asarray(truth.isel(rows).values).astype(bool)
        is_mined = m == MINED
        found += is_mined.sum(axis=(1, 2))
        true += t.sum(axis=(1, 2))
        ever = t.any(axis=0) | is_mined.any(axis=0)
        if observed is not None:
            o = np.asarray(observed.transpose("year", "y", "x").isel(rows).values)
            ever |= (o == 1).any(axis=0)
            switches["observed"] += _switches(o, ever)[0]
        pixels += int(ever.sum())
        switches["truth"] += _switches(t, ever)[0]
        switches["consistent"] += _switches(m, ever)[0]
        if wanted and mine_ids is not None:
            ids = np.asarray(mine_ids.isel(rows).values)
            onset = np.where(is_mined.any(axis=0), np.asarray(years)[is_mined.argmax(axis=0)], NO_YEAR_VALUE)
            for mid in np.intersect1d(np.unique(ids), list(wanted)):
                onsets.setdefault(int(mid), []).append(onset[(ids == mid) & (onset != NO_YEAR_VALUE)])
    found_km2, true_km2 = found * PIXEL_AREA_KM2, true * PIXEL_AREA_KM2
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(true_km2 > 0, (found_km2 - true_km2) / true_km2, np.nan)
    per_year = pd.DataFrame(
        {"year": years, "true_km2": true_km2, "found_km2": found_km2, "relative_error": rel}
    )
    report: dict[str, Any] = {"per_year": per_year}
    if wanted and mine_ids is not None:
        rows_ = []
        for mid, parts in onsets.items():
            got = np.concatenate(parts)
            rows_.append((mid, wanted[mid], float(np.median(got)) if got.size else np.nan))
        mines = pd.DataFrame(rows_, columns=["MINE_ID", "opened", "onset_found"])
        err = (mines.onset_found - mines.opened).abs()
        report.update(
            onset_mines=mines,
            onset_mae_years=float(err.mean()) if err.notna().any() else float("nan"),
            mines_missed=int(err.isna().sum()),
        )
    decades = max(len(years) - 1, 1) / 10
    keys = ("truth", "consistent", "observed") if observed is not None else ("truth", "consistent")
    report["flicker"] = {k: switches[k] / max(pixels, 1) / decades for k in keys}
    return report


# --------------------------------------------------------------------------- a prediction store

#: how change tables are grouped
GROUPINGS = ("region", "country", "polygon")


def change(
    predictions: Where,
    out_dir: Where | None = None,
    *,
    by: str = "region",
    polygons: Any = None,
    config: ChangeConfig | None = None,
    animate: bool = False,
    store: Where | None = None,
) -> pd.DataFrame:
    """Change over time of a prediction store of several years, region by region.

    Applies :func:`consistent_mining` to every region the store has predicted, and returns the
    :func:`change_table` grouped ``by`` region, country (the built-in table) or input polygon.
    With ``out_dir`` it also writes:

    - ``change.csv`` and ``change.parquet``: the table;
    - ``onset[_REGION].tif`` and ``closure[_REGION].tif``: COGs of the onset and closure years
      (0 = none), the onset with a colour table from the first year (dark) to the last (yellow);
    - ``expansion.gpkg``: one valid polygon per year and connected patch of new mining, with
      ``year``, ``AREA`` (km2) and ``group``;
    - ``change.png`` (mined km2 against year, per group), ``onset.png`` (the onset map of the
      first region, over its false-colour composite when the imagery ``store`` is given) and,
      with ``animate``, ``mining.gif`` (the consistent yearly maps).
    """
    cfg = config or ChangeConfig()
    if by not in GROUPINGS:
        raise ConfigError(f"unknown grouping {by!r}; choose one of {', '.join(GROUPINGS)} (--by)")
    if by == "polygon" and polygons is None:
        raise ConfigError("--by polygon groups by input polygons: give them (--polygons FILE)")
    gdf = read_polygons(polygons, require_columns=by == "country") if polygons is not None else None
    regions = prediction_regions(predictions)
    loc = (
        check_output_folder(out_dir, holds="the change table, rasters and pictures")
        if out_dir is not None
        else None
    )
    # every region checked (lazily) before the first is computed or written
    probs = {
        name: open_predictions(predictions, xr.Dataset(coords=g.coords())) for name, g in regions.items()
    }
    for prob in probs.values():
        if prob.sizes["year"] < 2:
            raise ConfigError(
                f"the predictions in {predictions} hold one year ({int(prob.year[0])}) there: change "
                "over time needs several; predict more (`miningxr predict ... --years ...`)"
            )
    # in object storage: written in a local folder, each file uploaded whole at the end
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(staged(loc)) if loc is not None else None
        tables, expansions, frames = [], [], []
        for name, gslice in regions.items():
            prob = probs[name]
            mined = consistent_mining(prob, cfg).compute()
            groups, names = _groups(gslice, by, gdf, name)
            tables.append(change_table(mined, groups, names))
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                onset, closure = onset_year(mined), closure_year(mined)
                suffix = "" if len(regions) == 1 else f"_{name}"
                years = [int(y) for y in mined.year.values]
                _year_cog(onset, out / f"onset{suffix}.tif", years)
                _year_cog(closure, out / f"closure{suffix}.tif", years)
                expansions.append(_expansion(mined, groups, names))
                frames.append((name, mined, onset))
        table = pd.concat(tables, ignore_index=True).groupby(["year", "group"], as_index=False).sum()
        if out is not None:
            table.to_csv(out / "change.csv", index=False)
            table.to_parquet(out / "change.parquet", index=False)
            gpd.GeoDataFrame(pd.concat(expansions, ignore_index=True), crs="EPSG:4326").to_file(
                out / "expansion.gpkg", layer="expansion", driver="GPKG"
            )
            plot_change(table, out / "change.png")
            first_region = frames[0][1]
            span = (int(first_region.year.values[0]), int(first_region.year.values[-1]))
            plot_onset(
                frames[0][2], out / "onset.png", background=_composite(store, frames[0][2]), years=span
            )
            if animate:
                animate_mining(frames[0][1], out / "mining.gif")
    return table


def _groups(gslice: GridSlice, by: str, gdf: Any, region: str) -> tuple[xr.DataArray, dict[int, str]]:
    """The group raster of a region and the names of its values."""
    coords = gslice.coords()
    if by == "region":
        ones = xr.DataArray(np.ones(gslice.shape, np.int32), dims=("y", "x"), coords=coords)
        return ones, {1: region}
    if by == "country":
        table = country_table().to_crs(CRS_GRID.to_wkt())
        shapes, names = table, dict(enumerate(table["ISO3_CODE"], start=1))
    else:
        shapes = gdf
        label = "MINE_ID" if "MINE_ID" in gdf.columns else None
        names = {k + 1: str(gdf[label].iloc[k]) if label else str(k) for k in range(len(gdf))}
    ids = rasterize_blocks(
        gslice, shapes, (gslice.shape[0],), (gslice.shape[1],), values=np.arange(1, len(shapes) + 1)
    )
    return xr.DataArray(ids.compute(), dims=("y", "x"), coords=coords), names


def _year_cog(years_raster: xr.DataArray, path: Path, years: list[int]) -> None:
    """A uint16 COG of years (0 = none) with a colour table from the first year to the last."""
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    span = max(years[-1] - years[0], 1)
    colours = {0: (0, 0, 0, 0)}
    for y in range(years[0], years[-1] + 1):
        r, g, b, _ = cmap((y - years[0]) / span)
        colours[y] = (int(r * 255), int(g * 255), int(b * 255), 255)
    to_cog(years_raster.astype(np.uint16), path, nodata=0, colormap=colours)


def _expansion(mined: xr.DataArray, groups: xr.DataArray | None, names: dict[int, str]) -> pd.DataFrame:
    """One polygon per year and connected patch of new mining, with its year, area and group."""
    is_mined = mined == MINED
    new = is_mined & (mined.shift(year=1, fill_value=UNKNOWN) == NOT_MINED)
    parts = []
    for year in mined.year.values[1:]:
        patch = new.sel(year=year).astype(np.float32)
        gdf = mine_polygons_from(patch, threshold=0.5, min_pixels=1)
        if gdf.empty:
            continue
        group: str | list[str] = ""
        if groups is not None:
            points = gdf.to_crs(CRS_GRID.to_wkt()).representative_point()
            at = groups.sel(
                x=xr.DataArray(points.x.values), y=xr.DataArray(points.y.values), method="nearest"
            )
            group = [names.get(int(g), "") for g in at.values]
        parts.append(gdf.assign(year=int(year), group=group))
    columns = ["year", "AREA", "pixels", "group", "geometry"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def plot_change(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """PNG of the mined km2 against year, one line per group (the ten largest)."""
    fig = Figure(figsize=(9, 5))
    ax = fig.subplots()
    top = table.groupby("group").mined_km2.max().nlargest(10).index
    for group, rows in table[table.group.isin(top)].groupby("group"):
        ax.plot(rows.year, rows.mined_km2, marker="o", ms=3, label=str(group))
    ax.set_xlabel("year")
    ax.set_ylabel("mined km2 (after the temporal rule)")
    ax.set_title("Mining area over time")
    if table.empty:
        ax.text(0.5, 0.5, "nothing mined in any year", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return Path(path)


def plot_onset(
    onset: xr.DataArray,
    path: str | os.PathLike,
    *,
    background: np.ndarray | None = None,
    years: tuple[int, int] | None = None,
) -> Path:
    """PNG map of the onset year of every mined pixel, over an RGB ``background`` of the same
    shape (a false-colour composite, see :func:`~miningxr.evaluate.false_colour`) when given."""
    fig = Figure(figsize=(8, 7))
    ax = fig.subplots()
    if background is not None:
        ax.imshow(background)
    values = onset.values.astype(float)
    values[values == NO_YEAR_VALUE] = np.nan
    first, last = years or (np.nanmin(values, initial=0), np.nanmax(values, initial=1))
    im = ax.imshow(values, cmap="viridis", vmin=first, vmax=max(last, first + 1), interpolation="nearest")
    hi = max(int(last), int(first) + 1)
    ticks = sorted({round(float(t)) for t in np.linspace(int(first), hi, min(6, hi - int(first) + 1))})
    fig.colorbar(im, ax=ax, fraction=0.04, label="onset year", ticks=ticks, format="%d")
    ax.set_title("When mining started")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return Path(path)


def _composite(store: Where | None, like: xr.DataArray) -> np.ndarray | None:
    """The SWIR2-NIR-red composite of the store's latest year over ``like``, or None without a
    store (or where it holds no imagery)."""
    if store is None:
        return None
    try:
        img = open_store(store, region=GridSlice.of_coords(like)).landsat.isel(year=-1)
    except MiningxrError:
        return None
    return false_colour(img) if bool(img.notnull().any()) else None


def animate_mining(mined: xr.DataArray, path: str | os.PathLike) -> Path:
    """An animated GIF of the consistent yearly maps (mined in yellow)."""
    from PIL import Image  # matplotlib's own dependency

    step = max(1, max(mined.sizes["y"], mined.sizes["x"]) // 512)
    frames = []
    for year in mined.year.values:
        m = mined.sel(year=year).values[::step, ::step]
        rgb = np.zeros((*m.shape, 3), np.uint8)
        rgb[m == MINED] = (250, 220, 40)
        rgb[m == NOT_MINED] = (30, 60, 40)
        frames.append(Image.fromarray(rgb))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=500, loop=0)
    return Path(path)
