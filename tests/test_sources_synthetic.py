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
    assert b[2][mask].mean() > b[2][~mask].mean() + 0.05
    assert ndvi[mask].mean() < ndvi[~mask].mean()
