"""Segmentation losses and metrics for a rare positive class.

Every loss takes ``(y_true, y_pred)`` with probabilities in ``y_pred`` and returns a scalar.

Example
-------
>>> import numpy as np
>>> y = np.array([[1.0, 0.0]]); p = np.array([[0.8, 0.2]])
>>> round(float(dice_loss(y, p)), 4)  # 1 - (2 * 0.8 + 1) / (1 + 1 + 1)
0.1333
"""

from __future__ import annotations

from typing import Any, get_args

import keras
from keras import ops

from ..config import Loss
from ..errors import ConfigError

EPS = 1e-6


def _flat(y_true, y_pred):
    y_true = ops.cast(ops.reshape(y_true, (-1,)), "float32")
    y_pred = ops.cast(ops.reshape(y_pred, (-1,)), "float32")
    return y_true, ops.clip(y_pred, EPS, 1 - EPS)


@keras.saving.register_keras_serializable(package="miningxr")
def weighted_bce(y_true, y_pred, pos_weight: float = 1.0):
    """Binary cross-entropy with positives weighted by ``pos_weight``, averaged over pixels."""
    y, p = _flat(y_true, y_pred)
    return -ops.mean(pos_weight * y * ops.log(p) + (1 - y) * ops.log(1 - p))


@keras.saving.register_keras_serializable(package="miningxr")
def dice_loss(y_true, y_pred, smooth: float = 1.0):
    """1 - soft Dice over the whole batch."""
    y, p = _flat(y_true, y_pred)
    return 1 - (2 * ops.sum(y * p) + smooth) / (ops.sum(y) + ops.sum(p) + smooth)


@keras.saving.register_keras_serializable(package="miningxr")
def focal_loss(y_true, y_pred, alpha: float = 0.25, gamma: float = 2.0):
    """Focal loss (Lin et al. 2017): cross-entropy down-weighted on easy pixels."""
    y, p = _flat(y_true, y_pred)
    pt = y * p + (1 - y) * (1 - p)
    at = y * alpha + (1 - y) * (1 - alpha)
    return -ops.mean(at * (1 - pt) ** gamma * ops.log(pt))


@keras.saving.register_keras_serializable(package="miningxr")
class SegmentationLoss(keras.losses.Loss):
    """A named, serializable loss: saved models hold no lambda, and load in safe mode."""

    def __init__(
        self, kind: Loss = "combined", pos_weight: float = 10.0, name: str | None = None, **kwargs: Any
    ):
        if kind not in get_args(Loss):
            raise ConfigError(f"unknown loss {kind!r}; choose one of {', '.join(get_args(Loss))}")
        super().__init__(name=name or f"{kind}_loss", **kwargs)
        self.kind, self.pos_weight = kind, float(pos_weight)

    def call(self, y_true, y_pred):
        if self.kind == "bce":
            return weighted_bce(y_true, y_pred, self.pos_weight)
        if self.kind == "dice":
            return dice_loss(y_true, y_pred)
        if self.kind == "focal":
            return focal_loss(y_true, y_pred)
        return weighted_bce(y_true, y_pred, self.pos_weight) + dice_loss(y_true, y_pred)

    def get_config(self) -> dict:
        return {**super().get_config(), "kind": self.kind, "pos_weight": self.pos_weight}


def get_loss(name: Loss, pos_weight: float = 10.0) -> SegmentationLoss:
    """The loss called ``name``: ``bce``, ``dice``, ``focal`` or ``combined`` (weighted BCE + Dice)."""
    return SegmentationLoss(name, pos_weight)


class _Confusion(keras.metrics.Metric):
    """Accumulates TP/FP/FN over batches at a threshold; subclasses say what to report."""

    def __init__(self, threshold: float = 0.5, name: str | None = None, **kwargs):
        super().__init__(name=name or self.default_name, **kwargs)
        self.threshold = threshold
        self.tp = self.add_weight(name="tp", initializer="zeros")
        self.fp = self.add_weight(name="fp", initializer="zeros")
        self.fn = self.add_weight(name="fn", initializer="zeros")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y = ops.cast(ops.reshape(y_true, (-1,)) > 0.5, "float32")
        p = ops.cast(ops.reshape(y_pred, (-1,)) >= self.threshold, "float32")
        self.tp.assign_add(ops.sum(y * p))
        self.fp.assign_add(ops.sum((1 - y) * p))
        self.fn.assign_add(ops.sum(y * (1 - p)))

    def reset_state(self):
        for v in (self.tp, self.fp, self.fn):
            v.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


@keras.saving.register_keras_serializable(package="miningxr")
class IoU(_Confusion):
    """Intersection over union of the positive class: TP / (TP + FP + FN)."""

    default_name = "iou"

    def result(self):
        return self.tp / ops.maximum(self.tp + self.fp + self.fn, EPS)


@keras.saving.register_keras_serializable(package="miningxr")
class Dice(_Confusion):
    """Dice (= F1) of the thresholded prediction: 2TP / (2TP + FP + FN)."""

    default_name = "dice"

    def result(self):
        return 2 * self.tp / ops.maximum(2 * self.tp + self.fp + self.fn, EPS)


@keras.saving.register_keras_serializable(package="miningxr")
class F1(Dice):
    default_name = "f1"


def metrics(threshold: float = 0.5) -> list:
    """Dice, IoU, precision, recall, F1 and AUC, all on the positive class."""
    return [
        Dice(threshold),
        IoU(threshold),
        keras.metrics.Precision(thresholds=threshold, name="precision"),
        keras.metrics.Recall(thresholds=threshold, name="recall"),
        F1(threshold),
        keras.metrics.AUC(name="auc"),
    ]


#: the metrics a saved model may name, for loading it
CUSTOM_OBJECTS: dict[str, Any] = {"IoU": IoU, "Dice": Dice, "F1": F1}
