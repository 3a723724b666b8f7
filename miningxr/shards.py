"""The shard runner: plan, claim and write whole shards on a Dask cluster, and report on them.

Ingest (imagery), labels (the mining mask) and predict (probabilities) all write a store the
same way, through :func:`run_shards`: the driving process plans every ``(year, shard)`` in the
catalog, claims those left to do, and submits one task per shard (built by
:func:`shard_writer`) to the cluster; each task computes its shard and writes it whole, so no
two tasks ever write the same object. The catalog is updated as tasks finish: a killed run
resumes where it stopped, and two runs over overlapping regions never write a shard at once.
:func:`status` and :func:`failures` report what is done and what is left.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import dask
import dask.array as da
import distributed
import pandas as pd
from dask.delayed import Delayed
from tqdm.auto import tqdm

from .catalog import STATES, Catalog, ShardKey, new_owner
from .cluster import dask_client
from .errors import UsageError
from .grid import GridSlice, block_edges
from .paths import Where, as_location
from .store import store_layout, write_block

log = logging.getLogger("miningxr")

#: builds the Dask task that computes and writes one shard
MakeTask = Callable[[ShardKey], Delayed]


@dataclass
class IngestReport:
    """What a run of shard writes did. ``failed`` maps (year, shard_row, shard_col) to the error."""

    store: str
    planned: int = 0
    written: int = 0
    skipped: int = 0
    failed: dict[ShardKey, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def __str__(self) -> str:
        s = (
            f"{self.store}: {self.written} shard(s) written, {self.skipped} already done, "
            f"{len(self.failed)} failed of {self.planned} in {self.seconds:.1f}s"
        )
        for key, err in list(self.failed.items())[:5]:
            s += f"\n  failed year={key[0]} shard={key[1:]}: {err}"
        return s


def shard_writer(
    store: Where,
    variable: str,
    data: da.Array,
    cover: GridSlice,
    shard: int,
    *,
    years: Sequence[int] | None = None,
    first_year: int = 0,
) -> MakeTask:
    """The task builder for writing ``data`` into ``variable`` of ``store``, one shard per task.

    ``data`` lies on ``cover``: ``(y, x)``, or ``(year, ..., y, x)`` (``(year, band, y, x)``
    imagery, ``(year, y, x)`` predictions) with the given ``years``, stored at
    ``year - first_year`` on the variable's year axis. It is rechunked so that each
    block is the part of one shard; the task for key ``(year, shard_row, shard_col)`` computes
    that block and writes it.
    """
    row_edges = block_edges(cover.row0, cover.row1, shard)
    col_edges = block_edges(cover.col0, cover.col1, shard)
    space = cover.block_chunks(shard)
    middle = data.shape[1:-2] if years is not None else ()  # the band axis of imagery
    lead = (1, *middle) if years is not None else ()
    # task-based: a merge of whole chunks into shard blocks (p2p would shuffle them for nothing)
    blocks = data.rechunk((*lead, *space), method="tasks").to_delayed()
    path = str(store)

    def task(key: ShardKey) -> Delayed:
        year, r, c = key
        i = row_edges.index(max(cover.row0, r * shard))
        j = col_edges.index(max(cover.col0, c * shard))
        index: tuple[slice, ...] = (
            slice(row_edges[i], row_edges[i + 1]),
            slice(col_edges[j], col_edges[j + 1]),
        )
        if years is not None:
            at = year - first_year
            index = (slice(at, at + 1), *(slice(None) for _ in middle), *index)
            block = blocks[(years.index(year), *(0 for _ in middle), i, j)]
        else:
            block = blocks[i, j]
        return dask.delayed(write_block, pure=False)(path, variable, index, block)

    return task


def run_shards(
    store: Where,
    variable: str,
    keys: Sequence[ShardKey],
    source: str,
    make_task: MakeTask,
    report: IngestReport,
    *,
    desc: str,
    scheduler: str | None = None,
    progress: bool = True,
    retry_failed: bool = False,
    force: bool = False,
) -> IngestReport:
    """Plan ``keys`` in the catalog, claim those left to do, and write each with one task.

    Shards held by another live run are waited for rather than written twice. An interrupt
    puts this run's unfinished shards back to pending. ``report`` is filled in and returned.
    """
    owner = new_owner()
    # the cluster first: a scheduler that cannot be reached, or workers that cannot see the
    # store, are refused before any shard is planned or claimed
    with dask_client(scheduler) as client, Catalog(store) as cat:
        _check_workers_see(store, client)
        cat.plan(variable, keys, source)
        todo, busy = cat.claim(variable, keys, owner, retry_failed=retry_failed, force=force)
        report.skipped = len(keys) - len(todo) - len(busy)
        bar = tqdm(total=len(todo) + len(busy), desc=desc, unit="shard", disable=not progress)
        try:
            while True:
                _submit(client, cat, variable, todo, owner, source, report, bar, make_task)
                if not busy:
                    break
                # another run holds these shards: wait until it finishes or dies
                time.sleep(1.0)
                todo, busy_now = cat.claim(variable, busy, owner)
                states = cat.state_of(variable, busy)
                bar.update(
                    sum(
                        1
                        for k in busy
                        if k not in busy_now and k not in todo and states[k] in ("done", "failed")
                    )
                )
                busy = busy_now
        except BaseException:
            cat.release(owner)
            raise
        finally:
            bar.close()
    return report


def _check_workers_see(store: Where, client: distributed.Client) -> None:
    """Refuse a ``memory://`` store on workers in other processes: each would write into its
    own memory, and the run would report shards done that nobody can read."""
    if as_location(store).scheme != "memory":
        return
    workers = list(client.scheduler_info().get("workers", {}))
    if any(not w.startswith("inproc://") for w in workers):
        raise UsageError(
            f"{store} lives in this process's memory, and the Dask workers run in other processes "
            "that cannot see it: use a folder or an s3://, gs://, az:// URL, or a cluster of "
            "threads (distributed.LocalCluster(processes=False))"
        )


def _submit(
    client: distributed.Client,
    cat: Catalog,
    variable: str,
    keys: Sequence[ShardKey],
    owner: str,
    source: str,
    report: IngestReport,
    bar: tqdm,
    make_task: MakeTask,
) -> None:
    """Submit one task per shard and record each outcome in the catalog as it arrives."""
    if not keys:
        return
    futures = client.compute([make_task(k) for k in keys])
    by_future = dict(zip(futures, keys, strict=True))
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


def status(store: Where) -> pd.DataFrame:
    """Shard counts by variable, year and state, with the latest error of each failed group.

    Example
    -------
    >>> status("s.zarr")  # doctest: +SKIP
       variable  year  done  failed  pending  running  total error
    0   landsat  2020     4       0        0        0      4   NaN
    """
    store_layout(store)
    with Catalog(store, readonly=True) as cat:
        df = cat.shards()
    cols = ["variable", "year", *STATES, "total", "error"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    table = df.pivot_table(
        index=["variable", "year"], columns="state", values="shard_row", aggfunc="count", fill_value=0
    )
    for s in STATES:
        if s not in table:
            table[s] = 0
    table = table[list(STATES)]
    table["total"] = table.sum(axis=1)
    # the last recorded error of each group, so `miningxr status` says why shards failed
    failed = df[df["state"] == "failed"]
    table["error"] = failed.groupby(["variable", "year"])["error"].last()
    return table.reset_index()[cols]


def failures(store: Where) -> pd.DataFrame:
    """The failed shards with their error messages."""
    store_layout(store)
    with Catalog(store, readonly=True) as cat:
        df = cat.shards(state="failed")
    return df[["variable", "year", "shard_row", "shard_col", "attempts", "error"]]
