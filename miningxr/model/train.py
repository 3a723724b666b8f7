"""Training: the loader, the UNet, the callbacks, and a ``.keras`` file prediction can use alone."""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from ..config import TrainConfig
from ..errors import LoaderError
from ..jsonio import write_json
from ..loader import training_dataset
from ..paths import Location, Where, staged
from ..store import check_output_folder
from ..tfimport import import_tensorflow, mixed_policy
from ..tiles import load_tile_index
from .losses import get_loss, metrics
from .unet import build_unet

log = logging.getLogger("miningxr")


@dataclass
class TrainResult:
    """What :func:`train` produced: the model, where it is saved, and how it scored."""

    model: Any
    #: a local path, or the Location of a run written to object storage
    model_path: Path | Location
    history: dict[str, list[float]] = field(default_factory=dict)
    test_metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    #: the test metrics of each imagery year, and of each country (ISO3), of the test split
    test_by_year: dict[str, dict[str, float]] = field(default_factory=dict)
    test_by_country: dict[str, dict[str, float]] = field(default_factory=dict)

    def __str__(self) -> str:
        def line(metrics: dict[str, float]) -> str:
            return ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if k in _SHOWN)

        lines = [f"model {self.model_path} ({self.seconds:.0f}s); test split: {line(self.test_metrics)}"]
        for title, groups in (("year", self.test_by_year), ("country", self.test_by_country)):
            if len(groups) > 1:
                lines += [f"  test {title} {k}: {line(v)}" for k, v in groups.items()]
        return "\n".join(lines)


#: the metrics a result prints (train.json holds them all)
_SHOWN = ("loss", "iou", "dice", "precision", "recall", "auc")


@contextlib.contextmanager
def _precision(mixed: bool) -> Iterator[str]:
    """The Keras policy training runs under (:func:`~miningxr.tfimport.mixed_policy` when
    ``mixed``), set for the block and restored after it."""
    before = keras.mixed_precision.global_policy().name
    if not mixed:
        yield before
        return
    policy = mixed_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield policy
    finally:
        keras.mixed_precision.set_global_policy(before)


def _strategy():
    tf = import_tensorflow()

    gpus = tf.config.list_logical_devices("GPU")
    # several GPUs: one replica each; otherwise the default (CPU or one GPU)
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


