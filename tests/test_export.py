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
    # areas are pixel counts times 0.0009 km2, and add up to the mask's
    assert gdf.AREA.sum() == np.float64(int(ds.mining.sum()) * 0.0009).round(6) or abs(
        gdf.AREA.sum() - int(ds.mining.sum()) * 0.0009
    ) < 0.0009 * 4 * len(gdf)
