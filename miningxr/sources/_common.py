"""What every source shares: the packed int16 encoding and the Dataset it returns."""

from __future__ import annotations

from collections.abc import Sequence

import dask.array as da
import numpy as np
import xarray as xr

from ..config import ADD_OFFSET, BANDS, FILL_VALUE, SCALE_FACTOR
from ..grid import GridSlice


class SourceError(ValueError):
    """A source cannot serve what was asked (a year out of range, no data, no credentials)."""


def encode_dn(values: np.ndarray) -> np.ndarray:
    """Pack decoded float values (NaN = no data) into the store's int16 numbers."""
    values = np.asarray(values)
    if values.dtype != np.float64:
        values = values.astype(np.float32, copy=False)
    dn = np.rint((values - ADD_OFFSET) * (1 / SCALE_FACTOR))
    bad = ~np.isfinite(dn)
    np.clip(dn, FILL_VALUE + 1, np.iinfo(np.int16).max, out=dn, where=~bad)
    out = dn.astype(np.int16) if not bad.any() else np.where(bad, FILL_VALUE, dn).astype(np.int16)
    return out


def cf_attrs() -> dict:
    return {"scale_factor": SCALE_FACTOR, "add_offset": ADD_OFFSET, "_FillValue": FILL_VALUE}


def check_years(years: int | Sequence[int], first: int, last: int, source: str) -> list[int]:
    years = [int(years)] if np.isscalar(years) else [int(y) for y in years]  # type: ignore[arg-type]
    if not years:
        raise SourceError("no year given")
    bad = [y for y in years if not first <= y <= last]
    if bad:
        raise SourceError(f"year(s) {bad} outside the {source} source's range {first}-{last}; "
                          f"pick years in {first}..{last}")
    return years


def landsat_dataset(dn: da.Array, gslice: GridSlice, years: Sequence[int], source: str,
                    decode: bool = True, attrs: dict | None = None) -> xr.Dataset:
    """Wrap a ``(year, band, y, x)`` int16 dask array as the cube every source returns.

    With ``decode=True`` values are reflectance (and scaled brightness temperature) as floats,
    decoded by xarray's CF machinery from the same packed numbers the store holds, so a source
    and a store read back compare exactly.
    """
    coords = gslice.coords()
    coords.update(year=("year", np.asarray(years, dtype=np.int32)), band=("band", list(BANDS)))
    var = xr.DataArray(dn, dims=("year", "band", "y", "x"), coords=coords, attrs=cf_attrs())
    var.attrs.update(long_name="Landsat C2 L2 annual composite",
                     units="1 (reflectance); thermal: (K - 273.15) / 100")
    ds = xr.Dataset({"landsat": var}, attrs={"source": source, **(attrs or {})})
    if decode:
        ds = xr.decode_cf(ds)
    ds["landsat"].attrs["grid_mapping"] = "spatial_ref"
    return ds
