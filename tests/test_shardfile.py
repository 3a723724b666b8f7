"""The shard-file reader against zarr: the same chunks, from any layout zarr writes as we do."""

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zarr.codecs import BloscCodec, ZstdCodec

from miningxr import StoreError
from miningxr.shardfile import ShardReader
from miningxr.store import create_store


@pytest.fixture
def sparse_store(tmp_path):
    """A small-layout store (256-px chunks, 512-px shards) with one chunk of each array written:
    its shard also holds chunks never written, and the next shard does not exist."""
    from miningxr.config import StoreLayout

    path = tmp_path / "sparse.zarr"
    create_store(path, StoreLayout(chunk=256, shard=512))
    root = zarr.open_group(path, mode="r+", zarr_format=3)
    rng = np.random.default_rng(1)
    r, c = 1024 * 256, 2048 * 256  # chunk (1024, 2048): the top-left chunk of its shard
    root["landsat"][36, :, r : r + 256, c : c + 256] = rng.integers(
        -2000, 30000, (7, 256, 256), dtype=np.int16
    )
    root["mining"][r : r + 256, c : c + 256] = rng.integers(0, 2, (256, 256), dtype=np.uint8)
    return path, (1024, 2048)


@pytest.mark.parametrize("name", ["landsat", "mining"])
def test_shard_reader_decodes_chunks_as_zarr_does(sparse_store, name):
    path, (r, c) = sparse_store
    arr = zarr.open_array(path, path=name, mode="r")
    reader = ShardReader.for_array(arr)
    lead = (36, 0) if name == "landsat" else ()
    # written, not written in a written shard, in a shard never written
    coords = [(*lead, r, c), (*lead, r + 1, c), (*lead, r + 2, c)]
    outs = [np.empty(arr.chunks, arr.dtype) for _ in coords]
    reader.read(coords, outs)
    for at, out in zip(coords, outs, strict=True):
        want = arr[tuple(slice(i * n, (i + 1) * n) for i, n in zip(at, arr.chunks, strict=True))]
        np.testing.assert_array_equal(out, want)
    assert (outs[0] != arr.fill_value).any() and (outs[1] == arr.fill_value).all()


def test_shard_reader_reports_a_damaged_shard_and_the_fix(sparse_store):
    path, (r, c) = sparse_store
    arr = zarr.open_array(path, path="mining", mode="r")
    shard = path / "mining" / arr.metadata.encode_chunk_key((r // 2, c // 2))
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # inside the chunk index
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"damaged.*re-run the ingest"):
        ShardReader.for_array(arr).read([(r, c)], [np.empty(arr.chunks, arr.dtype)])


def test_shard_reader_reports_an_undecodable_chunk_and_the_fix(sparse_store):
    path, (r, c) = sparse_store
    arr = zarr.open_array(path, path="mining", mode="r")
    shard = path / "mining" / arr.metadata.encode_chunk_key((r // 2, c // 2))
    data = bytearray(shard.read_bytes())
    data[:4] = b"\0\0\0\0"  # the zstd frame's magic number of the one chunk, at offset 0
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"cannot be decoded.*re-run the ingest"):
        ShardReader.for_array(arr).read([(r, c)], [np.empty(arr.chunks, arr.dtype)])


def test_shard_reader_declines_a_layout_it_does_not_know(tmp_path):
    plain = zarr.create_array(tmp_path / "plain.zarr", shape=(64, 64), chunks=(32, 32), dtype="uint8")
    assert ShardReader.for_array(plain) is None


@st.composite
def sharded_arrays(draw):
    """A sharded array laid out as miningxr writes (2-D mask or 4-D imagery), some chunks written."""
    ndim = draw(st.sampled_from([2, 4]))
    chunk = draw(st.sampled_from([4, 8, 16]))
    per = draw(st.integers(1, 3))  # chunks per shard side
    shards_across = draw(st.integers(1, 3))
    side = chunk * per * shards_across - draw(st.integers(0, chunk - 1))  # edge chunks may be partial
    lead = (draw(st.integers(1, 2)), draw(st.integers(1, 3))) if ndim == 4 else ()
    dtype = np.int16 if ndim == 4 else np.uint8
    codec = draw(st.sampled_from(["blosc", "zstd"]))
    n_chunks = -(-side // chunk)
    written = draw(st.sets(st.tuples(st.integers(0, n_chunks - 1), st.integers(0, n_chunks - 1)), max_size=6))
    seed = draw(st.integers(0, 2**32 - 1))
    return lead, side, chunk, per, dtype, codec, sorted(written), seed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=sharded_arrays())
def test_shard_reader_reads_what_zarr_reads_for_any_layout(tmp_path_factory, case):
    lead, side, chunk, per, dtype, codec, written, seed = case
    compressor = BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle") if codec == "blosc" else ZstdCodec()
    info = np.iinfo(dtype)
    arr = zarr.create_array(
        tmp_path_factory.mktemp("a") / "a.zarr",
        shape=(*lead, side, side),
        dtype=dtype,
        chunks=(*(1,) * len(lead), chunk, chunk),
        shards=(*(1,) * len(lead), chunk * per, chunk * per),
        fill_value=info.min,
        compressors=compressor,
        zarr_format=3,
    )
    rng = np.random.default_rng(seed)
    for r, c in written:
        rows, cols = slice(r * chunk, (r + 1) * chunk), slice(c * chunk, (c + 1) * chunk)
        block = arr[(*(0,) * len(lead), rows, cols)]
        arr[(*(slice(None),) * len(lead), rows, cols)] = rng.integers(
            info.min + 1, info.max, (*lead, *block.shape), dtype=dtype
        )
    reader = ShardReader.for_array(arr)
    assert reader is not None
    n = -(-side // chunk)
    coords = [
        (*(i % k for k in lead), r, c) for i, (r, c) in enumerate((r, c) for r in range(n) for c in range(n))
    ]
    outs = [np.empty(arr.chunks, arr.dtype) for _ in coords]
    reader.read(coords, outs)
    for at, out in zip(coords, outs, strict=True):
        sel = tuple(slice(i * k, (i + 1) * k) for i, k in zip(at, arr.chunks, strict=True))
        want = arr[sel]
        # a chunk at the array's edge is stored whole: the part inside the array is zarr's
        np.testing.assert_array_equal(out[tuple(slice(0, s) for s in want.shape)], want)
