"""The embedded synthetic Landsat source: no account, no network, any slice of the globe.

Every value is a pure function of ``(seed, global pixel, year)``: noise comes from integer
hashes of global pixel indices, and mines from a global lattice of cells, each of which may hold
one mine whose outline, growth and structure are hashed from the cell. Any slice, in any
chunking, on any worker, therefore gives the same numbers, and the mines' polygons can be
emitted as a GeoPackage in the schema of the global mining polygons v2 data set.

Over the years the source holds what a change analysis must survive (see
:class:`~miningxr.config.SyntheticConfig`): mines open, grow, and some close and revegetate
(their pits stay as lakes); each year's composite has its own radiometric gain per band,
residual cloud, and in 2003-2012 Landsat 7 SLC-off stripes (no data); bare fields lie fallow
in some years and not others, and construction sites are bright bare ground for two years
before they become buildings. :func:`mine_polygons` is the truth of each year: the mines open
in it.

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
import pandas as pd
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
    # confusers: a ploughed field, a construction site, the buildings after it
    "bare": [0.11, 0.14, 0.18, 0.24, 0.35, 0.29, 0.35],
    "construction": [0.17, 0.20, 0.23, 0.27, 0.38, 0.32, 0.38],
    "urban": [0.10, 0.11, 0.12, 0.17, 0.20, 0.18, 0.42],
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
    __slots__ = ("cx", "cy", "end", "id", "radius", "start", "vertices")

    def __init__(
        self, mid: int, cx: float, cy: float, radius: float, start: int, end: int | None, vertices: np.ndarray
    ):
        self.id, self.cx, self.cy, self.radius, self.start, self.end, self.vertices = (
            mid,
            cx,
            cy,
            radius,
            start,
            end,
            vertices,
        )

    def is_open(self, year: int) -> bool:
        """Mines open in ``start`` and, if they close, are no longer mined from ``end``."""
        return self.start <= year and (self.end is None or year < self.end)

    def scale(self, year: int) -> float:
        """Mines grow from 55% to full size over 15 years; a closed mine keeps its last size."""
        if year < self.start:
            return 0.0
        if self.end is not None:
            year = min(year, self.end - 1)
        return float(np.clip(0.55 + 0.45 * (year - self.start) / 15.0, 0.55, 1.0))

    def polygon(self, year: int) -> Polygon | None:
        """Outline in grid CRS metres while the mine is open, else None."""
        return self.footprint(year) if self.is_open(year) else None

    def footprint(self, year: int) -> Polygon | None:
        """The ground the mine has disturbed by ``year`` (open or closed), or None before it opened."""
        s = self.scale(year)
        if s == 0:
            return None
        col = self.cx + s * self.vertices[:, 0]
        row = self.cy + s * self.vertices[:, 1]
        x, y = pixel_corner(row, col)
        return Polygon(np.column_stack([x, y]))


@lru_cache(maxsize=4096)
def _cell_mine(cfg: SyntheticConfig, cr: int, cc: int) -> _Mine | None:
    u = _unit(_hash(cfg.seed, 1000, cr, cc, np.arange(10)))
    if u[0] >= cfg.mine_probability:
        return None
    lo, hi = cfg.mine_radius
    radius = lo + (hi - lo) * u[1]
    margin = hi * 1.35
    span = cfg.mine_cell - 2 * margin
    cy = cr * cfg.mine_cell + margin + span * u[2]
    cx = cc * cfg.mine_cell + margin + span * u[3]
    start = int(cfg.first_year + u[4] * 36)
    end = start + 8 + int(u[9] * 15) if u[8] < cfg.closure_probability else None
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
    return _Mine(mid, cx, cy, radius, start, end, np.column_stack([vx, vy]))


def _mines_in(cfg: SyntheticConfig, row0: int, row1: int, col0: int, col1: int) -> list[_Mine]:
    """Every mine whose cell could reach the pixel window.

    A mine can reach past its cell (its outline reaches 1.68 ``mine_radius`` from its centre,
    which lies at least 1.35 from the cell's edge) but never past the next cell, since a cell is
    wider than 2.7 radii: the window's cells and their neighbours hold every mine in it.
    """
    c = cfg.mine_cell
    return [
        m
        for cr in range(max(row0 // c - 1, 0), (row1 - 1) // c + 2)
        for cc in range(max(col0 // c - 1, 0), (col1 - 1) // c + 2)
        if (m := _cell_mine(cfg, cr, cc)) is not None
    ]


def _lattice(
    rows: np.ndarray, cols: np.ndarray, cell: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The lattice cells a window touches (``ur``, ``uc``) and each pixel's index into them."""
    lr, lc = rows // cell, cols // cell
    ur, uc = np.arange(lr.min(), lr.max() + 1), np.arange(lc.min(), lc.max() + 1)
    return ur, uc, lr - ur[0], lc - uc[0]


@lru_cache(maxsize=1)
def _noise_levels() -> np.ndarray:
    """Sorted value-noise samples: the threshold that covers a given share of pixels."""
    idx = np.arange(0, 4096, 4, dtype=np.int64)
    return np.sort(_value_noise(-1, 0, idx, idx, 37).ravel())


def _cover(noise: np.ndarray, share: float) -> np.ndarray:
    """The ``share`` of pixels where smooth ``noise`` is highest: blobs, not salt and pepper."""
    levels = _noise_levels()
    if share <= 0:
        return np.zeros(noise.shape, bool)
    return noise > levels[min(int((1 - share) * len(levels)), len(levels) - 1)]


def _bare_fields(cfg: SyntheticConfig, year: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Fields that lie bare (ploughed, fallow) this year: 32-px plots in farming zones, each bare
    in a third of the years, with a one-pixel margin (hedge, track) between plots."""
    s, cell = cfg.seed, 32
    ur, uc, ir, ic = _lattice(rows, cols, cell)
    field = _unit(_hash(s, 11, ur[:, None], uc[None, :])) < cfg.field_probability
    bare = field & (_unit(_hash(s, 12, year, ur[:, None], uc[None, :])) < 0.35)
    zone = _value_noise(s, 10, rows, cols, 1024) > 0.5
    margin = (rows % cell == 0)[:, None] | (cols % cell == 0)[None, :]
    return bare[ir][:, ic] & zone & ~margin


def _construction(
    cfg: SyntheticConfig, year: int, rows: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Construction sites (bright bare ground in their first two years) and the buildings they
    become: one rectangle of 10-36 px sides in some 160-px lattice cells, from a hashed year."""
    s, cell = cfg.seed, 160
    ur, uc, ir, ic = _lattice(rows, cols, cell)
    u = _unit(_hash(s, 13, ur[:, None, None], uc[None, :, None], np.arange(6)))
    exists = u[..., 0] < cfg.construction_probability
    height, width = 10 + 26 * u[..., 1], 10 + 26 * u[..., 2]
    r0 = ur[:, None] * cell + (cell - height) * u[..., 3]
    c0 = uc[None, :] * cell + (cell - width) * u[..., 4]
    begun = cfg.first_year + u[..., 5] * (cfg.last_year - cfg.first_year + 1)
    dr = rows[:, None] - r0[ir][:, ic]
    dc = cols[None, :] - c0[ir][:, ic]
    inside = exists[ir][:, ic] & (dr >= 0) & (dr < height[ir][:, ic]) & (dc >= 0) & (dc < width[ir][:, ic])
    age = year - np.floor(begun[ir][:, ic])
    return inside & (age >= 0) & (age < 2), inside & (age >= 2)


def _gaps(cfg: SyntheticConfig, year: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Pixels without a clear observation this year: residual cloud (a hashed share of up to
    ``cloud_cover``, in blobs) and, in ``slc_off_years``, Landsat 7 SLC-off stripes: wedges 0 px
    wide at a scene's centre line and 14 px at its edges, every 33 lines. In the last of those
    years (Landsat 7 alone) every stripe is a gap; before, Landsat 5 filled them but for a third
    of their length, in segments where its own scenes were cloudy."""
    s = cfg.seed
    share = cfg.cloud_cover * float(_unit(_hash(s, 15, year)))
    gaps = _cover(_value_noise(s * 7919 + year, 9, rows, cols, 40), share)
    lo, hi = cfg.slc_off_years
    if lo <= year <= hi:
        scene = 6167  # 185 km of 30 m pixels
        edge = np.abs((cols % scene) / scene - 0.5) * 2
        phase = (rows[:, None] + 0.1 * cols[None, :]) % 33
        stripe = phase < 14 * edge[None, :]
        if year < hi:
            stripe &= _cover(_value_noise(s * 7919 + year, 16, rows, cols, 160), 1 / 3)
        gaps |= stripe
    return gaps


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
    img[:, _bare_fields(cfg, year, rows, cols)] = _SPEC["bare"][:, 0]
    site, built = _construction(cfg, year, rows, cols)
    img[:, site] = _SPEC["construction"][:, 0]
    img[:, built] = _SPEC["urban"][:, 0]
    img *= bright
    img[:, water] = _SPEC["water"][:, 0]

    # every mine that has opened by this year: open ones are mined, closed ones revegetate
    mines = [(m, p) for m in _mines_in(cfg, row0, row1, col0, col1) if (p := m.footprint(year)) is not None]
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
            is_open = np.array([m.is_open(year) for m, _ in mines])[k]
            closed_for = np.array([0 if m.is_open(year) else year - (m.end or year) + 1 for m, _ in mines])[k]
            d = np.hypot(rows[ri] - cy, cols[ci] - cx) / rad
            tail = _value_noise(s, 7, rows, cols, 12)[ri, ci] > 0.62
            cls = np.where(d < 0.14, 3, np.where(d < 0.42, 2, tail.astype(np.int64)))
            table = np.stack([_SPECTRA[n] for n in ("mine", "tailings", "pit", "pitwater")], axis=1)
            mined = table[:, cls].astype(np.float32)
            # closed: the pit floods for good; the rest goes from bare soil back to the land around
            w = np.minimum(closed_for / (cfg.revegetation_years + 1), 1.0).astype(np.float32)
            regrown = (1 - w) * _SPEC["soil"][:, 0] + w * img[:, ri, ci]
            regrown = np.where(cls == 3, _SPEC["pitwater"][:, 0], regrown)
            img[:, ri, ci] = np.where(is_open, mined, regrown)

    # this year's radiometry: a gain per band (sensor, atmosphere, season of the composite)
    gain = 1 + cfg.year_gain * (2 * _unit(_hash(s, 14, year, np.arange(len(BANDS)))) - 1)
    img *= gain.astype(np.float32)[:, None, None]

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
    img[:, _gaps(cfg, year, rows, cols)] = np.nan
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


def mine_table(region, *, config: SyntheticConfig | None = None) -> pd.DataFrame:
    """Every synthetic mine that reaches a region: ``MINE_ID``, the year it ``opened`` and the
    year it ``closed`` (the first year it was no longer mined; <NA> for mines still open)."""
    cfg = config or SyntheticConfig()
    gslice = as_slice(region)
    footprint = gslice.geobox.extent.geom
    recs = [
        (m.id, m.start, m.end)
        for m in _mines_in(cfg, gslice.row0, gslice.row1, gslice.col0, gslice.col1)
        if m.start <= cfg.last_year
        and (p := m.footprint(cfg.last_year)) is not None
        and p.intersects(footprint)
    ]
    table = pd.DataFrame(recs, columns=["MINE_ID", "opened", "closed"])
    return table.astype({"MINE_ID": "int64", "opened": "int64", "closed": "Int64"})


def mining_truth(region, years: int | Sequence[int], *, config: SyntheticConfig | None = None) -> xr.Dataset:
    """The true mining of each year on the region's grid: the reference of a change analysis.

    Returns ``mining`` ``(year, y, x)`` uint8 (1 where a mine is open that year, as
    :func:`mine_polygons` draws it) and ``mine`` ``(y, x)`` int64, the ``MINE_ID`` of the mine
    whose footprint in its first year covers the pixel (0 elsewhere): the pixels whose onset is
    that mine's opening year (see :func:`mine_table`).
    """
    cfg = config or SyntheticConfig()
    yrs = check_years(years, cfg.first_year, cfg.last_year, "synthetic")
    gslice = as_slice(region)
    mines = _mines_in(cfg, gslice.row0, gslice.row1, gslice.col0, gslice.col1)
    mining = np.zeros((len(yrs), *gslice.shape), np.uint8)
    for k, year in enumerate(yrs):
        shapes = [(p, 1) for m in mines if (p := m.polygon(year)) is not None]
        if shapes:
            mining[k] = gslice.rasterize(shapes, dtype=np.uint8)
    # burnt as positions (int32), then mapped to the int64 MINE_IDs
    first = [(m.footprint(m.start), k + 1) for k, m in enumerate(mines)]
    lookup = np.array([0] + [m.id for m in mines], np.int64)
    ids = lookup[gslice.rasterize(first, dtype=np.int32)] if first else np.zeros(gslice.shape, np.int64)
    coords = {"year": np.asarray(yrs), **gslice.coords()}
    return xr.Dataset(
        {
            "mining": (("year", "y", "x"), mining, {"long_name": "synthetic mines open in the year"}),
            "mine": (("y", "x"), ids, {"long_name": "MINE_ID of the mine's footprint in its first year"}),
        },
        coords=coords,
    )
