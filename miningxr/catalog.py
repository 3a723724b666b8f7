"""The record of a store's shards, as small objects in the store: pending, running, done or failed.

The catalog lets an interrupted ingest resume and ``miningxr status`` say what is left. It lives
inside the store, wherever the store lives (a folder, S3, GCS, Azure), as an append-only log
of one small object per change of a shard's state::

    _catalog/shards/<variable>/<year>/<shard_row>_<shard_col>/<seq>.<state>.json

A shard's state is that of its highest ``seq``. Every change is written with ``create=True``
(:meth:`miningxr.paths.Location.put`): the one conditional write that every backend makes
atomic, so of two ingests that try to claim a shard at once exactly one creates
``<seq+1>.running.json`` and the other sees it taken. Nothing is ever rewritten in place, so
the log needs no locks, no POSIX filesystem and no server, and a listing of the prefix tells
every shard's state (the state is in the name); only a running record's owner and a failed
one's error are read from the object itself.

Only the process driving a run (the Dask client) writes the catalog; workers only write
shards, so it works the same on a LocalCluster and on a remote cluster.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd

from .errors import StoreError
from .paths import PARALLEL, Location, as_location

#: the catalog's Zarr group inside a store (so zarr sees no foreign object at the root)
CATALOG = "_catalog"
_RECORDS = f"{CATALOG}/shards"
STATES = ("pending", "running", "done", "failed")
#: catalog "year" of variables that have no year axis (the mining mask)
NO_YEAR = 0
#: a shard's key in the catalog: (year, shard_row, shard_col)
ShardKey = tuple[int, int, int]
#: an empty Zarr v3 group: the catalog's, and a store's root in object storage before its build
EMPTY_GROUP = b'{"zarr_format": 3, "node_type": "group", "attributes": {}}'
_COLUMNS = ["variable", "year", "shard_row", "shard_col", "state", "owner", "error", "attempts", "updated"]


def new_owner() -> str:
    """A name for this process's claim on shards: host, pid and a timestamp."""
    return f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"


def owner_alive(owner: str | None) -> bool:
    """Whether the process named by an owner string may still be running."""
    if not owner:
        return False
    host, pid, *_ = [*owner.split(":"), "", ""]
    if host != socket.gethostname():
        return True  # another machine: trust it until it goes stale by age
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def _prefix(variable: str, key: ShardKey) -> str:
    year, r, c = key
    return f"{_RECORDS}/{variable}/{year}/{r}_{c}"


class _Latest:
    """A shard's latest record: its sequence number, state, time, record key; and attempts."""

    __slots__ = ("attempts", "key", "modified", "seq", "state")

    def __init__(self) -> None:
        self.seq, self.state, self.modified, self.key, self.attempts = -1, "", 0.0, "", 0


