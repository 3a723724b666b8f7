import numpy as np

from miningxr import load_tile_index, tile_index
from miningxr.config import TileConfig


def test_every_tile_has_fractions_and_a_split(store):
    index = load_tile_index(store)
    assert len(index) == (2048 // 64) ** 2
    assert index.mining_fraction.between(0, 1).all()
    assert (index.valid_fraction == 1).all()
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
    stats = load_tile_index(store).attrs["stats"]
    assert stats["bands"][0] == "blue" and len(stats["mean"]) == 7
    assert all(s > 0 for s in stats["std"])
