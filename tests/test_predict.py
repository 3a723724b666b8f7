import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miningxr import ModelMismatchError, open_store, predict
from miningxr.encoding import decode_probability, encode_probability, normalize
from miningxr.model.unet import load_model, model_spec


@pytest.fixture(scope="module")
def cube(store):
    return open_store(store).isel(y=slice(0, 640), x=slice(0, 768))


def test_prediction_keeps_coordinates_crs_and_chunks(cube, tiny_model):
    prob = predict(cube, tiny_model, overlap=16)
    assert prob.dims == ("y", "x")
    assert np.array_equal(prob.x, cube.x) and np.array_equal(prob.y, cube.y)
    assert prob.chunks == cube.landsat.isel(year=0, band=0).chunks
    assert prob.rio.crs.to_epsg() == 6933
    assert prob.name == "mining_probability"


def test_a_tile_equals_model_predict_when_overlap_is_zero(cube, tiny_model):
    prob = predict(cube, tiny_model, overlap=0).values
    model = load_model(tiny_model)
    spec = model_spec(model)
    raw = cube.landsat.isel(year=0, y=slice(192, 256), x=slice(512, 576)).transpose("y", "x", "band").values
    want = model.predict(normalize(raw, spec.mean, spec.std)[None], verbose=0)[0, ..., 0]
    np.testing.assert_allclose(prob[192:256, 512:576], want, atol=1e-5)


def test_no_seams_the_result_does_not_depend_on_chunking(cube, tiny_model):
    a = predict(cube, tiny_model, overlap=16).values
    b = predict(cube.chunk({"y": 200, "x": 333}), tiny_model, overlap=16).values
    np.testing.assert_allclose(a, b, atol=1e-5)
    # and values are continuous across a block edge (x=512): no jump larger than elsewhere
    jump = np.nanmean(np.abs(a[:, 512] - a[:, 511]))
    typical = np.nanmean(np.abs(np.diff(a, axis=1)))
    assert jump < 3 * typical + 1e-6


def test_a_model_with_other_bands_is_refused(cube, tmp_path):
    from miningxr import build_unet
    from miningxr.config import TrainConfig

    path = tmp_path / "thermal.keras"
    build_unet(TrainConfig(base_filters=4, depth=2, bands=("red", "nir", "thermal"))).save(path)
    no_thermal = cube["landsat"].sel(band=["blue", "green", "red", "nir", "swir1", "swir2"])
    with pytest.raises(ModelMismatchError, match="missing \\['thermal'\\]"):
        predict(no_thermal, path)


def test_a_model_whose_input_is_not_its_recorded_tile_size_is_refused(cube):
    import keras

    from miningxr.config import BANDS
    from miningxr.model.unet import TileSpec

    inputs = keras.Input((32, 32, len(BANDS)))
    x = TileSpec(BANDS, 64, [0.0] * len(BANDS), [1.0] * len(BANDS), name="tile_spec")(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(x))
    with pytest.raises(ModelMismatchError, match="does not match its TileSpec \\(64px"):
        predict(cube, model)


def test_a_missing_model_file_is_named(cube, tmp_path):
    from miningxr import ModelFileError

    with pytest.raises(ModelFileError, match="miningxr train"):
        predict(cube, tmp_path / "none.keras")


def test_pixels_without_any_valid_band_are_predicted_as_nan(cube, tiny_model):
    holed = cube.copy()
    holed["landsat"] = cube.landsat.where(
        ~(
            (cube.y >= cube.y[100])
            & (cube.y <= cube.y[50])
            & (cube.x >= cube.x[300])
            & (cube.x <= cube.x[399])
        )
    )
    prob = predict(holed, tiny_model, overlap=16).values
    assert np.isnan(prob[50:101, 300:400]).all()
    # elsewhere NaN exactly where the source had no band either (its residual cloud)
    clear = cube.landsat.isel(year=0).notnull().any("band").values
    assert not clear.all()
    for rows in (slice(0, 50), slice(101, None)):
        np.testing.assert_array_equal(np.isfinite(prob[rows]), clear[rows])


def test_nan_in_some_bands_still_gives_a_finite_prediction(cube, tiny_model):
    partial = cube.copy()
    partial["landsat"] = cube.landsat.where(~((cube.band == "thermal") & (cube.x < cube.x[64])))
    prob = predict(partial, tiny_model, overlap=16).values
    clear = cube.landsat.isel(year=0).notnull().any("band").values
    np.testing.assert_array_equal(np.isfinite(prob), clear)


