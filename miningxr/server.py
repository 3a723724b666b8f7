"""Serve a store over HTTP: map tiles, Zarr, a mining query and a web map, on xpublish.

``miningxr serve --store s.zarr --predictions p.zarr`` (or :func:`serve`) starts one FastAPI
application built by :class:`xpublish.Rest`:

``/``
    A Leaflet map (vendored in the package: no CDN) with the imagery, the truth, the predicted
    probability and the onset year as layers, a year slider, and a click that reads a pixel.
``/tiles/{layer}/{z}/{x}/{y}.png?year=Y``
    XYZ map tiles on the WebMercatorQuad grid (:mod:`morecantile`) of the layers in
    :data:`LAYERS`, each warped from the store's EPSG:6933 grid by :mod:`odc.geo` (rasterio);
    ``/tiles/{layer}/tilejson.json`` describes one layer for QGIS, MapLibre or Leaflet.
``/datasets/{region}/zarr/``
    Each region of the store as a Zarr v3 hierarchy (the ``xpublish-zarr`` plugin), so
    ``xr.open_zarr("http://host:8000/datasets/<region>/zarr")`` reads what
    :func:`~miningxr.open_store` reads, plus ``mining_probability`` and ``onset_year``.
``/mining?bbox=W,S,E,N&year=Y``
    Mined km², the mined area as GeoJSON polygons with their onset years, and km² by onset year.
``/point?lon=..&lat=..&year=Y``
    One pixel: probability, onset year, truth and reflectance.
``/regions``
    What is served: regions, years, layers.

With a model, a bbox or tile of a year not yet predicted is predicted on demand through the
same :func:`~miningxr.predict` and :func:`~miningxr.write_predictions` as ``miningxr predict``,
one shard at a time (a shard asked for twice at once is predicted once), and cached in the
prediction store. Every read runs on the Dask cluster the server was started with.
"""

# no `from __future__ import annotations` here: FastAPI reads the annotations of the route
# functions (a Request, the query types) at run time, in the scope they are defined in
import collections
import contextlib
import io
import json
import logging
import math
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import xarray as xr

from .catalog import Catalog
from .change import consistent_mining, onset_year
from .cluster import dask_client
from .config import ChangeConfig, PredictConfig, ServeConfig
from .errors import (
    MiningxrError,
    MissingDependencyError,
    ModelError,
    RegionError,
    StoreError,
    TooLargeError,
    UsageError,
    YearError,
)
from .grid import PIXEL_AREA_KM2, GridSlice, Region, pixel_affine
from .paths import Where
from .predict import (
    check_compatible,
    check_prediction_method,
    open_predictions,
    predict,
    predicted_shards,
    predicted_years,
    write_predictions,
)
from .store import open_store, region_name, store_layout, store_regions

log = logging.getLogger("miningxr")

#: the map layers: what each shows, the store variable it reads, and whether it needs ?year=
LAYERS: dict[str, dict[str, Any]] = {
    "truecolor": {
        "title": "Landsat true colour (red, green, blue)",
        "variable": "landsat",
        "bands": ("red", "green", "blue"),
        "year": True,
    },
    "falsecolor": {
        "title": "Landsat false colour (SWIR2, NIR, red)",
        "variable": "landsat",
        "bands": ("swir2", "nir", "red"),
        "year": True,
    },
    "truth": {"title": "Mining polygons (truth, rasterized)", "variable": "mining", "year": False},
    "probability": {"title": "Predicted mining probability", "variable": "mining_probability", "year": True},
    "onset": {"title": "Onset year of sustained mining", "variable": "onset_year", "year": False},
}

TILE = 256
_CF_ENCODING = ("dtype", "scale_factor", "add_offset", "_FillValue", "units", "calendar")
#: colour of the truth layer (RGBA)
TRUTH_RGBA = (255, 214, 0, 200)
#: the HTTP status of each error a request can meet (the first match counts; others are 400)
_HTTP_STATUS = {
    TooLargeError: 413,
    YearError: 404,
    StoreError: 404,
    ModelError: 409,
    RegionError: 422,
    UsageError: 422,
}


def _require() -> Any:
    try:
        import morecantile
        import xpublish
        import xpublish_zarr
    except ImportError as e:
        raise MissingDependencyError(
            f"miningxr serve needs the serve extra ({e.name} is missing): pip install 'miningxr[serve]'"
        ) from None
    return morecantile, xpublish, xpublish_zarr


@dataclass(frozen=True)
class _Region:
    name: str
    gslice: GridSlice
    years: tuple[int, ...]


