"""Kill safety and concurrency: real processes killed with SIGKILL, real concurrent ingests.

Every test checks two things: after each kill no shard holds anything but its final bytes or
the fill value (nothing half-written reads as data), and after the re-run the store equals an
uninterrupted one with a consistent catalog.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from miningxr.catalog import Catalog
from miningxr.config import StoreLayout
from miningxr.encoding import FILL_VALUE
from miningxr.grid import GridSlice
from miningxr.paths import as_location
from miningxr.sources.synthetic import open_synthetic

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")

LAYOUT = StoreLayout(chunk=256, shard=512)
YEARS = (2019, 2020)
RUN = [sys.executable, "-c", "import sys; from miningxr.cli import main; sys.exit(main(sys.argv[1:]))"]


@pytest.fixture(scope="module")
def region(shard_slice) -> GridSlice:
    """4 x 4 shards of 512 px: 32 shard-years, each a small write."""
    r0 = shard_slice.row0 // 512 * 512
    c0 = shard_slice.col0 // 512 * 512
    return GridSlice(r0, r0 + 2048, c0, c0 + 2048)


@pytest.fixture(scope="module")
def reference(region) -> np.ndarray:
    return open_synthetic(region, list(YEARS), decode=False, chunks=512).landsat.values


def _bbox_args(region: GridSlice) -> list[str]:
    # a lon/lat box strictly inside the slice: its covering shards are exactly the slice's
    bb = region.geobox.geographic_extent.boundingbox
    dx, dy = (bb.right - bb.left) * 0.02, (bb.top - bb.bottom) * 0.02
    return ["--bbox", *(f"{v:.6f}" for v in (bb.left + dx, bb.bottom + dy, bb.right - dx, bb.top - dy))]


def _ingest_cmd(store, region, config) -> list[str]:
    return [
        *RUN,
        "ingest",
        "--store",
        str(store),
        *_bbox_args(region),
        "--year",
        *map(str, YEARS),
        "--config",
        str(config),
        "-q",
    ]


def _done(store, variable="landsat") -> int:
    try:
        with Catalog(store, readonly=True) as cat:
            df = cat.shards()
    except Exception:  # the store or catalog may not exist yet
        return 0
    return int(((df.variable == variable) & (df.state == "done")).sum()) if len(df) else 0


def _kill_after(cmd, store, min_done: int, jitter: float, variable="landsat", timeout=120) -> bool:
    """Start ``cmd``, SIGKILL it once ``min_done`` shards are done plus ``jitter`` s; True if killed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    try:
        while proc.poll() is None and _done(store, variable) < min_done:
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(cmd)
            time.sleep(0.02)
        time.sleep(jitter)
        if proc.poll() is not None:
            return False
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True
    finally:
        if proc.poll() is None:
            proc.kill()


def _assert_each_shard_final_or_empty(store, region, reference):
    if not as_location(store).exists("zarr.json"):
        return  # killed before the store was made
    arr = zarr.open_group(as_location(store).zarr_store(read_only=True), mode="r")["landsat"]
    for k, year in enumerate(YEARS):
        yi = year - LAYOUT.first_year
        for r in range(region.row0, region.row1, LAYOUT.shard):
            for c in range(region.col0, region.col1, LAYOUT.shard):
                got = arr[yi, :, r : r + LAYOUT.shard, c : c + LAYOUT.shard]
                want = reference[
                    k,
                    :,
                    r - region.row0 : r - region.row0 + LAYOUT.shard,
                    c - region.col0 : c - region.col0 + LAYOUT.shard,
                ]
                assert (got == want).all() or (got == FILL_VALUE).all(), (
                    f"shard {(year, r, c)} is half-written"
                )


def _assert_complete(store, region, reference, n_shards):
    with Catalog(store) as cat:
        df = cat.shards()
    assert (df.state == "done").sum() == n_shards and set(df.state) == {"done"}
    loc = as_location(store)
    if not loc.is_url:
        assert not list(loc.local.rglob("*.partial*"))
    assert not [m.key for m in loc.list() if "write-test" in m.key or m.key.startswith(".miningxr")]
    got = zarr.open_group(loc.zarr_store(read_only=True), mode="r")["landsat"][
        YEARS[0] - LAYOUT.first_year : YEARS[-1] - LAYOUT.first_year + 1,
        :,
        region.row0 : region.row1,
        region.col0 : region.col1,
    ]
    np.testing.assert_array_equal(got, reference)


