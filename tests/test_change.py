"""Change over time: the temporal consistency rule on hand-made series, onset and closure
rasters on a small known cube, and the area table against the rasters."""

import numpy as np
import pytest
import xarray as xr
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from miningxr import ConfigError
from miningxr.change import (
    MINED,
    NOT_MINED,
    UNKNOWN,
    change_table,
    closure_year,
    consistent_mining,
    onset_year,
    temporal_rule,
)
from miningxr.config import ChangeConfig

nan = np.nan


@pytest.mark.parametrize(
    ("series", "want"),
    [
        ([0, 0, 1, 0, 0], [0, 0, 0, 0, 0]),  # a one-year spike opens nothing
        ([1, 1, 0, 1, 1], [1, 1, 1, 1, 1]),  # a one-year dip closes nothing
        ([0, 1, 1, nan, 1, 1], [0, 1, 1, 1, 1, 1]),  # a year without a prediction is bridged
        ([0, 1, 1, nan, nan, 0, 0], [0, 1, 1, 1, 1, 0, 0]),  # ... by the last year known before it
        ([1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0]),  # a closure stays a closure
        ([nan, nan, 0, 1, 1, 1], [-1, -1, 0, 1, 1, 1]),  # starting mid-range: unknown before
        ([0, 1, 1, nan, nan], [0, 1, 1, -1, -1]),  # ... and after the last prediction
        ([nan, nan, nan], [-1, -1, -1]),  # never predicted
    ],
)
def test_the_rule_on_hand_made_series(series, want):
    assert temporal_rule(np.array(series, dtype=float)).tolist() == want


def test_a_wider_window_needs_a_longer_run():
    series = np.array([0, 0, 0, 1, 1, 0, 0, 0], dtype=float)
    assert temporal_rule(series, window=3).tolist() == [0, 0, 0, 1, 1, 0, 0, 0]
    assert temporal_rule(series, window=5).tolist() == [0] * 8
    with pytest.raises(ConfigError, match="odd number of years"):
        temporal_rule(series, window=2)
    with pytest.raises(ConfigError, match=r"\[change\] window must be an odd number"):
        ChangeConfig(window=4)


@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 4), st.integers(1, 12)),
        elements=st.sampled_from([0.0, 1.0, nan]),
    )
)
def test_a_window_of_one_year_only_bridges_gaps(obs):
    out = temporal_rule(obs, window=1)
    known = ~np.isnan(obs)
    assert np.array_equal(out[known], obs[known].astype(np.int8))
    for row, series in zip(out, obs, strict=True):
        seen = np.flatnonzero(~np.isnan(series))
        if len(seen) == 0:
            assert (row == UNKNOWN).all()
            continue
        assert (row[: seen[0]] == UNKNOWN).all() and (row[seen[-1] + 1 :] == UNKNOWN).all()
        assert (row[seen[0] : seen[-1] + 1] != UNKNOWN).all()


@pytest.fixture
def cube():
    """Four pixels over 2000-2009: opens 2003, opens 2000 and closes 2006, a flickering field,
    and a pixel predicted only from 2005 (mined from 2007)."""
    years = np.arange(2000, 2010)
    series = np.array(
        [
            [0, 0, 0, 1, 1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1, 0, 0, 0, 0],
            [0, 1, 0, 0, 1, 0, 0, 1, 0, 0],
            [nan, nan, nan, nan, nan, 0, 0, 1, 1, 1],
        ],
        dtype=float,
    )
    prob = np.where(np.isnan(series), nan, series * 0.8 + 0.1).T.reshape(10, 2, 2)
    return xr.DataArray(
        prob, dims=("year", "y", "x"), coords={"year": years, "y": [1.0, 0.0], "x": [0.0, 1.0]}
    )


def test_onset_and_closure_rasters_of_a_known_cube(cube):
    mined = consistent_mining(cube)
    assert mined.dims == ("year", "y", "x")
    assert onset_year(mined).values.ravel().tolist() == [2003, 2000, 0, 2007]
    assert closure_year(mined).values.ravel().tolist() == [0, 2006, 0, 0]


