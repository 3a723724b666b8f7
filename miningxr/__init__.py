"""miningxr: map the footprint of mining from Landsat imagery with xarray and Dask.

>>> import miningxr
>>> ds = miningxr.open_landsat((29.0, -26.0, 29.05, -25.95), 2020)   # synthetic by default
>>> ds.landsat.dims
('year', 'band', 'y', 'x')
"""

import odc.geo.xr  # noqa: F401  (registers the .odc accessor on xarray objects)
import rioxarray  # noqa: F401  (registers the .rio accessor: CRS and transform of every output)

from .config import BANDS, Config, PredictConfig, StoreLayout, SyntheticConfig, TileConfig, TrainConfig
from .evaluate import evaluate
from .export import export
from .grid import GLOBAL_GEOBOX, GridSlice, Region
from .ingest import IngestReport, ingest
from .labels import mining_mask, read_polygons, write_mask
from .predict import ModelMismatchError, open_predictions, predict, write_predictions
from .sources import open_landsat
from .store import StoreError, open_store, status
from .tiles import load_tile_index, tile_index

__version__ = "0.1.0"


def training_dataset(*args, **kwargs):
    """See :func:`miningxr.loader.training_dataset` (imports TensorFlow on first use)."""
    from .loader import training_dataset as _training_dataset

    return _training_dataset(*args, **kwargs)


def build_unet(*args, **kwargs):
    """See :func:`miningxr.model.unet.build_unet` (imports TensorFlow on first use)."""
    from .model.unet import build_unet as _build_unet

    return _build_unet(*args, **kwargs)


def train(*args, **kwargs):
    """See :func:`miningxr.model.train.train` (imports TensorFlow on first use)."""
    from .model.train import train as _train

    return _train(*args, **kwargs)


__all__ = [
    "BANDS", "Config", "GLOBAL_GEOBOX", "GridSlice", "IngestReport", "ModelMismatchError", "PredictConfig",
    "Region", "StoreError", "StoreLayout", "SyntheticConfig", "TileConfig", "TrainConfig", "build_unet",
    "evaluate", "export", "ingest", "load_tile_index", "mining_mask", "open_landsat", "open_predictions",
    "open_store", "predict", "read_polygons", "status", "tile_index", "train", "training_dataset",
    "write_mask", "write_predictions",
]
