"""Where miningxr reads and writes: paths on a local or shared filesystem.

Stores, prediction stores, models and output folders are folders and files today; object
storage (``s3://``, ``gs://``, ``az://``, ...) is planned (issue #20). Until it works, a URL is
refused with that said, never taken for a folder name: ``Path("s3://bucket/s.zarr")`` would be
the local folder ``s3:/bucket/s.zarr``.

>>> local_path("runs/s.zarr")
PosixPath('runs/s.zarr')
>>> local_path("s3://bucket/s.zarr", what="the store")
Traceback (most recent call last):
...
miningxr.errors.UsageError: s3://bucket/s.zarr is a URL, and the store must be a local or shared-filesystem path for now: object storage is not supported yet (issue #20). Give a path such as /data/s.zarr, or a mounted bucket
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import UsageError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def local_path(path: str | os.PathLike, *, what: str = "the path") -> Path:
    """``path`` as a :class:`~pathlib.Path`, or a :class:`~miningxr.errors.UsageError` if it is
    a URL (``scheme://...``)."""
    text = os.fspath(path)
    if _URL.match(text):
        raise UsageError(
            f"{text} is a URL, and {what} must be a local or shared-filesystem path for now: object "
            "storage is not supported yet (issue #20). Give a path such as /data/s.zarr, or a mounted bucket"
        )
    return Path(text)