class MiningServer:
    """What a server serves: a store's regions as Datasets, their predictions, on-demand
    prediction and the tile and query logic (no HTTP here: :func:`serve_app` wraps it).

    Parameters
    ----------
    store
        The imagery store (local path or object-storage URL).
    predictions
        A prediction store; with ``model`` it is where on-demand predictions are cached (made
        on the first one if it does not exist yet).
    model
        A ``.keras`` model of miningxr: predict what is not predicted yet, on demand.
    config, predict_config, change_config
        Server settings, how on-demand predictions are made, and the temporal rule of the onset
        year.
    """

    def __init__(
        self,
        store: Where,
        predictions: Where | None = None,
        model: Where | None = None,
        *,
        config: ServeConfig | None = None,
        predict_config: PredictConfig | None = None,
        change_config: ChangeConfig | None = None,
    ):
        if model is not None and predictions is None:
            raise UsageError(
                "--model predicts on demand into a prediction store: give --predictions too (a "
                "path or URL; it is created on the first prediction)"
            )
        self.store = store
        self.predictions = predictions
        self.model = str(model) if model is not None else None
        self.config = config or ServeConfig()
        self.predict_config = predict_config or PredictConfig()
        self.change_config = change_config or ChangeConfig(threshold=self.config.threshold)
        self.shard = store_layout(store).shard
        opened = {region_name(g, self.shard): open_store(store, region=g) for g in store_regions(store)}
        if not opened:
            raise StoreError(f"{store} holds no ingested shard yet: run `miningxr ingest` first")
        self.regions = {
            name: _Region(name, GridSlice.of_coords(ds), tuple(int(y) for y in ds.year.values))
            for name, ds in opened.items()
        }
        if self.model is not None:  # a model that does not fit the store is refused before serving
            check_compatible(self.model, next(iter(opened.values())))
            # on-demand shards are predicted as the store's others were, or not at all
            check_prediction_method(
                str(predictions),
                self.predict_config,
                "serve it with those settings (--config with a [predict] table), or give "
                "another --predictions",
            )
        self._lock = threading.Lock()
        self._shard_locks: dict[tuple[int, int, int], threading.Lock] = {}
        self._version = 0
        self._tiles: collections.OrderedDict[tuple[Any, ...], bytes] = collections.OrderedDict()
        self._predicted: dict[int, tuple[int, set[tuple[int, int]]]] = {}  # year: shard, done
        self.on_change: list[Any] = []  # called after on-demand predictions change a dataset
        self._datasets = {name: self._build(name, ds) for name, ds in opened.items()}

    # ---- the datasets -----------------------------------------------------------------------
    @property
    def years(self) -> list[int]:
        return sorted({y for r in self.regions.values() for y in r.years})

    def dataset(self, name: str) -> xr.Dataset:
        """The region ``name`` as served (its Zarr over HTTP): ``landsat`` as
        :func:`~miningxr.open_store` gives it, ``mining`` when a mask is written, and
        ``mining_probability`` (every imagery year, NaN where not predicted) and ``onset_year``
        where predictions exist."""
        try:
            return self._datasets[name]
        except KeyError:
            raise StoreError(
                f"no region {name!r} in {self.store}; the regions are {sorted(self.regions)}"
            ) from None

    def _build(self, name: str, ds: xr.Dataset | None = None) -> xr.Dataset:
        region = self.regions[name]
        if ds is None:
            ds = open_store(self.store, region=region.gslice)
        out = xr.Dataset({"landsat": ds["landsat"]}, attrs={"title": f"miningxr {name}", "region": name})
        # band names as Zarr v3's variable-length strings (numpy's fixed-width <U has no v3 spec)
        out = out.assign_coords(band=out["band"].astype(object))
        if _has_shards(self.store, "mining", region.gslice, self.shard):
            out["mining"] = ds["mining"]
        prob = self._probability(ds)
        if prob is not None:
            out["mining_probability"] = prob.reindex(year=ds.year)
            onset = onset_year(consistent_mining(prob, self.change_config))
            out["onset_year"] = onset.assign_attrs(
                long_name="first year of sustained mining (0: never)",
                threshold=self.change_config.threshold,
                window=self.change_config.window,
            )
        for var in out.variables.values():  # the CF packing travels; the store's chunking does not
            var.encoding = {k: v for k, v in var.encoding.items() if k in _CF_ENCODING}
        return out.assign_attrs(_xpublish_id=f"{name}@{self._version}")

    def _probability(self, ds: xr.Dataset) -> xr.DataArray | None:
        if self.predictions is None or not predicted_years(self.predictions, GridSlice.of_coords(ds)):
            return None
        return open_predictions(self.predictions, ds)

    def predicted(self, gslice: GridSlice, year: int) -> bool:
        """Whether every prediction shard over ``gslice`` holds ``year``: read from the
        prediction store's catalog once a year and kept until this server's own predictions
        change it (a tile asks it, and a catalog in object storage is several requests)."""
        if self.predictions is None:
            return False
        with self._lock:
            known = self._predicted.get(year)
        if known is None:
            known = predicted_shards(self.predictions, year)
            with self._lock:
                self._predicted[year] = known
        shard, done = known
        return all(s in done for s in gslice.shard_ids(shard))

    def ensure_predicted(self, gslice: GridSlice, year: int) -> bool:
        """Predict the prediction shards over ``gslice`` that lack ``year`` (needs a model);
        True if any was.

        Each shard is predicted whole (where the store holds imagery), as ``miningxr predict``
        would: one lock per shard and year, so two requests of one shard predict it once and
        the second finds it done; the prediction store's catalog claims guard other processes.
        """
        if self.predicted(gslice, year):
            return False
        if self.model is None or self.predictions is None:
            raise StoreError(
                f"{year} is not predicted over {gslice.describe()}: predict it (`miningxr predict "
                f"--years {year}`) or start the server with --model to predict on demand"
            )
        made = False
        shard, _ = predicted_shards(self.predictions, year)
        for sid in gslice.shard_ids(shard):
            with self._lock:
                lock = self._shard_locks.setdefault((year, *sid), threading.Lock())
            with lock:
                fresh = predicted_shards(self.predictions, year)
                if sid in fresh[1]:  # done meanwhile (by this server or another process)
                    with self._lock:
                        self._predicted[year] = fresh
                    continue
                whole = GridSlice.of_shard(sid, shard)
                # the part of the shard in each region that holds the year
                over = {
                    region.name: part
                    for region in self.regions.values()
                    if year in region.years and (part := region.gslice.intersection(whole)) is not None
                }
                parts = list(over.values())
                if parts:  # one write per shard (its catalog entry): every region's part of it
                    cover = GridSlice(
                        min(p.row0 for p in parts),
                        max(p.row1 for p in parts),
                        min(p.col0 for p in parts),
                        max(p.col1 for p in parts),
                    )
                    log.info("predicting %d on demand: %s", year, cover.describe())
                    ds = open_store(self.store, region=cover, years=[year])
                    prob = predict(ds, self.model, config=self.predict_config)
                    write_predictions(prob, self.predictions, progress=False, dtype=self.predict_config.dtype)
                    made = True
                    # before the shard's lock opens: who waited on it reads the new data
                    self._refresh(list(over))
        return made

    def _refresh(self, names: list[str] | None = None) -> None:
        """After predictions changed: rebuild the datasets of regions ``names`` (by default every
        region), and forget every tile and predicted shard."""
        with self._lock:
            self._version += 1
            self._tiles.clear()  # keyed by version too: a tile rendering now is never kept
            self._predicted.clear()
            for name in self.regions if names is None else names:
                self._datasets[name] = self._build(name)
        for hook in self.on_change:
            hook()

    # ---- reading windows ----------------------------------------------------------------------
    def parts(self, gslice: GridSlice) -> Iterator[tuple[_Region, GridSlice]]:
        """The regions that ``gslice`` overlaps, each with the common part."""
        for region in self.regions.values():
            part = region.gslice.intersection(gslice)
            if part is not None:
                yield region, part

    def check_year(self, year: int | None, region: _Region | None = None) -> int:
        held = list(region.years) if region is not None else self.years
        if year is None:
            raise YearError(f"give ?year=: the store holds {held}")
        if int(year) not in held:
            where = f" in region {region.name}" if region is not None else ""
            raise YearError(f"the store holds years {held}{where}, not {year}; pick one of these")
        return int(year)

    def window(self, region: _Region, part: GridSlice, variable: str) -> xr.DataArray | None:
        ds = self.dataset(region.name)
        if variable not in ds:
            return None
        return ds[variable].isel(part.within(region.gslice))

    # ---- map tiles ----------------------------------------------------------------------------
    def tile(self, layer: str, z: int, x: int, y: int, year: int | None = None) -> bytes:
        """One 256 px PNG map tile of ``layer`` (see :data:`LAYERS`) on WebMercatorQuad; the
        last ``tile_cache`` tiles rendered are kept (:class:`~miningxr.config.ServeConfig`)."""
        spec = _layer(layer)
        year = self.check_year(year) if spec["year"] else None
        key = (self._version, layer, z, x, y, year)
        with self._lock:
            body = self._tiles.get(key)
            if body is not None:
                self._tiles.move_to_end(key)
                return body
        body = self._render(layer, z, x, y, year)
        if self.config.tile_cache:
            with self._lock:
                if key[0] == self._version:  # not rendered from data an on-demand run replaced
                    self._tiles[key] = body
                    while len(self._tiles) > self.config.tile_cache:
                        self._tiles.popitem(last=False)
        return body

    def _render(self, layer: str, z: int, x: int, y: int, year: int | None) -> bytes:
        from odc.geo.overlap import compute_reproject_roi

        spec = _layer(layer)
        dst = tile_geobox(z, x, y)
        rgba = np.zeros((TILE, TILE, 4), np.uint8)
        found = False
        for region in self.regions.values():
            src = region.gslice.geobox
            rr = compute_reproject_roi(src, dst)
            rows, cols = rr.roi_src
            if rows.stop <= rows.start or cols.stop <= cols.start:
                continue
            # every chunk under the tile is read (and decoded) whatever the stride: the limit is
            # on the source pixels, not on the pixels kept
            npx = (rows.stop - rows.start) * (cols.stop - cols.start)
            step = max(1, math.floor(rr.scale)) if rr.scale > 1.5 else 1
            if npx > self.config.max_tile_pixels:
                need = z + math.ceil(math.log2(math.sqrt(npx / self.config.max_tile_pixels)))
                raise TooLargeError(
                    f"tile {z}/{x}/{y} would read {npx:,} pixels (the limit is "
                    f"{self.config.max_tile_pixels:,}: there are no overviews); zoom in to {need} or more"
                )
            part = GridSlice(
                region.gslice.row0 + rows.start,
                region.gslice.row0 + rows.stop,
                region.gslice.col0 + cols.start,
                region.gslice.col0 + cols.stop,
            )
            if layer == "probability" and self.model is not None and year is not None:
                self.ensure_predicted(part, year)
            if spec["year"] and year not in region.years:
                continue
            data = self.window(region, part, spec["variable"])
            if data is None:
                continue
            if "year" in data.dims:
                data = data.sel(year=year)
            if "bands" in spec:
                data = data.sel(band=list(spec["bands"]))
            data = data.isel(y=slice(None, None, step), x=slice(None, None, step))
            if "year" in data.coords and data["year"].ndim == 0:
                data = data.drop_vars("year")
            warped = _warp(data.load(), dst)
            colour = self._colour(layer, warped, region)
            over = colour[..., 3] > 0
            rgba[over] = colour[over]
            found = True
        if not found and spec["variable"] != "landsat" and not self._layer_exists(spec["variable"]):
            raise StoreError(_absent(spec["variable"]))
        return png(rgba)

    def _layer_exists(self, variable: str) -> bool:
        return any(variable in ds for ds in self._datasets.values())

    def _colour(self, layer: str, data: xr.DataArray, region: _Region) -> np.ndarray:
        import matplotlib as mpl

        a = np.asarray(data.values, dtype=np.float64)
        out = np.zeros((*a.shape[-2:], 4), np.uint8)
        if layer in ("truecolor", "falsecolor"):
            ok = np.isfinite(a).all(axis=0)
            rgb = np.clip(np.nan_to_num(a) / self.config.stretch, 0, 1) ** (1 / 1.5)
            out[..., :3] = np.moveaxis(rgb * 255, 0, -1).astype(np.uint8)
            out[..., 3] = np.where(ok, 255, 0)
        elif layer == "truth":
            out[a == 1] = TRUTH_RGBA
        elif layer == "probability":
            ok = np.isfinite(a)
            p = np.clip(np.nan_to_num(a), 0, 1)
            out[...] = (mpl.colormaps["magma"](p) * 255).astype(np.uint8)
            out[..., 3] = np.where(ok, np.clip(p / self.config.threshold, 0, 1) * 230, 0).astype(np.uint8)
        else:  # onset
            first, last = min(region.years), max(region.years)
            ok = a > 0
            t = np.clip((a - first) / max(last - first, 1), 0, 1)
            out[...] = (mpl.colormaps["viridis"](t) * 255).astype(np.uint8)
            out[..., 3] = np.where(ok, 230, 0)
        return out

    # ---- queries --------------------------------------------------------------------------------
    def query_slice(self, bbox: tuple[float, float, float, float]) -> GridSlice:
        gslice = Region.from_bbox(bbox).slice()
        if not list(self.parts(gslice)):
            raise RegionError(
                f"bbox {list(bbox)} does not overlap the store's regions: "
                + "; ".join(f"{r.name} {r.gslice.describe()}" for r in self.regions.values())
            )
        npx = gslice.shape[0] * gslice.shape[1]
        if npx > self.config.max_query_pixels:
            raise TooLargeError(
                f"bbox {list(bbox)} covers {npx:,} pixels, more than one query reads "
                f"({self.config.max_query_pixels:,}); ask for a smaller bbox"
            )
        return gslice

    def mining(
        self, bbox: tuple[float, float, float, float], year: int, threshold: float | None = None
    ) -> dict[str, Any]:
        """What is mined in ``bbox`` (lon/lat) in ``year``: the JSON of ``GET /mining``.

        ``mined_km2`` counts pixels with probability at or above the threshold (as
        :func:`~miningxr.evaluate` counts ``area_predicted_km2``), ``truth_km2`` the mask's over
        the pixels predicted (``area_true_km2``; no-data pixels have no prediction);
        ``polygons`` is that mined area as GeoJSON (EPSG:4326), one feature per connected patch
        of one onset year; ``onset_km2`` the mined area by onset year.
        """
        import dask

        t = self.config.threshold if threshold is None else float(threshold)
        if not 0 <= t <= 1:
            raise UsageError(f"threshold must be in [0, 1], got {t}")
        gslice = self.query_slice(bbox)
        year = self.check_year(year)
        parts = [(r, p) for r, p in self.parts(gslice) if year in r.years]
        if not parts:
            raise YearError(f"no region under bbox {list(bbox)} holds {year}")
        made = False
        if self.model is not None:
            for _, part in parts:
                made |= self.ensure_predicted(part, year)
        mined_px = truth_px = 0
        truth_known = True
        onset_px: dict[int, int] = {}
        features: list[dict[str, Any]] = []
        for region, part in parts:
            prob = self.window(region, part, "mining_probability")
            if prob is None or not self.predicted(part, year):
                raise StoreError(
                    f"{year} is not predicted over {part.describe()}: predict it (`miningxr predict "
                    f"--years {year}`) or start the server with --model to predict on demand"
                )
            onset = self.window(region, part, "onset_year")
            truth = self.window(region, part, "mining")
            p, o, m = dask.compute(
                prob.sel(year=year).data,
                onset.data if onset is not None else None,
                truth.data if truth is not None else None,
            )
            mined = np.isfinite(p) & (p >= t)
            mined_px += int(mined.sum())
            if m is None:
                truth_known = False
            else:
                truth_px += int(((m > 0) & np.isfinite(p)).sum())  # where predicted, as evaluate counts
            ons = np.where(mined, o, 0).astype(np.int32) if o is not None else np.zeros(p.shape, np.int32)
            years, counts = np.unique(ons[mined & (ons > 0) & (ons <= year)], return_counts=True)
            for y, c in zip(years, counts, strict=True):
                onset_px[int(y)] = onset_px.get(int(y), 0) + int(c)
            features += _polygons(mined, ons, part)
        return {
            "bbox": list(bbox),
            "year": year,
            "threshold": t,
            "regions": [r.name for r, _ in parts],
            "pixels": sum(p.shape[0] * p.shape[1] for _, p in parts),
            "mined_km2": mined_px * PIXEL_AREA_KM2,
            "truth_km2": truth_px * PIXEL_AREA_KM2 if truth_known else None,
            "onset_km2": {str(y): c * PIXEL_AREA_KM2 for y, c in sorted(onset_px.items())},
            "predicted_on_demand": made,
            "polygons": {"type": "FeatureCollection", "features": features},
        }

    def point(self, lon: float, lat: float, year: int) -> dict[str, Any]:
        """One pixel: the JSON of ``GET /point``."""
        gslice = _pixel_at(lon, lat)
        hits = list(self.parts(gslice))
        if not hits:
            raise RegionError(f"lon {lon}, lat {lat} is outside the store's regions {sorted(self.regions)}")
        region, part = hits[0]
        year = self.check_year(year, region)
        out: dict[str, Any] = {
            "lon": lon,
            "lat": lat,
            "region": region.name,
            "row": part.row0,
            "col": part.col0,
            "year": year,
        }
        ds = self.dataset(region.name).isel(part.within(region.gslice)).isel(y=0, x=0)
        refl = ds["landsat"].sel(year=year).compute()
        out["reflectance"] = {str(b): _num(v) for b, v in zip(refl.band.values, refl.values, strict=True)}
        out["mining"] = int(ds["mining"].values) if "mining" in ds else None
        if "mining_probability" in ds:
            out["probability"] = _num(ds["mining_probability"].sel(year=year).values)
            onset = int(ds["onset_year"].values)
            out["onset_year"] = onset or None
        else:
            out["probability"] = out["onset_year"] = None
        return out

    def describe(self) -> dict[str, Any]:
        """The JSON of ``GET /regions``."""
        regions = []
        for r in self.regions.values():
            bb = r.gslice.geobox.geographic_extent.boundingbox
            ds = self.dataset(r.name)
            predicted = sorted(y for y in r.years if self.predicted(r.gslice, y))
            regions.append(
                {
                    "name": r.name,
                    "bbox": [bb.left, bb.bottom, bb.right, bb.top],
                    "years": list(r.years),
                    "predicted_years": predicted,
                    "variables": sorted(str(v) for v in ds.data_vars),
                    "zarr": f"/datasets/{r.name}/zarr",
                }
            )
        layers = {
            name: {"title": spec["title"], "year": spec["year"], "available": self._available(spec)}
            for name, spec in LAYERS.items()
        }
        return {
            "store": str(self.store),
            "predictions": str(self.predictions) if self.predictions is not None else None,
            "model": self.model,
            "on_demand": self.model is not None,
            "years": self.years,
            "threshold": self.config.threshold,
            "regions": regions,
            "layers": layers,
        }

    def _available(self, spec: dict[str, Any]) -> bool:
        if spec["variable"] in ("mining_probability", "onset_year") and self.model is not None:
            return True
        return self._layer_exists(spec["variable"])


