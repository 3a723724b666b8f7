import numpy as np
import pytest

from miningxr.config import TrainConfig
from miningxr.model.losses import Dice, IoU, dice_loss, focal_loss, get_loss, weighted_bce
from miningxr.model.unet import build_unet, load_model, model_spec

Y = np.array([1.0, 0.0, 1.0, 0.0])
P = np.array([0.9, 0.2, 0.6, 0.4])


def test_weighted_bce_matches_hand_computation():
    w = 3.0
    want = -np.mean(w * Y * np.log(P) + (1 - Y) * np.log(1 - P))
    assert float(weighted_bce(Y, P, w)) == pytest.approx(want, rel=1e-5)


def test_dice_loss_matches_hand_computation():
    want = 1 - (2 * (0.9 + 0.6) + 1) / (2 + P.sum() + 1)
    assert float(dice_loss(Y, P)) == pytest.approx(want, rel=1e-5)


def test_focal_loss_matches_hand_computation():
    pt = np.where(Y == 1, P, 1 - P)
    at = np.where(Y == 1, 0.25, 0.75)
    want = -np.mean(at * (1 - pt) ** 2 * np.log(pt))
    assert float(focal_loss(Y, P)) == pytest.approx(want, rel=1e-5)


def test_combined_loss_is_bce_plus_dice():
    assert float(get_loss("combined", 10)(Y, P)) == pytest.approx(
        float(weighted_bce(Y, P, 10) + dice_loss(Y, P)), rel=1e-6
    )


def test_iou_and_dice_metrics_accumulate_over_batches():
    iou, dice = IoU(), Dice()
    for yt, yp in ((Y[:2], P[:2]), (Y[2:], P[2:])):
        iou.update_state(yt, yp)
        dice.update_state(yt, yp)
    # thresholded at 0.5: tp=2, fp=0, fn=0
    assert float(iou.result()) == pytest.approx(1.0)
    iou.update_state(np.array([1.0, 0.0]), np.array([0.1, 0.7]))  # one fn, one fp
    assert float(iou.result()) == pytest.approx(2 / 4)


def test_unet_defaults_have_a_1024_filter_bottleneck():
    model = build_unet()
    assert model.get_layer("bottleneck_conv2").filters == 1024
    assert model.input_shape == (None, 64, 64, 7)


def test_saved_model_carries_bands_tile_size_and_statistics(tmp_path):
    stats = {"mean": [0.1] * 7, "std": [0.2] * 7}
    build_unet(TrainConfig(base_filters=4, depth=2), stats=stats).save(tmp_path / "m.keras")
    spec = model_spec(load_model(tmp_path / "m.keras"))
    assert spec.bands[-1] == "thermal" and spec.tile_size == 64
    assert spec.mean == pytest.approx(stats["mean"])


def test_tile_size_must_suit_the_depth():
    with pytest.raises(ValueError, match="divisible"):
        build_unet(TrainConfig(tile_size=60, depth=4))


def test_a_model_file_with_embedded_code_is_refused(tmp_path):
    import keras

    from miningxr.model.unet import load_model

    inp = keras.Input((8, 8, 7))
    out = keras.layers.Lambda(lambda x: x * 2)(inp)  # arbitrary Python, run on load without safe mode
    path = tmp_path / "evil.keras"
    keras.Model(inp, out).save(path)
    with pytest.raises(ValueError, match="safe_mode"):
        load_model(path)
