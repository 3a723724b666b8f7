"""How values are stored and shown: the int16 packing of the imagery, CF attributes, normalization.

Every band of the ``landsat`` variable shares one CF packing: ``value = DN * scale_factor +
add_offset``, with ``_FillValue`` for no data. Reflectance bands are surface reflectance;
``thermal`` is brightness temperature as (T[K] - 273.15) / 100, so that one int16 scale serves
all seven bands (see docs/store.md). Sources, the store, the loader and prediction all use these
functions, so each sees identical numbers.

Example
-------
>>> import numpy as np
>>> dn = encode_dn(np.array([0.1234, np.nan, 0.5]))
>>> dn
array([  1234, -32768,   5000], dtype=int16)
>>> decode_dn(dn)
array([0.1234,    nan, 0.5   ], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

SCALE_FACTOR: float = 1e-4
ADD_OFFSET: float = 0.0
FILL_VALUE: int = -32768

#: the decoded values int16 holds, the fill value left out for no data
_LOWEST = (FILL_VALUE + 1) * SCALE_FACTOR + ADD_OFFSET
_HIGHEST = np.iinfo(np.int16).max * SCALE_FACTOR + ADD_OFFSET

#: CF attributes every variable on the grid carries: its CRS is the ``spatial_ref`` coordinate
GRID_MAPPING_ATTRS: dict[str, Any] = {"coordinates": "spatial_ref", "grid_mapping": "spatial_ref"}

#: CF attributes of the mining mask (stored, rasterized or exported)
MASK_ATTRS: dict[str, Any] = {
    "long_name": "mining polygons rasterized",
    "flag_values": [0, 1],
    "flag_meanings": "other mining",
}


#: probability in a prediction store: uint8 steps of 1/250 (0 and 1 exact, the largest error
#: 0.002), 255 where nothing was predicted; float32 stores stay available (``dtype="float32"``)
PROB_SCALE: float = 1 / 250
PROB_NODATA: int = 255


def probability_attrs() -> dict[str, Any]:
    """The CF packing of a uint8 ``mining_probability``, which xarray decodes to floats (NaN where
    nothing was predicted)."""
    return {"scale_factor": PROB_SCALE, "add_offset": 0.0, "_FillValue": PROB_NODATA}


def encode_probability(p: np.ndarray) -> np.ndarray:
    """Pack probabilities (NaN = not predicted) into uint8 steps of :data:`PROB_SCALE`.

    >>> encode_probability(np.array([0.0, 0.5, 0.9991, np.nan, 1.0], np.float32))
    array([  0, 125, 250, 255, 250], dtype=uint8)
    """
    p = np.asarray(p, dtype=np.float32)
    out = np.rint(np.clip(p, 0, 1) / np.float32(PROB_SCALE))
    return np.where(np.isnan(p), PROB_NODATA, out).astype(np.uint8)


def decode_probability(u: np.ndarray) -> np.ndarray:
    """What a uint8 prediction store reads back as (xarray's CF decoding, as float32).

    >>> decode_probability(np.array([0, 125, 250, 255], np.uint8))
    array([0. , 0.5, 1. , nan], dtype=float32)
    """
    u = np.asarray(u)
    return np.where(u == PROB_NODATA, np.nan, u.astype(np.float64) * PROB_SCALE).astype(np.float32)


def packing_attrs() -> dict[str, Any]:
    """The CF packing of ``landsat``: ``scale_factor``, ``add_offset`` and ``_FillValue``."""
    return {"scale_factor": SCALE_FACTOR, "add_offset": ADD_OFFSET, "_FillValue": FILL_VALUE}


def landsat_attrs() -> dict[str, Any]:
    """Every attribute of the packed ``landsat`` variable: CF packing, name and units."""
    return {
        **packing_attrs(),
        "long_name": "Landsat C2 L2 annual composite",
        "units": "1 (reflectance); thermal: (K - 273.15) / 100",
    }


def encode_dn(values: np.ndarray) -> np.ndarray:
    """Pack decoded float values (NaN = no data) into the store's int16 numbers.

    Values beyond the int16 range are clipped to it (the fill value stays reserved for no data).
    """
    values = np.asarray(values)
    if values.dtype != np.float64:
        values = values.astype(np.float32, copy=False)
    bad = ~np.isfinite(values)
    # clipped in decoded units first: scaling a huge value would overflow to inf (read as no data)
    clipped = np.clip(values, _LOWEST, _HIGHEST)
    dn = np.rint((clipped - ADD_OFFSET) * (1 / SCALE_FACTOR))
    return dn.astype(np.int16) if not bad.any() else np.where(bad, FILL_VALUE, dn).astype(np.int16)


def decode_dn(dn: np.ndarray) -> np.ndarray:
    """The float32 values of packed int16 numbers; the fill value becomes NaN."""
    dn = np.asarray(dn)
    out = dn.astype(np.float32) * np.float32(SCALE_FACTOR) + np.float32(ADD_OFFSET)
    out[dn == FILL_VALUE] = np.nan
    return out


def normalize(dn: np.ndarray, mean: Sequence[float], std: Sequence[float], band_axis: int = -1) -> np.ndarray:
    """Packed int16 (or decoded float) values -> standardized float32; no data becomes 0.

    The same function serves training and prediction, so both see identical inputs.

    >>> normalize(np.array([[1500, FILL_VALUE]], np.int16), [0.1], [0.05], band_axis=0).round(4)
    array([[1., 0.]], dtype=float32)
    """
    shape = [1] * dn.ndim
    shape[band_axis] = -1
    m = np.asarray(mean, np.float32).reshape(shape)
    s = np.asarray(std, np.float32).reshape(shape)
    # one new array, worked on in place: the same float32 operations in the same order as
    # ((dn * scale + offset) - mean) / std, a third less time than with temporaries
    if np.issubdtype(dn.dtype, np.integer):
        invalid = dn == FILL_VALUE
        out = dn.astype(np.float32)
        out *= np.float32(SCALE_FACTOR)
        out += np.float32(ADD_OFFSET)
    else:
        out = np.array(dn, dtype=np.float32)  # a copy: the caller's block is left as it was
        invalid = ~np.isfinite(out)
    out -= m
    out /= s
    np.copyto(out, np.float32(0), where=invalid)
    return out