def _absent(variable: str) -> str:
    if variable == "mining":
        return "the store holds no mining mask: write one with `miningxr ingest --polygons ...`"
    return (
        "no predictions are served: start the server with --predictions (a prediction store), "
        "or with --predictions and --model to predict on demand"
    )


def _layer(layer: str) -> dict[str, Any]:
    try:
        return LAYERS[layer]
    except KeyError:
        raise UsageError(f"unknown layer {layer!r}; the layers are {', '.join(LAYERS)}") from None


def _has_shards(store: Where, variable: str, gslice: GridSlice, shard: int) -> bool:
    with Catalog(store, readonly=True) as cat:
        done = cat.shards(variable, state="done")
    ids = set(zip(done.shard_row, done.shard_col, strict=True))
    return any(s in ids for s in gslice.shard_ids(shard))


def _pixel_at(lon: float, lat: float) -> GridSlice:
    """The one-pixel slice of the global grid holding ``lon``, ``lat``."""
    from pyproj import Transformer

    if not (math.isfinite(lon) and math.isfinite(lat) and -180 <= lon <= 180 and -90 <= lat <= 90):
        raise RegionError(f"lon {lon}, lat {lat} is not a place: lon in -180..180, lat in -90..90")
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:6933", always_xy=True).transform(lon, lat)
    col, row = (math.floor(v) for v in ~pixel_affine() @ (x, y))
    return GridSlice(row, row + 1, col, col + 1)


