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
import time
from collections.abc import Sequence
from typing import Any

from .config import StoreLayout, as_years
from .errors import RegionError, YearError
from .grid import GridSlice, as_region
from .paths import Where
from .shards import IngestReport, run_shards, shard_writer
from .sources import open_landsat, source_years
from .store import check_store_path, create_store, remove_partials

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
    years = as_years(years)
    options = source_options or {}
    first, last = source_years(source, **options)
    lo, hi = max(first, layout.first_year), min(last, layout.last_year)
    bad = [y for y in years if not lo <= y <= hi]
    if bad:
        raise YearError(
            f"year(s) {bad} outside {lo}-{hi}, the years that both the {source} source "
            f"({first}-{last}) and the store ({layout.first_year}-{layout.last_year}) cover"
        )
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