@pytest.fixture(scope="module")
def small_cube(cube):
    return cube.isel(y=slice(0, 256), x=slice(64, 384))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    overlap=st.sampled_from([0, 8, 16]),
    rows=st.lists(st.integers(1, 256), min_size=1, max_size=4),
    cols=st.lists(st.integers(1, 320), min_size=1, max_size=4),
)
def test_predict_does_not_depend_on_the_chunking(small_cube, tiny_model, overlap, rows, cols):
    """Any chunking, edge chunks smaller than a tile included, gives the same probabilities."""

    def chunks(sizes: list[int], total: int) -> tuple[int, ...]:
        out, left = [], total
        for n in sizes:
            if left <= 0:
                break
            out.append(min(n, left))
            left -= out[-1]
        return (*out, left) if left > 0 else tuple(out)

    ref = _reference(small_cube, tiny_model, overlap)
    cube = small_cube.chunk({"y": chunks(rows, 256), "x": chunks(cols, 320)})
    prob = predict(cube, tiny_model, overlap=overlap)
    assert prob.chunks == cube.landsat.isel(year=0, band=0).chunks
    np.testing.assert_allclose(prob.values, ref, atol=1e-5)


_REFERENCE: dict = {}


def _reference(cube, model, overlap: int) -> np.ndarray:
    key = (id(cube), str(model), overlap)
    if key not in _REFERENCE:
        _REFERENCE[key] = predict(cube.chunk({"y": -1, "x": -1}), model, overlap=overlap).values
    return _REFERENCE[key]


# --------------------------------------------------------------------------- years and regions


def test_a_multi_year_cube_predicts_every_year(two_regions, two_region_model):
    from miningxr import open_regions

    path, _ = two_regions
    ds = next(iter(open_regions(path).children.values())).to_dataset()
    prob = predict(ds, two_region_model, overlap=0)
    assert prob.dims == ("year", "y", "x") and prob.year.values.tolist() == [2019, 2020]
    one = predict(ds, two_region_model, overlap=0, year=2019)
    assert one.dims == ("y", "x") and int(one.year) == 2019
    np.testing.assert_array_equal(prob.sel(year=2019).values, one.values)


def test_years_predicted_one_after_the_other_each_equal_predicting_that_year_alone(
    two_regions, two_region_model, two_region_predictions
):
    from miningxr import open_predictions, open_regions

    path, _ = two_regions
    for node in open_regions(path).children.values():
        ds = node.to_dataset()
        stored = open_predictions(two_region_predictions, ds)
        assert stored.year.values.tolist() == [2019, 2020]
        for year in (2019, 2020):
            alone = predict(ds, two_region_model, year=year).values
            # the store keeps uint8 steps of 1/250: exactly what packing the prediction gives
            np.testing.assert_array_equal(
                stored.sel(year=year).values, decode_probability(encode_probability(alone))
            )
            assert np.nanmax(np.abs(stored.sel(year=year).values - alone)) <= 0.002 + 1e-6
        assert not np.array_equal(stored.sel(year=2019).values, stored.sel(year=2020).values)


def test_another_model_is_refused_without_force_and_replaces_with_it(
    two_regions, two_region_model, two_region_predictions, tmp_path, capsys
):
    import shutil

    from miningxr import open_predictions, open_regions
    from miningxr.cli import main

    path, _ = two_regions
    out = tmp_path / "p.zarr"
    shutil.copytree(two_region_predictions, out)
    other = tmp_path / "other.keras"
    shutil.copy(two_region_model, other)
    with open(other, "ab") as f:
        f.write(b"\0")  # another file: another model
    command = [
        "predict",
        "--store",
        str(path),
        "--model",
        str(other),
        "--out",
        str(out),
        "--years",
        "2020",
        "-q",
    ]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "holds predictions of model two.keras" in err and "--force" in err
    assert main([*command, "--force"]) == 0
    ds = next(iter(open_regions(path).children.values())).to_dataset()
    # replaced, not mixed: the other model's store holds just what it predicted
    assert open_predictions(out, ds).year.values.tolist() == [2020]


