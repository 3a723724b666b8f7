"""A ``tf.data`` pipeline of (tile, mask) pairs read chunk by chunk from the store.

Reading one 64x64 tile at a time would cost one Zarr decode of a 512x512 chunk per tile. The
loader instead reads units of 2x2 chunks (256 tiles of 64x64 at the default sizes) in parallel,
each chunk decoded straight from its shard file into a reused buffer
(:class:`~miningxr.shardfile.ShardReader`), cuts out the split's tiles with one numpy copy, keeps
them packed (int16, band-first) through a shuffle buffer that mixes units, then per batch
transposes, normalizes with the tile index's statistics and augments in one XLA-compiled
kernel, and prefetches. With ``client=`` the reads and cuts run on a Dask cluster instead, a
few units ahead of the model; with ``in_memory=True`` the units are read once and every epoch
runs from RAM.

Example
-------
>>> import miningxr
>>> ds = miningxr.training_dataset("s.zarr", split="train")  # doctest: +SKIP
>>> x, y = next(iter(ds))  # doctest: +SKIP
>>> x.shape, y.shape  # doctest: +SKIP
(TensorShape([32, 64, 64, 7]), TensorShape([32, 64, 64, 1]))
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype

from .config import BANDS, TrainConfig
from .encoding import ADD_OFFSET, FILL_VALUE, SCALE_FACTOR
from .errors import LoaderError
from .paths import Where, as_location
from .shardfile import ShardReader
from .store import store_layout
from .tfimport import import_tensorflow
from .tiles import load_tile_index


class _ReadsInFlight:
    """Counts the loader's Python calls running in tf.data threads; ends them at interpreter exit.

    A script that ends with a dataset iterator still alive (``x, y = next(iter(ds))`` as its last
    line) used to hang forever: Python destroys the iterator while it finalizes, tf.data's
    destructor waits for the reads in flight, and a read that needs the GIL then never gets it
    (a finalizing Python ends any foreign thread that asks). At exit, before finalizing, this
    makes new reads fail at once and waits for the ones in flight, so every pipeline is idle by
    the time its destructor runs. One per process, as ``atexit`` is.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._running = 0
        self._closing = False
        atexit.register(self.close)

    @contextlib.contextmanager
    def call(self):
        with self._cond:
            self._cond.notify_all()  # any call, even a refused one, is activity to wait out
            if self._closing:
                raise RuntimeError("the interpreter is exiting; the loader reads no more")
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    def close(self, quiet: float = 0.05, timeout: float = 10.0) -> None:
        """Refuse new reads; return once nothing has run for ``quiet`` seconds (or at ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closing = True
            # refused calls fill each stage's buffer with errors, after which tf.data starts
            # no more: a quiet moment with nothing running is the idle state we need
            while (left := deadline - time.monotonic()) > 0:
                if not self._cond.wait(min(quiet, left)) and self._running == 0:
                    return


_reads_in_flight = _ReadsInFlight()


class ChunkReader:
    """Reads square units of whole chunks from the store: a picklable callable for Dask workers too.

    ``unit`` is the side of one read in pixels, a multiple of the store's chunk. A unit is held
    chunk-major, ``(chunk_row, chunk_col, band, y, x)``, so that each chunk decodes straight
    into its place (:class:`~miningxr.shardfile.ShardReader`) and no copy assembles the unit.
    """

    def __init__(self, store: str, year: int, bands: Sequence[str], tile: int, unit: int):
        layout = store_layout(store)
        unknown = [b for b in bands if b not in BANDS]
        if unknown:
            raise LoaderError(f"band(s) {unknown} are not in the store's bands {list(BANDS)}")
        self.store, self.year, self.bands, self.tile, self.unit = str(store), year, tuple(bands), tile, unit
        self.chunk = layout.chunk
        self.first_year = layout.first_year
        self.band_index = [BANDS.index(b) for b in bands]
        self._arrays: tuple[zarr.Array, zarr.Array, ShardReader | None, ShardReader | None] | None = None
        self._local = threading.local()  # per-thread scratch of read(scratch=True)

    def _open(self) -> tuple[zarr.Array, zarr.Array, ShardReader | None, ShardReader | None]:
        if self._arrays is None:
            root = zarr.open_group(
                as_location(self.store).zarr_store(read_only=True), mode="r", zarr_format=3
            )
            landsat, mining = root["landsat"], root["mining"]
            assert isinstance(landsat, zarr.Array) and isinstance(mining, zarr.Array)
            self._arrays = (landsat, mining, ShardReader.for_array(landsat), ShardReader.for_array(mining))
        return self._arrays

    def __reduce__(self):
        # unpickled (on a Dask worker, for each read task) as that process's one reader of this
        # store, year, bands and unit, whose zarr arrays are open and scratch faulted in: a
        # fresh reader per task measured 3x the CPU of the read itself
        return _process_reader, (self.store, self.year, self.bands, self.tile, self.unit)

    def read(
        self, row0: int, col0: int, *, year: int | None = None, scratch: bool = False
    ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """The read unit at (row0, col0) of ``year`` (default the reader's): all bands,
        chunk-major, its mask, and its extent.

        Returns ``(img, lab, (h, w))``: ``img`` is ``(chunk_row, chunk_col, band, chunk, chunk)``
        int16, ``lab`` ``(chunk_row, chunk_col, chunk, chunk)``; a unit cut short by the grid
        edge has fewer chunks and an extent ``(h, w)`` under the unit's side, and its pixels past
        the extent are padding. With ``scratch``, the chunks decode into this thread's scratch
        arrays, which its next scratch read overwrites: for a caller that copies what it needs
        at once. Fresh ~15 MB arrays per read make glibc map, fault in and zero their pages
        again each time: 2-7% of the streaming loader's tiles/s, in paired runs.
        """
        landsat, mining, fast_img, fast_lab = self._open()
        at = (self.year if year is None else year) - self.first_year
        c = self.chunk
        h, w = min(self.unit, landsat.shape[2] - row0), min(self.unit, landsat.shape[3] - col0)
        nr, nc = -(-h // c), -(-w // c)
        shape = (nr, nc, landsat.shape[1], c, c)
        img, lab = (
            self._scratch(shape, landsat.dtype, mining.dtype)
            if scratch
            else (np.empty(shape, landsat.dtype), np.empty(shape[:2] + shape[3:], mining.dtype))
        )
        cells = [(i, j) for i in range(nr) for j in range(nc)]
        grid = [(row0 // c + i, col0 // c + j) for i, j in cells]
        if fast_img is not None and fast_lab is not None:
            fast_img.read([(at, 0, r, k) for r, k in grid], [img[i, j][None] for i, j in cells])
            fast_lab.read(grid, [lab[i, j] for i, j in cells])
        else:  # a layout ShardReader does not know: zarr reads it, chunk by chunk
            for (i, j), (r, k) in zip(cells, grid, strict=True):
                rows = slice(r * c, min((r + 1) * c, landsat.shape[2]))
                cols = slice(k * c, min((k + 1) * c, landsat.shape[3]))
                hh, ww = rows.stop - rows.start, cols.stop - cols.start
                landsat.get_basic_selection((at, slice(None), rows, cols), out=_nd(img[i, j, :, :hh, :ww]))
                mining.get_basic_selection((rows, cols), out=_nd(lab[i, j, :hh, :ww]))
        return img, lab, (h, w)

    def _scratch(self, shape: tuple[int, ...], dtype, mask_dtype) -> tuple[np.ndarray, np.ndarray]:
        buf = self._local.__dict__
        if buf.get("shape") != shape:  # a unit cut short by the grid edge gets its own
            buf.update(
                shape=shape, img=np.empty(shape, dtype), lab=np.empty(shape[:2] + shape[3:], mask_dtype)
            )
        return buf["img"], buf["lab"]

    def in_memory(self, origins: np.ndarray) -> ChunkReader:
        """A reader serving the read units at ``origins`` (rows of year, row0, col0) from RAM,
        each read from Zarr once, now.

        Only the reader's bands are kept (e.g. 3 of 7 bands take 3/7 of the memory).
        """

        def keep(img, lab, extent):
            everything = self.band_index == list(range(img.shape[2]))
            return (img if everything else img[:, :, self.band_index].copy()), lab, extent

        units = {
            (int(y), int(r), int(c)): keep(*self.read(int(r), int(c), year=int(y))) for y, r, c in origins
        }
        return _MemoryReader(self, units)

    def __call__(
        self, row0: int, col0: int, selected: np.ndarray, year: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Tiles of the read unit at global pixel (row0, col0) of ``year`` (default the
        reader's) whose flag in ``selected`` is set."""
        img, lab, extent = self.read(row0, col0, year=year, scratch=True)
        # copies the tiles (and bands) out of the scratch
        return cut_tiles(img, lab, selected, self.tile, bands=self.band_index, extent=extent)


@functools.lru_cache(maxsize=16)
def _process_reader(store: str, year: int, bands: tuple[str, ...], tile: int, unit: int) -> ChunkReader:
    """This process's shared :class:`ChunkReader` for these arguments (what a pickled one becomes)."""
    return ChunkReader(store, year, bands, tile, unit)


def _nd(a: np.ndarray):
    """``a`` as the zarr NDBuffer that ``get_basic_selection(out=...)`` fills in place."""
    return default_buffer_prototype().nd_buffer.from_numpy_array(a)


class _MemoryReader(ChunkReader):
    """:class:`ChunkReader` over units already in memory: the same cut, no Zarr read."""

    def __init__(self, reader: ChunkReader, units: dict):
        self.__dict__.update(reader.__dict__)
        self.band_index = list(range(len(self.bands)))  # the units hold just the reader's bands
        self._units = units

    def read(
        self, row0: int, col0: int, *, year: int | None = None, scratch: bool = False
    ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        return self._units[(self.year if year is None else year, row0, col0)]

    def __reduce__(self):
        raise TypeError("an in-memory reader serves only the process that read it; pickle a ChunkReader")


def cut_tiles(
    img: np.ndarray,
    lab: np.ndarray,
    selected: np.ndarray,
    t: int,
    *,
    bands: Sequence[int] | None = None,
    extent: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Selected ``t``-pixel tiles of a read unit, band-first: ``(n, band, t, t)`` and ``(n, 1, t, t)``.

    ``img`` is a unit ``(band, h, w)`` with its mask ``lab`` ``(h, w)``, or one held
    chunk-major, ``(chunk_row, chunk_col, band, ch, cw)`` and ``(chunk_row, chunk_col, ch, cw)``,
    as :meth:`ChunkReader.read` returns it. ``selected`` holds one flag per tile position of a
    full unit, row-major; a unit cut short by the grid edge (``extent``, default the whole
    array) uses the top-left part of it. ``bands`` picks bands (default all).
    """
    if img.ndim == 3:  # one "chunk" of whole tiles
        h, w = extent or img.shape[1:]
        img, lab = img[None, None, :, : h // t * t, : w // t * t], lab[None, None, : h // t * t, : w // t * t]
    nci, ncj, nb, ch, cw = img.shape
    h, w = extent or (nci * ch, ncj * cw)
    selected = np.asarray(selected)
    per = int(np.sqrt(selected.size))
    rows, cols = np.nonzero(selected.reshape(per, per)[: h // t, : w // t])
    pr, pc = ch // t, cw // t  # tiles per chunk side
    # a (chunk_row, tile_row, chunk_col, tile_col, band, y, x) *view*, then one fancy-index
    # copy of just the selected tiles and bands: rows of t pixels stay contiguous, and no
    # intermediate array of every tile is made (3x less CPU than transpose-copy-then-select)
    tiles = img.reshape(nci, ncj, nb, pr, t, pc, t).transpose(0, 3, 1, 5, 2, 4, 6)
    masks = lab.reshape(nci, ncj, pr, t, pc, t).transpose(0, 2, 1, 4, 3, 5)
    at = (rows // pr, rows % pr, cols // pc, cols % pc)
    if bands is None or list(bands) == list(range(nb)):
        x = tiles[at]
    else:
        x = tiles[(*tuple(a[:, None] for a in at), np.asarray(bands)[None, :])]
    # packed int16 and uint8 travel through the shuffle buffer (half and a quarter of the
    # bytes of float32); the tail normalizes whole batches in one XLA kernel
    return x, (masks[at] > 0).view(np.uint8)[:, None]


def _chunk_table(tiles: Any, chunk: int, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """The read units holding the given tiles, as rows of ``(year, row0, col0)``, and per unit a
    flag per tile position. An index without a ``year`` column is of its ``attrs["year"]``."""
    per = chunk // tile
    years = tiles["year"].to_numpy() if "year" in tiles else np.full(len(tiles), tiles.attrs["year"])
    cr, cc = tiles.row0.to_numpy() // chunk, tiles.col0.to_numpy() // chunk
    keys, inverse = np.unique(np.stack([years, cr, cc], 1), axis=0, return_inverse=True)
    flags = np.zeros((len(keys), per * per), dtype=bool)
    pos = ((tiles.row0.to_numpy() % chunk) // tile) * per + (tiles.col0.to_numpy() % chunk) // tile
    flags[inverse.ravel(), pos] = True
    return keys * np.array([1, chunk, chunk]), flags


def training_dataset(
    store: Where,
    index: Any = None,
    split: str = "train",
    *,
    config: TrainConfig | None = None,
    batch_size: int | None = None,
    shuffle: bool | None = None,
    augment: bool | None = None,
    repeat: bool = False,
    client: Any = None,
    prefetch_chunks: int = 8,
    drop_remainder: bool = False,
    in_memory: bool | None = None,
):
    """A ``tf.data.Dataset`` of ``(tiles, masks)`` batches for one split of the tile index.

    Parameters
    ----------
    store
        The store the index was built on.
    index
        A tile index (default: the one saved in the store by :func:`~miningxr.tile_index`).
    split
        ``"train"``, ``"val"`` or ``"test"``; only tiles ``selected`` in the index are used.
    config
        Tile size, bands, batch size, shuffle buffer, augmentation and seed.
    shuffle, augment
        Default to True for ``train`` and False otherwise.
    repeat
        Repeat forever (for ``steps_per_epoch`` training).
    client
        A ``distributed.Client``: chunk reads run on its workers, ``prefetch_chunks`` ahead.
    in_memory
        Default ``config.in_memory``. Read the split's chunks once, now, and keep them in RAM
        (packed int16, ~57 KB per 64x64x7 tile); every epoch then runs the same pipeline
        without decoding Zarr. For splits that fit in memory, e.g. the demo's.

    Returns
    -------
    tf.data.Dataset
        Batches of float32 ``(batch, tile, tile, bands)`` standardized tiles and
        ``(batch, tile, tile, 1)`` masks of 0/1.
    """
    tf = import_tensorflow()

    cfg = config or TrainConfig()
    index = load_tile_index(store) if index is None else index
    if index.attrs.get("config", {}).get("tile_size", cfg.tile_size) != cfg.tile_size:
        raise LoaderError(
            f"the tile index uses {index.attrs['config']['tile_size']}px tiles, "
            f"the config {cfg.tile_size}px; rebuild the index with "
            f"tile_index(store, config=TileConfig(tile_size={cfg.tile_size})) (`miningxr "
            "train` rebuilds it from the config's tile_size) or train on the index's size"
        )
    tiles = index[(index.split == split) & index.selected]
    if tiles.empty:
        raise LoaderError(f"split {split!r} has no selected tile; splits present: {sorted(set(index.split))}")
    stats = index.attrs["stats"]
    band_pos = [stats["bands"].index(b) for b in cfg.bands]
    mean = [stats["mean"][i] for i in band_pos]
    std = [stats["std"][i] for i in band_pos]
    layout = store_layout(store)
    # one read covers 2x2 chunks of a shard: a quarter of the per-call overhead (shard index,
    # event loop), measured 27% less CPU per chunk than single-chunk reads
    unit = 2 * layout.chunk if layout.shard % (2 * layout.chunk) == 0 else layout.chunk
    reader = ChunkReader(str(store), int(index.attrs["year"]), cfg.bands, cfg.tile_size, unit)
    origins, flags = _chunk_table(tiles, unit, cfg.tile_size)
    if cfg.in_memory if in_memory is None else in_memory:
        if client is not None:
            raise LoaderError(
                "in_memory=True (--in-memory) reads the split into this process and cannot "
                "run with client= (--scheduler); drop one of them"
            )
        reader = reader.in_memory(origins)
    shuffle = split == "train" if shuffle is None else shuffle
    augment = (split == "train" and cfg.augment) if augment is None else augment
    t, nb = cfg.tile_size, len(cfg.bands)
    spec = (tf.TensorSpec((None, nb, t, t), tf.int16), tf.TensorSpec((None, 1, t, t), tf.uint8))

    if client is None:
        order = tf.data.Dataset.from_tensor_slices((origins, flags))
        if shuffle:
            order = order.shuffle(len(origins), seed=cfg.seed, reshuffle_each_iteration=True)
        if repeat:
            # repeat the chunk order, not the tiles: reads stream across epoch boundaries instead
            # of the shuffle buffer draining and refilling at each one
            order = order.repeat()

        def read_unit(o_, f_):
            with _reads_in_flight.call():
                return reader(int(o_[1]), int(o_[2]), f_, int(o_[0]))

        def read(o, f):
            # reads run in tf.data's threads; the Zarr decode releases the GIL
            x, y = tf.numpy_function(read_unit, [o, f], [tf.int16, tf.uint8], stateful=False)
            return tf.ensure_shape(x, spec[0].shape), tf.ensure_shape(y, spec[1].shape)

        chunks = order.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle)
    else:
        seed = [cfg.seed]

        def gen() -> Iterator:
            seed[0] += 1
            perm = (
                np.random.default_rng(seed[0]).permutation(len(origins)) if shuffle else range(len(origins))
            )
            yield from _dask_reads(client, reader, origins, flags, perm, prefetch_chunks)

        chunks = tf.data.Dataset.from_generator(gen, output_signature=spec)
        if repeat:
            chunks = chunks.repeat()
    return _finish(
        chunks.unbatch(),
        cfg,
        mean,
        std,
        batch_size or cfg.batch_size,
        shuffle,
        augment,
        drop_remainder,
        n_tiles=len(tiles),
    )


def dataset_from_arrays(
    x: np.ndarray,
    y: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    config: TrainConfig | None = None,
    batch_size: int | None = None,
    shuffle: bool = True,
    augment: bool = True,
    repeat: bool = False,
):
    """The same pipeline tail over packed tiles already in memory (the loader benchmark's baseline).

    ``x`` holds int16 store numbers ``(n, bands, tile, tile)``, ``y`` 0/1 masks ``(n, 1, tile, tile)``
    (what :class:`ChunkReader` returns).
    """
    tf = import_tensorflow()

    cfg = config or TrainConfig()
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if repeat:
        ds = ds.repeat()
    return _finish(ds, cfg, mean, std, batch_size or cfg.batch_size, shuffle, augment, False, n_tiles=len(x))


def _dask_reads(client, reader, origins, flags, order, ahead: int) -> Iterator:
    """Keep ``ahead`` chunk reads in flight on the cluster; yield them in order.

    The reader travels inside each task as its arguments (~150 bytes) and each worker turns them
    into its one open reader. It used to be scattered once per epoch, under a content-hashed
    key that raced the previous epoch's release of the same key: from the second epoch on,
    reads failed with "lost dependencies".
    """
    pending: deque = deque()

    def oldest():
        with _reads_in_flight.call():  # the wait is the part that must end before Python does
            return pending.popleft().result()

    for k in order:
        pending.append(
            client.submit(
                ChunkReader.__call__,
                reader,
                int(origins[k][1]),
                int(origins[k][2]),
                flags[k],
                int(origins[k][0]),
                pure=False,
            )
        )
        if len(pending) >= ahead:
            yield oldest()
    while pending:
        yield oldest()


def prepare_batch(
    dn,
    y,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    augment: bool = False,
    brightness: float = 0.1,
    contrast: float = 0.1,
    gain: float = 0.05,
):
    """A batch of packed band-first tiles -> model input: band-last, standardized, maybe augmented.

    Equal to :func:`~miningxr.encoding.normalize` on each tile (no data becomes 0). With ``augment``, the batch gets
    one of the 8 flips/rotations (the shuffle mixes tiles between batches), every tile its own
    contrast and brightness, and every band of every tile its own radiometric gain: reflectance
    times ``1 +- gain``, as one sensor, atmosphere or season differs from another band by band
    (a model trained on one year then holds on the others'). The random draws happen here;
    the arithmetic runs in one XLA-compiled kernel (:func:`_prepare_kernel`).
    """
    tf = import_tensorflow()

    s = np.asarray(std, np.float64)
    a = tf.constant(SCALE_FACTOR / s, tf.float32)  # (dn * scale + offset - mean) / std == dn * a + b
    b = tf.constant((ADD_OFFSET - np.asarray(mean, np.float64)) / s, tf.float32)
    n = tf.shape(dn)[0]
    if augment:
        k = tf.random.uniform((), 0, 8, dtype=tf.int32)
        c = tf.random.uniform((n,), 1 - contrast, 1 + contrast)
        shift = tf.random.uniform((n,), -brightness, brightness)
        # (g * (dn * scale + offset) - mean) / std == dn * (a * g) + b + offset / std * (g - 1)
        g = tf.random.uniform((n, len(s)), 1 - gain, 1 + gain)
        a, b = a[None] * g, b[None] + tf.constant(ADD_OFFSET / s, tf.float32)[None] * (g - 1)
    else:
        k, c, shift = tf.constant(0), tf.ones((n,)), tf.zeros((n,))
        a, b = tf.tile(a[None], [n, 1]), tf.tile(b[None], [n, 1])
    return _prepare_kernel()(dn, y, a, b, k, c, shift)


@functools.cache
def _prepare_kernel():
    """The fused transpose/flip/normalize/where of :func:`prepare_batch`, compiled by XLA once.

    Unfused, TensorFlow runs ~8 passes over each batch with slow 6-8-D broadcast copies (half of
    the loader's CPU); fused it is one loop, 2.3x less CPU per tile. Flips are written as
    ``where(flag, reverse(x), x)`` so that every shape is static, as XLA needs.
    """
    tf = import_tensorflow()

    def symmetry(t, k):
        # k in 0..7: bit 2 swaps y and x, bit 0 flips y, bit 1 flips x -> all 8 symmetries
        t = tf.where(k >= 4, tf.transpose(t, [0, 1, 3, 2]), t)
        t = tf.where(k % 2 == 1, tf.reverse(t, [2]), t)
        return tf.where(k // 2 % 2 == 1, tf.reverse(t, [3]), t)

    @tf.function(jit_compile=True, reduce_retracing=True)
    def kernel(dn, y, a, b, k, c, shift):
        # a, b: (tile, band); c, shift: (tile,)
        dn, y = symmetry(dn, k), symmetry(y, k)
        c = c[:, None, None, None]
        x = tf.cast(dn, tf.float32) * (a[:, :, None, None] * c) + (
            b[:, :, None, None] * c + shift[:, None, None, None]
        )
        x = tf.where(dn == FILL_VALUE, 0.0, x)
        return tf.transpose(x, [0, 2, 3, 1]), tf.cast(tf.transpose(y, [0, 2, 3, 1]), tf.float32)

    return kernel


def _finish(
    tiles,
    cfg: TrainConfig,
    mean,
    std,
    batch_size: int,
    shuffle: bool,
    augment: bool,
    drop_remainder: bool,
    n_tiles: int,
):
    tf = import_tensorflow()

    if shuffle:
        tiles = tiles.shuffle(
            min(cfg.shuffle_buffer, max(n_tiles, 1)), seed=cfg.seed, reshuffle_each_iteration=True
        )
    # a plain batch: for 57 KB elements the parallel one measured 1.4x the CPU per tile and
    # 2.5x fewer tiles/s
    batches = tiles.batch(batch_size, drop_remainder=drop_remainder)

    def prepare(dn, y):
        return prepare_batch(dn, y, mean, std, augment=augment)

    batches = batches.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    opts = tf.data.Options()
    opts.experimental_deterministic = not shuffle
    # AUTOTUNE then means "one per core" for every parallel stage. With the autotuner on, a
    # third of the runs on 2 cores stalled in 10 ms steps (half the tiles/s, CPU idle);
    # with it off, none did in 12 runs of either pipeline
    opts.autotune.enabled = False
    return batches.with_options(opts).prefetch(tf.data.AUTOTUNE)
