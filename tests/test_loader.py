import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from miningxr import load_tile_index, open_store, training_dataset
from miningxr.config import BANDS, TileConfig, TrainConfig
from miningxr.encoding import normalize
from miningxr.errors import LoaderError
from miningxr.loader import ChunkReader, _chunk_table, cut_tiles


def test_batches_have_tile_shapes_and_binary_masks(store):
    ds = training_dataset(store, split="val", config=TrainConfig(batch_size=8))
    x, y = next(iter(ds))
    assert x.shape == (8, 64, 64, 7) and y.shape == (8, 64, 64, 1)
    assert set(np.unique(y.numpy())) <= {0.0, 1.0}


def test_every_selected_tile_is_served_once_per_epoch(store):
    index = load_tile_index(store)
    n = int(((index.split == "test") & index.selected).sum())
    ds = training_dataset(store, split="test", config=TrainConfig(batch_size=16))
    assert sum(int(x.shape[0]) for x, _ in ds) == n


def test_tiles_are_normalized_store_pixels(store):
    index = load_tile_index(store)
    stats = index.attrs["stats"]
    tile = index[(index.split == "val") & index.selected].iloc[0]
    ds = training_dataset(store, index[index.index == tile.name], split="val", shuffle=False, augment=False)
    x, _y = next(iter(ds))
    raw = (
        open_store(store)
        .landsat.isel(year=0)
        .sel(y=slice(None), x=slice(None))
        .isel(
            y=slice(tile.row0 - index.row0.min(), tile.row0 - index.row0.min() + 64),
            x=slice(tile.col0 - index.col0.min(), tile.col0 - index.col0.min() + 64),
        )
    )
    want = normalize(raw.transpose("y", "x", "band").values, stats["mean"], stats["std"])
    np.testing.assert_allclose(x.numpy()[0], want, atol=1e-5)


def test_reads_run_on_the_dask_cluster_and_serve_the_same_tiles(store, client):
    import distributed

    cfg = TrainConfig(batch_size=8)
    local = training_dataset(store, split="val", config=cfg, shuffle=False, augment=False)
    with distributed.get_task_stream(client) as tasks:
        remote = training_dataset(store, split="val", config=cfg, client=client, shuffle=False, augment=False)
        x, y = next(iter(remote))
    # the reads ran as tasks on the cluster's workers (a loader that ignored `client` runs none)
    reads = [t for t in tasks.data if "ChunkReader" in str(t["key"]) or "__call__" in str(t["key"])]
    assert reads, [t["key"] for t in tasks.data][:5]
    x_local, y_local = next(iter(local))
    np.testing.assert_array_equal(x.numpy(), x_local.numpy())
    np.testing.assert_array_equal(y.numpy(), y_local.numpy())