def test_a_store_made_one_way_refuses_predictions_made_another_and_replaces_with_force(
    two_regions, two_region_model, two_region_predictions, tmp_path, capsys
):
    """Resuming or adding a year with another mode or precision would mix two methods in one
    store (its attributes naming only the first): refused before any write, naming both."""
    import shutil

    from miningxr import open_predictions, open_regions
    from miningxr.cli import main

    path, _ = two_regions
    out = tmp_path / "p.zarr"
    shutil.copytree(two_region_predictions, out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    command = f"predict --store {path} --model {two_region_model} --out {out} --years 2020 -q"
    assert main([*command.split(), "--precision", "bfloat16"]) == 2
    err = capsys.readouterr().err
    assert "made with mode 'tiles', overlap 16, precision 'float32'" in err, err
    assert "not mode 'tiles', overlap 16, precision 'bfloat16'" in err and "--force" in err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing written
    assert main([*command.split(), "--mode", "window"]) == 2
    assert "mode 'window', overlap 0" in capsys.readouterr().err
    # the same method resumes (every shard already done), another with --force replaces
    assert main(command.split()) == 0
    assert main([*command.split(), "--precision", "bfloat16", "--force"]) == 0
    ds = next(iter(open_regions(path).children.values())).to_dataset()
    assert open_predictions(out, ds).year.values.tolist() == [2020]
    assert open_predictions(out, ds).attrs["precision"] == "bfloat16"


def test_the_regions_of_a_sparse_store_predict_as_a_datatree(
    two_regions, two_region_model, two_region_predictions, tmp_path
):
    import xarray as xr

    from miningxr import open_predictions, open_regions, write_predictions

    path, _ = two_regions
    tree = predict(open_regions(path), two_region_model)
    assert isinstance(tree, xr.DataTree) and list(tree.children) == list(open_regions(path).children)
    for node in tree.children.values():
        assert node["mining_probability"].dims == ("year", "y", "x")
    out = tmp_path / "p.zarr"
    report = write_predictions(tree, out, progress=False)
    assert report.ok and report.written == 2 * 2  # 2 regions x 2 years, one 2048-px prediction shard each
    for node in open_regions(path).children.values():
        ds = node.to_dataset()
        np.testing.assert_array_equal(
            open_predictions(out, ds).values, open_predictions(two_region_predictions, ds).values
        )


def test_a_float32_store_keeps_the_prediction_exactly_and_a_uint8_one_within_half_a_step(
    store, tiny_model, tmp_path
):
    import zarr

    from miningxr import open_predictions, open_store, write_predictions

    ds = open_store(store)
    prob = predict(ds, tiny_model, overlap=0)
    want = (prob.sel(year=2020) if "year" in prob.dims else prob).values
    for dtype in ("float32", "uint8"):
        out = tmp_path / f"{dtype}.zarr"
        assert write_predictions(prob, out, progress=False, dtype=dtype).ok
        got = open_predictions(out, ds, year=2020)
        assert got.dtype == np.float32 and got.attrs["long_name"] == "probability of mining"
        stored = zarr.open_group(str(out), mode="r")["mining_probability"]
        assert stored.dtype == np.dtype(dtype)
        if dtype == "float32":
            np.testing.assert_array_equal(got.values, want)
        else:
            assert stored.attrs["scale_factor"] == 0.004 and stored.attrs["_FillValue"] == 255
            np.testing.assert_array_equal(np.isnan(got.values), np.isnan(want))
            assert np.nanmax(np.abs(got.values - want)) <= 0.002 + 1e-6
    # a store keeps the dtype it was made with
    assert write_predictions(prob, tmp_path / "float32.zarr", progress=False, dtype="uint8").skipped == 1
    assert zarr.open_group(str(tmp_path / "float32.zarr"), mode="r")["mining_probability"].dtype == np.float32


# --------------------------------------------------------------------------- whole windows


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    block=st.sampled_from([200, 256, 300, 512]),
    rows=st.sampled_from([256, 300, 512, 1000]),
    cols=st.sampled_from([200, 512, 768]),
)
def test_whole_window_prediction_is_the_same_under_any_chunking_and_window_size(
    store, tiny_model, block, rows, cols
):
    """Windows of any size (on the pooling grid or off it) over a cube of any chunks give the
    prediction of one window over everything, in the cube's own chunks."""
    from miningxr.config import PredictConfig

    ds = open_store(store).isel(y=slice(0, 1024), x=slice(0, 1024))
    want = predict(ds, tiny_model, config=PredictConfig(mode="window", block=1024)).values
    cube = ds.chunk({"y": rows, "x": cols})
    got = predict(cube, tiny_model, config=PredictConfig(mode="window", block=block))
    assert got.chunks == cube.landsat.isel(year=0, band=0).chunks
    np.testing.assert_allclose(got.values, want, atol=1e-5)


