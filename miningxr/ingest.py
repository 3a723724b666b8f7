"""Ingest: Dask writes whole shards of a source into the global store, resumably.

The driving process checks everything it can (store path, years, region, source and its
credentials) before the first write, then hands one task per ``(year, shard)`` to the shard
runner (:mod:`miningxr.shards`): each task computes its shard from the source and writes it, and
the catalog records it, so a killed ingest resumes where it stopped.

Example
-------
>>> import miningxr
>>> report = miningxr.ingest("s.zarr", (29.0, -26.0, 29.1, -25.9), 2020)  # doctest: +SKIP
>>> report.ok  # doctest: +SKIP
True
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .catalog import Catalog
from .config import BANDS, StoreLayout, as_years
from .errors import RegionError, YearError
from .grid import PIXEL_AREA_KM2, GridSlice, as_region
from .paths import Where, as_location
from .shards import IngestReport, run_shards, shard_writer
from .sources import open_landsat, source_years
from .store import check_store_path, create_store, remove_partials, store_layout

log = logging.getLogger("miningxr")


def ingest(
    store: Where,
    region: Any,
    years: int | Sequence[int],
    *,
    source: str = "synthetic",
    source_options: dict[str, Any] | None = None,
    layout: StoreLayout | None = None,
    shard_ids: Sequence[tuple[int, int]] | None = None,
    retry_failed: bool = False,
    force: bool = False,
    scheduler: str | None = None,
    progress: bool = True,
) -> IngestReport:
    """Write a region's years from a source into the store, skipping shards already done.

    Parameters
    ----------
    store
        Path of the store; created on first use.
    region
        A country code, lon/lat bbox, geometry or :class:`~miningxr.grid.Region`. Every shard
        that intersects it is written whole.
    years
        One year or several.
    source, source_options
        ``"synthetic"`` (default), ``"gee"`` or ``"stac"``, and keyword options for it.
    shard_ids
        Write exactly these shards instead of every shard of the region.
    retry_failed
        Also retry shards that failed before (otherwise they are reported and left).
    force
        Rewrite shards that are already done.
    scheduler
        Address of a Dask scheduler; by default the current client or a new LocalCluster.

    Returns
    -------
    IngestReport
        Shards planned, written, skipped (already done) and failed, with their errors.
    """
    t0 = time.perf_counter()
    # every check before the first write: a bad year, region, source option or missing
    # credentials leaves no store behind (on Earth Engine a late failure wastes hours)
    layout = check_store_path(store, layout)
    options = source_options or {}
    years = _checked_years(years, source, options, layout)
    reg = as_region(region)
    ids = sorted(shard_ids) if shard_ids is not None else reg.shard_ids(layout.shard)
    if not ids:
        raise RegionError(f"region {reg.name} covers no shard of the global grid")
    cover = GridSlice.covering(ids, layout.shard)
    ds = open_landsat(cover, years, source=source, decode=False, chunks=layout.shard, **options)
    layout = create_store(store, layout)
    removed = remove_partials(store)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted write", removed)
    # the source's chunks may be request-sized (gee) or scene-sized (stac): one block per shard
    task = shard_writer(
        store, "landsat", ds["landsat"].data, cover, layout.shard, years=years, first_year=layout.first_year
    )
    keys = [(y, r, c) for y in years for r, c in ids]
    report = IngestReport(store=str(store), planned=len(keys))
    run_shards(
        store,
        "landsat",
        keys,
        source,
        task,
        report,
        desc=f"ingest {source}",
        scheduler=scheduler,
        progress=progress,
        retry_failed=retry_failed,
        force=force,
    )
    report.seconds = time.perf_counter() - t0
    log.info("%s", report)
    return report


def _checked_years(
    years: int | Sequence[int], source: str, options: dict[str, Any], layout: StoreLayout
) -> list[int]:
    """``years`` as a list, each one that both the source and the store cover."""
    years = as_years(years)
    first, last = source_years(source, **options)
    lo, hi = max(first, layout.first_year), min(last, layout.last_year)
    bad = [y for y in years if not lo <= y <= hi]
    if bad:
        raise YearError(
            f"year(s) {bad} outside {lo}-{hi}, the years that both the {source} source "
            f"({first}-{last}) and the store ({layout.first_year}-{layout.last_year}) cover"
        )
    return years


# --------------------------------------------------------------------------- the plan of a run

#: what one shard-year of ``landsat`` takes in the store, as a fraction of its raw int16 bytes:
#: measured on the synthetic source (blosc-zstd with bit-shuffle, 36.3 of 58.7 MB per 2048 px
#: shard-year); real reflectance is noisier, so take the store size as a lower bound
STORED_FRACTION = 0.62
#: ingest throughput of the synthetic source per CPU core, all bands (benchmarks: 4.4 Mpx/s on 2)
SYNTHETIC_PX_PER_CORE_S = 2.2e6
#: an assumed wall time of one Earth Engine ``computePixels`` request (one band, 1024 px) and the
#: requests in flight at once (Earth Engine's default concurrency for a project); both are
#: quotas and moods of a service this machine cannot measure: override them (plan(...))
GEE_SECONDS_PER_REQUEST = 2.0
GEE_CONCURRENT_REQUESTS = 40


@dataclass(frozen=True)
class IngestPlan:
    """What an ingest of a region and years will do, worked out before any request or write."""

    region: str
    years: tuple[int, ...]
    source: str
    shard: int
    shards: int
    #: shard-years to write (those not already done in the store)
    todo: int
    already_done: int
    pixels: int
    requests: int | None
    request_bytes: int | None
    store_bytes: int
    seconds: float
    assumptions: str

    def __str__(self) -> str:
        km2 = self.pixels * PIXEL_AREA_KM2
        lines = [
            f"plan: ingest {self.region}, {len(self.years)} year(s) {_span(self.years)}, source {self.source}",
            f"  shards        {self.shards} of {self.shard}x{self.shard} px per year; {self.todo} "
            f"shard-year(s) to write" + (f", {self.already_done} already done" if self.already_done else ""),
            f"  area          {self.pixels / 1e6:,.0f} Mpx per year ({km2:,.0f} km2, whole shards)",
        ]
        if self.requests is not None and self.request_bytes is not None:
            lines.append(
                f"  Earth Engine  {self.requests:,} computePixels requests, {_bytes(self.request_bytes)} "
                "downloaded"
            )
        lines += [
            f"  store         {_bytes(self.store_bytes)} written (compressed int16, 7 bands)",
            f"  wall time     {_duration(self.seconds)} (estimate)",
            f"  assuming      {self.assumptions}",
            "  nothing was requested or written: drop --dry-run to run it",
        ]
        return "\n".join(lines)


def plan(
    store: Where | None,
    region: Any,
    years: int | Sequence[int],
    *,
    source: str = "synthetic",
    layout: StoreLayout | None = None,
    shard_ids: Sequence[tuple[int, int]] | None = None,
    workers: int = 1,
    seconds_per_request: float = GEE_SECONDS_PER_REQUEST,
    concurrent_requests: int = GEE_CONCURRENT_REQUESTS,
) -> IngestPlan:
    """The plan of :func:`ingest` for a region and years: shards, source requests and bytes,
    the store's size and an estimated wall time. Reads at most the store's catalog; requests
    and writes nothing.

    ``workers`` is the number of CPU cores writing (the synthetic source's speed scales with
    it); Earth Engine's speed is its concurrency, not ours.

    >>> p = plan(None, "ZAF", 2020, source="gee")
    >>> p.shards, p.requests
    (392, 10976)
    """
    loc = as_location(store, what="the store") if store is not None else None
    if layout is None:
        layout = store_layout(loc) if loc is not None and loc.exists("zarr.json") else StoreLayout()
    years = _checked_years(years, source, {}, layout)
    reg = as_region(region)
    ids = sorted(shard_ids) if shard_ids is not None else reg.shard_ids(layout.shard)
    if not ids:
        raise RegionError(f"region {reg.name} covers no shard of the global grid")
    done = 0
    if loc is not None and loc.exists("zarr.json"):
        with Catalog(loc, readonly=True) as cat:
            states = cat.state_of("landsat", [(y, r, c) for y in years for r, c in ids])
        done = sum(1 for s in states.values() if s == "done")
    todo = len(ids) * len(years) - done
    px = layout.shard**2
    requests = request_bytes = None
    if source == "gee":
        from .sources.gee import REQUEST_SIDE

        per_shard = len(BANDS) * math.ceil(layout.shard / REQUEST_SIDE) ** 2
        requests = todo * per_shard
        request_bytes = requests * min(REQUEST_SIDE, layout.shard) ** 2 * 5  # float32 + mask byte
        seconds = requests * seconds_per_request / concurrent_requests
        assumptions = (
            f"{seconds_per_request:g} s per Earth Engine request, {concurrent_requests} in flight; "
            f"store size {STORED_FRACTION:.0%} of raw int16 (measured on the synthetic source)"
        )
    elif source == "synthetic":
        seconds = todo * px / (SYNTHETIC_PX_PER_CORE_S * max(1, workers))
        assumptions = (
            f"{SYNTHETIC_PX_PER_CORE_S / 1e6:g} Mpx/s per core ({workers} core(s)), as measured by "
            f"benchmarks/run.py; store size {STORED_FRACTION:.0%} of raw int16"
        )
    else:  # stac: the scenes, and so the requests, are known only after a catalog search
        seconds = float("nan")
        assumptions = (
            "the STAC source's scenes are known only once its catalog is searched, so no request "
            f"count or time; store size {STORED_FRACTION:.0%} of raw int16"
        )
    return IngestPlan(
        region=reg.name,
        years=tuple(years),
        source=source,
        shard=layout.shard,
        shards=len(ids),
        todo=todo,
        already_done=done,
        pixels=len(ids) * px,
        requests=requests,
        request_bytes=request_bytes,
        store_bytes=int(todo * px * len(BANDS) * 2 * STORED_FRACTION),
        seconds=seconds,
        assumptions=assumptions,
    )


def _span(years: Sequence[int]) -> str:
    return str(years[0]) if len(years) == 1 else f"{years[0]}-{years[-1]}"


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
