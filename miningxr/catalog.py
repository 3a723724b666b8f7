"""The SQLite record of a store's shards: which are pending, running, done or failed.

The catalog, ``_catalog/catalog.sqlite`` inside a store, lets an interrupted ingest resume and
``miningxr status`` say what is left. Only the process driving a run (the Dask client) writes
it; workers never touch it, so it works the same on a LocalCluster and on a remote cluster.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import zarr

from .errors import StoreError

#: inside a Zarr subgroup of its own, so zarr sees no foreign object at the root
CATALOG = "_catalog/catalog.sqlite"
STATES = ("pending", "running", "done", "failed")
#: catalog "year" of variables that have no year axis (the mining mask, predictions)
NO_YEAR = 0
#: a shard's key in the catalog: (year, shard_row, shard_col)
ShardKey = tuple[int, int, int]


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


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS shards (variable TEXT, year INTEGER, shard_row INTEGER,"
    " shard_col INTEGER, state TEXT NOT NULL, source TEXT, owner TEXT, error TEXT,"
    " attempts INTEGER NOT NULL DEFAULT 0, updated REAL,"
    " PRIMARY KEY (variable, year, shard_row, shard_col))"
)


class Catalog:
    """The SQLite record of every shard of a store: pending, running, done or failed."""

    def __init__(self, store: str | os.PathLike, stale_after: float = 3600.0, *, readonly: bool = False):
        self.path = Path(store) / CATALOG
        self.readonly = readonly
        self.stale_after = stale_after
        if readonly:
            self.db = self._connect_readonly()
            return
        try:
            if not self.path.parent.exists():
                zarr.open_group(str(store), mode="r+", zarr_format=3).require_group(self.path.parent.name)
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA busy_timeout=60000")
            self.db.execute(_SCHEMA)
        except (sqlite3.OperationalError, PermissionError, OSError) as e:
            raise StoreError(
                f"the store {store} cannot be written ({e}): it is read-only here. Read it "
                "as it is, or copy it to a writable place to add to it"
            ) from None

    def _connect_readonly(self) -> sqlite3.Connection:
        """Open the catalog for reading, also on read-only media and shared read-only folders.

        A WAL database needs its -shm file (or the right to make one) even to read; where the
        folder cannot be written SQLite's ``immutable`` mode reads the file as it is, with no
        locks, which is right for a store that nobody writes there.
        """
        if not self.path.exists():
            db = sqlite3.connect(":memory:", isolation_level=None)  # a store with no catalog yet
            db.execute(_SCHEMA)
            return db
        uri = self.path.resolve().as_uri()
        try:
            db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=60, isolation_level=None)
            db.execute("SELECT count(*) FROM shards").fetchone()
            return db
        except sqlite3.OperationalError:
            db = sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)
            db.execute("SELECT count(*) FROM shards").fetchone()
            return db

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front: two ingests never claim the same shard
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def plan(self, variable: str, keys: Iterable[ShardKey], source: str) -> None:
        """Record shards as pending; shards the catalog already knows keep their state."""
        rows = [(variable, y, r, c, "pending", source, time.time()) for y, r, c in keys]
        with self._tx() as db:
            db.executemany(
                "INSERT OR IGNORE INTO shards (variable, year, shard_row, shard_col, state,"
                " source, updated) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
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
        claimed: list[ShardKey] = []
        busy: list[ShardKey] = []
        now = time.time()
        with self._tx() as db:
            for key in keys:
                row = db.execute(
                    "SELECT state, owner, updated FROM shards WHERE variable=? AND year=?"
                    " AND shard_row=? AND shard_col=?",
                    (variable, *key),
                ).fetchone()
                if row is None:
                    continue
                state, other, updated = row
                if (
                    state == "running"
                    and other != owner
                    and owner_alive(other)
                    and now - (updated or 0) < self.stale_after
                ):
                    busy.append(key)
                    continue
                take = (
                    force or state == "pending" or state == "running" or (state == "failed" and retry_failed)
                )
                if take:
                    db.execute(
                        "UPDATE shards SET state='running', owner=?, updated=?,"
                        " attempts=attempts+1 WHERE variable=? AND year=? AND shard_row=?"
                        " AND shard_col=?",
                        (owner, now, variable, *key),
                    )
                    claimed.append(key)
        return claimed, busy

    def finish(
        self, variable: str, key: ShardKey, owner: str, error: str | None = None, source: str | None = None
    ) -> None:
        state = "failed" if error else "done"
        with self._tx() as db:
            db.execute(
                "UPDATE shards SET state=?, error=?, updated=?, source=COALESCE(?, source)"
                " WHERE variable=? AND year=? AND shard_row=? AND shard_col=? AND owner=?",
                (state, error, time.time(), source, variable, *key, owner),
            )

    def release(self, owner: str) -> None:
        """Put shards this owner still holds back to pending (after an interrupt)."""
        with self._tx() as db:
            db.execute(
                "UPDATE shards SET state='pending', owner=NULL WHERE state='running' AND owner=?", (owner,)
            )

    def shards(self, variable: str | None = None, state: str | None = None) -> pd.DataFrame:
        q, args = "SELECT * FROM shards WHERE 1=1", list[Any]()
        if variable:
            q, args = q + " AND variable=?", [*args, variable]
        if state:
            q, args = q + " AND state=?", [*args, state]
        return pd.read_sql_query(q + " ORDER BY variable, year, shard_row, shard_col", self.db, params=args)

    def state_of(self, variable: str, keys: Iterable[ShardKey]) -> dict[ShardKey, str | None]:
        out: dict[ShardKey, str | None] = {}
        for key in keys:
            row = self.db.execute(
                "SELECT state FROM shards WHERE variable=? AND year=? AND shard_row=? AND shard_col=?",
                (variable, *key),
            ).fetchone()
            out[key] = row[0] if row else None
        return out