@contextlib.contextmanager
def _no_spurious_end_of_data_warning():
    """Keras <= 3.15 warns "Your input ran out of data" at the end of finite validation and test
    passes (fixed upstream in keras-team/keras#23360). Our training input repeats whenever
    steps_per_epoch is set, so here the warning is always spurious."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data", category=UserWarning)
        yield


def _learning_rate(cfg: TrainConfig, index: Any, steps_per_epoch: int | None):
    """The optimizer's learning rate: a cosine decay over the planned steps, or a constant
    that ``ReduceLROnPlateau`` lowers."""
    if cfg.lr_schedule != "cosine":
        return cfg.learning_rate
    # an epoch is every selected training tile once, in batches (the loader keeps the last,
    # partial one), unless steps_per_epoch says otherwise
    n_train = int((index.selected & (index.split == "train")).sum())
    steps = steps_per_epoch or max(1, math.ceil(n_train / cfg.batch_size))
    # decays to 1% by the last planned epoch: late epochs take small steps, so the
    # best-validation checkpoint is not one lucky epoch between large swings
    return keras.optimizers.schedules.CosineDecay(cfg.learning_rate, cfg.epochs * steps, alpha=0.01)


def _prior(index: Any, cfg: TrainConfig) -> float:
    """The probability the network starts at everywhere: the one constant that minimizes the
    loss's cross-entropy on the training tiles (their mining fraction, weighed by ``pos_weight``
    where the loss weighs by it), clipped to [0.001, 0.999].

    Started at 0.5, the network first spends its epochs learning that most pixels are not
    mining; one shard of the synthetic source took 10-15 epochs to pass validation IoU 0.9,
    and 6-9 from its prior (test IoU 0.75-0.96 against 0.96-0.99 after 16 epochs).
    """
    tiles = index[(index.split == "train") & index.selected]
    if not len(tiles) or "mining_fraction" not in tiles:
        return 0.5
    p = float(tiles.mining_fraction.mean())
    w = cfg.pos_weight if cfg.loss in ("bce", "combined") else 1.0
    return float(np.clip(p * w / (p * w + 1 - p), 1e-3, 1 - 1e-3)) if p > 0 else 1e-3


def train(
    store: Where,
    *,
    index: Any = None,
    config: TrainConfig | None = None,
    out_dir: Where = "miningxr-run",
    client: Any = None,
    verbose: int = 1,
    steps_per_epoch: int | None = None,
) -> TrainResult:
    """Train a UNet on a store's tile index and save ``<out_dir>/model.keras``.

    Parameters
    ----------
    store
        A store with imagery, the ``mining`` mask and a tile index.
    index
        A tile index (default: the one saved in the store).
    config
        Model and optimisation settings (:class:`~miningxr.config.TrainConfig`).
    out_dir
        Receives ``model.keras`` (best validation IoU), ``history.csv``, ``tensorboard/`` and
        ``train.json`` (config and test metrics).
    client
        A ``distributed.Client`` to read chunks on.

    Returns
    -------
    TrainResult

    Example
    -------
    >>> result = train("s.zarr", config=TrainConfig(base_filters=16, epochs=5))  # doctest: +SKIP
    >>> result.test_metrics["iou"]  # doctest: +SKIP
    0.86
    """
    t0 = time.perf_counter()
    cfg = config or TrainConfig()
    loc = check_output_folder(out_dir, holds="model.keras and the training logs")
    index = load_tile_index(store) if index is None else index
    stats = index.attrs["stats"]
    missing = [b for b in cfg.bands if b not in stats["bands"]]
    if missing:
        raise LoaderError(f"config bands {missing} are not in the tile index's bands {stats['bands']}")
    # in object storage: trained into a local folder, then uploaded whole (the .keras file last
    # written is the best one, and Keras writes files only)
    with staged(loc) as out:
        result = _fit(store, index, cfg, out, client, verbose, steps_per_epoch)
    if loc.is_url:
        result.model_path = loc / "model.keras"
    result.seconds = time.perf_counter() - t0
    # the metrics are the result (the CLI prints it); the log says what happened
    log.info(
        "trained %d epoch(s) in %.0fs; best model saved to %s",
        len(result.history.get("loss", [])),
        result.seconds,
        result.model_path,
    )
    return result


def _fit(
    store: Where,
    index: Any,
    cfg: TrainConfig,
    out: Path,
    client: Any,
    verbose: int,
    steps_per_epoch: int | None,
) -> TrainResult:
    stats = index.attrs["stats"]
    out.mkdir(parents=True, exist_ok=True)
    pos = [stats["bands"].index(b) for b in cfg.bands]
    model_stats = {"mean": [stats["mean"][i] for i in pos], "std": [stats["std"][i] for i in pos]}
    keras.utils.set_random_seed(cfg.seed)

    train_ds = training_dataset(
        store, index, "train", config=cfg, client=client, repeat=steps_per_epoch is not None
    )
    val_ds = training_dataset(store, index, "val", config=cfg, client=client)
    best = out / "model.keras"
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor="val_iou", mode="max", patience=cfg.patience, restore_best_weights=True
        ),
        keras.callbacks.ModelCheckpoint(best, monitor="val_iou", mode="max", save_best_only=True),
        keras.callbacks.CSVLogger(out / "history.csv"),
        keras.callbacks.TensorBoard(log_dir=str(out / "tensorboard"), write_graph=False, profile_batch=0),
    ]
    if cfg.lr_schedule == "plateau":
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss",
                factor=0.5,
                patience=max(2, cfg.patience // 3),
                min_lr=cfg.learning_rate / 100,
            )
        )
    with _precision(cfg.mixed_precision) as policy, _strategy().scope(), _no_spurious_end_of_data_warning():
        model = build_unet(cfg, stats=model_stats)
        prior = _prior(index, cfg)
        model.get_layer("probability").bias.assign([math.log(prior / (1 - prior))])
        model.compile(
            optimizer=keras.optimizers.Adam(_learning_rate(cfg, index, steps_per_epoch)),
            loss=get_loss(cfg.loss, cfg.pos_weight),
            metrics=metrics(),
        )
        # the optimizer's slots made now, not inside the first traced step: else TensorFlow
        # traces that step twice (once to create them), and on a CPU a trace of the UNet's
        # training step takes 5-8 s
        model.optimizer.build(model.trainable_variables)
        hist = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=cfg.epochs,
            callbacks=callbacks,
            verbose=verbose,
            steps_per_epoch=steps_per_epoch,
            shuffle=False,
        )  # the loader shuffles
    if not best.exists():  # no epoch improved on nothing (e.g. NaN val_iou): keep the last
        model.save(best)

    def score(tiles: Any) -> dict[str, float]:
        test_ds = training_dataset(store, tiles, "test", config=cfg, client=client)
        with _no_spurious_end_of_data_warning():
            return {k: float(v) for k, v in model.evaluate(test_ds, verbose=0, return_dict=True).items()}

    test = score(index)
    # the same test split, year by year and country by country (where it has tiles of several)
    testing = index[(index.split == "test") & index.selected]
    by_year, by_country = {}, {}
    if "year" in index and testing["year"].nunique() > 1:
        by_year = {str(y): score(index[index.year == y]) for y in sorted(set(testing.year))}
    if "country" in index and testing["country"].nunique() > 1:
        by_country = {c or "none": score(index[index.country == c]) for c in sorted(set(testing.country))}
    history = {k: [float(x) for x in v] for k, v in hist.history.items()}
    write_json(
        {
            "config": asdict(cfg),
            "precision_policy": policy,  # the Keras policy it trained under
            "initial_probability": prior,  # where the output layer's bias started
            "test": test,
            "test_by_year": by_year,
            "test_by_country": by_country,
            "years": index.attrs.get("years"),
            "epochs_run": len(history.get("loss", [])),
        },
        out / "train.json",
    )
    return TrainResult(model, best, history, test, 0.0, by_year, by_country)
