"""Predict mining probability over a cube with ``xr.apply_ufunc``, block by block, seam-free.

Tiles sit on a grid anchored at the cube's origin with a stride of ``tile - overlap``. Each
block is read with a halo wide enough to hold every tile that touches it, predicts those tiles
in batches, and blends them with a tapered weight. Because the tile grid does not depend on the
blocks, a pixel's value is the same whichever block computes it: there are no seams, and the
result does not depend on the chunking. With ``overlap=0`` and chunks that are multiples of the
tile size, each tile is exactly ``model.predict`` of that tile.

Example
-------
>>> import miningxr
>>> ds = miningxr.open_store("s.zarr")  # doctest: +SKIP
>>> prob = miningxr.predict(ds, "run/model.keras")  # doctest: +SKIP
>>> prob.to_zarr("pred.zarr")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import threading
import time
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from zarr.codecs import ZstdCodec

from .catalog import CATALOG, Catalog
from .config import PredictConfig, PredictionDtype, PredictMode, PredictPrecision, StoreLayout
from .encoding import (
    FILL_VALUE,
    GRID_MAPPING_ATTRS,
    PROB_NODATA,
    encode_probability,
    normalize,
    probability_attrs,
)
from .errors import MiningxrWarning, ModelFileError, ModelMismatchError, StoreError, YearError
from .grid import GLOBAL_SHAPE, GridSlice, sparse_cover
from .paths import Location, Where, as_location, model_file
from .shards import IngestReport, run_shards, shard_writer
from .store import (
    check_writable_folder,
    create_atomically,
    global_template,
    holds_other_data,
    is_built,
    region_name,
)
from .tfimport import native_precision

if TYPE_CHECKING:
    import keras

    from .model.unet import TileSpec


P = ParamSpec("P")
R = TypeVar("R")

#: held while a worker builds what it keeps for later blocks (a loaded model, its inference
#: network, its trimmed window network, their ``tf.function``): Dask runs blocks on several
#: threads, and two of them missing the same cache at once would each build it. Re-entrant:
#: one build asks for another (the inference network loads its model).
_BUILDING = threading.RLock()


def _built_once(fn: Callable[P, R]) -> Callable[P, R]:
    """``functools.lru_cache`` of ``fn`` whose misses are built one at a time under
    :data:`_BUILDING`; a hit waits only for a build in progress."""
    cached = functools.lru_cache(maxsize=8)(fn)

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with _BUILDING:
            return cached(*args, **kwargs)  # type: ignore[arg-type]

    return wrapper


def _unet() -> ModuleType:
    """:mod:`miningxr.model.unet`, imported on first use: TensorFlow loads only when a model is."""
    from .model import unet

    return unet


@_built_once
def _load(path: str) -> keras.Model:
    # once per worker process: loading a .keras file costs far more than one block
    return _unet().load_model(path)


def _resolve(model: Any) -> keras.Model:
    if isinstance(model, (str, os.PathLike, Location)):
        return _load(_model_ref(model))  # a URL is downloaded once (cached by its ETag)
    return model


def _model_ref(model: Where) -> str:
    loc = as_location(model, what="the model")
    return str(loc) if loc.is_url else str(loc.local.resolve())


def _spec(model: Any) -> TileSpec:
    return _unet().model_spec(_resolve(model))


def check_compatible(model: Any, obj: xr.DataArray | xr.Dataset) -> None:
    """Refuse a model whose bands are not all in the data, naming what differs."""
    spec = _spec(model)
    bands = [str(b) for b in obj["band"].values] if "band" in obj.coords else []
    missing = [b for b in spec.bands if b not in bands]
    if missing:
        raise ModelMismatchError(
            f"the model was trained on bands {spec.bands} but the data has {bands} "
            f"(missing {missing}); predict with a model trained on this store's bands"
        )
    shape = _resolve(model).input_shape
    if shape[1] != spec.tile_size or shape[3] != len(spec.bands):
        raise ModelMismatchError(
            f"model input {shape} does not match its TileSpec ({spec.tile_size}px, {len(spec.bands)} bands)"
        )


def _predictor(model: keras.Model) -> Any:
    """``model`` in inference mode as one ``tf.function`` of any batch (and, for a network of
    any size, any height and width), kept on the model: traced once, never again, where
    ``predict_on_batch`` traces a new graph for each new shape until it generalizes, and
    costs more per call (its data adapter)."""
    fn = model.__dict__.get("_miningxr_predict")
    if fn is None:
        with _BUILDING:
            fn = model.__dict__.get("_miningxr_predict")
            if fn is None:  # no other thread made it while this one waited
                from .tfimport import import_tensorflow

                tf = import_tensorflow()
                spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)
                fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
                object.__setattr__(model, "_miningxr_predict", fn)  # past Keras's attribute tracking
    return fn


def _run(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """The network's output for a float32 batch ``x``, as numpy."""
    return np.asarray(_predictor(model)(x))


def _weights(tile: int, overlap: int) -> np.ndarray:
    """Blend weight of one tile: 1 inside, a linear ramp over the overlap at the edges."""
    if overlap <= 0:
        return np.ones((tile, tile), np.float32)
    i = np.arange(tile, dtype=np.float32)
    ramp = np.minimum(np.minimum(i + 0.5, tile - i - 0.5) / overlap, 1.0)
    return np.outer(ramp, ramp).astype(np.float32)