def _num(v: Any) -> float | None:
    f = float(v)
    return f if math.isfinite(f) else None


def tile_geobox(z: int, x: int, y: int) -> Any:
    """The :class:`~odc.geo.geobox.GeoBox` of XYZ tile ``z/x/y`` of WebMercatorQuad (256 px)."""
    from odc.geo.geobox import GeoBox

    morecantile, _, _ = _require()
    if not 0 <= z <= 24:
        raise UsageError(f"zoom {z} is outside 0..24")
    if not (0 <= x < 2**z and 0 <= y < 2**z):
        raise UsageError(f"tile {z}/{x}/{y} does not exist: x and y run 0..{2**z - 1} at zoom {z}")
    b = morecantile.tms.get("WebMercatorQuad").xy_bounds(morecantile.Tile(x, y, z))
    return GeoBox.from_bbox((b.left, b.bottom, b.right, b.top), crs="EPSG:3857", shape=(TILE, TILE))


def _warp(data: xr.DataArray, dst: Any) -> xr.DataArray:
    """Nearest-neighbour warp of a loaded window onto a tile's GeoBox (NaN outside)."""
    from odc.geo.xr import xr_reproject

    if data.dtype.kind != "f":
        data = data.astype(np.float32)
    return xr_reproject(data, dst, resampling="nearest", dst_nodata=np.nan)


