import numpy as np
import pytest

from miningxr import open_landsat
from miningxr.grid import GridSlice
from miningxr.sources import SourceError
from miningxr.sources.synthetic import mine_polygons


def test_values_do_not_depend_on_slicing_or_chunking(shard_slice):
    big = (
        open_landsat(shard_slice, 2020, decode=False)
        .landsat.isel(y=slice(100, 400), x=slice(250, 600))
        .values
    )
    sub = GridSlice(
        shard_slice.row0 + 100, shard_slice.row0 + 400, shard_slice.col0 + 250, shard_slice.col0 + 600
    )
    small = open_landsat(sub, 2020, decode=False, chunks=128).landsat.values
    assert np.array_equal(big, small)


def test_cube_has_bands_coords_and_crs(shard_slice):
    ds = open_landsat(shard_slice, [2019, 2020])
    assert ds.landsat.dims == ("year", "band", "y", "x")
    assert list(ds.band.values) == ["blue", "green", "red", "nir", "swir1", "swir2", "thermal"]
    assert ds.rio.crs.to_epsg() == 6933
    assert ds.landsat.chunks is not None


def test_years_differ_and_mines_grow(shard_slice):
    p2000 = mine_polygons(shard_slice, 2000)
    p2020 = mine_polygons(shard_slice, 2020)
    assert len(p2020) >= len(p2000)
    assert p2020.AREA.sum() > p2000.AREA.sum()


def test_year_outside_range_is_refused(shard_slice):
    from miningxr import YearError

    with pytest.raises(YearError, match="outside the synthetic source's range 1984-2025"):
        open_landsat(shard_slice, 2040)


def test_unknown_source_is_refused(shard_slice):
    with pytest.raises(SourceError, match="choose one of"):
        open_landsat(shard_slice, 2020, source="modis")


def test_polygons_follow_the_mining_polygons_schema(shard_slice):
    gdf = mine_polygons(shard_slice, 2020)
    assert {"ISO3_CODE", "COUNTRY_NAME", "AREA"} <= set(gdf.columns)
    assert gdf.crs.to_epsg() == 4326
    assert (gdf.ISO3_CODE == "ZAF").all()
    assert gdf.geometry.is_valid.all()


def test_mines_are_bright_in_swir_with_low_ndvi(shard_slice):
    from miningxr import mining_mask

    ds = open_landsat(shard_slice, 2020).isel(year=0)
    mask = mining_mask(ds, mine_polygons(shard_slice, 2020)).values.astype(bool)
    b = ds.landsat.sel(band=["red", "nir", "swir1"]).values
    ndvi = (b[1] - b[0]) / (b[1] + b[0])
    assert np.nanmean(b[2][mask]) > np.nanmean(b[2][~mask]) + 0.05
    assert np.nanmean(ndvi[mask]) < np.nanmean(ndvi[~mask])


def test_some_mines_close_leave_the_truth_and_revegetate(shard_slice):
    from miningxr.sources.synthetic import mine_table, mining_truth

    table = mine_table(shard_slice)
    closed = table[table.closed.notna() & (table.closed <= 2020)]
    assert 0 < len(closed) < len(table)
    mine = closed.iloc[0]
    end = int(mine.closed)
    assert mine.MINE_ID in set(mine_polygons(shard_slice, end - 1).MINE_ID)
    assert mine.MINE_ID not in set(mine_polygons(shard_slice, end).MINE_ID)
    # its ground, off the pit: bright SWIR2 while mined, then greener year by year
    years = [end - 1, end, end + 2, end + 5]
    truth = mining_truth(shard_slice, years)
    ground = (truth.mine == mine.MINE_ID).values & (truth.mining.sel(year=end - 1) == 1).values
    ds = open_landsat(shard_slice, years)
    b = ds.landsat.sel(band=["red", "nir", "swir2"]).values[:, :, ground]
    swir2 = np.nanmedian(b[:, 2], axis=1)
    ndvi = np.nanmedian((b[:, 1] - b[:, 0]) / (b[:, 1] + b[:, 0]), axis=1)
    assert swir2[0] > swir2[1] + 0.05 and ndvi[3] > ndvi[1] + 0.1
    assert truth.mining.sel(year=end).values[ground].sum() == 0


def test_the_truth_rasters_the_polygons_of_each_year(shard_slice):
    from miningxr import mining_mask
    from miningxr.sources.synthetic import mining_truth

    truth = mining_truth(shard_slice, [1995, 2020])
    ds = open_landsat(shard_slice, 2020).isel(year=0)
    for year in (1995, 2020):
        mask = mining_mask(ds, mine_polygons(shard_slice, year)).values
        assert (truth.mining.sel(year=year).values == mask).mean() > 0.999
    assert truth.mining.sel(year=1995).sum() < truth.mining.sel(year=2020).sum()
    # each mine's first footprint lies inside its later outlines, for mines still open
    assert ((truth.mine > 0) <= (truth.mining.sel(year=2020) == 1) | (truth.mine > 0)).all()


@pytest.mark.parametrize(
    ("year", "low", "high"),
    [(1990, 0.0, 0.06), (2005, 0.05, 0.25), (2012, 0.15, 0.45), (2020, 0.0, 0.06)],
)
def test_each_year_has_its_own_gaps_cloud_and_slc_off_stripes(shard_slice, year, low, high):
    ds = open_landsat(shard_slice, year, decode=False).landsat.isel(year=0).values
    gap = ds == -32768
    # a gap is a pixel without any band, never a band missing alone
    assert (gap.all(axis=0) == gap.any(axis=0)).all()
    assert low <= gap[0].mean() <= high


def test_slc_off_gaps_are_stripes_wider_towards_the_scene_edge(shard_slice):
    gap = open_landsat(shard_slice, 2012).landsat.isel(year=0, band=0).isnull().values
    # along a column the gaps repeat every 33 rows (one scan)
    col = gap[:, 100].astype(float)
    col -= col.mean()
    acf = np.correlate(col, col, "full")[len(col) - 1 :]
    assert 30 <= np.argmax(acf[20:60]) + 20 <= 36


def test_years_differ_in_radiometry_beyond_noise(shard_slice):
    # numpy's nanmedian per band: xarray's median over both dims took 21 s a year here, this 1 s
    a, b = (
        np.nanmedian(open_landsat(shard_slice, y).landsat.isel(year=0).values.reshape(7, -1), axis=1)
        for y in (2018, 2019)
    )
    ratio = b / a
    assert np.abs(ratio - 1).max() > 0.01


def test_confusers_bright_bare_ground_outside_mines_changes_from_year_to_year(shard_slice):
    from miningxr.sources.synthetic import mining_truth

    years = [2018, 2019]
    outside = (mining_truth(shard_slice, years).mining.max("year") == 0).values
    swir1 = open_landsat(shard_slice, years).landsat.sel(band="swir1").values
    bright = (swir1 > 0.32) & outside
    assert bright[0].mean() > 0.005 and bright[1].mean() > 0.005
    changed = bright[0] != bright[1]
    assert changed.mean() > 0.005


def test_bad_synthetic_settings_are_refused():
    from miningxr import ConfigError
    from miningxr.config import SyntheticConfig

    with pytest.raises(ConfigError, match="cloud_cover must be between 0 and 1"):
        SyntheticConfig(cloud_cover=1.5)
    with pytest.raises(ConfigError, match="revegetation_years must be >= 1"):
        SyntheticConfig(revegetation_years=0)
