"""Stores in object storage: every stage against a real S3-compatible server on loopback.

The server is moto in server mode (``s3_server`` in conftest): a real HTTP S3 endpoint that
obstore, zarr and the subprocesses talk to exactly as they would talk to AWS, with conditional
writes (``If-None-Match``) that the catalog's claims rely on.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import S3_BUCKET, S3_KEY_ID, S3_SECRET

from miningxr import (
    evaluate,
    export_store,
    ingest,
    open_predictions,
    open_store,
    predict,
    status,
    tile_index,
    train,
    write_mask,
    write_predictions,
)
from miningxr.config import StoreLayout, TrainConfig
from miningxr.encoding import decode_probability, encode_probability
from miningxr.errors import StoreError, UsageError
from miningxr.loader import ChunkReader
from miningxr.paths import as_location, local_path
from miningxr.sources.synthetic import mine_polygons, open_synthetic

RUN = [sys.executable, "-c", "import sys; from miningxr.cli import main; sys.exit(main(sys.argv[1:]))"]
SMALL = StoreLayout(chunk=256, shard=512)


def test_urls_of_unknown_schemes_or_with_credentials_are_refused_naming_the_fix():
    with pytest.raises(UsageError, match="s3://, gs://, az://"):
        as_location("ftp://host/s.zarr", what="the store")
    with pytest.raises(UsageError, match="never in the URL"):
        as_location("s3://AKIA:secret@bucket/s.zarr", what="the store")
    with pytest.raises(UsageError, match="names no bucket"):
        as_location("s3:///s.zarr", what="the store")
    with pytest.raises(UsageError, match="local or shared-filesystem path"):
        local_path("s3://bucket/mines.gpkg", what="the polygon file")
    assert as_location("file:///data/s.zarr").local.as_posix() == "/data/s.zarr"


def test_a_missing_bucket_is_refused_before_anything_is_written(s3_server, shard_slice):
    with pytest.raises(StoreError, match="check that the bucket exists"):
        ingest("s3://no-such-bucket/s.zarr", shard_slice, 2020, progress=False)


def test_an_s3_store_agrees_pixel_for_pixel_with_a_local_one(s3_prefix, tmp_path, shard_slice, client):
    url = f"{s3_prefix}/s.zarr"
    region = shard_slice
    for where in (url, tmp_path / "s.zarr"):
        report = ingest(where, region, [2019, 2020], layout=SMALL, progress=False)
        assert report.ok and report.written == 2 * 16
    remote, local = open_store(url), open_store(tmp_path / "s.zarr")
    xr.testing.assert_identical(remote.landsat.load(), local.landsat.load())
    assert remote.rio.crs == local.rio.crs and remote.attrs["store"] == url
    table = status(url)
    assert table.done.tolist() == [16, 16] and table.failed.sum() == 0
    # nothing but the store's own objects: no temporary file, no local folder named "s3:"
    keys = {m.key.split("/")[0] for m in as_location(url).list()}
    assert keys == {"zarr.json", "landsat", "mining", "x", "y", "year", "band", "spatial_ref", "_catalog"}
    assert not (tmp_path / "s3:").exists()
    # a rerun writes nothing: every shard is done
    assert ingest(url, region, [2019, 2020], layout=SMALL, progress=False).skipped == 32


def test_the_loaders_ranged_reads_from_s3_equal_the_local_file_reads(s3_prefix, tmp_path, shard_slice):
    url = f"{s3_prefix}/s.zarr"
    for where in (url, tmp_path / "s.zarr"):
        ingest(where, shard_slice, 2020, layout=SMALL, progress=False)
    remote = ChunkReader(url, 2020, ["red", "nir", "swir1"], 64, 512)
    local = ChunkReader(str(tmp_path / "s.zarr"), 2020, ["red", "nir", "swir1"], 64, 512)
    assert remote._open()[2] is not None, "the fast reader declined the S3 store"
    r0, c0 = shard_slice.row0, shard_slice.col0
    for row, col in [(r0, c0), (r0 + 1536, c0 + 1024), (r0 - 4096, c0)]:  # the last: never ingested
        (ia, la, ea), (ib, lb, eb) = remote.read(row, col), local.read(row, col)
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(la, lb)
        assert ea == eb


def test_train_predict_evaluate_and_export_read_and_write_object_storage(s3_prefix, shard_slice, client):
    """The whole chain with nothing local but the polygon file: the store, the tile index, the
    run folder with the model, the prediction store and the exports all live in S3."""
    url, pred, run, exports = (f"{s3_prefix}/{n}" for n in ("s.zarr", "p.zarr", "run", "exports"))
    ingest(url, shard_slice, 2020, progress=False)
    polys = mine_polygons(shard_slice, 2020)
    write_mask(url, polys, progress=False)
    index = tile_index(url)
    assert len(index) and "stats" in index.attrs
    result = train(url, config=TrainConfig(base_filters=4, depth=2, epochs=1), out_dir=run, verbose=0)
    assert str(result.model_path) == f"{run}/model.keras"
    assert {m.key for m in as_location(run).list()} >= {"model.keras", "train.json", "history.csv"}
    ds = open_store(url)
    prob = predict(ds, str(result.model_path), overlap=0)
    report = write_predictions(prob, pred, progress=False)
    assert report.ok and report.written == 1
    want = (prob.sel(year=2020) if "year" in prob.dims else prob).values
    got = open_predictions(pred, ds, year=2020).values
    np.testing.assert_array_equal(got, decode_probability(encode_probability(want)))
    scores = evaluate(url, pred, split="all", polygons=polys)
    assert 0 < scores["pixels"] <= ds.sizes["y"] * ds.sizes["x"] and scores["area_true_km2"] > 0
    paths = export_store(url, pred, exports)
    assert str(paths["polygons"]) == f"{exports}/mining_predicted.gpkg"
    names = {m.key for m in as_location(exports).list()}
    assert "mining_predicted.gpkg" in names and any(n.startswith("mining_probability") for n in names)
    # a GIS tool opens the COG straight from the bucket's bytes
    import rasterio
    from rasterio.io import MemoryFile

    cog = next(n for n in names if n.startswith("mining_probability"))
    with MemoryFile(as_location(exports).read_bytes(cog)) as mem, mem.open() as src:
        assert src.crs.to_epsg() == 6933 and src.count == 1
    assert isinstance(rasterio.__version__, str)


def test_logs_of_an_s3_run_hold_no_credential(s3_prefix, shard_slice, tmp_path):
    """``-v`` logs everything miningxr says, the Dask cluster's start and every request's URL:
    none of it may hold the key id or the secret the server was given."""
    bb = shard_slice.geobox.geographic_extent.boundingbox
    inner = (bb.left + 0.01, bb.bottom + 0.01, bb.right - 0.01, bb.top - 0.01)
    cmd = f"ingest --store {s3_prefix}/s.zarr --bbox {' '.join(f'{v:.5f}' for v in inner)} --year 2020 -v"
    done = subprocess.run([*RUN, *shlex.split(cmd)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    bad = subprocess.run(
        [*RUN, "status", "--store", "s3://no-such-bucket/s.zarr", "-v"], capture_output=True, text=True
    )
    assert bad.returncode == 2
    logs = done.stdout + done.stderr + bad.stdout + bad.stderr
    assert "s.zarr" in logs and len(logs) > 200
    assert S3_KEY_ID not in logs and S3_SECRET not in logs


def test_the_store_can_be_read_by_zarr_directly_from_the_bucket(s3_prefix, shard_slice):
    """Nothing private about the layout: zarr over obstore's S3Store reads what miningxr wrote."""
    from obstore.store import S3Store
    from zarr.storage import ObjectStore

    url = f"{s3_prefix}/s.zarr"
    ingest(url, shard_slice, 2020, progress=False)
    prefix = url.split(f"s3://{S3_BUCKET}/", 1)[1]
    root = zarr.open_group(ObjectStore(S3Store(S3_BUCKET, prefix=prefix), read_only=True), mode="r")
    r0, c0 = shard_slice.row0, shard_slice.col0
    got = root["landsat"][2020 - 1984, :, r0 : r0 + 64, c0 : c0 + 64]
    want = open_synthetic(shard_slice, 2020, decode=False).landsat.values[0, :, :64, :64]
    np.testing.assert_array_equal(got, want)


def test_stores_created_at_once_by_several_writers_in_s3_are_one_store(s3_prefix):
    """Object storage has no rename: the build is claimed by a create-only marker, and the
    others wait for it (they used to race and fail on the arrays each other had made)."""
    from concurrent.futures import ThreadPoolExecutor

    from miningxr.store import CREATING, create_store, is_built

    url = f"{s3_prefix}/s.zarr"
    with ThreadPoolExecutor(4) as pool:
        layouts = list(pool.map(lambda _: create_store(url, SMALL), range(4)))
    assert layouts == [SMALL] * 4
    assert is_built(as_location(url), "miningxr") and not as_location(url).exists(CREATING)


def test_a_creation_cut_short_by_a_dead_process_is_taken_over(s3_prefix):
    import socket

    from miningxr.store import CREATING, create_store, is_built

    loc = as_location(f"{s3_prefix}/s.zarr")
    loc.put(CREATING, f"{socket.gethostname()}:999999999:0".encode())  # its builder died
    assert create_store(loc, SMALL) == SMALL
    assert is_built(loc, "miningxr") and not loc.exists(CREATING)