def predict_array(
    x: np.ndarray,
    model: Any,
    *,
    origin: tuple[int, int] = (0, 0),
    out_shape: tuple[int, int] | None = None,
    overlap: int = 0,
    batch_size: int = 64,
) -> np.ndarray:
    """Predict a ``(y, x, band)`` standardized numpy block on the global-to-the-cube tile grid.

    ``origin`` is where ``x[0, 0]`` lies relative to the tile grid's anchor; the output covers
    ``x[halo:halo+out_shape]`` where halo is implied by ``x.shape - out_shape``.
    """
    model = _resolve(model)
    t = _spec(model).tile_size
    stride = t - overlap
    h, w = x.shape[:2]
    oh, ow = out_shape or (h, w)
    hy, hx = (h - oh) // 2, (w - ow) // 2
    r0, c0 = origin  # position of x[0, 0] on the cube's tile grid
    acc = np.zeros((h, w), np.float32)
    wsum = np.zeros((h, w), np.float32)
    wt = _weights(t, overlap)
    # tiles that touch the output window [hy, hy+oh) x [hx, hx+ow), in block coordinates
    first_r = -((-(r0 + hy - t + 1)) // stride)
    first_c = -((-(c0 + hx - t + 1)) // stride)
    starts_r = [k * stride - r0 for k in range(first_r, (r0 + hy + oh - 1) // stride + 1)]
    starts_c = [k * stride - c0 for k in range(first_c, (c0 + hx + ow - 1) // stride + 1)]
    starts_r = [s for s in starts_r if s >= 0 and s + t <= h]
    starts_c = [s for s in starts_c if s >= 0 and s + t <= w]
    pos = [(r, c) for r in starts_r for c in starts_c]
    # equal batches of at most batch_size: 144 tiles run as 3 x 48, not 64 + 64 + 16 (a batch
    # of 16 uses the cores less well). The network is one graph of any batch size.
    n_batches = -(-len(pos) // batch_size)
    size = -(-len(pos) // max(n_batches, 1))
    for b in range(0, len(pos), size):
        batch = pos[b : b + size]
        tiles = np.stack([x[r : r + t, c : c + t] for r, c in batch])
        p = _run(model, tiles)[..., 0]
        for (r, c), pt in zip(batch, p, strict=True):
            acc[r : r + t, c : c + t] += pt * wt
            wsum[r : r + t, c : c + t] += wt
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(wsum > 0, acc / wsum, np.nan)
    return out[hy : hy + oh, hx : hx + ow].astype(np.float32)


def window_halo(depth: int) -> int:
    """The halo of a whole-window prediction: the UNet's receptive radius, ``6 * 2**depth - 2``
    px (two 3x3 convolutions and a pooling per level down, two convolutions and an
    up-sampling per level up), rounded up to a multiple of ``2**depth`` so that every window
    keeps the pooling grid. A test measures the radius on the network itself.

    >>> window_halo(2), window_halo(4)
    (24, 96)
    """
    step = 2**depth
    return -(-(6 * step - 2) // step) * step


def _depth(model: keras.Model) -> int:
    return sum(1 for layer in model.layers if layer.name.startswith("pool"))


@_built_once
def _inference_of(ref: str, any_size: bool, precision: PredictPrecision) -> keras.Model:
    return inference_model(_resolve(ref), any_size=any_size, precision=precision)


def compute_precision(precision: PredictPrecision) -> str:
    """The dtype the network computes in for a ``precision`` setting (``auto`` resolved on this
    machine by :func:`native_precision`)."""
    return native_precision() if precision == "auto" else precision


def _history(obj: Any) -> list[str]:
    """The names of the layers whose outputs a layer config's ``inbound_nodes`` takes."""
    if isinstance(obj, dict):
        if "keras_history" in obj:
            return [obj["keras_history"][0]]
        return [name for v in obj.values() for name in _history(v)]
    if isinstance(obj, list):
        return [name for v in obj for name in _history(v)]
    return []


def _renamed(obj: Any, alias: dict[str, str]) -> Any:
    """``obj`` with each ``keras_history`` pointing past the layers ``alias`` removes."""
    if isinstance(obj, dict):
        if "keras_history" in obj:
            name = obj["keras_history"][0]
            while name in alias:
                name = alias[name]
            return {**obj, "keras_history": [name, *obj["keras_history"][1:]]}
        return {k: _renamed(v, alias) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_renamed(v, alias) for v in obj]
    return obj


def _foldable(norm: dict[str, Any]) -> bool:
    """Whether a batch normalization's config is the per-channel affine map folding assumes."""
    return bool(norm.get("center", True) and norm.get("scale", True)) and norm["axis"] in (-1, 3, [-1], [3])


def inference_model(
    model: keras.Model, *, any_size: bool = False, precision: PredictPrecision = "float32"
) -> keras.Model:
    """The same network rewritten for prediction: each batch normalization folded into the
    convolution before it (kernel scaled by ``gamma / sqrt(var + eps)``, a bias added), the
    ReLU after it fused into that convolution, dropout removed. With ``any_size``, it takes
    inputs of any height and width (the UNet is fully convolutional; only its input layer
    names the tile size). Its layers compute in ``precision`` (see
    :class:`~miningxr.config.PredictConfig`), whatever the model was trained in, and its
    output layer in float32.

    It computes what ``model`` computes in inference mode, to float rounding, with two thirds
    of its layers: the convolution, bias and ReLU run as one fused kernel, where batch
    normalization made two more passes over every feature map.
    """
    config = json.loads(json.dumps(model.get_config()))  # lists, not the tuples get_config gives
    layers = config["layers"]
    kind = {layer["name"]: layer for layer in layers}
    users: dict[str, list[str]] = {}
    for layer in layers:
        for name in _history(layer["inbound_nodes"]):
            users.setdefault(name, []).append(layer["name"])

    def only_user(name: str, class_name: str) -> str | None:
        after = users.get(name, [])
        if len(after) == 1 and kind[after[0]]["class_name"] == class_name:
            return after[0]
        return None

    dtype = compute_precision(precision)
    policy: dict[str, Any] = {"module": "keras", "class_name": "DTypePolicy", "registered_name": None}
    policy["config"] = {"name": "float32" if dtype == "float32" else f"mixed_{dtype}"}
    heads = config["output_layers"]  # [name, node, tensor], or a list of them
    outputs = {heads[0]} if isinstance(heads[0], str) else {h[0] for h in heads}
    alias: dict[str, str] = {}  # a removed layer -> the layer whose output replaces its own
    folded: dict[str, str] = {}  # a convolution -> the batch normalization folded into it
    for layer in layers:
        cfg = layer["config"]
        if layer["class_name"] != "InputLayer" and layer["name"] not in outputs and "dtype" in cfg:
            cfg["dtype"] = policy  # a model trained in mixed_float16 predicts in float32 too
        if layer["class_name"] == "InputLayer" and any_size:
            cfg["batch_shape"] = [None, None, None, cfg["batch_shape"][-1]]
        elif layer["class_name"] == "Dropout":
            alias[layer["name"]] = _history(layer["inbound_nodes"])[0]
        elif layer["class_name"] == "Conv2D" and cfg.get("activation") in (None, "linear"):
            last = layer["name"]
            bn = only_user(last, "BatchNormalization")
            if bn is not None and _foldable(kind[bn]["config"]):
                folded[last], alias[bn], cfg["use_bias"], last = bn, last, True, bn
            relu = only_user(last, "Activation")
            if relu is not None and kind[relu]["config"]["activation"] == "relu":
                alias[relu], cfg["activation"] = layer["name"], "relu"
    config["layers"] = [_renamed(layer, alias) for layer in layers if layer["name"] not in alias]
    config["output_layers"] = _renamed(config["output_layers"], alias)
    unet = _unet()
    out = type(model).from_config(config, custom_objects={"TileSpec": unet.TileSpec, **unet.CUSTOM_OBJECTS})
    for layer in out.layers:
        weights = model.get_layer(layer.name).get_weights()
        if layer.name in folded:
            norm = model.get_layer(folded[layer.name])
            gamma, beta, mean, var = (np.asarray(w, np.float64) for w in norm.get_weights())
            scale = gamma / np.sqrt(var + norm.epsilon)
            kernel = np.asarray(weights[0], np.float64)
            bias = np.asarray(weights[1], np.float64) if len(weights) > 1 else np.zeros_like(scale)
            weights = [kernel * scale, (bias - mean) * scale + beta]
        if weights:
            layer.set_weights([np.asarray(w, np.float32) for w in weights])
    return out


def _reach(layer: Any, need: int) -> int | None:
    """The valid margin a layer needs on its input for ``need`` valid pixels of margin on its
    output (both in the layer's own pixels), or None for a layer this does not know."""
    kind = type(layer).__name__
    if kind in ("InputLayer", "TileSpec", "BatchNormalization", "Activation", "Dropout", "Concatenate"):
        return need
    if (
        kind == "Conv2D"
        and tuple(layer.strides) == (1, 1)
        and layer.kernel_size[0] == layer.kernel_size[1]
        and layer.kernel_size[0] % 2 == 1  # "same" pads an even kernel unevenly
        and (layer.padding == "same" or layer.kernel_size[0] == 1)
    ):
        k, dil = layer.kernel_size[0], layer.dilation_rate[0]
        return need + dil * (k - 1) // 2
    if kind == "MaxPooling2D" and tuple(layer.pool_size) == tuple(layer.strides):
        return need * layer.pool_size[0]
    if kind == "Conv2DTranspose" and tuple(layer.kernel_size) == tuple(layer.strides):
        return -(-need // layer.strides[0])
    return None


def trimmed_window_model(net: keras.Model, halo: int) -> tuple[keras.Model, int]:
    """``net`` (an :func:`inference_model` of any size) rewired to compute no pixel of a window
    that the core of the window does not need, and how many pixels from the window's top and
    left its output starts.

    A window holds its core with ``halo`` px around it; with "same" padding every layer of the
    UNet computes over the whole window, though the decoder's convolutions need only a few
    pixels beyond the core (two a level): the receptive field lies mostly in the encoder. Each
    feature map is cropped, before the layers that take it, to the margin those layers still
    need (a 3x3 convolution one pixel, a 2x pooling twice its output's), keeping every pooling
    on the grid. The core's values are the same computations. A network this does not know
    the layers of is returned as it is, with 0.

    :func:`predict` runs every window through it (``mode="window"``): a 1024 px core with its
    96 px halo ran 1.17-1.21x faster (base 16, depth 4, 2 cores), a 2048 px one 1.06-1.09x.
    """
    import keras

    config = json.loads(json.dumps(net.get_config()))  # lists, not the tuples get_config gives
    inbound = {layer["name"]: _history(layer["inbound_nodes"]) for layer in config["layers"]}
    order = [layer.name for layer in net.layers]
    kinds = {layer.name: type(layer).__name__ for layer in net.layers}
    heads = config["output_layers"]
    if len(net.inputs) != 1 or len(net.outputs) != 1:
        return net, 0
    out_name = heads[0] if isinstance(heads[0], str) else heads[0][0]
    need: dict[str, int] = {out_name: 0}  # valid margin each layer's output must keep
    align: dict[str, int] = {out_name: 1}  # what its margin must divide by: the poolings after it
    at_input: dict[str, int] = {}
    for name in reversed(order):
        layer = net.get_layer(name)
        if name not in need:  # a layer no output depends on
            continue
        want = _reach(layer, need[name])
        if want is None:
            return net, 0
        at_input[name] = want
        step = layer.pool_size[0] if kinds[name] == "MaxPooling2D" else 1
        if kinds[name] == "Conv2DTranspose":
            down = max(1, align[name] // layer.strides[0])
        else:
            down = align[name] * step
        for src in inbound[name]:
            need[src] = max(need.get(src, 0), want)
            align[src] = max(align.get(src, 1), down)
    # forward: each tensor with its margin (px of its own level before the core starts)
    tensors: dict[str, Any] = {}
    margin: dict[str, int] = {}
    for name in order:
        layer = net.get_layer(name)
        if kinds[name] == "InputLayer":
            x = keras.Input(shape=net.input_shape[1:], name=name)
            tensors[name], margin[name] = x, halo
            continue
        args = []
        for src in inbound[name]:
            t, m = tensors[src], margin[src]
            target = at_input[name]
            # keep the pooling grid: the margin left must divide by what the poolings after need
            a = align[src] if kinds[name] != "Concatenate" else 1
            target = -(-target // a) * a
            if m < target:  # a halo too small for exact values: nothing to cut
                return net, 0
            if m - target >= 2 or (kinds[name] == "Concatenate" and m != target):
                c = m - target
                t = keras.layers.Cropping2D(
                    c, dtype=net.get_layer(src).dtype_policy, name=f"trim_{src}_{name}"
                )(t)
                m = target
            args.append((t, m))
        ms = {m for _, m in args}
        if len(ms) != 1:
            return net, 0
        m = ms.pop()
        xs = [t for t, _ in args]
        y = layer(xs if kinds[name] == "Concatenate" else xs[0])
        if kinds[name] == "MaxPooling2D":
            m //= layer.pool_size[0]
        elif kinds[name] == "Conv2DTranspose":
            m *= layer.strides[0]
        tensors[name], margin[name] = y, m
    model = keras.Model(tensors[order[0]], tensors[out_name], name=f"{net.name}_trimmed")
    return model, halo - margin[out_name]


def _trimmed(net: keras.Model, halo: int) -> tuple[keras.Model, int]:
    """:func:`trimmed_window_model` of ``net``, made once and kept on it."""
    made = net.__dict__.get("_miningxr_trimmed")
    if made is None or made[0] != halo:
        with _BUILDING:
            made = net.__dict__.get("_miningxr_trimmed")
            if made is None or made[0] != halo:  # no other thread made it while this one waited
                made = (halo, *trimmed_window_model(net, halo))
                object.__setattr__(net, "_miningxr_trimmed", made)  # past Keras's attribute tracking
    return made[1], made[2]


def predict_window(
    x: np.ndarray,
    model: keras.Model,
    *,
    start: tuple[int, int],
    out_shape: tuple[int, int],
    depth: int,
    pad: int,
) -> np.ndarray:
    """Predict the core of a ``(y, x, band)`` standardized block padded by ``pad`` on each side
    (``window_halo(depth)``, plus ``2**depth`` where blocks start off the pooling grid), as one
    window: the core starts at ``start`` (its position in the array), and the window is cut so
    that it starts on a multiple of ``2**depth`` there, the pooling grid of every chunking
    alike."""
    step, halo = 2**depth, window_halo(depth)
    (sr, sc), (oh, ow) = start, out_shape
    r0, c0 = pad - halo - sr % step, pad - halo - sc % step  # window origin in the block
    rh = -(-(halo + sr % step + oh + halo) // step) * step
    rw = -(-(halo + sc % step + ow + halo) // step) * step
    win = x[r0 : r0 + rh, c0 : c0 + rw]
    if win.shape[:2] != (rh, rw):  # the array's last block: past its end is no data (zero) anyway
        win = np.pad(win, ((0, rh - win.shape[0]), (0, rw - win.shape[1]), (0, 0)))
    net, cut = _trimmed(model, halo)  # its output starts ``cut`` px into the window
    p = _run(net, win[None])[0, ..., 0]
    r, c = halo + sr % step - cut, halo + sc % step - cut
    return p[r : r + oh, c : c + ow]


# fmt: off
@overload
def predict(ds: xr.DataTree, model: Any, *, config: PredictConfig | None = ..., year: int | None = ...,
            overlap: int | None = ..., batch_size: int | None = ..., mode: PredictMode | None = ...,
            precision: PredictPrecision | None = ...) -> xr.DataTree: ...
@overload
def predict(ds: xr.Dataset | xr.DataArray, model: Any, *, config: PredictConfig | None = ..., year: int | None = ...,
            overlap: int | None = ..., batch_size: int | None = ..., mode: PredictMode | None = ...,
            precision: PredictPrecision | None = ...) -> xr.DataArray: ...
# fmt: on


def predict(
    ds: xr.Dataset | xr.DataArray | xr.DataTree,
    model: Any,
    *,
    config: PredictConfig | None = None,
    year: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    mode: PredictMode | None = None,
    precision: PredictPrecision | None = None,
) -> xr.DataArray | xr.DataTree:
    """Mining probability for every pixel of a cube, lazily, with the cube's grid and chunks.

    Parameters
    ----------
    ds
        A cube from :func:`~miningxr.open_store` or :func:`~miningxr.open_landsat` (Dataset with
        ``landsat``, or that DataArray), or the regions of a sparse store from
        :func:`~miningxr.open_regions` (then a DataTree of the same nodes, each holding its
        ``mining_probability``).
    model
        A Keras model built by miningxr, or the path of its ``.keras`` file (loaded once per
        worker).
    config
        Tile overlap and tiles per model call (:class:`~miningxr.config.PredictConfig`).
    year
        Predict only this year of the cube. By default every year: a cube of several years
        gives ``(year, y, x)``, one of a single year ``(y, x)`` with a scalar ``year``.
    overlap, batch_size, mode, precision
        Override those fields of ``config``: pixels by which neighbouring tiles overlap (their
        predictions are blended), tiles per model call, ``"tiles"`` or ``"window"``
        (the model on whole blocks plus a halo of its receptive field: no seams, the same
        under any chunking), and what the network computes in (``"float32"``, ``"bfloat16"``:
        2-3x faster on hardware that has it, ``"float16"`` or ``"auto"``; ``auto`` is
        resolved where the network is built: on each worker for a model given by its path).

    Returns
    -------
    xarray.DataArray
        ``mining_probability`` float32 ``(y, x)`` or ``(year, y, x)`` with exactly the input's
        ``x``/``y`` coordinates, ``spatial_ref`` and chunks.
    """
    if isinstance(ds, xr.DataTree):
        return xr.DataTree.from_dict(
            {
                name: predict(
                    node.to_dataset(),
                    model,
                    config=config,
                    year=year,
                    overlap=overlap,
                    batch_size=batch_size,
                    mode=mode,
                    precision=precision,
                ).to_dataset()
                for name, node in ds.children.items()
            }
        )
    cfg = config or PredictConfig()
    changes: dict[str, Any] = {
        k: v
        for k, v in (
            ("overlap", overlap),
            ("batch_size", batch_size),
            ("mode", mode),
            ("precision", precision),
        )
        if v is not None
    }
    cfg = dataclasses.replace(cfg, **changes)  # validated again
    overlap, batch_size = cfg.overlap, cfg.batch_size
    arr = ds["landsat"] if isinstance(ds, xr.Dataset) else ds
    if "year" in arr.dims:
        held = [int(y) for y in arr.year.values]
        if year is not None and int(year) not in held:
            raise YearError(
                f"year {year} is not in the cube, which holds {held}; open the store "
                "with that year (open_store(..., years=...)) or pick one of these"
            )
        if year is None and len(held) > 1:
            each = [predict(arr.sel(year=y), model, config=cfg) for y in held]
            return xr.concat(each, dim="year", coords="minimal", compat="override", combine_attrs="override")
        arr = arr.sel(year=int(year) if year is not None else held[0])
    check_compatible(model, arr)
    m = _resolve(model)
    spec = _spec(m)
    t = spec.tile_size
    if overlap >= t:
        raise ModelMismatchError(
            f"overlap must be in [0, {t - 1}] for the model's {t}px tiles, got {overlap}"
        )
    arr = arr.sel(band=spec.bands).transpose("y", "x", "band")
    if arr.chunks is None:
        arr = arr.chunk({"y": 512, "x": 512})
    arr = arr.chunk({"band": -1})
    if arr.dtype == np.float64:  # a source's float64 cube: the model takes float32
        arr = arr.astype(np.float32)
    in_rows, in_cols = arr.data.chunks[0], arr.data.chunks[1]
    in_chunks = {"y": in_rows, "x": in_cols}
    window = cfg.mode == "window"
    depth = _depth(m)
    if window and t < window_halo(depth):
        reach = window_halo(depth)
        warnings.warn(
            f"this model was trained on {t} px tiles, less than its receptive radius of {reach} "
            "px: on whole windows it sees context it never saw in training and scores lower "
            "than on tiles (docs/benchmarks.md); for mode 'window' train it on tiles of at least "
            f"{reach} px (tile_size = {1 << (reach - 1).bit_length()} under [train]), or predict "
            "with mode 'tiles'",
            MiningxrWarning,
            stacklevel=2,
        )
    aligned = overlap == 0 and all(c % t == 0 for c in (*in_rows[:-1], *in_cols[:-1]))
    # a window: its receptive field on each side (and a step of the pooling grid where blocks
    # start off it); tiles: one tile
    if window:  # the model runs on blocks of cfg.block px; the output keeps the input's chunks
        arr = arr.chunk({"y": max(cfg.block, max(in_rows)), "x": max(cfg.block, max(in_cols))})
    run_rows, run_cols = arr.data.chunks[0], arr.data.chunks[1]
    off_grid = any(c % 2**depth for c in (*run_rows[:-1], *run_cols[:-1]))
    halo = window_halo(depth) + (2**depth if off_grid else 0) if window else 0 if aligned else t
    if halo:
        # dask's overlap needs every chunk at least as deep as the halo: fold small edge chunks
        arr = arr.chunk({"y": _min_chunks(run_rows, halo), "x": _min_chunks(run_cols, halo)})
    row_chunks, col_chunks = arr.data.chunks[0], arr.data.chunks[1]
    # a path or URL travels to the workers, which load (and for a URL download) it once each
    model_ref = _model_ref(model) if isinstance(model, (str, os.PathLike, Location)) else m
    # the network with its batch normalization folded in (loaded once per worker from a path)
    net = (
        inference_model(m, any_size=window, precision=cfg.precision)
        if not isinstance(model_ref, str)
        else None
    )

    def network() -> keras.Model:
        return net if net is not None else _inference_of(str(model_ref), window, cfg.precision)

    mean, std = [float(v) for v in spec.mean], [float(v) for v in spec.std]  # plain lists pickle

    def run(x: da.Array) -> da.Array:
        padded = (
            da.overlap.overlap(x, depth={0: halo, 1: halo, 2: 0}, boundary={0: np.nan, 1: np.nan, 2: "none"})
            if halo
            else x
        )
        rstart = np.concatenate([[0], np.cumsum(row_chunks)])
        cstart = np.concatenate([[0], np.cumsum(col_chunks)])

        def block(b: np.ndarray, block_info=None) -> np.ndarray:
            i, j, _ = block_info[0]["chunk-location"]
            oh, ow = row_chunks[i], col_chunks[j]
            z = normalize(b, mean, std)
            if window:
                p = predict_window(
                    z,
                    network(),
                    start=(int(rstart[i]), int(cstart[j])),
                    out_shape=(oh, ow),
                    depth=depth,
                    pad=halo,
                )
            else:
                p = predict_array(
                    z,
                    network(),
                    origin=(int(rstart[i]) - halo, int(cstart[j]) - halo),
                    out_shape=(oh, ow),
                    overlap=overlap,
                    batch_size=batch_size,
                )
            # a pixel without a single valid band has no evidence: say so rather than guess
            core = b[halo : halo + oh, halo : halo + ow]
            nodata = (
                (core == FILL_VALUE).all(axis=-1)
                if core.dtype.kind == "i"
                else ~np.isfinite(core).any(axis=-1)
            )
            if nodata.any():
                p = np.where(nodata, np.float32(np.nan), p)
            return p

        return da.map_blocks(
            block,
            padded,
            chunks=(row_chunks, col_chunks),
            drop_axis=2,
            dtype=np.float32,
            meta=np.empty((0, 0), np.float32),
        )

    out = xr.apply_ufunc(run, arr, input_core_dims=[["band"]], dask="allowed", keep_attrs=False)
    out = out.chunk(in_chunks)  # exactly the input's chunks
    if "spatial_ref" in arr.coords:  # apply_ufunc drops coordinate attrs, and with them the CRS
        out = out.assign_coords(spatial_ref=arr.coords["spatial_ref"])
    out.name = "mining_probability"
    out.attrs.update(
        long_name="probability of mining",
        units="1",
        grid_mapping="spatial_ref",
        **prediction_method(cfg),
        tile_size=t,
        bands=list(spec.bands),
        model=str(model) if isinstance(model, (str, os.PathLike, Location)) else m.name,
    )
    return out


def _min_chunks(chunks: tuple[int, ...], depth: int) -> tuple[int, ...]:
    out = list(chunks)
    while len(out) > 1 and min(out) < depth:
        i = out.index(min(out))
        j = i - 1 if i == len(out) - 1 or (i > 0 and out[i - 1] < out[i + 1]) else i + 1
        out[min(i, j)] += out[max(i, j)]
        del out[max(i, j)]
    return tuple(out)


def write_predictions(
    pred: xr.DataArray | xr.DataTree,
    path: Where,
    *,
    progress: bool = True,
    scheduler: str | None = None,
    force: bool = False,
    dtype: PredictionDtype = "uint8",
) -> IngestReport:
    """Write predictions into a prediction store aligned to their input, one shard per task.

    The store is global, sparse and has a year axis, as the imagery store does: predictions of
    several regions and years land in one place, and predicting another year into it adds that
    year. It records the model (file checksum, bands, tile size) and refuses predictions of
    another model, unless ``force`` replaces the store's predictions with the new model's. Its
    catalog records the shards done, so an interrupted write resumes. Returns an
    :class:`~miningxr.shards.IngestReport`.

    A new store keeps probability as ``dtype``: ``uint8`` by default, in steps of 1/250 with
    CF ``scale_factor`` and ``_FillValue`` 255 (xarray decodes it; at most 0.002 from the
    float), or ``float32``. An existing store keeps the dtype it was made with.

    Example
    -------
    >>> write_predictions(predict(open_store("s.zarr", years=[2019, 2020]), "m.keras"), "p.zarr")  # doctest: +SKIP
    """
    if isinstance(pred, xr.DataTree):  # the regions of a sparse store, one after the other
        reports = [
            write_predictions(
                node["mining_probability"],
                path,
                progress=progress,
                scheduler=scheduler,
                force=force and k == 0,
                dtype=dtype,
            )
            for k, node in enumerate(pred.children.values())
        ]
        total = IngestReport(
            store=str(path),
            planned=sum(r.planned for r in reports),
            written=sum(r.written for r in reports),
            skipped=sum(r.skipped for r in reports),
            seconds=sum(r.seconds for r in reports),
        )
        for r in reports:
            total.failed.update(r.failed)
        return total
    t0 = time.perf_counter()
    loc = as_location(path, what="the prediction store")
    gslice = GridSlice.of_coords(pred)
    if "year" in pred.dims:
        years, data = [int(y) for y in pred.year.values], pred.transpose("year", "y", "x").data
    elif "year" in pred.coords:
        years, data = [int(pred.coords["year"])], pred.data[None]
    else:
        raise YearError("the predictions carry no year; predict a cube from open_store or open_landsat")
    layout = StoreLayout()
    bad = [y for y in years if not layout.first_year <= y <= layout.last_year]
    if bad:
        raise YearError(
            f"year(s) {bad} outside the years a prediction store holds, "
            f"{layout.first_year}-{layout.last_year}"
        )
    chunk = int(max(pred.chunks[-2])) if pred.chunks else 512
    if not isinstance(data, da.Array):  # computed predictions: written block by block all the same
        data = da.from_array(data, chunks=(1, chunk, chunk))
    shard = PREDICTION_SHARD if PREDICTION_SHARD % chunk == 0 else chunk
    model, method = _model_record(pred.attrs), _method_record(pred.attrs)
    if _check_prediction_store(loc, model, force, method):
        loc.delete()  # --force with another model: its predictions are replaced, not mixed

    def build(tmp: Location) -> None:
        template = global_template(year=("year", np.asarray(layout.years, dtype=np.int32)))
        # "a": a build cut short in object storage is redone over itself, its marker kept
        template.to_zarr(tmp.zarr_store(), mode="a", zarr_format=3, consolidated=False)
        root = zarr.open_group(tmp.zarr_store(), mode="r+", zarr_format=3)
        attrs = {k: v for k, v in pred.attrs.items() if k != "model"}
        packed = dtype == "uint8"
        root.create_array(
            "mining_probability",
            overwrite=True,
            shape=(len(layout.years), *GLOBAL_SHAPE),
            dtype=dtype,
            chunks=(1, chunk, chunk),
            shards=(1, shard, shard),
            fill_value=PROB_NODATA if packed else np.nan,
            compressors=ZstdCodec(level=3),
            dimension_names=("year", "y", "x"),
            attributes={**attrs, **(probability_attrs() if packed else {}), **GRID_MAPPING_ATTRS},
        )
        root.attrs["miningxr_predictions"] = {
            "version": PREDICTIONS_VERSION,
            "shard": shard,
            "chunk": chunk,
            "first_year": layout.first_year,
            "last_year": layout.last_year,
            "model": model,
            "method": method,
            "dtype": dtype,
        }

    if not is_built(loc, "miningxr_predictions"):
        create_atomically(loc, build)  # False: a concurrent writer made it first; use theirs
    meta = _prediction_meta(loc)
    shard = int(meta["shard"])
    if meta.get("dtype", "float32") == "uint8":  # the store's own dtype, whatever was asked
        data = data.map_blocks(encode_probability, dtype=np.uint8)
    keys = [(y, r, c) for y in years for r, c in gslice.shard_ids(shard)]
    report = IngestReport(store=str(loc), planned=len(keys))
    task = shard_writer(
        loc, "mining_probability", data, gslice, shard, years=years, first_year=int(meta["first_year"])
    )
    run_shards(
        loc,
        "mining_probability",
        keys,
        "predict",
        task,
        report,
        desc="predict",
        scheduler=scheduler,
        progress=progress,
        force=force,
    )
    report.seconds = time.perf_counter() - t0
    return report


#: the layout of prediction stores this miningxr writes: 2 has a year axis (float32), 3 may keep
#: probability as uint8 (its ``dtype``); both are read
PREDICTIONS_VERSION = 3
_READ_VERSIONS = (2, 3)


def _check_prediction_store(
    path: Location, model: dict[str, Any], force: bool, method: dict[str, Any]
) -> bool:
    """Refuse, before any write, a file in the way, a folder we cannot write, or a prediction
    store of another model or made another way (``method``: mode, overlap, precision); True
    when ``force`` is to replace that store's predictions."""
    if not path.is_url and path.local.exists() and not path.local.is_dir():
        raise StoreError(
            f"{path} is a file, not a prediction store; give --out a new or existing "
            "prediction store folder (e.g. pred.zarr)"
        )
    if path.is_url and holds_other_data(path, "miningxr_predictions"):
        raise StoreError(f"{path} holds objects and is not a prediction store; choose an empty or new --out")
    if _holds_predictions(path):
        meta = _prediction_meta(path, what="use another --out")
        have = meta["model"]
        # a store of an older miningxr recorded no method: any is taken, as it was then
        made = meta.get("method")
        if have == model and made is not None and made != method:
            if force:
                return True
            raise _method_error(
                path,
                made,
                method,
                "predict with the store's settings, write to another --out, "
                "or replace them with --force (force=True)",
            )
        if have != model:
            if force:
                return True
            raise StoreError(
                f"{path} holds predictions of model {have.get('identity')} (bands {have.get('bands')}, "
                f"{have.get('tile_size')} px tiles), not {model['identity']} (bands {model['bands']}, "
                f"{model['tile_size']} px tiles): write this model's predictions to another --out, or "
                "replace them with --force (force=True)"
            )
        return False
    if not path.is_url and path.exists() and any(path.local.iterdir()):
        raise StoreError(f"{path} exists and is not a prediction store; choose an empty or new --out")
    if path.is_url:  # the probe inside the catalog's group, where no reader takes it for data
        path.check_writable(what=f"the prediction store {path}", within=f"{CATALOG}/")
    else:
        check_writable_folder(path.parent, what=f"the prediction store {path}")
    return False


def _prediction_meta(path: Where, what: str = "write one with `miningxr predict`") -> dict[str, Any]:
    """The ``miningxr_predictions`` attributes of a prediction store; a clear error if none."""
    path = as_location(path, what="the prediction store")
    raw = path.read_bytes("zarr.json")
    if raw is None:
        raise StoreError(
            f"{path} is not a prediction store (no zarr.json); write one with `miningxr predict`"
        )
    meta = json.loads(raw).get("attributes", {}).get("miningxr_predictions")
    if not isinstance(meta, dict):
        raise StoreError(f"{path} is a Zarr store but not a miningxr prediction store; {what}")
    if meta.get("version") not in _READ_VERSIONS:
        raise StoreError(
            f"{path} is a prediction store of an older miningxr, without a year axis; "
            "predict again into a new --out (or delete it)"
        )
    return meta


def _model_record(attrs: dict[str, Any]) -> dict[str, Any]:
    """What names a model across runs: the sha256 of its file (else its name), bands, tile size."""
    model = attrs.get("model")
    identity = str(model)
    try:  # a path or URL (a URL used to go unhashed: a listing found no object "below" it)
        p = model_file(str(model)) if model is not None else None
    except ModelFileError:  # an in-memory model's name
        p = None
    if p is not None and p.is_file():
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        identity = f"{as_location(str(model)).name} sha256:{h.hexdigest()[:16]}"
    return {"identity": identity, "bands": list(attrs.get("bands", [])), "tile_size": attrs.get("tile_size")}


def prediction_method(cfg: PredictConfig) -> dict[str, Any]:
    """How ``cfg`` predicts, which a prediction store keeps one of (its years and shards then
    compare): ``mode``, ``overlap`` (0 for whole windows) and ``precision``."""
    return {
        "overlap": cfg.overlap if cfg.mode == "tiles" else 0,
        "mode": cfg.mode,
        "precision": cfg.precision,
    }


def _method_record(attrs: dict[str, Any]) -> dict[str, Any]:
    """The :func:`prediction_method` that predictions' attributes record."""
    return {
        "overlap": int(attrs.get("overlap", 0)),
        "mode": attrs.get("mode", "tiles"),
        "precision": attrs.get("precision", "float32"),
    }


def _holds_predictions(loc: Location) -> bool:
    """Whether a prediction store is there (in object storage: its build completed)."""
    return is_built(loc, "miningxr_predictions") if loc.is_url else loc.exists("zarr.json")


def _method_error(loc: Location, made: dict[str, Any], method: dict[str, Any], fix: str) -> StoreError:
    said = ", ".join(f"{k} {made.get(k)!r}" for k in ("mode", "overlap", "precision"))
    asked = ", ".join(f"{k} {method[k]!r}" for k in ("mode", "overlap", "precision"))
    return StoreError(
        f"{loc} holds predictions made with {said}, not {asked}: a store keeps one method, so "
        f"that its years and shards compare; {fix}"
    )


def check_prediction_method(path: Where, cfg: PredictConfig, fix: str) -> None:
    """Refuse ``cfg`` where the prediction store at ``path`` (if one is there) was made
    another way (see :func:`prediction_method`); ``fix`` ends the error."""
    loc = as_location(path, what="the prediction store")
    if not _holds_predictions(loc):
        return
    made = _prediction_meta(loc, what="use another --predictions").get("method")
    method = prediction_method(cfg)
    if made is not None and made != method:
        raise _method_error(loc, made, method, fix)


def prediction_regions(path: Where) -> dict[str, GridSlice]:
    """The regions a prediction store holds (any year): disjoint rectangles of whole shards, by
    name (its top-left shard, as :func:`~miningxr.open_regions` names them)."""
    meta = _prediction_meta(path)
    with Catalog(path, readonly=True) as cat:
        done = cat.shards("mining_probability", state="done")
    if done.empty:
        raise StoreError(f"{path} holds no prediction yet; write some with `miningxr predict`")
    shard = int(meta["shard"])
    rects = sparse_cover(zip(done.shard_row, done.shard_col, strict=True), shard)
    return {region_name(r, shard): r for r in rects}


#: the side of a prediction store's shards (one task, one file each), where its chunks divide it
PREDICTION_SHARD = 2048


def predicted_shards(path: Where, year: int) -> tuple[int, set[tuple[int, int]]]:
    """The shard side of a prediction store and the shards that hold a prediction of ``year``
    (:data:`PREDICTION_SHARD` and none for a store not made yet)."""
    loc = as_location(path, what="the prediction store")
    if loc.read_bytes("zarr.json") is None:
        return PREDICTION_SHARD, set()
    shard = int(_prediction_meta(path)["shard"])
    with Catalog(path, readonly=True) as cat:
        done = cat.shards("mining_probability", state="done")
    done = done[done.year == int(year)]
    return shard, {(int(r), int(c)) for r, c in zip(done.shard_row, done.shard_col, strict=True)}


def predicted_extent(path: Where) -> GridSlice | None:
    """The slice covering every shard a prediction store has written, or None when it has none."""
    meta = _prediction_meta(path)
    with Catalog(path, readonly=True) as cat:
        done = cat.shards("mining_probability", state="done")
    if done.empty:
        return None
    return GridSlice.covering(zip(done.shard_row, done.shard_col, strict=True), int(meta["shard"]))


def predicted_years(path: Where, gslice: GridSlice) -> list[int]:
    """The years of which a prediction store holds a shard over ``gslice`` (none for a store
    not made yet)."""
    if as_location(path, what="the prediction store").read_bytes("zarr.json") is None:
        return []
    shard = int(_prediction_meta(path)["shard"])
    with Catalog(path, readonly=True) as cat:
        done = cat.shards("mining_probability", state="done")
    over = [
        GridSlice.of_shard((r, c), shard).intersection(gslice) is not None
        for r, c in zip(done.shard_row, done.shard_col, strict=True)
    ]
    return sorted({int(y) for y in done.year[over]})


def open_predictions(
    path: Where, like: xr.Dataset | xr.DataArray, *, year: int | None = None
) -> xr.DataArray:
    """Read predictions for exactly the grid slice of ``like``: ``(year, y, x)``, every year the
    store holds, or ``(y, x)`` of ``year``.

    Refuses, naming both extents, a prediction store that holds nothing over that slice.
    """
    gslice = GridSlice.of_coords(like)
    held = predicted_years(path, gslice)
    if not held:
        have = predicted_extent(path)
        raise StoreError(
            f"the predictions in {path} do not cover the data asked for: they cover "
            f"{have.describe() if have else 'nothing yet'}, the data {gslice.describe()}. "
            "Predict this region (`miningxr predict --store ... --out ...`) or pass the "
            "store and region the predictions were made for"
        )
    if year is not None and int(year) not in held:
        raise YearError(
            f"the predictions in {path} hold year(s) {held} there, not {year}; predict it "
            f"(`miningxr predict ... --years {year}`) or pick one of these"
        )
    store = as_location(path).zarr_store(read_only=True)
    ds = xr.open_zarr(store, chunks=None, consolidated=False, zarr_format=3, decode_coords="all")
    out = ds["mining_probability"].isel(y=gslice.rows, x=gslice.cols)
    out = out.assign_coords(spatial_ref=gslice.coords()["spatial_ref"])
    chunks = like.chunksizes if like.chunks is not None else {}
    out = out.sel(year=held).chunk(
        {"year": 1, "y": chunks.get("y", (512,))[0], "x": chunks.get("x", (512,))[0]}
    )
    out = out.astype(np.float32)  # a uint8 store decodes to float64: the dtype predict gives
    return out.sel(year=int(year)) if year is not None else out