def test_whole_window_prediction_has_no_seam_at_window_edges(store, tiny_model):
    """The same pixels predicted as one window and cut into 256 px windows: equal on both sides
    of every cut (each window sees its neighbours' pixels through its halo)."""
    from miningxr.config import PredictConfig

    ds = open_store(store).isel(y=slice(0, 768), x=slice(0, 768))
    one = predict(ds, tiny_model, config=PredictConfig(mode="window", block=768)).values
    cut = predict(ds, tiny_model, config=PredictConfig(mode="window", block=256)).values
    for edge in (256, 512):
        np.testing.assert_allclose(cut[:, edge - 2 : edge + 2], one[:, edge - 2 : edge + 2], atol=1e-5)
        np.testing.assert_allclose(cut[edge - 2 : edge + 2], one[edge - 2 : edge + 2], atol=1e-5)
    # and nothing else changes there either: no step at the cut beyond the image's own
    steps = np.abs(np.diff(cut, axis=1))
    assert np.nanmean(steps[:, [255, 511]]) <= 1.5 * np.nanmean(steps)
    assert np.isfinite(one).mean() > 0.9 and one.dtype == np.float32


def test_window_mode_is_recorded_and_keeps_the_cube_s_grid(store, tiny_model):
    ds = open_store(store).isel(y=slice(0, 512), x=slice(0, 512))
    prob = predict(ds, tiny_model, mode="window")
    assert prob.attrs["mode"] == "window" and prob.rio.crs == ds.rio.crs
    np.testing.assert_array_equal(prob.x.values, ds.x.values)


def test_whole_windows_warn_on_a_model_trained_on_tiles_smaller_than_its_reach(store):
    """A depth-4 UNet reaches 96 px: trained on 64 px tiles it never saw that much context, and
    whole windows score lower (docs/benchmarks.md), so mode 'window' says so and names the fix;
    on 128 px tiles, or in mode 'tiles', it is silent."""
    import warnings

    from miningxr import MiningxrWarning, build_unet, load_tile_index
    from miningxr.config import TrainConfig

    stats = load_tile_index(store).attrs["stats"]
    ds = open_store(store).isel(y=slice(0, 256), x=slice(0, 256))
    small = build_unet(TrainConfig(base_filters=2, depth=4, tile_size=64), stats=stats)
    with pytest.warns(MiningxrWarning, match=r"trained on 64 px tiles.*radius of 96 px.*tile_size = 128"):
        predict(ds, small, mode="window")
    large = build_unet(TrainConfig(base_filters=2, depth=4, tile_size=128), stats=stats)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MiningxrWarning)
        predict(ds, large, mode="window")
        predict(ds, small, mode="tiles")


@pytest.mark.filterwarnings("always::miningxr.MiningxrWarning")  # not the suite's error
def test_the_command_logs_the_warning_as_a_line_and_still_predicts(two_regions, tmp_path, caplog):
    """``miningxr predict --mode window`` with such a model: one ``WARNING`` line of the log
    naming the fix, not Python's file-and-line form, and the predictions all the same."""
    import logging

    from miningxr import build_unet, open_predictions, open_regions, tile_index
    from miningxr.cli import main
    from miningxr.config import TileConfig, TrainConfig

    path, _ = two_regions
    stats = tile_index(path, years=[2020], config=TileConfig(block_tiles=4)).attrs["stats"]
    model = tmp_path / "m.keras"
    build_unet(TrainConfig(base_filters=2, depth=4), stats=stats).save(model)
    out = tmp_path / "p.zarr"
    with caplog.at_level(logging.WARNING, logger="miningxr"):
        command = f"predict --store {path} --model {model} --out {out} --years 2020 --mode window -q"
        assert main(command.split()) == 0
    said = [r for r in caplog.records if "trained on 64 px tiles" in r.getMessage()]
    assert len(said) == 1, said  # once, though both regions were predicted
    assert said[0].levelname == "WARNING" and "mode 'tiles'" in said[0].getMessage()
    ds = next(iter(open_regions(path).children.values())).to_dataset()
    assert np.isfinite(open_predictions(out, ds).values).mean() > 0.9


