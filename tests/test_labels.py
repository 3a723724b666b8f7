import warnings

import geopandas as gpd
import numpy as np
import pytest
import xarray as xr
from rasterio import features
from rasterio.errors import NotGeoreferencedWarning
from shapely.geometry import MultiPolygon, Point, Polygon

from miningxr import mining_mask, open_store, read_polygons
from miningxr.grid import CRS_GRID, GridSlice
from miningxr.labels import LabelError


def _random_polygons(gslice: GridSlice, n=40, seed=1):
    rng = np.random.default_rng(seed)
    gb = gslice.geobox
    x0, y0, x1, y1 = gb.extent.boundingbox
    polys = []
    for i in range(n):
        cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
        r = rng.uniform(500, 9000)  # big ones cross block and shard edges
        ang = np.sort(rng.uniform(0, 2 * np.pi, 9))
        rad = r * rng.uniform(0.5, 1.0, 9)
        outer = Polygon(np.c_[cx + rad * np.cos(ang), cy + rad * np.sin(ang)])
        if i % 5 == 0:  # a hole
            outer = outer.difference(Point(cx, cy).buffer(r * 0.2))
        if i % 7 == 0:  # a multipolygon
            outer = MultiPolygon([outer.buffer(0), Point(cx + 2 * r, cy).buffer(r * 0.3)]) if outer.geom_type == "Polygon" else outer
        polys.append(outer)
    gdf = gpd.GeoDataFrame({"ISO3_CODE": ["ZAF"] * n, "COUNTRY_NAME": ["South Africa"] * n, "AREA": [1.0] * n},
                           geometry=polys, crs=CRS_GRID.to_wkt())
    return gdf


def test_block_mask_is_bit_identical_to_one_whole_rasterize(shard_slice):
    gslice = GridSlice(shard_slice.row0, shard_slice.row0 + 1500, shard_slice.col0, shard_slice.col0 + 1700)
    ds = xr.Dataset(coords=gslice.coords()).assign(v=(("y", "x"), np.zeros(gslice.shape, np.uint8)))
    ds = ds.chunk({"y": 256, "x": 300})
    gdf = _random_polygons(gslice)
    for crs in (CRS_GRID.to_wkt(), "EPSG:4326", "EPSG:32735"):
        polys = gdf.to_crs(crs)
        mask = mining_mask(ds.v, polys).values
        whole = features.rasterize(read_polygons(polys).geometry, out_shape=gslice.shape,
                                   transform=gslice.geobox.affine, dtype=np.uint8)
        assert np.array_equal(mask, whole), crs
        assert mask.any()


def test_masks_burned_on_many_threads_leak_no_rasterio_warning(shard_slice):
    # rasterio hides a NotGeoreferencedWarning with catch_warnings, which races across threads
    gslice = GridSlice(shard_slice.row0, shard_slice.row0 + 1024, shard_slice.col0, shard_slice.col0 + 1024)
    ds = xr.Dataset(coords=gslice.coords()).assign(v=(("y", "x"), np.zeros(gslice.shape, np.uint8)))
    mask = mining_mask(ds.v.chunk({"y": 128, "x": 128}), _random_polygons(gslice))
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotGeoreferencedWarning)
        assert mask.compute(scheduler="threads", num_workers=8).any()


def test_all_touched_burns_more_pixels(store, polygons_path):
    ds = open_store(store)
    plain = int(mining_mask(ds, polygons_path).sum())
    touched = int(mining_mask(ds, polygons_path, all_touched=True).sum())
    assert touched > plain


def test_mask_in_store_carries_file_name_and_checksum(store):
    ds = open_store(store)
    assert ds.mining.attrs["polygons"] == "mines.gpkg"
    assert len(ds.mining.attrs["polygons_sha256"]) == 64
    assert 0.01 < float(ds.mining.mean()) < 0.3


def test_invalid_geometry_is_repaired_and_reported(tmp_path, caplog):
    bowtie = Polygon([(0, 0), (1, 1), (1, 0), (0, 1), (0, 0)])
    gdf = gpd.GeoDataFrame({"ISO3_CODE": ["ZAF"], "COUNTRY_NAME": ["South Africa"], "AREA": [1.0]},
                           geometry=[bowtie], crs="EPSG:4326")
    out = read_polygons(gdf)
    assert out.geometry.is_valid.all()
    assert "repairing 1 invalid" in caplog.text


def test_missing_columns_are_named(tmp_path):
    gdf = gpd.GeoDataFrame({"name": ["x"]}, geometry=[Point(0, 0).buffer(1)], crs="EPSG:4326")
    gdf.to_file(tmp_path / "p.gpkg")
    with pytest.raises(LabelError, match=r"lack column\(s\) \['ISO3_CODE', 'COUNTRY_NAME', 'AREA'\]"):
        read_polygons(tmp_path / "p.gpkg")


def test_unknown_layer_is_named(polygons_path):
    with pytest.raises(LabelError, match="no layer 'mines'"):
        read_polygons(polygons_path, layer="mines")


def test_empty_country_selection_lists_codes(polygons_path):
    with pytest.raises(LabelError, match="no polygon has ISO3_CODE 'BRA'.*ZAF"):
        read_polygons(polygons_path, country="BRA")


def test_non_polygon_geometry_is_refused():
    gdf = gpd.GeoDataFrame({"ISO3_CODE": ["ZAF"], "COUNTRY_NAME": ["x"], "AREA": [1.0]},
                           geometry=[Point(0, 0)], crs="EPSG:4326")
    with pytest.raises(LabelError, match="not polygons"):
        read_polygons(gdf)


def test_polygons_without_crs_are_refused():
    gdf = gpd.GeoDataFrame({"ISO3_CODE": ["ZAF"], "COUNTRY_NAME": ["x"], "AREA": [1.0]},
                           geometry=[Point(0, 0).buffer(1)])
    with pytest.raises(LabelError, match="no CRS"):
        read_polygons(gdf)