def png(rgba: np.ndarray) -> bytes:
    """Encode an RGBA ``(h, w, 4)`` uint8 array as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG", compress_level=1)  # speed over bytes
    return buf.getvalue()


def _polygons(mined: np.ndarray, onset: np.ndarray, part: GridSlice) -> list[dict[str, Any]]:
    """The mined pixels as GeoJSON features in EPSG:4326, one per patch of one onset year."""
    if not mined.any():
        return []
    import geopandas as gpd
    import shapely
    from rasterio.features import shapes

    # 0 where not mined, 1 mined in no sustained onset year, else the onset year; no mask
    # argument: GDAL's in-memory copy of one has no transform and warns (from any thread)
    labels = np.where(mined, np.where(onset > 0, onset, 1), 0).astype(np.int32)
    geoms, props = [], []
    for geom, value in shapes(labels, transform=pixel_affine(part.row0, part.col0)):
        if value == 0:
            continue
        geoms.append(shapely.geometry.shape(geom))
        props.append(int(value) if value > 1 else None)
    gdf = gpd.GeoDataFrame({"onset_year": props}, geometry=geoms, crs="EPSG:6933")
    gdf["area_km2"] = gdf.geometry.area / 1e6
    return list(json.loads(gdf.to_crs("EPSG:4326").to_json(drop_id=True))["features"])


# ---- HTTP ---------------------------------------------------------------------------------------
def _parse_bbox(bbox: str) -> tuple[float, float, float, float]:
    try:
        values = [float(v) for v in bbox.split(",")]
    except ValueError:
        raise UsageError(
            f"bbox={bbox!r} is not four numbers W,S,E,N (lon/lat), e.g. 29.0,-26.0,29.1,-25.9"
        ) from None
    if len(values) != 4:
        raise UsageError(f"bbox={bbox!r} has {len(values)} numbers; give four: W,S,E,N (lon/lat)")
    Region.from_bbox(values)  # the same checks as everywhere: order, range, antimeridian
    w, s, e, n = values
    return (w, s, e, n)


def serve_app(server: MiningServer) -> Any:
    """The FastAPI application of ``server``, built by :class:`xpublish.Rest`: the regions as
    datasets (with the Zarr v3 plugin of ``xpublish-zarr``), the tiles, ``/mining``, ``/point``,
    ``/regions`` and the web map. Run it with any ASGI server (:func:`serve` uses uvicorn)."""
    _, xpublish, xpublish_zarr = _require()
    from fastapi import APIRouter, Query, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from xpublish import Plugin, hookimpl

    class Datasets(Plugin):
        """The store's regions, rebuilt when on-demand predictions change one."""

        name: str = "miningxr-datasets"

        @hookimpl
        def get_datasets(self) -> list[str]:
            return list(server.regions)

        @hookimpl
        def get_dataset(self, dataset_id: str) -> xr.Dataset | None:
            return server._datasets.get(dataset_id)

    class MiningPlugin(Plugin):
        """The map tiles, the mining and point queries, the region list and the web page."""

        name: str = "miningxr"

        @hookimpl
        def app_router(self, deps: Any) -> APIRouter:
            router = APIRouter()

            @router.get("/", response_class=HTMLResponse, include_in_schema=False)
            def index() -> HTMLResponse:
                return HTMLResponse((resources.files("miningxr") / "web" / "index.html").read_text())

            @router.get("/regions", summary="What is served: regions, years, layers")
            def regions() -> dict[str, Any]:
                return server.describe()

            @router.get(
                "/tiles/{layer}/{z}/{x}/{y}.png",
                summary="An XYZ map tile (WebMercatorQuad, 256 px PNG)",
                response_class=Response,
            )
            async def tile(layer: str, z: int, x: int, y: int, year: int | None = None) -> Response:
                body = await run_in_threadpool(server.tile, layer, z, x, y, year)
                return Response(body, media_type="image/png", headers={"Cache-Control": "no-cache"})

            @router.get("/tiles/{layer}/tilejson.json", summary="TileJSON 3.0 of a layer")
            def tilejson(layer: str, request: Request, year: int | None = None) -> dict[str, Any]:
                spec = _layer(layer)
                if spec["year"]:
                    year = server.check_year(year)
                base = str(request.base_url).rstrip("/")
                query = f"?year={year}" if spec["year"] else ""
                boxes = [server.describe()["regions"][i]["bbox"] for i in range(len(server.regions))]
                return {
                    "tilejson": "3.0.0",
                    "name": spec["title"],
                    "tiles": [f"{base}/tiles/{layer}/{{z}}/{{x}}/{{y}}.png{query}"],
                    "scheme": "xyz",
                    "minzoom": 0,
                    "maxzoom": 18,
                    "bounds": [
                        min(b[0] for b in boxes),
                        min(b[1] for b in boxes),
                        max(b[2] for b in boxes),
                        max(b[3] for b in boxes),
                    ],
                }

            @router.get("/mining", summary="Mined km2, polygons and onset years in a bbox")
            async def mining(
                bbox: str = Query(..., description="W,S,E,N in lon/lat degrees"),
                year: int = Query(..., description="imagery year"),
                threshold: float | None = Query(None, description="probability counted as mined"),
            ) -> dict[str, Any]:
                return await run_in_threadpool(server.mining, _parse_bbox(bbox), year, threshold)

            @router.get("/point", summary="One pixel: probability, onset year, truth, reflectance")
            async def point(lon: float, lat: float, year: int) -> dict[str, Any]:
                return await run_in_threadpool(server.point, lon, lat, year)

            return router

    from xpublish.plugins.included.dataset_info import DatasetInfoPlugin
    from xpublish.plugins.included.module_version import ModuleVersionPlugin

    rest = xpublish.Rest(
        {},
        plugins={  # xpublish's own listing of datasets and versions, its Zarr v3 plugin, ours
            "dataset_info": DatasetInfoPlugin(),
            "module_version": ModuleVersionPlugin(),
            "datasets": Datasets(),
            "zarr": xpublish_zarr.ZarrPlugin(),
            "miningxr": MiningPlugin(),
        },
    )
    server.on_change.append(rest.cache.clear)
    app = rest.app

    async def refused(request: Request, exc: Exception) -> JSONResponse:
        status = next((s for k, s in _HTTP_STATUS.items() if isinstance(exc, k)), 400)
        return JSONResponse({"detail": str(exc), "error": type(exc).__name__}, status_code=status)

    async def missing_chunk(request: Request, exc: Exception) -> Response:
        # xpublish-zarr 0.1 raises this for a chunk that is all fill value (zarr writes no such
        # chunk); Zarr's answer for it is "no such key", which every reader fills with the
        # fill value
        if str(exc).startswith("encoded chunk missing from scratch store"):
            return Response(status_code=404)
        log.error("unexpected error serving %s", request.url, exc_info=exc)
        return JSONResponse({"detail": "internal server error", "error": type(exc).__name__}, status_code=500)

    app.add_exception_handler(MiningxrError, refused)
    app.add_exception_handler(RuntimeError, missing_chunk)
    web = resources.files("miningxr") / "web"
    app.mount("/static", StaticFiles(directory=str(web)), name="static")
    return app


