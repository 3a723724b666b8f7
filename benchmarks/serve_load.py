"""A bounded load test of ``miningxr serve``: N tile requests from K concurrent clients on loopback.

Used by ``benchmarks/run.py --only serve`` and by the slow test of tests/test_server.py.
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

import httpx
import numpy as np


def tile_paths(
    regions,
    n: int = 200,
    zooms=(11, 12, 13),
    layers=("truecolor", "falsecolor", "truth", "probability", "onset"),
    year: int = 2020,
) -> list[str]:
    """``n`` distinct-as-possible tile paths over ``regions`` (GridSlices), cycling layers and zooms."""
    import morecantile

    tms = morecantile.tms.get("WebMercatorQuad")
    tiles = []
    for z in zooms:
        for g in regions:
            bb = g.geobox.geographic_extent.boundingbox
            tiles += [(t.z, t.x, t.y) for t in tms.tiles(bb.left, bb.bottom, bb.right, bb.top, [z])]
    paths = []
    i = 0
    while len(paths) < n:
        z, x, y = tiles[i % len(tiles)]
        layer = (
            layers[(i // len(tiles)) % len(layers)] if len(paths) >= len(tiles) else layers[i % len(layers)]
        )
        paths.append(f"/tiles/{layer}/{z}/{x}/{y}.png?year={year}")
        i += 1
    return paths


def load(url: str, paths: list[str], clients: int = 8, timeout: float = 120.0) -> dict[str, Any]:
    """GET every path of ``paths`` from ``clients`` threads (one connection pool each); latency
    percentiles of the successful requests and a count of the failed ones."""
    if not url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        raise ValueError(f"the load test runs on loopback only, not {url}")
    chunks = [paths[i::clients] for i in range(clients)]

    def run(part: list[str]) -> list[tuple[float, int]]:
        out = []
        with httpx.Client(base_url=url, timeout=timeout) as c:
            for p in part:
                t0 = time.perf_counter()
                try:
                    r = c.get(p)
                    ok = r.status_code == 200 and r.headers.get("content-type") == "image/png"
                except httpx.HTTPError:
                    ok = False
                out.append((time.perf_counter() - t0, int(not ok)))
        return out

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = [r for part in pool.map(run, chunks) for r in part]
    wall = time.perf_counter() - t0
    lat = np.array([t for t, bad in results if not bad])
    return {
        "requests": len(results),
        "clients": clients,
        "errors": sum(bad for _, bad in results),
        "p50_s": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "p95_s": float(np.percentile(lat, 95)) if lat.size else float("nan"),
        "wall_s": wall,
        "tiles_per_s": len(results) / wall,
    }