def test_the_table_sums_equal_the_raster_sums(cube):
    mined = consistent_mining(cube)
    table = change_table(mined)
    counts = (mined == MINED).sum(("y", "x")).values
    np.testing.assert_allclose(table.mined_km2, counts * 0.0009)
    # every onset after the first year is new area once; every closure is lost area once
    onset, closed = onset_year(mined).values.ravel(), closure_year(mined).values.ravel()
    assert table.new_km2.sum() == pytest.approx((onset > 2000).sum() * 0.0009)
    assert table.lost_km2.sum() == pytest.approx((closed > 0).sum() * 0.0009)
    # grouped: the groups add up to the whole
    groups = xr.DataArray(np.array([[1, 1], [2, 2]]), dims=("y", "x"), coords={"y": cube.y, "x": cube.x})
    by = change_table(mined, groups, names={1: "north", 2: "south"})
    assert set(by.group) == {"north", "south"}
    np.testing.assert_allclose(by.groupby("year").mined_km2.sum().values, table.mined_km2.values)


def test_a_lazy_cube_gives_the_same_series(cube):
    lazy = consistent_mining(cube.chunk({"year": 3, "y": 1, "x": 1}))
    assert lazy.chunks is not None
    np.testing.assert_array_equal(lazy.values, consistent_mining(cube).values)
    assert set(np.unique(lazy.values)) <= {UNKNOWN, NOT_MINED, MINED}


# --------------------------------------------------------------------------- a prediction store


def test_change_of_a_prediction_store_writes_the_table_rasters_polygons_and_pictures(
    two_regions, two_region_predictions, tmp_path, capsys
):
    import geopandas as gpd
    import pandas as pd
    import rasterio

    from miningxr.change import change, prediction_regions
    from miningxr.cli import main
    from miningxr.predict import open_predictions

    out = tmp_path / "change"
    # an untrained model's speckle, cut at its top percent in each region: mined pixels in both
    # regions and few polygons, whatever the random weights (the rule is tested above)
    probs = [
        open_predictions(two_region_predictions, xr.Dataset(coords=g.coords())).values
        for g in prediction_regions(two_region_predictions).values()
    ]
    threshold = float(np.floor(min(np.nanquantile(p, 0.99) for p in probs) * 1000) / 1000)
    command = f"change --predictions {two_region_predictions} --out {out} --by country --threshold {threshold} --animate --store {two_regions[0]} -q"
    assert main(command.split()) == 0
    assert "mined_km2" in capsys.readouterr().out
    table = pd.read_csv(out / "change.csv")
    assert set(table.group) == {"ZAF", "USA"} and set(table.year) == {2019, 2020}
    pd.testing.assert_frame_equal(table, pd.read_parquet(out / "change.parquet"), check_dtype=False)
    # the table's sums are the rasters' sums
    mined = 0
    for gslice in prediction_regions(two_region_predictions).values():
        prob = open_predictions(two_region_predictions, xr.Dataset(coords=gslice.coords()))
        mined += int((consistent_mining(prob, ChangeConfig(threshold=threshold)) == MINED).sum())
    assert table.mined_km2.sum() == pytest.approx(mined * 0.0009)
    for name in ("onset", "closure"):
        tifs = sorted(out.glob(f"{name}_r*.tif"))
        assert len(tifs) == 2
        with rasterio.open(tifs[0]) as f:
            assert f.crs.to_epsg() == 6933 and f.dtypes[0] == "uint16" and f.nodata == 0
            if name == "onset":
                assert f.colormap(1)[2020][3] == 255  # a colour per year
    expansion = gpd.read_file(out / "expansion.gpkg")
    assert {"year", "AREA", "group"} <= set(expansion.columns) and expansion.is_valid.all()
    if len(expansion):
        assert set(expansion.year) == {2020}
    for picture in ("change.png", "onset.png", "mining.gif"):
        assert (out / picture).stat().st_size > 1000
    # by region, the same totals
    by_region = change(two_region_predictions, by="region", config=ChangeConfig(threshold=threshold))
    assert by_region.groupby("year").mined_km2.sum().tolist() == pytest.approx(
        table.groupby("year").mined_km2.sum().tolist()
    )


def test_change_needs_several_years_and_a_known_grouping(store, tiny_model, tmp_path):
    from miningxr import open_store, predict, write_predictions
    from miningxr.change import change

    one_year = tmp_path / "p.zarr"
    write_predictions(
        predict(open_store(store).isel(y=slice(0, 512), x=slice(0, 512)), tiny_model),
        one_year,
        progress=False,
    )
    with pytest.raises(ConfigError, match="one year \\(2020\\) there: change over time needs several"):
        change(one_year)
    with pytest.raises(ConfigError, match="unknown grouping 'mine'"):
        change(one_year, by="mine")
    with pytest.raises(ConfigError, match="--polygons FILE"):
        change(one_year, by="polygon")


