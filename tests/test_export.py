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
