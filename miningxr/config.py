"""Every tunable of miningxr in one typed place, validated when it is made.

Each stage takes its section of :class:`Config`; the CLI builds one from defaults, an optional
TOML file (``--config miningxr.toml``) and its own flags, in that order of precedence. Every field
is checked against its type hint when a section is made (an option with a fixed set of values is
a ``Literal``), so a bad value is refused when the file is read, not hours later.

Example
-------
>>> from miningxr.config import Config
>>> cfg = Config.from_dict({"train": {"base_filters": 16, "epochs": 3}})
>>> cfg.train.base_filters, cfg.train.depth
(16, 4)
>>> Config.from_dict({"train": {"loss": "foo"}})
Traceback (most recent call last):
...
miningxr.errors.ConfigError: [train] loss must be one of 'bce', 'dice', 'focal', 'combined', got 'foo'
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import numpy as np

from .errors import ConfigError, UsageError

#: Band order of every cube and store; fixed by the design.
BANDS: tuple[str, ...] = ("blue", "green", "red", "nir", "swir1", "swir2", "thermal")

#: The training losses (:func:`miningxr.model.losses.get_loss`).
Loss = Literal["bce", "dice", "focal", "combined"]
#: How the learning rate changes: halved when validation loss stalls, or a cosine decay.
LrSchedule = Literal["plateau", "cosine"]


def as_years(years: int | Sequence[int]) -> list[int]:
    """One year or several, as a list of ints (what every stage that takes years accepts).

    >>> as_years(2020), as_years((2019, np.int64(2020)))
    ([2020], [2019, 2020])
    """
    if isinstance(years, (int, np.integer)):
        return [int(years)]
    if isinstance(years, (str, bytes)) or not isinstance(years, (Sequence, np.ndarray)):
        raise ConfigError(f"years must be a year or a list of years, got {years!r}")
    return [int(y) for y in years]


def _check_types(section: Any, name: str) -> None:
    """Refuse a field whose value does not fit its type hint, naming the section and field."""
    hints = _hints(type(section))
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if not _fits(value, hints[f.name]):
            expected = _describe(hints[f.name])
            if get_origin(hints[f.name]) is Literal:
                msg = f"must be one of {expected}"
            else:
                msg = f"must be {expected}"
            raise ConfigError(f"[{name}] {f.name} {msg}, got {value!r}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fits(value: Any, hint: Any) -> bool:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return value in args
    if origin in (types.UnionType, typing.Union):
        return any(_fits(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args, strict=True))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, (bool, np.bool_))
    if hint is int:
        return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if hint is float:
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return ", ".join(repr(a) for a in args)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}"
        return f"a list of {len(args)} ({', '.join(_describe(a) for a in args)})"
    if hint is type(None):
        return "none"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def _at_least(cfg: Any, low: int, *names: str) -> None:
    """Refuse integer options below ``low``, naming the option and its command-line flag."""
    for name in names:
        value = getattr(cfg, name)
        if value < low:
            raise ConfigError(
                f"{name} (--{name.replace('_', '-')}) must be an integer >= {low}, got {value!r}"
            )


@dataclass(frozen=True)
class StoreLayout:
    """Chunking of the global store. Every layout shares the same pixel grid."""

    chunk: int = 512
    shard: int = 2048
    first_year: int = 1984
    last_year: int = 2035

    def __post_init__(self) -> None:
        _check_types(self, "store")
        _at_least(self, 1, "chunk", "shard")
        if self.shard % self.chunk:
            raise ConfigError(f"[store] shard ({self.shard}) must be a multiple of chunk ({self.chunk})")
        if self.last_year < self.first_year:
            raise ConfigError("[store] last_year must not be before first_year")

    @property
    def years(self) -> list[int]:
        return list(range(self.first_year, self.last_year + 1))


@dataclass(frozen=True)
class SyntheticConfig:
    """The deterministic synthetic Landsat source.

    Every value is a pure function of ``seed``, the global pixel and the year, so any slice in any
    chunking gives the same numbers; it serves the years ``first_year`` to ``last_year``.
    """

    seed: int = 0
    first_year: int = 1984
    last_year: int = 2025
    #: mines are placed on a lattice of cells this many pixels wide; at most one per cell
    mine_cell: int = 384
    mine_probability: float = 0.7
    mine_radius: tuple[int, int] = (30, 100)
    noise: float = 0.012
    #: the share of mines that close (8-22 years after they opened) and then revegetate
    closure_probability: float = 0.3
    #: years a closed mine takes to revegetate (its pit stays a lake)
    revegetation_years: int = 4
    #: year-to-year radiometric variation: each band's gain is 1 +- this, drawn per year
    year_gain: float = 0.05
    #: the most residual cloud (no data) a year's composite keeps, as a share of pixels
    cloud_cover: float = 0.05
    #: years whose composites keep Landsat 7 SLC-off stripes of no data (all of them in the
    #: last year, when Landsat 7 flew alone; a share of them in the years before)
    slc_off_years: tuple[int, int] = (2003, 2012)
    #: confusers: bare fields that lie fallow some years, and construction sites that are
    #: bright bare ground for two years before they become buildings (share of lattice cells)
    field_probability: float = 0.35
    construction_probability: float = 0.15

    def __post_init__(self) -> None:
        _check_types(self, "synthetic")
        for name in ("closure_probability", "cloud_cover", "field_probability", "construction_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"[synthetic] {name} must be between 0 and 1, got {getattr(self, name)!r}")
        if not 0 <= self.year_gain < 0.5:
            raise ConfigError(f"[synthetic] year_gain must be between 0 and 0.5, got {self.year_gain!r}")
        if self.revegetation_years < 1:
            raise ConfigError(f"[synthetic] revegetation_years must be >= 1, got {self.revegetation_years!r}")
        lo, hi = self.mine_radius
        if not 0 < lo <= hi or self.mine_cell <= 2.7 * hi:
            raise ConfigError(
                f"[synthetic] mine_radius {list(self.mine_radius)} must be 0 < low <= high, with high "
                f"under mine_cell / 2.7 ({self.mine_cell / 2.7:.0f}) so that a mine fits in its cell"
            )
        if self.last_year < self.first_year:
            raise ConfigError("[synthetic] last_year must not be before first_year")


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
    #: negatives kept per positive tile in the training split (None keeps all). Two: with one,
    #: or fewer, a model sees too few buildings and bare fields and takes them for mines
    negative_ratio: float | None = 2.0
    min_valid_fraction: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        _check_types(self, "tiles")
        _at_least(self, 1, "tile_size", "block_tiles")
        _at_least(self, 0, "buffer_tiles")
        if min(self.fractions) < 0 or not sum(self.fractions) > 0:
            raise ConfigError(f"[tiles] fractions {list(self.fractions)} must be >= 0 with a positive sum")


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
    lr_schedule: LrSchedule = "plateau"
    batch_size: int = 32
    epochs: int = 50
    loss: Loss = "combined"
    pos_weight: float = 10.0
    patience: int = 8
    #: float16 on a GPU, bfloat16 on a CPU with AMX-BF16 (miningxr.tfimport.mixed_policy)
    mixed_precision: bool = False
    augment: bool = True
    shuffle_buffer: int = 2048
    in_memory: bool = False  # read the splits once and train from RAM (small stores)
    seed: int = 0

    def __post_init__(self) -> None:
        _check_types(self, "train")
        _at_least(self, 1, "tile_size", "base_filters", "depth", "batch_size", "epochs", "shuffle_buffer")
        _at_least(self, 0, "patience")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate (--learning-rate) must be > 0, got {self.learning_rate}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout (--dropout) must be in [0, 1), got {self.dropout}")
        if not self.pos_weight > 0:
            raise ConfigError(f"pos_weight (--pos-weight) must be > 0, got {self.pos_weight}")
        unknown = [b for b in self.bands if b not in BANDS]
        if not self.bands or unknown:
            raise ConfigError(
                f"[train] bands must name at least one of {list(BANDS)}, got {list(self.bands)}"
            )
        if self.tile_size % (2**self.depth):
            raise ConfigError(
                f"[train] tile_size {self.tile_size} must be divisible by 2**depth = {2**self.depth} "
                "(the UNet halves it depth times); lower depth (--depth)"
            )


#: how a prediction store keeps probability
PredictionDtype = Literal["uint8", "float32"]
#: how predict runs the model: on its tiles, or on whole windows
PredictMode = Literal["tiles", "window"]
#: what the network computes in: ``auto`` picks bfloat16 where the hardware runs it natively
PredictPrecision = Literal["float32", "bfloat16", "float16", "auto"]


@dataclass(frozen=True)
class PredictConfig:
    """Prediction settings.

    Attributes
    ----------
    overlap
        Pixels by which neighbouring tiles overlap; their predictions are blended.
    batch_size
        Tiles per model call.
    threshold
        Probability at or above which a pixel counts as mining.
    dtype
        How a new prediction store keeps probability: ``uint8`` (steps of 1/250 with CF
        ``scale_factor``; a quarter of ``float32``'s bytes, at most 0.002 off) or ``float32``.
    mode
        ``tiles``: the model on its training tiles, blended over ``overlap``; ``window``: the
        fully convolutional model on whole blocks plus a halo of its receptive field (no tiles,
        no seams, the same under any chunking; ``overlap`` does not apply). For a model
        trained on tiles of at least twice its receptive radius (128 px at depth 4): one
        trained on 64 px tiles loses some IoU on whole windows (docs/benchmarks.md).
    block
        Pixels per side of the windows of ``mode="window"`` (the halo is ~100 px each side at
        depth 4: bigger windows waste less on it, and hold more memory).
    precision
        What the network computes in. ``float32`` (the default: the trained model exactly, the
        same on every machine); ``bfloat16`` (2-3x faster where the hardware has it: AMX on
        Intel Xeon since Sapphire Rapids, NVIDIA GPUs since Ampere; probabilities within a few
        hundredths of float32's, 0.006-0.023 measured; very slow where it is emulated);
        ``float16`` (for GPUs before Ampere); ``auto``: ``bfloat16`` where each worker's hardware runs it natively, else
        ``float16`` on an older GPU, else ``float32``. The output layer always computes in
        float32.
    """

    overlap: int = 16
    batch_size: int = 64
    threshold: float = 0.5
    dtype: PredictionDtype = "uint8"
    mode: PredictMode = "tiles"
    block: int = 1024
    precision: PredictPrecision = "float32"

    def __post_init__(self) -> None:
        _check_types(self, "predict")
        _at_least(self, 0, "overlap")
        _at_least(self, 1, "batch_size", "block")
        if not 0 <= self.threshold <= 1:
            raise ConfigError(f"threshold (--threshold) must be in [0, 1], got {self.threshold}")


@dataclass(frozen=True)
class ChangeConfig:
    """Change over time (:mod:`miningxr.change`).

    Attributes
    ----------
    threshold
        Probability at or above which a pixel counts as mined in a year.
    window
        Years of the centred majority window of the temporal consistency rule (odd; 1 turns
        the rule off).
    """

    threshold: float = 0.5
    window: int = 3

    def __post_init__(self) -> None:
        _check_types(self, "change")
        if not 0 <= self.threshold <= 1:
            raise ConfigError(f"[change] threshold must be in [0, 1], got {self.threshold}")
        if self.window < 1 or self.window % 2 == 0:
            raise ConfigError(f"[change] window must be an odd number of years >= 1, got {self.window}")


@dataclass(frozen=True)
class ServeConfig:
    """The map and query server (:mod:`miningxr.server`).

    Attributes
    ----------
    host
        Address to bind: loopback unless told otherwise (``0.0.0.0`` serves every interface).
    port
        TCP port.
    threshold
        Probability at or above which a pixel counts as mined (``/mining``, the onset layer).
    stretch
        Reflectance shown as full brightness in the imagery layers (0 is black).
    max_tile_pixels
        Most source pixels one map tile may read; a tile that needs more is refused (413) and
        names the zoom to use (there are no overviews: a far-out tile would read whole shards).
    max_query_pixels
        Most pixels one ``/mining`` query may read.
    tile_cache
        Map tiles kept in memory once rendered (256 px PNGs, a few KB each; 0 renders every
        request). On-demand predictions change what they show, and start it afresh.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    threshold: float = 0.5
    stretch: float = 0.3
    max_tile_pixels: int = 4096 * 4096
    max_query_pixels: int = 8192 * 8192
    tile_cache: int = 2048

    def __post_init__(self) -> None:
        _check_types(self, "serve")
        _at_least(self, 0, "tile_cache")
        if not 0 < self.port < 65536:
            raise ConfigError(f"[serve] port (--port) must be in 1..65535, got {self.port}")
        if not 0 <= self.threshold <= 1:
            raise ConfigError(f"[serve] threshold must be in [0, 1], got {self.threshold}")
        if not self.stretch > 0:
            raise ConfigError(f"[serve] stretch must be > 0 (a reflectance, e.g. 0.3), got {self.stretch}")
        _at_least(self, 1, "max_tile_pixels", "max_query_pixels")


@dataclass(frozen=True)
class Config:
    """All sections: ``store``, ``synthetic``, ``tiles``, ``train``, ``predict``, ``change`` and ``serve``."""

    store: StoreLayout = field(default_factory=StoreLayout)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    tiles: TileConfig = field(default_factory=TileConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    change: ChangeConfig = field(default_factory=ChangeConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def __post_init__(self) -> None:
        # the model trains on the tiles the index cuts: two sizes cannot both hold
        if self.tiles.tile_size != self.train.tile_size:
            raise ConfigError(
                f"[tiles] tile_size {self.tiles.tile_size} and [train] tile_size {self.train.tile_size} "
                "differ; set tile_size in one section (the other follows it) or the same in both"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build a config from nested dicts; unknown keys are an error, not silently dropped.

        ``tile_size`` given in only one of ``[tiles]`` and ``[train]`` applies to both.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = set(data) - set(names)
        if unknown:
            raise ConfigError(f"unknown config section(s) {sorted(unknown)}; valid: {names}")
        data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
        given = [data[s]["tile_size"] for s in ("tiles", "train") if "tile_size" in data.get(s, {})]
        if len(given) == 1:
            for s in ("tiles", "train"):
                data.setdefault(s, {})["tile_size"] = given[0]
        sections = {
            f.name: _build(f.default_factory, dict(data.get(f.name, {})), f.name)
            for f in dataclasses.fields(cls)
        }
        return cls(**sections)

    @classmethod
    def from_file(cls, path: str | Path) -> Config:
        """Read a TOML file whose tables are the sections of :class:`Config`."""
        try:
            with open(path, "rb") as f:
                return cls.from_dict(tomllib.load(f))
        except FileNotFoundError:
            raise ConfigError(
                f"config file {path} does not exist; give the path of a TOML file (--config)"
            ) from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML ({e})") from None

    def replace(self, section: str, **changes: Any) -> Config:
        """A copy with some fields of one section changed (``None`` values are ignored)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **changes)})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(factory: Any, values: dict[str, Any], name: str) -> Any:
    default = factory()
    valid = {f.name for f in dataclasses.fields(default)}
    unknown = set(values) - valid
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} in [{name}]; valid: {sorted(valid)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return dataclasses.replace(default, **values)


def check_temporal_span(args: Any) -> None:
    """Refuse a ``demo --temporal`` span that cannot be followed: ``--year`` (the training year)
    must lie in ``--first-year .. --last-year``, at least 3 years (the rule's window)."""
    if not getattr(args, "temporal", False):
        return
    years = range(args.first_year, args.last_year + 1)
    if len(years) < 3:
        raise UsageError(
            f"--first-year {args.first_year} .. --last-year {args.last_year} must span at least 3 years "
            "(the temporal rule looks at a year and its neighbours)"
        )
    if args.year not in years:
        raise UsageError(
            f"--year {args.year} (the year the model trains on) must lie in --first-year "
            f"{args.first_year} .. --last-year {args.last_year}"
        )
