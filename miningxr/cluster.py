"""Which Dask cluster a command runs on: the current client, an address, or a LocalCluster."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import distributed

log = logging.getLogger("miningxr")


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None, *, processes: bool = False, dashboard: str = ":8787"
) -> Iterator[distributed.Client]:
    """Yield a client: the current one, one for ``scheduler`` (an address), or a new LocalCluster.

    A LocalCluster is closed on exit; a client that existed before is left alone. The dashboard
    link is logged so a user can watch the work.
    """
    if scheduler is None:
        try:
            current = distributed.default_client()
        except ValueError:
            current = None  # no client yet: start a local cluster below
        if current is not None:
            # yielded outside the try: an error of the caller's (MiningxrError is a ValueError)
            # must reach the caller, not start a cluster
            yield current
            return
    if scheduler not in (None, "local", "processes"):
        with distributed.Client(scheduler) as client:
            log.info("Dask scheduler %s, dashboard %s", scheduler, client.dashboard_link)
            yield client
        return
    processes = processes or scheduler == "processes"
    ncores = os.cpu_count() or 1

    def local(dashboard_address: str) -> distributed.LocalCluster:
        return distributed.LocalCluster(
            n_workers=ncores if processes else 1,
            threads_per_worker=1 if processes else ncores,
            processes=processes,
            dashboard_address=dashboard_address,
            silence_logs=logging.ERROR,
        )

    try:
        cluster = local(dashboard)
    except OSError:  # dashboard port taken: let the OS choose
        cluster = local(":0")
    with cluster, distributed.Client(cluster) as client:
        log.info("Dask LocalCluster with %d thread(s); dashboard %s", ncores, client.dashboard_link)
        yield client
