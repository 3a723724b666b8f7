"""Shared fixtures: everything is built from the synthetic source, offline."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import socket
from unittest import mock

import distributed
import pytest

from miningxr.grid import GridSlice, Region

_LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "", socket.gethostname()}


def _block_network() -> None:
    """Refuse every connection that would leave this machine: tests must run offline.

    Loopback stays open for the Dask scheduler and workers. A test that reaches for the network
    (Earth Engine, a STAC API, a token endpoint) gets the OSError a machine without network
    would give, which is exactly what the "no network" error paths must handle.
    """
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else str(host or "")
        if name not in _LOCAL_NAMES and not name.startswith("127.") and not name.startswith("/"):
            raise socket.gaierror(socket.EAI_NONAME, f"network access blocked in tests: {name}")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        # a UDP connect sends nothing (distributed uses one to find its own address)
        if self.family in (socket.AF_INET, socket.AF_INET6) and self.type == socket.SOCK_STREAM:
            host = str(address[0])
            if not (host.startswith("127.") or host in ("::1", "localhost")):
                raise OSError(101, f"network access blocked in tests: {address}")
        return real_connect(self, address)

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = connect


_block_network()

# a 2048x2048 shard in South Africa with several synthetic mines
LON, LAT = 29.05, -25.95


@pytest.fixture(scope="session")
def client():
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


@pytest.fixture(scope="session")
def shard_slice() -> GridSlice:
    return Region.from_bbox((LON, LAT, LON + 1e-4, LAT + 1e-4)).slice(2048)


@pytest.fixture(scope="session")
def store(tmp_path_factory, client, shard_slice):
    """A store with one shard of 2020 imagery, its mining mask and a tile index."""
    from miningxr import ingest, tile_index, write_mask
    from miningxr.sources.synthetic import mine_polygons

    root = tmp_path_factory.mktemp("store")
    path = root / "s.zarr"
    ingest(path, shard_slice, 2020, progress=False)
    mine_polygons(shard_slice, 2020).to_file(root / "mines.gpkg", layer="mining_polygons")
    write_mask(path, root / "mines.gpkg", progress=False)
    tile_index(path)
    return path


@pytest.fixture(scope="session")
def polygons_path(store):
    return store.parent / "mines.gpkg"


@pytest.fixture(scope="session")
def tiny_model(store):
    """An untrained small UNet carrying the store's statistics (enough for alignment tests)."""
    from miningxr import build_unet, load_tile_index
    from miningxr.config import TrainConfig

    stats = load_tile_index(store).attrs["stats"]
    model = build_unet(TrainConfig(base_filters=4, depth=2), stats=stats)
    path = store.parent / "tiny.keras"
    model.save(path)
    return path


@pytest.fixture(scope="session")
def small_layout_config(tmp_path_factory):
    """A config file with 256-px chunks in 512-px shards: same grid, many cheap shards."""
    path = tmp_path_factory.mktemp("config") / "small.toml"
    path.write_text("[store]\nchunk = 256\nshard = 512\n")
    return path


#: two places far apart (South Africa, Nevada), 2x2 shards of 512 px each
TWO_PLACES = ((29.05, -25.95), (-116.0, 40.0))


@pytest.fixture(scope="session")
def two_regions(tmp_path_factory, client):
    """A sparse store: two regions of 2x2 small shards on two continents, 2019 and 2020, with the
    mining mask of the synthetic mines (2020 outlines)."""
    import geopandas as gpd
    import pandas as pd

    from miningxr import ingest, write_mask
    from miningxr.config import StoreLayout
    from miningxr.sources.synthetic import mine_polygons

    layout = StoreLayout(chunk=256, shard=512)
    root = tmp_path_factory.mktemp("two")
    path = root / "s.zarr"
    regions = []
    for lon, lat in TWO_PLACES:
        r, c = Region.from_bbox((lon, lat, lon + 1e-4, lat + 1e-4)).slice(512).shard_ids(512)[0]
        regions.append(GridSlice.covering([(r, c), (r + 1, c + 1)], 512))
    for region in regions:
        ingest(path, region, [2019, 2020], layout=layout, progress=False)
    mines = gpd.GeoDataFrame(pd.concat([mine_polygons(r, 2020) for r in regions], ignore_index=True))
    mines.to_file(root / "mines.gpkg", layer="mining_polygons")
    write_mask(path, root / "mines.gpkg", progress=False)
    return path, regions


@pytest.fixture(scope="session")
def two_region_model(two_regions):
    """An untrained small UNet with the statistics of the two-region store's tile index (saved)."""
    from miningxr import build_unet, tile_index
    from miningxr.config import TileConfig, TrainConfig

    path, _ = two_regions
    index = tile_index(path, years=[2019, 2020], config=TileConfig(block_tiles=4))
    model = build_unet(TrainConfig(base_filters=4, depth=2), stats=index.attrs["stats"])
    out = path.parent / "two.keras"
    model.save(out)
    return out


@pytest.fixture(scope="session")
def two_region_predictions(two_regions, two_region_model):
    """Predictions of both regions and both years, written one year at a time by the CLI."""
    from miningxr.cli import main

    path, _ = two_regions
    out = path.parent / "p.zarr"
    for year in ("2019", "2020"):
        assert (
            main(
                [
                    "predict",
                    "--store",
                    str(path),
                    "--model",
                    str(two_region_model),
                    "--out",
                    str(out),
                    "--years",
                    year,
                    "-q",
                ]
            )
            == 0
        )
    return out


#: the test S3 server's credentials: distinctive, so a grep of any log can prove none leaked
S3_KEY_ID, S3_SECRET = "MXRTESTKEYID4Q7ZW2", "mxr-test-secret-k9v3h7q1"
S3_BUCKET = "miningxr-test"


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto in server mode) on loopback, and the environment that
    points obstore, boto3 and every subprocess at it. Its address."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": S3_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    try:
        with mock.patch.dict(os.environ, env):
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=S3_BUCKET)
            yield endpoint
    finally:
        server.stop()


@pytest.fixture
def s3_prefix(s3_server, request):
    """A fresh ``s3://`` prefix on the test server, one per test."""
    import uuid

    return f"s3://{S3_BUCKET}/{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["local", "s3"])
def any_store(request, tmp_path):
    """A new store location: a local folder, then an ``s3://`` prefix on the test server."""
    if request.param == "local":
        return tmp_path / "s.zarr"
    return request.getfixturevalue("s3_prefix") + "/s.zarr"