class Catalog:
    """The record of every shard of a store: pending, running, done or failed."""

    def __init__(
        self, store: str | os.PathLike | Location, stale_after: float = 3600.0, *, readonly: bool = False
    ):
        self.loc = as_location(store, what="the store")
        self.readonly = readonly
        self.stale_after = stale_after
        self._claims: dict[tuple[str, ShardKey], int] = {}
        if not readonly:
            try:
                self.loc.put(f"{CATALOG}/zarr.json", EMPTY_GROUP, create=True)
            except StoreError as e:
                raise StoreError(
                    f"the store {self.loc} cannot be written ({e}): it is read-only here. Read it "
                    "as it is, or copy it to a writable place to add to it"
                ) from None

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: every change is already in the store."""

    # ------------------------------------------------------------------ reading

    def _latest(self, variable: str | None = None) -> dict[tuple[str, ShardKey], _Latest]:
        """Every shard's latest record (one listing of the variable's prefix)."""
        out: dict[tuple[str, ShardKey], _Latest] = {}
        prefix = f"{_RECORDS}/{variable}/" if variable else f"{_RECORDS}/"
        for m in self.loc.list(prefix):
            parts = m.key.split("/")
            if len(parts) != 6 or not parts[5].endswith(".json"):
                continue
            var, year, rc, name = parts[2], parts[3], parts[4], parts[5]
            seq, state, _ = name.split(".", 2)
            r, c = rc.split("_")
            rec = out.setdefault((var, (int(year), int(r), int(c))), _Latest())
            if state == "running":
                rec.attempts += 1
            if int(seq) > rec.seq:
                rec.seq, rec.state, rec.modified, rec.key = int(seq), state, m.modified, m.key
        return out

    def _body(self, key: str) -> dict[str, Any]:
        data = self.loc.read_bytes(key)
        return json.loads(data) if data else {}

    def shards(self, variable: str | None = None, state: str | None = None) -> pd.DataFrame:
        """One row per shard: variable, year, shard_row, shard_col, state, owner (running),
        error (failed), attempts and the time of the latest change."""
        latest = [(k, v) for k, v in self._latest(variable).items() if state is None or v.state == state]
        # only what a listing cannot say is read: who runs a shard, why one failed
        wanted = [v.key for _, v in latest if v.state in ("running", "failed")]
        with ThreadPoolExecutor(PARALLEL) as pool:
            bodies = dict(zip(wanted, pool.map(self._body, wanted), strict=True))
        rows = [
            (
                var,
                *key,
                rec.state,
                bodies.get(rec.key, {}).get("owner") if rec.state == "running" else None,
                bodies.get(rec.key, {}).get("error"),
                rec.attempts,
                rec.modified,
            )
            for (var, key), rec in sorted(latest, key=lambda kv: kv[0])
        ]
        df = pd.DataFrame(rows, columns=_COLUMNS)
        return df.astype({"year": "int64", "shard_row": "int64", "shard_col": "int64", "attempts": "int64"})

    def state_of(self, variable: str, keys: Iterable[ShardKey]) -> dict[ShardKey, str | None]:
        latest = self._latest(variable)
        return {k: (latest[(variable, k)].state if (variable, k) in latest else None) for k in keys}

    # ------------------------------------------------------------------ writing

    def _append(self, variable: str, key: ShardKey, seq: int, state: str, body: dict[str, Any]) -> bool:
        """Create the record ``seq`` of a shard; False when another run created it first."""
        name = f"{_prefix(variable, key)}/{seq:08d}.{state}.json"
        return self.loc.put(name, json.dumps({**body, "time": time.time()}).encode(), create=True)

    def _many(self, jobs: list[tuple[str, ShardKey, int, str, dict[str, Any]]]) -> list[bool]:
        if len(jobs) < 4:
            return [self._append(*j) for j in jobs]
        with ThreadPoolExecutor(PARALLEL) as pool:
            return list(pool.map(lambda j: self._append(*j), jobs))

    def plan(self, variable: str, keys: Iterable[ShardKey], source: str) -> None:
        """Record shards as pending; shards the catalog already knows keep their state."""
        latest = self._latest(variable)
        self._many(
            [(variable, k, 0, "pending", {"source": source}) for k in keys if (variable, k) not in latest]
        )

    def claim(
        self,
        variable: str,
        keys: Iterable[ShardKey],
        owner: str,
        *,
        retry_failed: bool = False,
        force: bool = False,
    ) -> tuple[list[ShardKey], list[ShardKey]]:
        """Mark shards running for ``owner``. Returns (claimed, held by another live ingest)."""
        keys = list(keys)
        latest = self._latest(variable)
        now = time.time()
        jobs, busy = [], []
        for key in keys:
            rec = latest.get((variable, key))
            if rec is None:
                continue
            if rec.state == "running" and now - rec.modified < self.stale_after:
                other = self._body(rec.key).get("owner")
                if other != owner and owner_alive(other):
                    busy.append(key)
                    continue
            if force or rec.state in ("pending", "running") or (rec.state == "failed" and retry_failed):
                jobs.append((variable, key, rec.seq + 1, "running", {"owner": owner}))
        claimed = []
        for job, won in zip(jobs, self._many(jobs), strict=True):
            if won:
                claimed.append(job[1])
                self._claims[(variable, job[1])] = job[2]
            else:  # another run claimed it between our listing and our write
                busy.append(job[1])
        return claimed, busy

    def finish(
        self, variable: str, key: ShardKey, owner: str, error: str | None = None, source: str | None = None
    ) -> None:
        """Record a claimed shard done (or failed with ``error``). A shard taken over by another
        run meanwhile (this one was thought dead) keeps that run's record."""
        seq = self._claims.pop((variable, key), None)
        if seq is None:
            return
        body = {"owner": owner, "error": error, "source": source}
        self._append(variable, key, seq + 1, "failed" if error else "done", body)

    def release(self, owner: str) -> None:
        """Put shards this run still holds back to pending (after an interrupt)."""
        jobs = [(v, k, seq + 1, "pending", {"released_by": owner}) for (v, k), seq in self._claims.items()]
        self._claims.clear()
        self._many(jobs)
