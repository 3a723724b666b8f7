import numpy as np
import pytest

from miningxr import StoreError, YearError, open_landsat, open_store, status
from miningxr.encoding import decode_dn, encode_dn
from miningxr.grid import GridSlice
from miningxr.store import create_store


def as_stored(values: np.ndarray) -> np.ndarray:
    """What a store reads back of a source's values: packed to int16, decoded in float32."""
    return decode_dn(encode_dn(values))


def test_store_reads_back_exactly_what_the_source_gave(store):
    ds = open_store(store, years=2020)
    src = open_landsat(GridSlice.of_coords(ds), 2020)
    # bit for bit: the source's values packed into the store's int16, decoded in float32
    assert ds.landsat.dtype == np.float32
    assert np.array_equal(ds.landsat.values, as_stored(src.landsat.values), equal_nan=True)


def test_store_keeps_grid_coordinates_and_crs(store, shard_slice):
    ds = open_store(store)
    assert GridSlice.of_coords(ds) == shard_slice
    assert ds.rio.crs.to_epsg() == 6933
    assert ds.odc.geobox == shard_slice.geobox


def test_opening_a_sparse_global_store_builds_a_graph_of_the_ingested_slice_only(store):
    ds = open_store(store)
    # one task per chunk of the one ingested shard (plus a few), not per chunk of the globe
    assert len(ds.landsat.data.__dask_graph__()) < 1000


def test_unwritten_regions_read_as_no_data(store, shard_slice):
    other = GridSlice(shard_slice.row0 - 512, shard_slice.row0, shard_slice.col0, shard_slice.col0 + 512)
    ds = open_store(store, region=other, years=2020)
    assert np.isnan(ds.landsat.values).all()


def test_status_reports_done_shards(store):
    table = status(store)
    row = table[table.variable == "landsat"].iloc[0]
    assert (row.done, row.pending, row.failed) == (1, 0, 0)


def test_a_path_that_is_not_a_store_is_refused(tmp_path):
    with pytest.raises(StoreError, match="not a miningxr store"):
        open_store(tmp_path / "nothing.zarr")
    import zarr

    zarr.open_group(tmp_path / "other.zarr", mode="w")
    with pytest.raises(StoreError, match="not a miningxr store"):
        open_store(tmp_path / "other.zarr")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(StoreError, match="not a miningxr store"):
        create_store(tmp_path / "full")


def test_store_of_an_older_layout_is_refused(tmp_path):
    import json

    path = tmp_path / "old.zarr"
    create_store(path)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["miningxr"]["layout_version"] = 0
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="layout version 0"):
        open_store(path)


def test_years_out_of_order_and_apart_read_each_year_as_stored(tmp_path, client, shard_slice):
    from miningxr import ingest, open_landsat
    from miningxr.config import StoreLayout

    region = GridSlice(shard_slice.row0, shard_slice.row0 + 256, shard_slice.col0, shard_slice.col0 + 256)
    path = tmp_path / "years.zarr"
    ingest(path, region, [2016, 2017, 2020], layout=StoreLayout(chunk=256, shard=256), progress=False)
    ds = open_store(path, region=region, years=[2020, 2016, 2017])
    assert list(ds.year.values) == [2020, 2016, 2017]
    want = open_landsat(region, [2020, 2016, 2017])
    np.testing.assert_array_equal(ds.landsat.values, as_stored(want.landsat.values))
    assert ds.mining.dims == ("y", "x") and ds.rio.crs.to_epsg() == 6933


def test_a_year_the_store_does_not_hold_is_refused_with_the_fix(store):
    with pytest.raises(
        YearError,
        match=r"holds no imagery for year\(s\) \[2016, 2017\]; it holds \[2020\]"
        r".*--year 2016 2017",
    ):
        open_store(store, years=[2020, 2016, 2017])


def test_year_outside_the_store_is_refused(store):
    with pytest.raises(YearError, match="outside the store's years"):
        open_store(store, years=1950)


def test_a_sparse_store_opens_region_by_region(two_regions):
    from miningxr import open_regions, store_regions

    path, regions = two_regions
    assert sorted(store_regions(path), key=lambda s: s.row0) == sorted(regions, key=lambda s: s.row0)
    tree = open_regions(path)
    nodes = {name: node.to_dataset() for name, node in tree.children.items()}
    assert len(nodes) == 2 and tree.attrs["regions"] == 2
    for ds in nodes.values():
        # each node is exactly its region, as open_store of that region gives it
        assert GridSlice.of_coords(ds) in regions and ds.attrs["region"] in nodes
        assert ds.sizes["y"] == ds.sizes["x"] == 1024 and ds.year.values.tolist() == [2019, 2020]
        # every pixel is held; a few are no data, as the source's residual cloud leaves them
        assert 0.9 < float(ds.landsat.notnull().mean()) < 1
        direct = open_store(path, region=GridSlice.of_coords(ds))
        np.testing.assert_array_equal(
            ds.landsat.isel(x=slice(0, 64)).values, direct.landsat.isel(x=slice(0, 64)).values
        )


def test_a_sparse_store_without_a_region_is_refused_with_the_way_to_open_it(two_regions):
    path, _ = two_regions
    with pytest.raises(StoreError, match=r"8 shard\(s\) in 2 separate region\(s\)") as info:
        open_store(path)
    assert "open_regions" in str(info.value) and "2 separate region(s)" in str(info.value)
