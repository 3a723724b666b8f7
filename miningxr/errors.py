"""Every error miningxr raises on purpose, in one hierarchy.

:class:`MiningxrError` is a :class:`ValueError`, so code that caught ``ValueError`` before keeps
working; catch ``MiningxrError`` to tell a user's mistake from a bug. Each error's message names
the fix. The command line shows these as one line (exit status 2) and any other exception as a
bug, with its traceback.

Example
-------
>>> import miningxr
>>> try:
...     miningxr.open_landsat("XXY", 2020)
... except miningxr.MiningxrError as e:
...     print(type(e).__name__)
RegionError
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "EvaluateError",
    "LabelError",
    "LoaderError",
    "MiningxrError",
    "MiningxrWarning",
    "MissingDependencyError",
    "ModelError",
    "ModelFileError",
    "ModelMismatchError",
    "RegionError",
    "SourceError",
    "StoreError",
    "TileError",
    "TooLargeError",
    "UsageError",
    "YearError",
]


class MiningxrError(ValueError):
    """The base of every error miningxr raises for input it cannot use."""


class ConfigError(MiningxrError):
    """A configuration value out of range, of the wrong type, or unknown."""


class UsageError(MiningxrError):
    """Arguments that do not go together (a command-line flag without the one it needs)."""


class TooLargeError(UsageError):
    """A request that would read more than a server allows (a far-out map tile, a huge bbox);
    the message names what to ask instead (HTTP 413)."""


class MissingDependencyError(MiningxrError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


class RegionError(MiningxrError):
    """A region that cannot be placed on the global grid."""


class YearError(MiningxrError):
    """A year that a source, a store or a cube does not hold."""


class StoreError(MiningxrError):
    """A path that is not a usable miningxr store, or a request it cannot serve."""


class SourceError(MiningxrError):
    """A source cannot serve what was asked (no data, no credentials, a bad catalog)."""


class LabelError(MiningxrError):
    """A polygon file or selection that cannot be used as labels."""


class TileError(MiningxrError):
    """A store or config from which no usable tile index can be made."""


class LoaderError(MiningxrError):
    """A split, band list or store the training loader cannot serve."""


class ModelError(MiningxrError):
    """A model miningxr cannot use."""


class ModelFileError(ModelError):
    """A model file that is missing, damaged, or not a model miningxr wrote."""


class ModelMismatchError(ModelError):
    """A model whose bands or tile size do not fit the data it is asked to predict."""


class EvaluateError(MiningxrError):
    """Predictions and truth that cannot be scored together (no common pixel)."""


class MiningxrWarning(UserWarning):
    """Something miningxr can do, but likely not as the user means it: the message names the
    better way. Filter it with ``warnings.filterwarnings("ignore", category=MiningxrWarning)``."""
