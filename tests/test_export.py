import geopandas as gpd
import numpy as np
import rasterio

from miningxr import export, open_store


def test_exports_open_in_gis_tools_with_crs_and_transform(store, tmp_path):
    ds = open_store(store)
    prob = ds.mining.astype("float32")
    paths = export(prob, tmp_path)
    with rasterio.open(paths["probability"]) as f:
        assert f.crs.to_epsg() == 6933
        assert f.transform == ds.odc.geobox.affine
        assert f.overviews(1)  # a COG has overviews
        assert np.array_equal(f.read(1), prob.values)
    gdf = gpd.read_file(paths["polygons"])
    assert gdf.crs.to_epsg() == 4326 and len(gdf) > 0
    assert (gdf.pixels >= 4).all()  # patches under min_pixels are left out


def test_exported_polygons_count_every_mask_pixel_once(store, tmp_path):
    ds = open_store(store)
    prob = ds.mining.astype("float32")
    gdf = gpd.read_file(export(prob, tmp_path, min_pixels=1)["polygons"])
    # with every patch kept, the polygons hold each mining pixel exactly once, and their areas
    # are those pixel counts times 0.0009 km2 (the grid is equal-area)
    assert int(gdf.pixels.sum()) == int(ds.mining.sum())
    np.testing.assert_allclose(gdf.AREA.to_numpy(), gdf.pixels.to_numpy() * 0.0009, rtol=1e-12)


def test_a_sparse_store_exports_one_cog_per_region_and_year(two_regions, two_region_predictions, tmp_path):
    from miningxr import export_store, open_regions

    path, _ = two_regions
    paths = export_store(path, two_region_predictions, tmp_path, threshold=0.5)
    names = list(open_regions(path).children)
    for name in names:
        for year in (2019, 2020):
            with rasterio.open(paths[f"probability_{name}_{year}"]) as f:
                assert f.crs.to_epsg() == 6933 and f.shape == (1024, 1024)
            assert paths[f"mask_{name}_{year}"].exists()
    gdf = gpd.read_file(paths["polygons"])
    assert {"year", "region"} <= set(gdf.columns)
    if len(gdf):
        assert set(gdf.region) <= set(names) and set(gdf.year) <= {2019, 2020}
