"""Shared fixtures: everything is built from the synthetic source, offline."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import distributed
import pytest

from miningxr.grid import GridSlice, Region

# a 2048x2048 shard in South Africa with several synthetic mines
LON, LAT = 29.05, -25.95


@pytest.fixture(scope="session")
def client():
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as c:
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