@pytest.mark.parametrize("depth", [2, 3])
def test_the_window_halo_covers_the_networks_receptive_field(depth):
    """A pixel changed in the input changes the output only within the halo around it."""
    from miningxr import build_unet
    from miningxr.config import TrainConfig
    from miningxr.predict import inference_model, window_halo

    net = inference_model(build_unet(TrainConfig(base_filters=4, depth=depth)), any_size=True)
    x = np.random.default_rng(0).normal(size=(1, 256, 256, 7)).astype("float32")
    before = np.asarray(net.predict_on_batch(x))[0, ..., 0]
    x[0, 128, 128] += 10
    changed = np.abs(np.asarray(net.predict_on_batch(x))[0, ..., 0] - before) > 0
    rows, cols = np.nonzero(changed)
    reach = max(np.abs(rows - 128).max(), np.abs(cols - 128).max())
    assert 0 < reach <= window_halo(depth) and window_halo(depth) - reach < 2**depth + 2


@pytest.mark.parametrize("batch_norm", [True, False])
def test_the_inference_model_computes_what_the_model_does_with_fewer_layers(batch_norm):
    """Batch normalization folded into its convolution, ReLU fused, dropout gone: the same
    probabilities as the Keras model in inference mode, on tiles and on a whole window."""
    import keras

    from miningxr import build_unet
    from miningxr.config import TrainConfig
    from miningxr.predict import inference_model

    model = build_unet(TrainConfig(base_filters=8, depth=2, dropout=0.2, batch_norm=batch_norm))
    rng = np.random.default_rng(1)
    for layer in model.layers:  # statistics far from a fresh layer's 0 and 1, as after training
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights(
                [rng.uniform(0.5, 2, n), rng.normal(0, 0.5, n), rng.normal(0, 0.5, n), rng.uniform(0.2, 3, n)]
            )
    fast = inference_model(model)
    kinds = {type(layer).__name__ for layer in fast.layers}
    assert "BatchNormalization" not in kinds and "Dropout" not in kinds and "Activation" not in kinds
    gone = ("BatchNormalization", "Dropout", "Activation")
    assert [layer.name for layer in fast.layers] == [
        layer.name for layer in model.layers if type(layer).__name__ not in gone
    ]
    assert fast.input_shape == model.input_shape
    tiles = rng.normal(size=(8, 64, 64, 7)).astype("float32")
    want = np.asarray(model(tiles, training=False))
    np.testing.assert_allclose(np.asarray(fast.predict_on_batch(tiles)), want, atol=2e-5)
    window = inference_model(model, any_size=True)
    big = rng.normal(size=(1, 128, 192, 7)).astype("float32")
    np.testing.assert_allclose(
        np.asarray(window.predict_on_batch(big)),
        np.asarray(model_on_any_size(model)(big, training=False)),
        atol=2e-5,
    )


@pytest.fixture(scope="module")
def trained_looking_window_nets():
    """Whole-window networks of depth 2, 3 and 4 whose batch normalizations are far from fresh."""
    import keras

    from miningxr import build_unet
    from miningxr.config import TrainConfig
    from miningxr.predict import inference_model

    rng = np.random.default_rng(4)
    nets = {}
    for depth in (2, 3, 4):
        model = build_unet(TrainConfig(base_filters=4, depth=depth))
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                n = layer.gamma.shape[0]
                layer.set_weights(
                    [
                        rng.uniform(0.5, 2, n),
                        rng.normal(0, 0.5, n),
                        rng.normal(0, 0.5, n),
                        rng.uniform(0.2, 3, n),
                    ]
                )
        nets[depth] = inference_model(model, any_size=True)
    return nets


