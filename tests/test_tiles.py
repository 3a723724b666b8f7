import numpy as np
import pytest

from miningxr import load_tile_index, open_store, tile_index
from miningxr.config import TileConfig


def test_every_tile_has_fractions_and_a_split(store):
    index = load_tile_index(store)
    assert len(index) == (2048 // 64) ** 2
    assert index.mining_fraction.between(0, 1).all()
    # the valid fraction is the share of pixels with data: the source's residual cloud
    valid = open_store(store).landsat.notnull().all("band").isel(year=0).values
    tiles = valid.reshape(32, 64, 32, 64).mean(axis=(1, 3)).ravel()
    np.testing.assert_allclose(index.sort_values(["tile_row", "tile_col"]).valid_fraction, tiles)
    assert index.valid_fraction.min() < 1
    assert set(index.split) <= {"train", "val", "test", "buffer"}
    assert index.crs.to_epsg() == 6933


def test_no_test_tile_lies_within_the_buffer_of_a_training_tile(store):
    cfg = TileConfig(block_tiles=4, buffer_tiles=1)
    index = tile_index(store, config=cfg, save=False)
    train = index[index.split == "train"][["tile_row", "tile_col"]].to_numpy()
    for split in ("test", "val"):
        other = index[index.split == split][["tile_row", "tile_col"]].to_numpy()
        assert len(other)
        dist = np.abs(other[:, None, :] - train[None, :, :]).max(-1)  # Chebyshev distance in tiles
        assert dist.min() > cfg.buffer_tiles


def test_every_split_gets_mines(store):
    index = load_tile_index(store)
    assert all(index[index.split == s].positive.any() for s in ("train", "val", "test"))


def test_training_negatives_are_sampled_to_the_ratio(store):
    index = tile_index(store, config=TileConfig(negative_ratio=1.0), save=False)
    train = index[(index.split == "train") & index.selected]
    assert abs((~train.positive).sum() - train.positive.sum()) <= 1


def test_statistics_come_from_the_training_tiles(store):
    from miningxr import open_store

    index = load_tile_index(store)
    stats = index.attrs["stats"]
    assert stats["bands"] == ["blue", "green", "red", "nir", "swir1", "swir2", "thermal"]
    img = open_store(store).landsat.sel(year=index.attrs["year"]).transpose("y", "x", "band").values
    row0, col0 = index.row0.min(), index.col0.min()

    def pixels(tiles):
        parts = [
            img[r - row0 : r - row0 + 64, c - col0 : c - col0 + 64].reshape(-1, 7)
            for r, c in zip(tiles.row0, tiles.col0, strict=True)
        ]
        return np.concatenate(parts)

    train = pixels(index[(index.split == "train") & index.selected])
    np.testing.assert_allclose(stats["mean"], np.nanmean(train, 0), rtol=1e-4)
    np.testing.assert_allclose(stats["std"], np.nanstd(train, 0), rtol=1e-3)
    # and not from the whole store (negatives are sampled, other splits left out): they differ
    everything = pixels(index)
    assert not np.allclose(stats["mean"], np.nanmean(everything, 0), rtol=1e-4)


def test_a_store_without_imagery_is_a_clear_error(tmp_path):
    from miningxr.config import StoreLayout
    from miningxr.store import create_store

    path = tmp_path / "empty.zarr"
    create_store(path, StoreLayout(chunk=256, shard=512))
    with pytest.raises(ValueError, match="ingest"):
        tile_index(path)


def test_all_nodata_tiles_are_never_selected(tmp_path, client, shard_slice, polygons_path):
    import zarr

    from miningxr import ingest, write_mask
    from miningxr.config import StoreLayout
    from miningxr.encoding import FILL_VALUE
    from miningxr.grid import GridSlice

    layout = StoreLayout(chunk=256, shard=512)
    one = GridSlice(shard_slice.row0, shard_slice.row0 + 512, shard_slice.col0, shard_slice.col0 + 512)
    path = tmp_path / "s.zarr"
    ingest(path, one, 2020, layout=layout, progress=False)
    # the top half of the shard has no data (a scene gap), as a source may leave it
    zarr.open_group(path, mode="r+")["landsat"][
        2020 - layout.first_year, :, one.row0 : one.row0 + 256, one.col0 : one.col1
    ] = FILL_VALUE
    write_mask(path, polygons_path, progress=False)
    index = tile_index(path, config=TileConfig(block_tiles=1, buffer_tiles=0, negative_ratio=None))
    empty = index.row0 < one.row0 + 256
    assert (index.valid_fraction[empty] == 0).all() and (index.valid_fraction[~empty] > 0.5).all()
    assert not index.selected[empty].any() and index.selected[~empty].any()


def test_a_sparse_store_is_indexed_region_by_region_and_year_by_year(two_regions):
    path, _ = two_regions
    index = tile_index(path, years=[2019, 2020], config=TileConfig(block_tiles=4), save=False)
    per_year = (1024 // 64) ** 2 * 2  # two regions of 1024x1024 px
    assert len(index) == 2 * per_year and index.attrs["years"] == [2019, 2020]
    assert sorted(index.groupby("year").size().tolist()) == [per_year, per_year]
    assert set(index.country) == {"ZAF", "USA"} and index.region.nunique() == 2
    # a place is in the same split in every year: nothing leaks across years
    splits = index.groupby(["tile_row", "tile_col"]).split.nunique()
    assert (splits == 1).all()
    assert {"train", "val", "test"} <= set(index.split)
    # the mask is the polygons' (one per store): the same for a place in both years
    assert (index.groupby(["tile_row", "tile_col"]).mining_fraction.nunique() == 1).all()


def test_years_the_store_lacks_are_refused(two_regions):
    from miningxr import YearError

    with pytest.raises(YearError, match=r"year\(s\) \[2018\] not in the store's years \[2019, 2020\]"):
        tile_index(two_regions[0], years=[2018, 2019], save=False)
