"""The Keras UNet, its losses and metrics, and training."""

from ..tfimport import import_tensorflow

import_tensorflow()  # before keras is imported by a submodule: without the C++ start-up noise