@settings(max_examples=10, deadline=None)
@given(
    depth=st.sampled_from([2, 3, 4]),
    rows=st.integers(1, 6),
    cols=st.integers(1, 6),
    extra=st.integers(0, 1),
    data=st.data(),
)
def test_the_trimmed_window_network_gives_the_core_of_the_full_one(
    trained_looking_window_nets, depth, rows, cols, extra, data
):
    """For any window of whole pooling cells and any halo at least the receptive radius (on
    the pooling grid), the trimmed network's output is the full network's core, and the
    decoder computes only a few pixels beyond it."""
    from miningxr.predict import _run, trimmed_window_model, window_halo

    net = trained_looking_window_nets[depth]
    step = 2**depth
    halo = window_halo(depth) + extra * step
    h, w = rows * step + 2 * halo, cols * step + 2 * halo + data.draw(st.sampled_from([0, step]))
    trimmed, cut = trimmed_window_model(net, halo)
    assert cut == halo  # its output starts where the core does
    x = np.random.default_rng(rows * 7 + cols).normal(size=(1, h, w, 7)).astype("float32")
    full = _run(net, x)[0, ..., 0]
    got = _run(trimmed, x)[0, ..., 0]
    assert got.shape == (h - 2 * cut, w - 2 * cut)
    np.testing.assert_allclose(got, full[cut : h - cut, cut : w - cut], atol=1e-5)
    # the last decoder level works on the core plus the 2 px its two 3x3 convolutions need:
    # the skip connection into it loses all the halo but those (a wider halo was cut to
    # window_halo before the first convolution)
    c = window_halo(depth) - 2
    assert tuple(map(tuple, trimmed.get_layer("trim_down0_conv2_skip0").cropping)) == ((c, c), (c, c))


def test_a_network_of_unknown_layers_is_not_trimmed():
    import keras

    from miningxr.predict import trimmed_window_model

    x = keras.Input((None, None, 3))
    net = keras.Model(x, keras.layers.Conv2D(1, 3, padding="valid")(x))  # "valid" is not known
    assert trimmed_window_model(net, 96) == (net, 0)


def test_threads_that_need_the_same_network_at_once_build_it_once(monkeypatch):
    """Dask runs blocks on several threads: the first blocks of a prediction all miss the
    worker's caches together, and each lazy build (a loaded model, its inference network, its
    trimmed window network, their tf.function) must run once, the others waiting for it."""
    import importlib
    import threading
    import time

    import keras

    p = importlib.import_module("miningxr.predict")  # the module: miningxr.predict is the function

    x = keras.Input((None, None, 3))
    net = keras.Model(x, keras.layers.Conv2D(1, 3, padding="same")(x))
    calls = []

    def slow_trim(model, halo):
        calls.append(threading.get_ident())
        time.sleep(0.2)  # long enough for every thread to miss the cache
        return model, 0

    monkeypatch.setattr(p, "trimmed_window_model", slow_trim)
    built = []

    @p._built_once
    def slow_load(ref: str) -> list:
        built.append(ref)
        time.sleep(0.2)
        return [ref]

    start = threading.Barrier(4)
    got: list = []

    def worker():
        start.wait()
        got.append((p._trimmed(net, 8), p._predictor(net), slow_load("m.keras")))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and built == ["m.keras"]
    assert len(got) == 4 and all(g[1] is got[0][1] and g[2] is got[0][2] for g in got)


def model_on_any_size(model):
    """The Keras model itself on inputs of any size, by its own config (no folding)."""
    import copy

    config = copy.deepcopy(model.get_config())
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer":
            layer["config"]["batch_shape"] = [None, None, None, layer["config"]["batch_shape"][-1]]
    from miningxr.model import unet

    out = type(model).from_config(config, custom_objects={"TileSpec": unet.TileSpec, **unet.CUSTOM_OBJECTS})
    out.set_weights(model.get_weights())
    return out


# --------------------------------------------------------------------------- precision


def test_a_bfloat16_network_computes_in_bfloat16_and_gives_float32_close_to_the_model():
    """``precision="bfloat16"``: every layer but the output computes in bfloat16 (float32
    weights), the probabilities stay float32 and within bfloat16's rounding of float32's."""
    from miningxr import build_unet
    from miningxr.config import TrainConfig
    from miningxr.predict import inference_model

    model = build_unet(TrainConfig(base_filters=8, depth=2))
    fast = inference_model(model, any_size=True, precision="bfloat16")
    dtypes = {layer.name: layer.compute_dtype for layer in fast.layers if layer.name != "tiles"}
    assert dtypes.pop("probability") == "float32"
    assert set(dtypes.values()) == {"bfloat16"}
    assert {w.dtype for w in fast.weights} == {"float32"}
    x = np.random.default_rng(2).normal(size=(1, 128, 128, 7)).astype("float32")
    got = np.asarray(fast.predict_on_batch(x))
    want = np.asarray(inference_model(model, any_size=True).predict_on_batch(x))
    assert got.dtype == np.float32
    # really bfloat16, and within its rounding (8-bit mantissa): 0.006-0.023 seen on random weights
    assert 0 < np.abs(got - want).max() < 0.06


