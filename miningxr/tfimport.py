"""Import TensorFlow and Keras without the lines their C++ core prints on every start.

TensorFlow 2.16+ writes its oneDNN notice and absl's "All log messages before
absl::InitializeLog()" to the process's stderr while its libraries load, before
``TF_CPP_MIN_LOG_LEVEL`` takes effect, so every command printed four lines of noise. The first
import runs with file descriptor 2 pointed at ``/dev/null``; Python exceptions still propagate.
Set ``MININGXR_TF_VERBOSE=1`` (the CLI's ``-v`` does) to see everything.

It also says what this machine computes natively (:func:`native_precision`, which
``predict(precision="auto")`` follows) and which Keras policy mixed-precision training takes
here (:func:`mixed_policy`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from .errors import MiningxrWarning, MissingDependencyError

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


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no flags to read, so nothing is assumed native
        return set()
    return {
        f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()
    }


@functools.lru_cache(maxsize=1)
def native_precision() -> str:
    """The fastest precision this machine computes natively: ``bfloat16`` on an NVIDIA GPU
    since Ampere (compute capability 8) or a CPU with AMX-BF16 (Intel Xeon since Sapphire
    Rapids), ``float16`` on an older GPU with tensor cores (7.x), else ``float32``. What
    ``precision="auto"`` picks, on each worker."""
    tf = import_tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        major = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0))[0]
        return "bfloat16" if major >= 8 else "float16" if major >= 7 else "float32"
    return "bfloat16" if "amx_bf16" in _cpu_flags() else "float32"


def mixed_policy() -> str:
    """The Keras policy of mixed-precision training (``mixed_precision = true``) here:
    ``mixed_float16`` on a GPU (tensor cores since Volta; Keras scales the loss), and on a CPU
    ``mixed_bfloat16`` where AMX-BF16 runs it natively (float16 is emulated there). A CPU
    without AMX emulates both, so mixed precision trains slower than float32 there: it still
    trains (``mixed_float16``), and a :class:`~miningxr.errors.MiningxrWarning` says so."""
    tf = import_tensorflow()
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    if native_precision() == "bfloat16":
        return "mixed_bfloat16"
    warnings.warn(
        "mixed precision is emulated on this machine (no GPU, no AMX-BF16 on its CPU) and trains "
        "several times slower than float32; drop --mixed-precision (mixed_precision = false "
        "under [train]) here, and keep it for a GPU",
        MiningxrWarning,
        stacklevel=6,  # past _precision, contextlib, _fit and train: at the caller of train()
    )
    return "mixed_float16"
