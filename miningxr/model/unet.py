"""A UNet for 64x64 Landsat tiles whose saved file carries everything prediction needs."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from typing import Any

import keras
from keras import layers

from ..config import TrainConfig
from ..errors import ModelError, ModelFileError
from ..paths import model_file
from .losses import CUSTOM_OBJECTS


@keras.saving.register_keras_serializable(package="miningxr")
class TileSpec(layers.Layer):
    """Identity layer that records bands, tile size and normalization in the model file.

    Prediction reads it back (:func:`model_spec`), so a ``.keras`` file needs nothing beside it.
    """

    def __init__(
        self, bands: Sequence[str], tile_size: int, mean: Sequence[float], std: Sequence[float], **kwargs: Any
    ):
        super().__init__(**kwargs)
        self.bands = [str(b) for b in bands]
        self.tile_size = int(tile_size)
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]

    def call(self, inputs):
        return inputs

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "bands": self.bands,
            "tile_size": self.tile_size,
            "mean": self.mean,
            "std": self.std,
        }


def build_unet(config: TrainConfig | None = None, *, stats: dict[str, Any] | None = None) -> keras.Model:
    """Build the UNet: ``depth`` down/up levels of two 3x3 conv (+BN) blocks, skip connections.

    The bottleneck has ``base_filters * 2**depth`` filters (1024 at the defaults 64 and 4).
    ``stats`` (``{"mean": [...], "std": [...]}``, from the tile index) is recorded in the model's
    :class:`TileSpec` layer.

    Example
    -------
    >>> from miningxr.config import TrainConfig
    >>> model = build_unet(TrainConfig(base_filters=8, depth=2))
    >>> model.output_shape
    (None, 64, 64, 1)
    """
    cfg = config or TrainConfig()  # validated when made: tile_size divides by 2**depth
    n = len(cfg.bands)
    stats = stats or {"mean": [0.0] * n, "std": [1.0] * n}
    inputs = keras.Input((cfg.tile_size, cfg.tile_size, n), name="tiles")
    x = TileSpec(cfg.bands, cfg.tile_size, stats["mean"], stats["std"], name="tile_spec")(inputs)

    def block(x, filters, name):
        for i in (1, 2):
            x = layers.Conv2D(
                filters,
                3,
                padding="same",
                use_bias=not cfg.batch_norm,
                kernel_initializer="he_normal",
                name=f"{name}_conv{i}",
            )(x)
            if cfg.batch_norm:
                # momentum 0.9: running statistics settle within an epoch of a small run
                x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{i}")(x)
            x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
        return x

    skips = []
    for d in range(cfg.depth):
        x = block(x, cfg.base_filters * 2**d, f"down{d}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{d}")(x)
        if cfg.dropout:
            x = layers.Dropout(cfg.dropout, name=f"drop{d}")(x)
    x = block(x, cfg.base_filters * 2**cfg.depth, "bottleneck")
    for d in reversed(range(cfg.depth)):
        x = layers.Conv2DTranspose(cfg.base_filters * 2**d, 2, strides=2, padding="same", name=f"up{d}")(x)
        x = layers.Concatenate(name=f"skip{d}")([x, skips[d]])
        if cfg.dropout:
            x = layers.Dropout(cfg.dropout, name=f"updrop{d}")(x)
        x = block(x, cfg.base_filters * 2**d, f"dec{d}")
    # float32 output even under mixed precision, for a stable loss
    outputs = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="probability")(x)
    return keras.Model(inputs, outputs, name=f"unet_b{cfg.base_filters}_d{cfg.depth}")


def model_spec(model: keras.Model) -> TileSpec:
    """The :class:`TileSpec` of a miningxr model; a clear error for any other model."""
    try:
        spec = model.get_layer("tile_spec")
    except ValueError:
        spec = None
    if not isinstance(spec, TileSpec):
        raise ModelError(
            f"model {model.name!r} has no miningxr TileSpec layer: it was not built "
            "by miningxr.build_unet/train, so its bands and normalization are unknown"
        )
    return spec


def load_model(path: str | os.PathLike) -> keras.Model:
    """Load a ``.keras`` model (a path or an object-storage URL) in Keras safe mode (no
    arbitrary code from the file)."""
    p = model_file(path)
    if not p.is_file() or not zipfile.is_zipfile(p):
        raise ModelFileError(
            f"{p} is not a .keras model file (a .keras file is a zip archive; this one "
            "is damaged or something else). Train one with `miningxr train`, or copy "
            "the file again if it was cut short"
        )
    try:
        return keras.saving.load_model(
            p, compile=False, safe_mode=True, custom_objects={"TileSpec": TileSpec, **CUSTOM_OBJECTS}
        )
    except Exception as e:  # Keras raises ValueError, OSError, zipfile and h5py errors alike
        raise ModelFileError(
            f"{p} cannot be loaded as a miningxr model ({type(e).__name__}: {e}); "
            "train one with `miningxr train`, or copy the file again if it was cut "
            "short"
        ) from None
