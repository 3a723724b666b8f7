"""The embedded synthetic Landsat source: no account, no network, any slice of the globe.

Every value is a pure function of ``(seed, global pixel, year)``: noise comes from integer
hashes of global pixel indices, and mines from a global lattice of cells, each of which may hold
one mine whose outline, growth and structure are hashed from the cell. Any slice, in any
chunking, on any worker, therefore gives the same numbers, and the mines' polygons can be
emitted as a GeoPackage in the schema of the global mining polygons v2 data set.

Example
-------
>>> from miningxr.grid import Region
>>> from miningxr.sources.synthetic import open_synthetic, mine_polygons
>>> ds = open_synthetic(Region.from_bbox((29.0, -26.0, 29.05, -25.95)), 2020)
>>> ds.landsat.dims
('year', 'band', 'y', 'x')
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import dask.array as da
import geopandas as gpd
import numpy as np
import xarray as xr
from dask.base import tokenize
from shapely.geometry import Polygon

from ..config import BANDS, SyntheticConfig
from ..encoding import encode_dn
from ..grid import CRS_GRID, GridSlice, as_slice, block_edges, country_table, pixel_corner
from .common import check_years, landsat_dataset

# Landsat-like spectra: blue green red nir swir1 swir2 reflectance, then thermal as
# (K - 273.15) / 100. Mines are bright in SWIR with low NDVI; rock outcrops are the confuser.
_SPECTRA = {
    "veg": [0.03, 0.06, 0.04, 0.38, 0.19, 0.09, 0.22],
    "soil": [0.07, 0.10, 0.14, 0.24, 0.30, 0.23, 0.30],
    "rock": [0.10, 0.13, 0.17, 0.22, 0.27, 0.20, 0.31],
    "water": [0.05, 0.05, 0.03, 0.02, 0.01, 0.005, 0.18],
    "mine": [0.15, 0.20, 0.25, 0.27, 0.43, 0.41, 0.37],
    "tailings": [0.26, 0.31, 0.34, 0.35, 0.46, 0.39, 0.34],
    "pit": [0.09, 0.11, 0.13, 0.16, 0.27, 0.26, 0.35],
    "pitwater": [0.04, 0.08, 0.07, 0.03, 0.02, 0.01, 0.21],
}
_SPEC = {k: np.asarray(v, dtype=np.float32)[:, None, None] for k, v in _SPECTRA.items()}
_M = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a good avalanche on uint64 arrays (wrapping arithmetic)."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _hash(*keys: np.ndarray | int) -> np.ndarray:
    h: np.ndarray = np.asarray(np.uint64(0x9E3779B97F4A7C15))
    with np.errstate(over="ignore"):
        for k in keys:
            h = _mix(np.asarray(k).astype(np.uint64) + h * np.uint64(0x100000001B3))
    return h


def _unit(h: np.ndarray) -> np.ndarray:
    """uint64 hash -> float in [0, 1)."""
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _value_noise(seed: int, field: int, rows: np.ndarray, cols: np.ndarray, cell: int) -> np.ndarray:
    """Smooth noise in [0, 1] on global pixels, bilinear between hashed lattice values."""
    lr, lc = rows // cell, cols // cell
    fr = (rows % cell + 0.5) / cell
    fc = (cols % cell + 0.5) / cell
    fr = fr * fr * (3 - 2 * fr)  # smoothstep: no creases at lattice lines
    fc = fc * fc * (3 - 2 * fc)
    ur = np.arange(lr.min(), lr.max() + 2)
    uc = np.arange(lc.min(), lc.max() + 2)
    lat = _unit(_hash(seed, field, ur[:, None], uc[None, :])).astype(np.float32)
    ir, ic = lr - ur[0], lc - uc[0]
    # separable: interpolate the few lattice rows along x first, then gather rows
    along = lat[:, ic] * (1 - fc).astype(np.float32) + lat[:, ic + 1] * fc.astype(np.float32)
    wr = fr.astype(np.float32)[:, None]
    return along[ir] * (1 - wr) + along[ir + 1] * wr


class _Mine:
    __slots__ = ("cx", "cy", "id", "radius", "start", "vertices")

    def __init__(self, mid: int, cx: float, cy: float, radius: float, start: int, vertices: np.ndarray):
        self.id, self.cx, self.cy, self.radius, self.start, self.vertices = (
            mid,
            cx,
            cy,
            radius,
            start,
            vertices,
        )

    def scale(self, year: int) -> float:
        """Mines open in ``start`` and grow to full size over 15 years."""
        if year < self.start:
            return 0.0
        return float(np.clip(0.55 + 0.45 * (year - self.start) / 15.0, 0.55, 1.0))

    def polygon(self, year: int) -> Polygon | None:
        """Outline in grid CRS metres, or None before the mine opened."""
        s = self.scale(year)
        if s == 0:
            return None
        col = self.cx + s * self.vertices[:, 0]
        row = self.cy + s * self.vertices[:, 1]
        x, y = pixel_corner(row, col)
        return Polygon(np.column_stack([x, y]))


@lru_cache(maxsize=4096)
def _cell_mine(cfg: SyntheticConfig, cr: int, cc: int) -> _Mine | None:
    u = _unit(_hash(cfg.seed, 1000, cr, cc, np.arange(8)))
    if u[0] >= cfg.mine_probability:
        return None
    lo, hi = cfg.mine_radius
    radius = lo + (hi - lo) * u[1]
    margin = hi * 1.35
    span = cfg.mine_cell - 2 * margin
    cy = cr * cfg.mine_cell + margin + span * u[2]
    cx = cc * cfg.mine_cell + margin + span * u[3]
    start = int(cfg.first_year + u[4] * 30)
    # an irregular, elongated outline: 24 vertices with smoothed random radii
    n = 24
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    jitter = _unit(_hash(cfg.seed, 1001, cr, cc, np.arange(n)))
    jitter = (jitter + np.roll(jitter, 1) + np.roll(jitter, -1)) / 3
    rad = radius * (0.75 + 0.5 * jitter)
    aspect, theta = 1 + 0.8 * u[5], np.pi * u[6]
    x, y = rad * np.cos(ang) * aspect**0.5, rad * np.sin(ang) / aspect**0.5
    vx = x * np.cos(theta) - y * np.sin(theta)
    vy = x * np.sin(theta) + y * np.cos(theta)
    mid = int(cr) * 10_000_000 + int(cc)
    return _Mine(mid, cx, cy, radius, start, np.column_stack([vx, vy]))


def _mines_in(cfg: SyntheticConfig, row0: int, row1: int, col0: int, col1: int) -> list[_Mine]:
    """Every mine whose cell could reach the pixel window."""
    c = cfg.mine_cell
    return [
        m
        for cr in range(max(row0 // c, 0), row1 // c + 1)
        for cc in range(max(col0 // c, 0), col1 // c + 1)
        if (m := _cell_mine(cfg, cr, cc)) is not None
    ]


def _block(cfg: SyntheticConfig, year: int, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
    """The packed int16 ``(1, 7, rows, cols)`` block of one year."""
    rows = np.arange(row0, row1, dtype=np.int64)
    cols = np.arange(col0, col1, dtype=np.int64)
    s = cfg.seed
    veg = 0.65 * _value_noise(s, 1, rows, cols, 256) + 0.35 * _value_noise(s, 2, rows, cols, 48)
    veg = np.clip(veg + 0.25 * (_value_noise(s * 7919 + year, 3, rows, cols, 512) - 0.5), 0, 1)
    rock = _value_noise(s, 4, rows, cols, 64) > 0.8
    water = _value_noise(s, 5, rows, cols, 384) > 0.86
    bright = 0.85 + 0.3 * _value_noise(s, 6, rows, cols, 96)

    img = veg * (_SPEC["veg"] - _SPEC["soil"]) + _SPEC["soil"]
    img[:, rock] = _SPEC["rock"][:, 0]
    img *= bright
    img[:, water] = _SPEC["water"][:, 0]

    mines = [(m, p) for m in _mines_in(cfg, row0, row1, col0, col1) if (p := m.polygon(year)) is not None]
    if mines:
        ids = GridSlice(row0, row1, col0, col1).rasterize(
            ((p, i + 1) for i, (_, p) in enumerate(mines)), dtype=np.int32
        )
        ri, ci = np.nonzero(ids)
        if len(ri):
            k = ids[ri, ci] - 1
            cx = np.array([m.cx for m, _ in mines])[k]
            cy = np.array([m.cy for m, _ in mines])[k]
            rad = np.array([m.radius * m.scale(year) for m, _ in mines])[k]
            d = np.hypot(rows[ri] - cy, cols[ci] - cx) / rad
            tail = _value_noise(s, 7, rows, cols, 12)[ri, ci] > 0.62
            cls = np.where(d < 0.14, 3, np.where(d < 0.42, 2, tail.astype(np.int64)))
            table = np.stack([_SPECTRA[n] for n in ("mine", "tailings", "pit", "pitwater")], axis=1)
            img[:, ri, ci] = table[:, cls].astype(np.float32)

    # per-pixel sensor noise: one 64-bit hash per pixel gives four 16-bit uniforms
    h1 = _hash(s, 8, year, rows[:, None], cols[None, :])
    h2 = _mix(h1 + np.uint64(0x632BE59BD9B4E019))
    u = (
        np.stack(
            [
                ((h >> np.uint64(16 * i)) & np.uint64(0xFFFF)).astype(np.float32)
                for h in (h1, h2)
                for i in range(4)
            ][:7]
        )
        / 65535.0
    )
    amp = 2 * cfg.noise * np.asarray([1, 1, 1, 1.5, 1.5, 1.5, 1], np.float32)[:, None, None]
    img += amp * (u - np.float32(0.5))
    return encode_dn(img)[None]


def open_synthetic(
    region,
    years: int | Sequence[int],
    *,
    config: SyntheticConfig | None = None,
    chunks: int = 512,
    decode: bool = True,
) -> xr.Dataset:
    """Open the synthetic cube for a region (or :class:`~miningxr.grid.GridSlice`) and year(s).

    The slice is the region's bounding slice of the global grid (aligned to ``chunks``); the
    result is lazy, one dask task per ``(year, chunks x chunks)`` block.
    """
    cfg = config or SyntheticConfig()
    yrs = check_years(years, cfg.first_year, cfg.last_year, "synthetic")
    gslice = as_slice(region)
    return landsat_dataset(
        synthetic_dn(gslice, yrs, cfg, chunks),
        gslice,
        yrs,
        "synthetic",
        decode=decode,
        attrs={"synthetic_seed": cfg.seed},
    )


def synthetic_dn(gslice: GridSlice, years: Sequence[int], cfg: SyntheticConfig, chunks: int) -> da.Array:
    """The packed ``(year, band, y, x)`` int16 dask array; blocks start on multiples of ``chunks``."""
    redges = block_edges(gslice.row0, gslice.row1, chunks)
    cedges = block_edges(gslice.col0, gslice.col1, chunks)
    name = "synthetic-" + tokenize(cfg, gslice, tuple(years), chunks)
    dsk = {
        (name, yi, 0, i, j): (_block, cfg, year, redges[i], redges[i + 1], cedges[j], cedges[j + 1])
        for yi, year in enumerate(years)
        for i in range(len(redges) - 1)
        for j in range(len(cedges) - 1)
    }
    chunks_ = ((1,) * len(years), (len(BANDS),), tuple(np.diff(redges)), tuple(np.diff(cedges)))
    return da.Array(dsk, name, chunks_, dtype=np.int16)


def mine_polygons(region, year: int, *, config: SyntheticConfig | None = None):
    """The synthetic mines open in ``year`` within a region, as a GeoDataFrame (EPSG:4326).

    Columns follow the global mining polygons v2 schema: ``ISO3_CODE``, ``COUNTRY_NAME``,
    ``AREA`` (km2), plus ``MINE_ID``.
    """
    cfg = config or SyntheticConfig()
    check_years(year, cfg.first_year, cfg.last_year, "synthetic")
    gslice = as_slice(region)
    footprint = gslice.geobox.extent.geom
    recs = []
    for m in _mines_in(cfg, gslice.row0, gslice.row1, gslice.col0, gslice.col1):
        poly = m.polygon(year)
        if poly is not None and poly.intersects(footprint):
            recs.append({"MINE_ID": m.id, "AREA": poly.area / 1e6, "geometry": poly})
    gdf = gpd.GeoDataFrame(
        recs, columns=["MINE_ID", "AREA", "geometry"], geometry="geometry", crs=CRS_GRID.to_wkt()
    )
    gdf = gdf.to_crs("EPSG:4326")
    countries = country_table()[["ISO3_CODE", "COUNTRY_NAME", "geometry"]]
    pts = gdf.copy()
    pts["geometry"] = gdf.geometry.representative_point()
    joined = gpd.sjoin(pts, countries, how="left", predicate="within")
    joined = joined[~joined.index.duplicated()]
    gdf["ISO3_CODE"] = joined["ISO3_CODE"].fillna("").values
    gdf["COUNTRY_NAME"] = joined["COUNTRY_NAME"].fillna("").values
    return gdf[["ISO3_CODE", "COUNTRY_NAME", "AREA", "MINE_ID", "geometry"]]
