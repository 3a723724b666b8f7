"""Locations: local paths and object-storage URLs behind one type; URLs never become folders."""

import pytest

from miningxr import UsageError, open_store
from miningxr.cli import main
from miningxr.errors import StoreError
from miningxr.paths import as_location, local_path, staged


@pytest.mark.parametrize("url", ["s3://bucket/s.zarr", "gs://b/s.zarr", "az://c/s.zarr", "memory://m/s.zarr"])
def test_object_storage_urls_are_locations_and_local_file_apis_refuse_them(url):
    loc = as_location(url)
    assert loc.is_url and str(loc) == url and loc.name == "s.zarr"
    assert str(loc / "_catalog" / "zarr.json") == f"{url}/_catalog/zarr.json"
    with pytest.raises(UsageError, match=r"is a URL.*copy it here first"):
        local_path(url, what="the polygon file")


def test_memory_locations_read_write_list_and_create_only_once():
    loc = as_location("memory://t/s.zarr")
    assert loc.read_bytes("a") is None and not loc.exists("a")
    assert loc.put("d/a.json", b"1", create=True) and not loc.put("d/a.json", b"2", create=True)
    assert loc.read_bytes("d/a.json") == b"1"  # the second create changed nothing
    assert loc.exists("d/a.json") and not loc.exists("d/a") and loc.exists()
    loc.put("d/b.json", b"3")
    assert sorted(m.key for m in loc.list("d/")) == ["d/a.json", "d/b.json"]
    loc.delete("d")
    assert loc.list() == []


def test_staged_writes_upload_only_a_finished_block(tmp_path):
    loc = as_location("memory://t/out")
    with pytest.raises(RuntimeError), staged(loc) as folder:
        (folder / "half.txt").write_text("x")
        raise RuntimeError("failed half-way")
    assert loc.list() == []  # nothing of a failed step is uploaded
    with staged(loc) as folder:
        (folder / "sub").mkdir()
        (folder / "sub" / "a.txt").write_text("a")
    assert loc.read_bytes("sub/a.txt") == b"a"
    with staged(as_location(tmp_path / "local")) as folder:
        assert folder == tmp_path / "local"


def test_a_memory_store_missing_is_named_with_the_fix():
    with pytest.raises(StoreError, match="is not a miningxr store"):
        open_store("memory://t/none.zarr")


@pytest.mark.parametrize(
    "command, message",
    [
        ("ingest --store ftp://host/s.zarr --bbox 29 -26 29.05 -25.95 --year 2020", "not ftp://"),
        ("demo --out s3://bucket/demo", "is a URL"),
        ("change --predictions http://host/p.zarr --out change", "not http://"),
        (
            "evaluate --store s.zarr --predictions p.zarr --out s3://key:secret@bucket/eval",
            "never in the URL",
        ),
        ("status --store s3:///s.zarr", "names no bucket"),
    ],
)
def test_cli_refuses_bad_urls_and_writes_no_folder_named_after_them(
    command, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert main(command.split()) == 2
    err = capsys.readouterr().err
    assert message in err and "secret" not in err.replace("never in the URL", "")
    assert not any(tmp_path.iterdir()), list(tmp_path.rglob("*"))


def test_the_cli_writes_an_s3_store_into_the_bucket_not_a_folder_named_s3(
    s3_prefix, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    url = f"{s3_prefix}/s.zarr"
    assert main(f"ingest --store {url} --bbox 29.01 -25.99 29.02 -25.98 --year 2020 -q".split()) == 0
    assert main(f"status --store {url}".split()) == 0
    assert "landsat" in capsys.readouterr().out
    assert as_location(url).exists("zarr.json")
    assert not any(tmp_path.iterdir()), list(tmp_path.rglob("*"))


def test_reading_a_store_that_is_not_there_creates_nothing(tmp_path, monkeypatch):
    from miningxr import load_tile_index, open_regions, status
    from miningxr.errors import TileError

    monkeypatch.chdir(tmp_path)
    for read in (open_store, status, open_regions):
        with pytest.raises(StoreError, match="is not a miningxr store"):
            read("typo.zarr")
    with pytest.raises(TileError, match="no tile index"):
        load_tile_index("typo.zarr")
    assert not any(tmp_path.iterdir()), list(tmp_path.rglob("*"))


def test_a_memory_store_on_workers_in_other_processes_is_refused_before_any_shard(shard_slice):
    import distributed

    from miningxr import ingest

    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0", host="127.0.0.1"
        ) as cluster,
        pytest.raises(UsageError, match="other processes"),
    ):
        ingest("memory://t/far.zarr", shard_slice, 2020, scheduler=cluster.scheduler_address, progress=False)
    # and with the threads of this process it works
    assert ingest("memory://t/near.zarr", shard_slice, 2020, progress=False).written == 1
