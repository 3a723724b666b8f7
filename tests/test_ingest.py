import numpy as np
import pytest

from miningxr import ingest, open_store, status
from miningxr.catalog import Catalog
from miningxr.errors import YearError
from miningxr.grid import GridSlice


def test_rerunning_an_ingest_skips_done_shards(store, shard_slice):
    report = ingest(store, shard_slice, 2020, progress=False)
    assert (report.written, report.skipped) == (0, 1)


def test_two_regions_ingested_separately_agree_on_overlap(tmp_path, client, shard_slice):
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    left = GridSlice(shard_slice.row0, shard_slice.row1, shard_slice.col0, shard_slice.col1)
    right = GridSlice(shard_slice.row0, shard_slice.row1, shard_slice.col0 + 1000, shard_slice.col1 + 1000)
    ingest(a, left, 2021, progress=False)
    ingest(b, right, 2021, progress=False)
    overlap = GridSlice(shard_slice.row0, shard_slice.row1, shard_slice.col0 + 1000, shard_slice.col1)
    va = open_store(a, region=overlap, years=2021).landsat.values
    vb = open_store(b, region=overlap, years=2021).landsat.values
    # mostly clear (the source leaves some residual cloud as no data), and equal, gaps included
    assert 0.9 < np.isfinite(va).mean() < 1
    np.testing.assert_array_equal(va, vb)


def test_failed_shard_is_recorded_with_its_error_and_retried_on_request(
    tmp_path, client, shard_slice, monkeypatch
):
    from miningxr import shards

    path = tmp_path / "f.zarr"

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shards, "write_block", boom)
    report = ingest(path, shard_slice, 2020, progress=False)
    assert not report.ok and "No space left" in next(iter(report.failed.values()))
    assert status(path).failed.sum() == 1
    with Catalog(path) as cat:
        assert "No space left" in cat.shards(state="failed").error.iloc[0]
    monkeypatch.undo()
    assert ingest(path, shard_slice, 2020, progress=False).written == 0  # failed are left alone
    assert ingest(path, shard_slice, 2020, progress=False, retry_failed=True).written == 1
    assert status(path).done.sum() == 1


def test_a_shard_held_by_a_live_ingest_is_not_claimed_twice(any_store, shard_slice):
    from miningxr.catalog import new_owner
    from miningxr.store import create_store

    path = any_store
    create_store(path)
    key = (2020, shard_slice.row0 // 2048, shard_slice.col0 // 2048)
    with Catalog(path) as cat:
        cat.plan("landsat", [key], "synthetic")
        first, _ = cat.claim("landsat", [key], new_owner())
        second, busy = cat.claim("landsat", [key], new_owner())
    assert first == [key] and second == [] and busy == [key]


def test_a_dead_owner_s_claim_is_taken_over(any_store):
    import socket

    from miningxr.store import create_store

    create_store(any_store)
    key = (2020, 1, 1)
    with Catalog(any_store) as cat:
        cat.plan("landsat", [key], "synthetic")
        dead = f"{socket.gethostname()}:999999999:0"  # this machine, a pid that does not run
        assert cat.claim("landsat", [key], dead) == ([key], [])
        claimed, busy = cat.claim("landsat", [key], "me:1:1")
    assert claimed == [key] and busy == []
    with Catalog(any_store, readonly=True) as cat:
        row = cat.shards("landsat").iloc[0]
    assert (row.state, row.owner, row.attempts) == ("running", "me:1:1", 2)


def test_year_outside_the_store_is_refused_before_writing(tmp_path, shard_slice):
    with pytest.raises(ValueError, match="outside"):
        ingest(tmp_path / "y.zarr", shard_slice, 1900, progress=False)


def test_the_plan_of_a_country_counts_shards_requests_and_bytes_before_any_request():
    from miningxr import plan
    from miningxr.grid import Region

    p = plan(None, "ZAF", [2019, 2020], source="gee")
    shards = len(Region.from_country("ZAF").shard_ids(2048))
    assert p.shards == shards and p.todo == 2 * shards and p.already_done == 0
    # seven bands, four 1024-px requests per 2048-px shard, each a float32 band and a mask byte
    assert p.requests == 2 * shards * 7 * 4
    assert p.request_bytes == p.requests * 1024**2 * 5
    assert p.store_bytes == int(2 * shards * 2048**2 * 7 * 2 * 0.62)
    assert p.seconds == p.requests * 2.0 / 40
    assert "nothing was requested or written" in str(p)


def test_the_plan_counts_only_what_a_store_still_lacks(any_store, shard_slice, client):
    from miningxr import plan

    ingest(any_store, shard_slice, 2020, progress=False)
    p = plan(any_store, shard_slice, [2019, 2020])
    assert (p.shards, p.todo, p.already_done) == (1, 1, 1)
    assert "1 already done" in str(p)


def test_a_plan_refuses_years_the_source_cannot_serve():
    from miningxr import plan

    with pytest.raises(YearError, match="outside"):
        plan(None, "ZAF", 1970, source="gee")


def test_ingest_dry_run_prints_the_plan_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from miningxr.cli import main

    monkeypatch.chdir(tmp_path)
    store = tmp_path / "s.zarr"
    assert main(f"ingest --store {store} --country ZAF --year 2020 --source gee --dry-run".split()) == 0
    out = capsys.readouterr().out
    assert "computePixels requests" in out and "wall time" in out and "store" in out
    assert not any(tmp_path.iterdir())
    assert main(["ingest", "--country", "ZAF", "--year", "2020"]) == 2
    assert "needs --store" in capsys.readouterr().err
