"""Ingest: Dask writes whole shards of a source into the global store, resumably.

The driving process plans every (year, shard) in the catalog, claims the ones left to do,
and submits one task per shard to the Dask cluster; each task computes its shard from the source
and writes it. The catalog is updated as tasks finish, so a killed ingest resumes where it
stopped, and two ingests of overlapping regions never write the same shard at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import distributed
import numpy as np
from tqdm.auto import tqdm

from ._dask import dask_client
from .config import StoreLayout
from .grid import GridSlice, Region, as_region, block_edges
from .sources import open_landsat, source_years
from .store import (Catalog, StoreError, _owner, check_store_path, create_store, remove_partials,
                    write_block)

log = logging.getLogger("miningxr")


@dataclass
class IngestReport:
    """What an ingest did. ``failed`` maps (year, shard_row, shard_col) to the error."""

    store: str
    planned: int = 0
    written: int = 0
    skipped: int = 0
    failed: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def __str__(self) -> str:
        s = (f"{self.store}: {self.written} shard(s) written, {self.skipped} already done, "
             f"{len(self.failed)} failed of {self.planned} in {self.seconds:.1f}s")
        for key, err in list(self.failed.items())[:5]:
            s += f"\n  failed year={key[0]} shard={key[1:]}: {err}"
        return s


def ingest(store: str | Path, region: Any, years: int | Sequence[int], *, source: str = "synthetic",
           source_options: dict | None = None, layout: StoreLayout | None = None,
           shard_ids: Sequence[tuple[int, int]] | None = None, retry_failed: bool = False,
           force: bool = False, scheduler: str | None = None, progress: bool = True) -> IngestReport:
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

    Example
    -------
    >>> report = ingest("s.zarr", (29.0, -26.0, 29.1, -25.9), 2020)  # doctest: +SKIP
    >>> report.ok  # doctest: +SKIP
    True
    """
    t0 = time.perf_counter()
    # every check before the first write: a bad year, region, source option or missing
    # credentials leaves no store behind (on Earth Engine a late failure wastes hours)
    layout = check_store_path(store, layout)
    years = [int(years)] if np.isscalar(years) else [int(y) for y in years]  # type: ignore[arg-type]
    first, last = source_years(source, **(source_options or {}))
    lo, hi = max(first, layout.first_year), min(last, layout.last_year)
    bad = [y for y in years if not lo <= y <= hi]
    if bad:
        raise StoreError(f"year(s) {bad} outside {lo}-{hi}, the years that both the {source} source "
                         f"({first}-{last}) and the store ({layout.first_year}-{layout.last_year}) cover")
    reg = as_region(region) if not isinstance(region, Region) else region
    ids = sorted(shard_ids) if shard_ids is not None else reg.shard_ids(layout.shard)
    if not ids:
        raise StoreError(f"region {reg.name} covers no shard of the global grid")
    cover = GridSlice.covering(ids, layout.shard)
    ds = open_landsat(cover, years, source=source, decode=False, chunks=layout.shard,
                      **(source_options or {}))
    layout = create_store(store, layout)
    store = str(store)
    dn = ds["landsat"].data
    # the source's chunks may be request-sized (gee) or scene-sized (stac): one chunk per shard
    row_edges = block_edges(cover.row0, cover.row1, layout.shard)
    col_edges = block_edges(cover.col0, cover.col1, layout.shard)
    dn = dn.rechunk((1, dn.shape[1], *cover.block_chunks(layout.shard)))
    blocks = dn.to_delayed()

    removed = remove_partials(store)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted write", removed)
    report = IngestReport(store=store, planned=len(years) * len(ids))
    owner = _owner()
    keys = [(y, r, c) for y in years for r, c in ids]
    with Catalog(store) as cat:
        cat.plan("landsat", years, ids, source)
        todo, busy = cat.claim("landsat", keys, owner, retry_failed=retry_failed, force=force)
        report.skipped = len(keys) - len(todo) - len(busy)
        with dask_client(scheduler) as client:
            try:
                bar = tqdm(total=len(todo) + len(busy), desc=f"ingest {source}", unit="shard",
                           disable=not progress)
                while True:
                    _run(client, cat, "landsat", todo, owner, source, report, bar,
                         lambda key: _write_task(store, layout, years, cover, row_edges, col_edges,
                                                 blocks, key))
                    if not busy:
                        break
                    # another ingest holds these shards: wait until it finishes or dies
                    time.sleep(1.0)
                    todo, busy_now = cat.claim("landsat", busy, owner, retry_failed=False)
                    states = cat.state_of("landsat", busy)
                    bar.update(sum(1 for k in busy if k not in busy_now and k not in todo
                                   and states[k] in ("done", "failed")))
                    busy = busy_now
                bar.close()
            except BaseException:
                cat.release(owner)
                raise
    report.seconds = time.perf_counter() - t0
    log.info("%s", report)
    return report


def _write_task(store, layout, years, cover, row_edges, col_edges, blocks, key):
    year, r, c = key
    i = row_edges.index(max(cover.row0, r * layout.shard))
    j = col_edges.index(max(cover.col0, c * layout.shard))
    yi_src = years.index(year)
    yi = year - layout.first_year
    index = (slice(yi, yi + 1), slice(None), slice(row_edges[i], row_edges[i + 1]),
             slice(col_edges[j], col_edges[j + 1]))
    return dask.delayed(write_block, pure=False)(store, "landsat", index, blocks[yi_src, 0, i, j])


def run_yearless_shards(store: str, variable: str, ids: list, source: str, task, report: IngestReport, *,
                        desc: str, scheduler: str | None, progress: bool, force: bool = False) -> None:
    """Plan, claim and run one task per shard of a variable without a year axis (masks, predictions)."""
    from .store import NO_YEAR

    owner = _owner()
    keys = [(NO_YEAR, r, c) for r, c in ids]
    with Catalog(store) as cat:
        cat.plan(variable, [NO_YEAR], ids, source)
        todo, _ = cat.claim(variable, keys, owner, force=force)
        report.skipped = len(keys) - len(todo)
        with dask_client(scheduler) as client:
            bar = tqdm(total=len(todo), desc=desc, unit="shard", disable=not progress)
            try:
                _run(client, cat, variable, todo, owner, source, report, bar, task)
            except BaseException:
                cat.release(owner)
                raise
            bar.close()


def _run(client: distributed.Client, cat: Catalog, variable: str, keys: list, owner: str,
         source: str, report: IngestReport, bar: tqdm, make_task) -> None:
    """Submit one task per shard and record each outcome in the catalog as it arrives."""
    if not keys:
        return
    futures = client.compute([make_task(k) for k in keys])
    by_future = dict(zip(futures, keys))
    try:
        for fut in distributed.as_completed(futures):
            key = by_future[fut]
            if fut.status == "finished":
                cat.finish(variable, key, owner, source=source)
                report.written += 1
            else:
                exc = fut.exception()
                err = f"{type(exc).__name__}: {exc}"
                cat.finish(variable, key, owner, error=err)
                report.failed[key] = err
                log.warning("shard %s failed: %s", key, err)
            bar.update(1)
    finally:
        # after an interrupt, stop what is still queued; finished futures are left alone
        pending = [f for f in futures if not f.done()]
        if pending:
            client.cancel(pending)
