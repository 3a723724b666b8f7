"""What every source shares: the year check and the Dataset it returns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ..config import BANDS, as_years
from ..encoding import landsat_attrs
from ..errors import YearError
from ..grid import GridSlice


def check_years(years: int | Sequence[int], first: int, last: int, source: str) -> list[int]:
    """``years`` as a list, refused with the range when any is outside ``first..last``."""
    out = as_years(years)
    if not out:
        raise YearError("no year given")
    bad = [y for y in out if not first <= y <= last]
    if bad:
        raise YearError(
            f"year(s) {bad} outside the {source} source's range {first}-{last}; pick years in {first}..{last}"
        )
    return out


def landsat_dataset(
    dn: da.Array,
    gslice: GridSlice,
    years: Sequence[int],
    source: str,
    decode: bool = True,
    attrs: dict[str, Any] | None = None,
) -> xr.Dataset:
    """Wrap a ``(year, band, y, x)`` int16 dask array as the cube every source returns.

    With ``decode=True`` values are reflectance (and scaled brightness temperature) as floats,
    decoded by xarray's CF machinery from the same packed numbers the store holds, so a source
    and a store read back compare exactly.
    """
    coords: dict[str, Any] = {
        **gslice.coords(),
        "year": ("year", np.asarray(years, dtype=np.int32)),
        "band": ("band", list(BANDS)),
    }
    var = xr.DataArray(dn, dims=("year", "band", "y", "x"), coords=coords, attrs=landsat_attrs())
    ds = xr.Dataset({"landsat": var}, attrs={"source": source, **(attrs or {})})
    if decode:
        ds = xr.decode_cf(ds)
    ds["landsat"].attrs["grid_mapping"] = "spatial_ref"
    return ds