@contextlib.contextmanager
def running(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread; yield its base URL; stop on exit.

    ``port=0`` takes a free port. For notebooks and tests: ``with running(serve_app(server)) as
    url: ...``.
    """
    import uvicorn

    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="miningxr-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise UsageError(f"the server did not start on {host}:{port} (port taken?)")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def serve(
    store: Where,
    predictions: Where | None = None,
    model: Where | None = None,
    *,
    config: ServeConfig | None = None,
    predict_config: PredictConfig | None = None,
    change_config: ChangeConfig | None = None,
    scheduler: str | None = None,
) -> None:
    """Serve ``store`` (and its predictions) until interrupted: see the module for the routes.

    Binds ``config.host`` (loopback by default) and ``config.port``. The reads run on the Dask
    cluster at ``scheduler``, the current client, or a new LocalCluster (its dashboard link is
    printed). Everything is checked before the port opens.
    """
    import uvicorn

    cfg = config or ServeConfig()
    with dask_client(scheduler) as client:
        server = MiningServer(
            store, predictions, model, config=cfg, predict_config=predict_config, change_config=change_config
        )
        app = serve_app(server)
        # rasterio's MEM -> MEM warp says "Dataset has no geotransform" from some request
        # threads, though every tile is georeferenced and equals its one-by-one rendering
        # (tests/test_server.py; odc-geo#131): the server's log keeps what means something
        warnings.filterwarnings("ignore", "Dataset has no geotransform", module="rasterio")
        print(
            f"miningxr serve: http://{cfg.host}:{cfg.port}/ (the map), /docs (the API), regions "
            f"{', '.join(server.regions)}; Dask dashboard {client.dashboard_link}; Ctrl-C stops",
            file=sys.stderr,
        )
        uvicorn.run(
            app,
            host=cfg.host,
            port=cfg.port,
            log_level="info" if log.isEnabledFor(logging.DEBUG) else "warning",
        )
