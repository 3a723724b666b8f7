"""Every tunable of miningxr in one typed place.

Each stage takes its section of :class:`Config`; the CLI builds one from defaults, an optional
TOML file (``--config miningxr.toml``) and its own flags, in that order of precedence.

Example
-------
>>> from miningxr.config import Config
>>> cfg = Config.from_dict({"train": {"base_filters": 16, "epochs": 3}})
>>> cfg.train.base_filters, cfg.train.depth
(16, 4)
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Band order of every cube and store; fixed by the design.
BANDS: tuple[str, ...] = ("blue", "green", "red", "nir", "swir1", "swir2", "thermal")

#: CF packing shared by every band of the ``landsat`` variable. Reflectance bands are surface
#: reflectance; ``thermal`` is brightness temperature as (T[K] - 273.15) / 100 so that one int16
#: scale serves all seven bands (see docs/store.md).
SCALE_FACTOR: float = 1e-4
ADD_OFFSET: float = 0.0
FILL_VALUE: int = -32768


@dataclass(frozen=True)
class StoreLayout:
    """Chunking of the global store. Every layout shares the same pixel grid."""

    chunk: int = 512
    shard: int = 2048
    first_year: int = 1984
    last_year: int = 2035

    def __post_init__(self) -> None:
        if self.shard % self.chunk:
            raise ValueError(f"shard ({self.shard}) must be a multiple of chunk ({self.chunk})")
        if self.last_year < self.first_year:
            raise ValueError("last_year must not be before first_year")

    @property
    def years(self) -> list[int]:
        return list(range(self.first_year, self.last_year + 1))


@dataclass(frozen=True)
class SyntheticConfig:
    """The deterministic synthetic Landsat source."""

    seed: int = 0
    first_year: int = 1984
    last_year: int = 2025
    #: mines are placed on a lattice of cells this many pixels wide; at most one per cell
    mine_cell: int = 384
    mine_probability: float = 0.7
    mine_radius: tuple[int, int] = (30, 100)
    noise: float = 0.012


@dataclass(frozen=True)
class TileConfig:
    """The 64x64 tile index and its spatial split."""

    tile_size: int = 64
    #: split blocks are squares of this many tiles; whole blocks go to one split
    block_tiles: int = 8
    #: tiles of a block that touch a block of another split are dropped (a guard band)
    buffer_tiles: int = 1
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    #: a tile is positive when its mining fraction is at least this
    positive_threshold: float = 0.01
    #: negatives kept per positive tile in the training split (None keeps all)
    negative_ratio: float | None = 1.0
    min_valid_fraction: float = 0.9
    seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """Model and optimisation; the defaults are the seed project's."""

    tile_size: int = 64
    bands: tuple[str, ...] = BANDS
    base_filters: int = 64
    depth: int = 4
    dropout: float = 0.1
    batch_norm: bool = True
    learning_rate: float = 1e-4
    #: "plateau" halves the rate when validation loss stalls; "cosine" decays it to 1% over
    #: ``epochs`` (smoother curves when the number of epochs is fixed in advance)
    lr_schedule: str = "plateau"
    batch_size: int = 32
    epochs: int = 50
    loss: str = "combined"
    pos_weight: float = 10.0
    patience: int = 8
    mixed_precision: bool = False
    augment: bool = True
    shuffle_buffer: int = 2048
    in_memory: bool = False  # read the splits once and train from RAM (small stores)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("plateau", "cosine"):
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; choose plateau or cosine")
        if self.loss not in ("bce", "dice", "focal", "combined"):
            raise ValueError(f"unknown loss {self.loss!r}; choose bce, dice, focal or combined")
        _at_least(self, 1, "tile_size", "base_filters", "depth", "batch_size", "epochs", "shuffle_buffer")
        _at_least(self, 0, "patience")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate (--learning-rate) must be > 0, got {self.learning_rate}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout (--dropout) must be in [0, 1), got {self.dropout}")
        if not self.pos_weight > 0:
            raise ValueError(f"pos_weight (--pos-weight) must be > 0, got {self.pos_weight}")
        if not self.bands:
            raise ValueError("bands must name at least one band")


def _at_least(cfg: object, low: int, *names: str) -> None:
    """Refuse integer options below ``low``, naming the option and its command-line flag."""
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} (--{name.replace('_', '-')}) must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True)
class PredictConfig:
    overlap: int = 16
    batch_size: int = 64
    threshold: float = 0.5

    def __post_init__(self) -> None:
        _at_least(self, 0, "overlap")
        _at_least(self, 1, "batch_size")
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold (--threshold) must be in [0, 1], got {self.threshold}")


@dataclass(frozen=True)
class Config:
    store: StoreLayout = field(default_factory=StoreLayout)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    tiles: TileConfig = field(default_factory=TileConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)

    def __post_init__(self) -> None:
        # the model trains on the tiles the index cuts: two sizes cannot both hold
        if self.tiles.tile_size != self.train.tile_size:
            raise ValueError(f"[tiles] tile_size {self.tiles.tile_size} and [train] tile_size "
                             f"{self.train.tile_size} differ; set tile_size in one section (the other "
                             "follows it) or the same in both")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build a config from nested dicts; unknown keys are an error, not silently dropped.

        ``tile_size`` given in only one of ``[tiles]`` and ``[train]`` applies to both.
        """
        data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
        given = [data[s]["tile_size"] for s in ("tiles", "train") if "tile_size" in data.get(s, {})]
        if len(given) == 1:
            for s in ("tiles", "train"):
                data.setdefault(s, {})["tile_size"] = given[0]
        sections = {}
        for f in dataclasses.fields(cls):
            sub = dict(data.get(f.name, {}))
            sections[f.name] = _build(f.default_factory, sub, f.name)  # type: ignore[misc]
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown config section(s) {sorted(unknown)}; "
                             f"valid: {[f.name for f in dataclasses.fields(cls)]}")
        return cls(**sections)

    @classmethod
    def from_file(cls, path: str | Path) -> Config:
        """Read a TOML file whose tables are the sections of :class:`Config`."""
        with open(path, "rb") as f:
            return cls.from_dict(tomllib.load(f))

    def replace(self, section: str, **changes: Any) -> Config:
        """A copy with some fields of one section changed (``None`` values are ignored)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **changes)})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(factory: Any, values: dict[str, Any], name: str) -> Any:
    default = factory()
    valid = {f.name: f for f in dataclasses.fields(default)}
    unknown = set(values) - set(valid)
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in [{name}]; valid: {sorted(valid)}")
    for key, value in values.items():
        if isinstance(value, list):
            values[key] = tuple(value)
    return dataclasses.replace(default, **values)