def test_ingest_killed_repeatedly_resumes_to_the_uninterrupted_store(
    any_store, region, reference, small_layout_config
):
    store = any_store
    cmd = _ingest_cmd(store, region, small_layout_config)
    rng = np.random.default_rng(1)
    kills = 0
    for target in sorted(rng.choice(np.arange(1, 30), 4, replace=False)):
        kills += _kill_after(cmd, store, int(target), float(rng.uniform(0, 0.2)))
        _assert_each_shard_final_or_empty(store, region, reference)
    assert kills >= 3
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    _assert_complete(store, region, reference, 2 * 16)


def test_two_overlapping_ingests_at_once_write_each_shard_once(
    any_store, region, reference, small_layout_config
):
    store = any_store
    west = GridSlice(region.row0, region.row1, region.col0, region.col0 + 1536)
    east = GridSlice(region.row0, region.row1, region.col0 + 512, region.col1)
    procs = [
        subprocess.Popen(
            _ingest_cmd(store, part, small_layout_config), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        for part in (west, east)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
    with Catalog(store) as cat:
        df = cat.shards()
    # the 2 x 8 shard-years both regions cover were claimed by one ingest and left to it by the other
    assert (df.attempts == 1).all(), df[df.attempts != 1]
    _assert_complete(store, region, reference, 2 * 16)


def test_a_worker_killed_mid_ingest_loses_nothing(any_store, region, reference):
    """Worker processes of their own: on S3 they see the store only through its URL."""
    import threading

    import distributed

    from miningxr import ingest

    store = any_store
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", host="127.0.0.1"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        result = {}
        t = threading.Thread(
            target=lambda: result.update(
                report=ingest(
                    store,
                    region,
                    list(YEARS),
                    layout=LAYOUT,
                    scheduler=cluster.scheduler_address,
                    progress=False,
                )
            )
        )
        t.start()
        t0 = time.monotonic()
        while _done(store) < 4 and time.monotonic() - t0 < 120:
            time.sleep(0.02)
        pids = list(client.run(os.getpid).values())
        os.kill(pids[0], signal.SIGKILL)  # the nanny restarts it; its tasks are recomputed
        t.join(timeout=300)
    report = result["report"]
    assert report.ok, report.failed
    _assert_complete(store, region, reference, 2 * 16)


@pytest.mark.slow  # ~45 s: three TensorFlow start-ups
def test_prediction_write_killed_resumes_to_the_uninterrupted_one(tmp_path, region, tiny_model):
    from miningxr import ingest, open_predictions

    store = tmp_path / "s.zarr"
    ingest(store, region, 2020, layout=LAYOUT, progress=False)
    ref_out, out = tmp_path / "ref.zarr", tmp_path / "pred.zarr"
    base = [
        *RUN,
        "predict",
        "--store",
        str(store),
        "--model",
        str(tiny_model),
        *_bbox_args(region),
        "--year",
        "2020",
        "--overlap",
        "0",
        "-q",
    ]
    assert subprocess.run([*base, "--out", str(ref_out)], capture_output=True, timeout=300).returncode == 0
    like = open_synthetic(region, 2020)
    want = open_predictions(ref_out, like, year=2020).values
    # a real prediction: NaN only where the imagery has no band (the source's residual cloud)
    assert 0.9 < np.isfinite(want).mean() < 1
    rng = np.random.default_rng(2)
    for _ in range(2):
        _kill_after(
            [*base, "--out", str(out)], out, 0, float(rng.uniform(2.0, 6.0)), variable="mining_probability"
        )
        if (out / "zarr.json").exists():
            got = open_predictions(out, like, year=2020).values
            assert np.isnan(got).all() or np.array_equal(got, want, equal_nan=True), "half-written prediction"
    assert subprocess.run([*base, "--out", str(out)], capture_output=True, timeout=300).returncode == 0
    got = open_predictions(out, like, year=2020).values
    np.testing.assert_array_equal(got, want)
    assert not list(out.rglob("*.partial*"))
