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

from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .config import ChangeConfig
from .errors import ConfigError
from .grid import PIXEL_AREA_KM2

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
    # bridge: each year takes the last known year at or before it (forward fill along time)
    last = np.where(known, idx, -1)
    np.maximum.accumulate(last, axis=-1, out=last)
    filled = np.take_along_axis(obs, np.maximum(last, 0), axis=-1)
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


def consistent_mining(prob: xr.DataArray, config: ChangeConfig | None = None) -> xr.DataArray:
    """Mined or not, year by year, after the temporal consistency rule (see the module).

    ``prob`` is ``(year, y, x)`` mining probability (NaN where a year has no prediction), e.g.
    from :func:`~miningxr.open_predictions`. Returns int8 ``(year, y, x)``: 1 mined, 0 not,
    -1 unknown; lazily, one task per spatial chunk with every year.
    """
    cfg = config or ChangeConfig()
    if "year" not in prob.dims:
        raise ConfigError("change over time needs predictions with a year axis (year, y, x)")
    observed = xr.where(prob.isnull(), np.nan, (prob >= cfg.threshold).astype(np.float32))
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
    years = mined["year"]
    first = (mined == MINED).argmax("year")
    ever = (mined == MINED).any("year")
    out = xr.where(ever, years.isel(year=first).drop_vars("year"), NO_YEAR_VALUE).astype(np.int16)
    return out.rename("onset_year").assign_attrs(long_name="first year of sustained mining", nodata=0)


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
    New km2 in a year are pixels mined that year and not the year before; lost, the reverse;
    the first year has no new or lost area.
    """
    ids = groups if groups is not None else xr.zeros_like(mined.isel(year=0), dtype=np.int32) + 1
    is_mined = (mined == MINED).astype(np.int64)
    before = is_mined.shift(year=1, fill_value=-1)
    new = ((is_mined == 1) & (before == 0)).astype(np.int64)
    lost = ((is_mined == 0) & (before == 1) & (mined != UNKNOWN)).astype(np.int64)
    frames = []
    for name, arr in (("mined", is_mined), ("new", new), ("lost", lost)):
        per = arr.groupby(ids.rename("group")).sum() if groups is not None else arr.sum(("y", "x"))
        frames.append(per.rename(name).to_dataframe()[[name]])
    table = pd.concat(frames, axis=1).reset_index()
    if groups is None:
        table["group"] = "all"
    else:
        table = table[table["group"] != 0]
        table["group"] = table["group"].map(lambda g: (names or {}).get(int(g), str(int(g))))
    for name in ("mined", "new", "lost"):
        table[f"{name}_km2"] = table.pop(name) * PIXEL_AREA_KM2
    return (
        table[["year", "group", "mined_km2", "new_km2", "lost_km2"]]
        .sort_values(["group", "year"])
        .reset_index(drop=True)
    )


def summary(table: pd.DataFrame) -> dict[str, Any]:
    """Totals of a change table: the first and last year's mined km2 and the km2 gained."""
    by_year = table.groupby("year")[["mined_km2", "new_km2", "lost_km2"]].sum()
    return {
        "years": [int(by_year.index.min()), int(by_year.index.max())],
        "mined_km2_first": float(by_year.mined_km2.iloc[0]),
        "mined_km2_last": float(by_year.mined_km2.iloc[-1]),
        "new_km2": float(by_year.new_km2.sum()),
        "lost_km2": float(by_year.lost_km2.sum()),
    }
