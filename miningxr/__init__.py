"""miningxr: map the footprint of mining from Landsat imagery with xarray and Dask.

>>> import miningxr
>>> ds = miningxr.open_landsat((29.0, -26.0, 29.05, -25.95), 2020)   # synthetic by default
>>> ds.landsat.dims
('year', 'band', 'y', 'x')

Training and model building need TensorFlow (``pip install 'miningxr[tf]'``); they are imported
on first use, so ``import miningxr`` stays light.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from typing import TYPE_CHECKING, Any

import odc.geo.xr  # noqa: F401  (registers the .odc accessor on xarray objects)
import rioxarray  # noqa: F401  (registers the .rio accessor: CRS and transform of every output)

from . import errors
from .change import change_table, closure_year, consistent_mining, onset_year
from .config import (
    BANDS,
    ChangeConfig,
    Config,
    PredictConfig,
    ServeConfig,
    StoreLayout,
    SyntheticConfig,
    TileConfig,
    TrainConfig,
)
from .errors import *  # noqa: F403  (every error: the names in errors.__all__)
from .evaluate import evaluate
from .export import export, export_store
from .grid import GLOBAL_GEOBOX, GridSlice, Region
from .ingest import IngestPlan, ingest, plan
from .labels import mining_mask, read_polygons, write_mask
from .loader import training_dataset
from .predict import open_predictions, predict, write_predictions
from .server import MiningServer, serve, serve_app
from .shards import IngestReport, status
from .sources import open_landsat
from .store import open_regions, open_store, store_regions
from .tiles import load_tile_index, tile_index

if TYPE_CHECKING:
    from .model.train import TrainResult, train
    from .model.unet import build_unet

try:
    __version__ = _dist_version("miningxr")  # the one place it is written: pyproject.toml
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

#: public names whose modules import TensorFlow: loaded on first use (PEP 562)
_LAZY = {
    "build_unet": "miningxr.model.unet",
    "train": "miningxr.model.train",
    "TrainResult": "miningxr.model.train",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from .tfimport import import_tensorflow

        import_tensorflow()  # a clear "install miningxr[tf]" when TensorFlow is missing
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'miningxr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "BANDS",
    "GLOBAL_GEOBOX",
    "ChangeConfig",
    "Config",
    "GridSlice",
    "IngestPlan",
    "IngestReport",
    "MiningServer",
    "PredictConfig",
    "Region",
    "ServeConfig",
    "StoreLayout",
    "SyntheticConfig",
    "TileConfig",
    "TrainConfig",
    "TrainResult",
    "build_unet",
    "change_table",
    "closure_year",
    "consistent_mining",
    "evaluate",
    "export",
    "export_store",
    "ingest",
    "load_tile_index",
    "mining_mask",
    "onset_year",
    "open_landsat",
    "open_predictions",
    "open_regions",
    "open_store",
    "plan",
    "predict",
    "read_polygons",
    "serve",
    "serve_app",
    "status",
    "store_regions",
    "tile_index",
    "train",
    "training_dataset",
    "write_mask",
    "write_predictions",
]
__all__ += errors.__all__
