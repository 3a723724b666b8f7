"""Strict JSON for every report miningxr writes (``report.json``, ``train.json``, the CLI).

An undefined metric (NaN: precision with nothing predicted, AUC with one class) is written as
``null``: ``NaN`` is not JSON, and strict readers (``jq``, browsers, most languages) refuse it.

Example
-------
>>> json_dumps({"iou": float("nan"), "n": 3})
'{\\n  "iou": null,\\n  "n": 3\\n}'
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN/inf floats as None and numpy scalars as Python numbers, recursively."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def json_dumps(obj: Any) -> str:
    """Strict JSON text of ``obj`` (see :func:`json_safe`), indented."""
    return json.dumps(json_safe(obj), indent=2, allow_nan=False)


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as strict JSON, making the folder when needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json_dumps(obj) + "\n")
    return path