def test_a_shuffled_repeating_dataset_keeps_reading_across_epochs_on_a_cluster(store, client):
    index = load_tile_index(store)
    n = int(((index.split == "train") & index.selected).sum())
    ds = training_dataset(store, split="train", config=TrainConfig(batch_size=16), client=client, repeat=True)
    # three epochs: each starts a new generator of cluster reads while the last one's end
    assert sum(int(x.shape[0]) for x, _ in ds.take(3 * n // 16)) == 3 * n // 16 * 16


@pytest.mark.parametrize("in_memory", [False, True])
def test_a_script_ending_with_a_live_iterator_exits(store, in_memory):
    # the iterator is destroyed while Python finalizes, with reads still in flight
    script = (
        f"import miningxr; ds = miningxr.training_dataset({str(store)!r}, split='train', repeat=True, in_memory={in_memory!r}); "
        "x, y = next(iter(ds)); it = iter(ds); next(it); print('read', x.shape[0])"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "read 32" in done.stdout


def test_tiles_cut_from_a_scratch_read_survive_the_next_read(store):
    index = load_tile_index(store)
    reader = ChunkReader(str(store), int(index.attrs["year"]), BANDS, 64, 512)
    origins, flags = _chunk_table(index, 512, 64)
    (_, r0, c0), (_, r1, c1) = origins[0], origins[1]
    first = reader(int(r0), int(c0), flags[0])
    reader(int(r1), int(c1), flags[1])  # overwrites this thread's scratch
    img, lab, extent = reader.read(int(r0), int(c0))
    fresh = cut_tiles(img, lab, flags[0], 64, extent=extent)
    np.testing.assert_array_equal(first[0], fresh[0])
    np.testing.assert_array_equal(first[1], fresh[1])


def test_a_pickled_reader_becomes_the_one_open_reader_of_its_process(store):
    import pickle

    reader = ChunkReader(str(store), int(load_tile_index(store).attrs["year"]), BANDS, 64, 1024)
    again = pickle.loads(pickle.dumps(reader))
    assert again is pickle.loads(pickle.dumps(reader))
    assert (again.store, again.year, again.band_index) == (reader.store, reader.year, reader.band_index)


@pytest.mark.parametrize("bands", [BANDS, ("nir", "red", "swir2")])
def test_in_memory_serves_the_same_batches_as_streaming(store, bands):
    cfg = TrainConfig(batch_size=16, bands=bands)
    streamed = training_dataset(store, split="test", config=cfg, shuffle=False, augment=False)
    cached = training_dataset(store, split="test", config=cfg, shuffle=False, augment=False, in_memory=True)
    for (xs, ys), (xc, yc) in zip(streamed, cached, strict=True):
        np.testing.assert_array_equal(xs.numpy(), xc.numpy())
        np.testing.assert_array_equal(ys.numpy(), yc.numpy())


def test_in_memory_with_a_cluster_is_refused(store, client):
    with pytest.raises(LoaderError, match="in_memory"):
        training_dataset(store, split="val", client=client, in_memory=True)


def test_unknown_split_is_named(store):
    with pytest.raises(LoaderError, match="no selected tile"):
        training_dataset(store, split="holdout")


def test_normalize_turns_no_data_into_zero_and_standardizes_the_rest():
    # a valid value far from the mean, so that "everything becomes 0" cannot pass
    dn = np.array([[[-32768, 2000]]], dtype=np.int16).reshape(1, 2, 1)
    out = normalize(dn, [0.1], [0.05], band_axis=-1)
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == pytest.approx((0.2 - 0.1) / 0.05, abs=1e-5)
    decoded = normalize(np.array([[np.nan, 0.2]], np.float32), [0.1], [0.05])
    np.testing.assert_allclose(decoded, [[0.0, 2.0]], atol=1e-5)


def test_the_eight_augmentation_draws_are_the_eight_flips_and_rotations():
    import tensorflow as tf

    from miningxr.encoding import FILL_VALUE
    from miningxr.loader import _prepare_kernel

    rng = np.random.default_rng(5)
    dn = rng.integers(0, 3000, (2, 3, 64, 64)).astype(np.int16)
    dn[0, :, 0, 0] = FILL_VALUE
    y = rng.integers(0, 2, (2, 1, 64, 64)).astype(np.uint8)
    a, b, one, zero = tf.constant([2.0, 3.0, 4.0]), tf.constant([0.5, 0.0, -1.0]), tf.ones(2), tf.zeros(2)
    # the kernel's a, b are scale/std and (offset - mean)/std: this is normalize() band-first
    plain = np.where(dn == FILL_VALUE, 0.0, dn * a.numpy()[:, None, None] + b.numpy()[:, None, None])
    want = {
        np.rot90(np.flip(plain, axis) if axis else plain, k, axes=(2, 3))
        .transpose(0, 2, 3, 1)
        .round(3)
        .tobytes()
        for axis in (None, 2)
        for k in range(4)
    }
    got = set()
    for k in range(8):
        x, _m = _prepare_kernel()(
            tf.constant(dn),
            tf.constant(y),
            tf.tile(a[None], [2, 1]),
            tf.tile(b[None], [2, 1]),
            tf.constant(k),
            one,
            zero,
        )
        got.add(x.numpy().round(3).tobytes())
        assert (x.numpy()[0, ..., 0] == 0).sum() == 1  # the no-data pixel moved with its tile, still 0
    assert got == want


def test_augmentation_moves_masks_with_their_tiles():
    import tensorflow as tf

    from miningxr.loader import prepare_batch

    rng = np.random.default_rng(3)
    dn = rng.integers(0, 3000, (16, 2, 8, 8)).astype(np.int16)
    y = (dn[:, :1] > 1500).astype(np.uint8)  # the mask is a function of band 0, pixel by pixel
    tf.random.set_seed(0)
    seen = set()
    for _ in range(12):
        x, m = prepare_batch(
            tf.constant(dn),
            tf.constant(y),
            [0.0, 0.0],
            [1.0, 1.0],
            augment=True,
            brightness=0.0,
            contrast=0.0,
            gain=0.0,
        )
        np.testing.assert_array_equal(x.numpy()[..., 0] > 0.15, m.numpy()[..., 0] > 0.5)
        seen.add(x.numpy()[0, :, :, 0].tobytes())
    assert len(seen) > 2  # several of the 8 flips/rotations were drawn


def test_augmentation_gives_every_band_of_every_tile_its_own_gain():
    """Reflectance times 1 +- gain, band by band and tile by tile (flat tiles: no flip shows)."""
    import tensorflow as tf

    from miningxr.encoding import SCALE_FACTOR
    from miningxr.loader import prepare_batch

    dn = np.broadcast_to(np.array([1000, 2000, 3000], np.int16)[None, :, None, None], (64, 3, 8, 8))
    y = np.zeros((64, 1, 8, 8), np.uint8)
    tf.random.set_seed(1)
    x, _ = prepare_batch(
        tf.constant(dn),
        tf.constant(y),
        [0.0] * 3,
        [1.0] * 3,
        augment=True,
        brightness=0.0,
        contrast=0.0,
        gain=0.2,
    )
    x = x.numpy()
    g = x[:, 0, 0, :] / (np.array([1000, 2000, 3000]) * SCALE_FACTOR)  # (tile, band)
    np.testing.assert_allclose(x, g[:, None, None, :] * dn.transpose(0, 2, 3, 1) * SCALE_FACTOR, rtol=1e-5)
    assert (g >= 0.8 - 1e-6).all() and (g <= 1.2 + 1e-6).all()
    assert g.std(axis=0).min() > 0.05 and g.std(axis=1).mean() > 0.05  # between tiles, between bands
    plain, _ = prepare_batch(tf.constant(dn), tf.constant(y), [0.0] * 3, [1.0] * 3, augment=False)
    np.testing.assert_allclose(plain.numpy(), dn.transpose(0, 2, 3, 1) * SCALE_FACTOR, rtol=1e-6)


def test_a_read_unit_cut_short_by_the_grid_edge_keeps_the_right_tiles():
    from miningxr.loader import cut_tiles

    rng = np.random.default_rng(0)
    img = rng.integers(0, 1000, (3, 128, 96)).astype(np.int16)  # a 2x2-tile unit cut to 2x1.5
    lab = rng.integers(0, 2, (128, 96)).astype(np.uint8)
    selected = np.array([True, False, True, True])  # per-unit flags, row-major over 2x2 tiles
    x, y = cut_tiles(img, lab, selected, 64)
    np.testing.assert_array_equal(x[0], img[:, :64, :64])  # tile (0, 0)
    np.testing.assert_array_equal(x[1], img[:, 64:, :64])  # tile (1, 0); (0, 1) and (1, 1) are cut off
    np.testing.assert_array_equal(y[1, 0], lab[64:, :64] > 0)
    assert len(x) == 2 and y.shape == (2, 1, 64, 64) and y.dtype == np.uint8


def test_a_store_layout_the_fast_reader_declines_is_read_through_zarr_alike(store, monkeypatch):
    from miningxr.shardfile import ShardReader

    index = load_tile_index(store)
    origins, flags = _chunk_table(index, 1024, 64)
    fast = ChunkReader(str(store), int(index.attrs["year"]), ["swir1", "red"], 64, 1024)
    want = [fast(int(o[1]), int(o[2]), f, int(o[0])) for o, f in zip(origins, flags, strict=True)]
    monkeypatch.setattr(ShardReader, "for_array", classmethod(lambda cls, array: None))
    slow = ChunkReader(str(store), int(index.attrs["year"]), ["swir1", "red"], 64, 1024)
    for (o, f), (x, y) in zip(zip(origins, flags, strict=True), want, strict=True):
        xs, ys = slow(int(o[1]), int(o[2]), f, int(o[0]))
        np.testing.assert_array_equal(xs, x)
        np.testing.assert_array_equal(ys, y)


@st.composite
def read_units(draw):
    """A read unit held chunk-major, as ChunkReader returns it, with flags and a band choice."""
    t = draw(st.sampled_from([4, 8]))
    per_chunk = draw(st.integers(1, 3))  # tiles per chunk side
    nci, ncj, nb = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    c = t * per_chunk
    h = draw(st.integers(1, nci * c))  # a unit cut short by the grid edge has a smaller extent
    w = draw(st.integers(1, ncj * c))
    per_unit = max(nci, ncj) * per_chunk  # flags are for a full square unit
    selected = draw(hnp.arrays(bool, per_unit * per_unit))
    bands = draw(st.none() | st.lists(st.integers(0, nb - 1), min_size=1, max_size=nb, unique=True))
    seed = draw(st.integers(0, 2**32 - 1))
    return t, (nci, ncj, nb, c), (h, w), selected, bands, seed


@settings(max_examples=200, deadline=None)
@given(read_units())
def test_cut_tiles_equals_slicing_each_selected_tile_out_of_the_unit(case):
    t, (nci, ncj, nb, c), (h, w), selected, bands, seed = case
    rng = np.random.default_rng(seed)
    img = rng.integers(-32768, 32767, (nci, ncj, nb, c, c), dtype=np.int16)
    lab = rng.integers(0, 2, (nci, ncj, c, c), dtype=np.uint8)
    # the same unit as plain (band, y, x) and (y, x) arrays
    flat = img.transpose(2, 0, 3, 1, 4).reshape(nb, nci * c, ncj * c)
    flat_lab = lab.transpose(0, 2, 1, 3).reshape(nci * c, ncj * c)
    per = int(np.sqrt(selected.size))
    want_x, want_y = [], []
    for r in range(h // t):
        for k in range(w // t):
            if r < per and k < per and selected[r * per + k]:
                tile = flat[:, r * t : (r + 1) * t, k * t : (k + 1) * t]
                want_x.append(tile if bands is None else tile[bands])
                want_y.append(flat_lab[None, r * t : (r + 1) * t, k * t : (k + 1) * t] > 0)
    x, y = cut_tiles(img, lab, selected, t, bands=bands, extent=(h, w))
    assert len(x) == len(want_x) and y.dtype == np.uint8
    if want_x:
        np.testing.assert_array_equal(x, np.stack(want_x))
        np.testing.assert_array_equal(y, np.stack(want_y).astype(np.uint8))


def test_every_selected_year_and_tile_of_a_sparse_store_is_served_once_per_epoch(two_regions):
    from miningxr import tile_index

    path, _ = two_regions
    index = tile_index(path, years=[2019, 2020], config=TileConfig(block_tiles=4), save=False)
    test = index[(index.split == "test") & index.selected]
    assert set(test.year) == {2019, 2020}
    cfg = TrainConfig(batch_size=16)
    ds = training_dataset(path, index, "test", config=cfg, shuffle=False, augment=False)
    x = np.concatenate([b.numpy() for b, _ in ds])
    assert len(x) == len(test)
    # the two years of a place are different images (the same tile twice would pass the count)
    in_memory = training_dataset(
        path, index, "test", config=cfg, shuffle=False, augment=False, in_memory=True
    )
    np.testing.assert_array_equal(x, np.concatenate([b.numpy() for b, _ in in_memory]))
    half = len(x) // 2
    assert not np.array_equal(x[:half], x[half:])
