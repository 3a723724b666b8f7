"""Import TensorFlow and Keras without the lines their C++ core prints on every start.

TensorFlow 2.16+ writes its oneDNN notice and absl's "All log messages before
absl::InitializeLog()" to the process's stderr while its libraries load, before
``TF_CPP_MIN_LOG_LEVEL`` takes effect, so every command printed four lines of noise. The first
import runs with file descriptor 2 pointed at ``/dev/null``; Python exceptions still propagate.
Set ``MININGXR_TF_VERBOSE=1`` (the CLI's ``-v`` does) to see everything.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from types import ModuleType

from .errors import MissingDependencyError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (some notebooks, services): nothing to hide
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow() -> ModuleType:
    """``tensorflow``, imported quietly the first time (and Keras with it).

    Without TensorFlow, a :class:`~miningxr.errors.MissingDependencyError` that says how to
    install it.
    """
    try:
        if "tensorflow" not in sys.modules and os.environ.get("MININGXR_TF_VERBOSE", "0") in ("", "0"):
            with _stderr_silenced():
                import keras
                import tensorflow
        import keras  # noqa: F401  (Keras 3 with TensorFlow as its backend)
        import tensorflow
    except ImportError as e:
        raise MissingDependencyError(
            f"training and prediction need TensorFlow and Keras ({e}); install them with "
            "`pip install 'miningxr[tf]'`"
        ) from e
    return tensorflow