def _cube(values, years, chunks=None):
    a = xr.DataArray(
        np.asarray(values, dtype=np.float32),
        dims=("year", "y", "x"),
        coords={"year": years, "y": np.arange(np.shape(values)[1]), "x": np.arange(np.shape(values)[2])},
    )
    return a.chunk({"year": -1, "y": chunks}) if chunks else a


@pytest.mark.parametrize("chunks", [None, 1])
def test_change_accuracy_against_a_known_truth(chunks):
    from miningxr.change import change_accuracy, observed_mining
    from miningxr.grid import PIXEL_AREA_KM2

    years = list(range(2000, 2008))
    # truth: mine 7 opens in 2003 on two pixels (row 0), mine 9 was open from the start (row 1)
    truth = np.zeros((8, 2, 3))
    truth[3:, 0, :2] = 1
    truth[:, 1, 0] = 1
    # predictions: mine 7 found a year late on one pixel, in time on the other; one spike in 2005
    prob = np.zeros((8, 2, 3))
    prob[4:, 0, 0] = 0.9
    prob[3:, 0, 1] = 0.9
    prob[:, 1, 0] = 0.9
    prob[5, 1, 2] = 0.9
    prob[6, 0, 0] = np.nan  # a gap, bridged
    ids = xr.DataArray(np.array([[7, 7, 0], [9, 0, 0]]), dims=("y", "x"))
    p = _cube(prob, years, chunks)
    mined = consistent_mining(p)
    acc = change_accuracy(
        mined,
        _cube(truth, years, chunks),
        mine_ids=ids,
        opened={7: 2003, 9: 1990},
        observed=observed_mining(p),
    )
    per_year = acc["per_year"].set_index("year")
    assert per_year.loc[2003, "true_km2"] == pytest.approx(3 * PIXEL_AREA_KM2)
    assert per_year.loc[2003, "found_km2"] == pytest.approx(2 * PIXEL_AREA_KM2)  # one pixel late
    assert per_year.loc[2005, "relative_error"] == pytest.approx(0)  # the spike was filtered
    # mine 9 opened before the series: not scored; mine 7: median of 2004 and 2003
    assert acc["onset_mines"].MINE_ID.tolist() == [7] and acc["onset_mae_years"] == pytest.approx(0.5)
    assert acc["mines_missed"] == 0
    # 4 pixels ever mined over 7 intervals: truth switches 2 (row 0), consistent 2, observed 4
    decades = 0.7
    assert acc["flicker"]["truth"] == pytest.approx(2 / 4 / decades)
    assert acc["flicker"]["consistent"] == pytest.approx(2 / 4 / decades)
    assert acc["flicker"]["observed"] == pytest.approx(4 / 4 / decades)


def test_change_accuracy_refuses_a_truth_of_other_years():
    from miningxr.change import change_accuracy

    a = _cube(np.zeros((3, 1, 1)), [2000, 2001, 2002])
    with pytest.raises(ConfigError, match="same years and pixels"):
        change_accuracy(consistent_mining(a), _cube(np.zeros((3, 1, 1)), [2001, 2002, 2003]))


def test_change_of_nothing_mined_says_so_and_exits_2(two_regions, two_region_model, tmp_path, capsys):
    from miningxr import open_store, predict, write_predictions
    from miningxr.change import change, summary
    from miningxr.cli import main

    # predictions that are zero everywhere, both years (an untrained model's own may reach 1.0
    # once rounded to the store's 1/250 steps, so they are not left to chance)
    path, slices = two_regions
    nothing = tmp_path / "p.zarr"
    pred = predict(open_store(path, slices[0], years=[2019, 2020]), two_region_model)
    write_predictions(xr.zeros_like(pred), nothing, progress=False)
    table = change(nothing, config=ChangeConfig(threshold=1.0))
    assert table.empty and summary(table)["years"] is None
    out = tmp_path / "change"
    command = f"change --predictions {nothing} --out {out} --threshold 1.0 -q"
    assert main(command.split()) == 2
    assert "no pixel counts as mined in any year at threshold 1.0" in capsys.readouterr().err