def test_a_model_trained_in_mixed_float16_predicts_in_float32_unless_asked():
    import keras

    from miningxr import build_unet
    from miningxr.config import TrainConfig
    from miningxr.predict import inference_model

    before = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_unet(TrainConfig(base_filters=4, depth=2))
    finally:
        keras.mixed_precision.set_global_policy(before)
    assert model.get_layer("down0_conv1").compute_dtype == "float16"
    net = inference_model(model)
    assert {layer.compute_dtype for layer in net.layers if layer.name != "tiles"} == {"float32"}
    assert inference_model(model, precision="float16").get_layer("down0_conv1").compute_dtype == "float16"


def test_auto_precision_is_what_the_hardware_runs_natively(monkeypatch):
    import importlib

    p = importlib.import_module("miningxr.predict")
    monkeypatch.setattr(p, "native_precision", lambda: "bfloat16")
    assert p.compute_precision("auto") == "bfloat16" and p.compute_precision("float32") == "float32"
    monkeypatch.undo()
    tfi = importlib.import_module("miningxr.tfimport")
    monkeypatch.setattr(tfi, "_cpu_flags", lambda: {"avx512f", "amx_bf16"})
    monkeypatch.setattr("tensorflow.config.list_physical_devices", lambda kind: [])
    tfi.native_precision.cache_clear()
    try:
        assert p.native_precision() == "bfloat16"
        monkeypatch.setattr(tfi, "_cpu_flags", lambda: {"avx2"})
        tfi.native_precision.cache_clear()
        assert p.native_precision() == "float32"
    finally:
        tfi.native_precision.cache_clear()


def test_a_bfloat16_window_prediction_barely_depends_on_chunking_and_is_recorded(store, tiny_model):
    """bfloat16 rounds each layer's output; a kernel that sums in another order for another
    window size could move a value by a rounding step (on AMX it does not: 0.0 measured), far
    below the uint8 store's step of 0.004. Against float32: within bfloat16's rounding."""
    from miningxr.config import PredictConfig

    ds = open_store(store).isel(y=slice(0, 768), x=slice(0, 768))
    one = predict(ds, tiny_model, config=PredictConfig(mode="window", block=768, precision="bfloat16"))
    cut = predict(ds.chunk({"y": 300, "x": 200}), tiny_model, mode="window", precision="bfloat16")
    exact = predict(ds, tiny_model, mode="window").values
    assert one.attrs["precision"] == "bfloat16" and one.dtype == np.float32
    np.testing.assert_allclose(cut.values, one.values, atol=1e-3)
    assert 0 < np.nanmax(np.abs(one.values - exact)) < 0.06


def test_the_command_line_predicts_in_the_precision_it_is_given_and_records_it(store, tiny_model, tmp_path):
    import zarr

    from miningxr.cli import main

    out = tmp_path / "bf16.zarr"
    command = ["predict", "--store", str(store), "--model", str(tiny_model), "--out", str(out), "-q"]
    assert main([*command, "--mode", "window", "--precision", "bfloat16"]) == 0
    assert zarr.open_group(str(out), mode="r")["mining_probability"].attrs["precision"] == "bfloat16"
    with pytest.raises(SystemExit):  # argparse names the choices
        main([*command, "--precision", "half"])


def test_the_network_is_traced_once_for_windows_and_batches_of_every_shape():
    from miningxr import build_unet
    from miningxr.config import TrainConfig
    from miningxr.predict import _predictor, _run, inference_model

    model = build_unet(TrainConfig(base_filters=4, depth=2))
    window, tiles = inference_model(model, any_size=True), inference_model(model)
    rng = np.random.default_rng(3)
    for shape in [(1, 128, 128), (1, 96, 160), (2, 64, 64)]:
        x = rng.normal(size=(*shape, 7)).astype("float32")
        np.testing.assert_allclose(_run(window, x), np.asarray(window.predict_on_batch(x)), atol=1e-6)
    for n in (48, 37, 5):
        _run(tiles, rng.normal(size=(n, 64, 64, 7)).astype("float32"))
    assert _predictor(window).experimental_get_tracing_count() == 1
    assert _predictor(tiles).experimental_get_tracing_count() == 1
