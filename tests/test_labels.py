import shlex
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
            outer = (
                MultiPolygon([outer.buffer(0), Point(cx + 2 * r, cy).buffer(r * 0.3)])
                if outer.geom_type == "Polygon"
                else outer
            )
        polys.append(outer)
    gdf = gpd.GeoDataFrame(
        {"ISO3_CODE": ["ZAF"] * n, "COUNTRY_NAME": ["South Africa"] * n, "AREA": [1.0] * n},
        geometry=polys,
        crs=CRS_GRID.to_wkt(),
    )
    return gdf


def test_block_mask_is_bit_identical_to_one_whole_rasterize(shard_slice):
    gslice = GridSlice(shard_slice.row0, shard_slice.row0 + 1500, shard_slice.col0, shard_slice.col0 + 1700)
    ds = xr.Dataset(coords=gslice.coords()).assign(v=(("y", "x"), np.zeros(gslice.shape, np.uint8)))
    ds = ds.chunk({"y": 256, "x": 300})
    gdf = _random_polygons(gslice)
    for crs in (CRS_GRID.to_wkt(), "EPSG:4326", "EPSG:32735"):
        polys = gdf.to_crs(crs)
        mask = mining_mask(ds.v, polys).values
        whole = features.rasterize(
            read_polygons(polys).geometry,
            out_shape=gslice.shape,
            transform=gslice.geobox.affine,
            dtype=np.uint8,
        )
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
    gdf = gpd.GeoDataFrame(
        {"ISO3_CODE": ["ZAF"], "COUNTRY_NAME": ["South Africa"], "AREA": [1.0]},
        geometry=[bowtie],
        crs="EPSG:4326",
    )
    out = read_polygons(gdf)
    assert out.geometry.is_valid.all()
    assert "repairing 1 invalid" in caplog.text


def test_polygons_in_no_country_are_kept_with_an_empty_code_and_a_warning(tmp_path, caplog):
    gdf = gpd.GeoDataFrame(
        {"name": ["x"]}, geometry=[Point(0, 0).buffer(0.1)], crs="EPSG:4326"
    )  # Gulf of Guinea
    gdf.to_file(tmp_path / "p.gpkg")
    got = read_polygons(tmp_path / "p.gpkg")
    assert got.ISO3_CODE.isna().all() and got.AREA.iloc[0] > 100  # ~123 km2
    assert "lie in no country" in caplog.text
    with pytest.raises(LabelError, match="no polygon has ISO3_CODE 'ZAF'"):
        read_polygons(tmp_path / "p.gpkg", country="ZAF")


def test_unknown_layer_is_named(polygons_path):
    with pytest.raises(LabelError, match="no layer 'mines'"):
        read_polygons(polygons_path, layer="mines")


def test_empty_country_selection_lists_codes(polygons_path):
    with pytest.raises(LabelError, match=r"no polygon has ISO3_CODE 'BRA'.*ZAF"):
        read_polygons(polygons_path, country="BRA")


def test_non_polygon_geometry_is_refused():
    gdf = gpd.GeoDataFrame(
        {"ISO3_CODE": ["ZAF"], "COUNTRY_NAME": ["x"], "AREA": [1.0]}, geometry=[Point(0, 0)], crs="EPSG:4326"
    )
    with pytest.raises(LabelError, match="not polygons"):
        read_polygons(gdf)


def test_polygons_without_crs_are_refused():
    gdf = gpd.GeoDataFrame(
        {"ISO3_CODE": ["ZAF"], "COUNTRY_NAME": ["x"], "AREA": [1.0]}, geometry=[Point(0, 0).buffer(1)]
    )
    with pytest.raises(LabelError, match="no CRS"):
        read_polygons(gdf)


# --------------------------------------------------------------------------- real schemas


@pytest.fixture(scope="module")
def zaf_mines(shard_slice):
    """Polygons of the synthetic mines in South Africa, in the grid CRS, with their true areas."""
    from miningxr.sources.synthetic import mine_polygons

    gdf = mine_polygons(shard_slice, 2020).to_crs(CRS_GRID.to_wkt())
    gdf["true_km2"] = gdf.area / 1e6
    return gdf


def test_global_mining_polygons_v2_gpkg_is_read_as_is(tmp_path, zaf_mines):
    """v1/v2: ISO3_CODE, COUNTRY_NAME, AREA (km2), FID, geometry column 'geom', EPSG:4326."""
    path = tmp_path / "global_mining_polygons_v2.gpkg"
    v2 = zaf_mines[["ISO3_CODE", "COUNTRY_NAME", "geometry"]].assign(AREA=12.5).to_crs("EPSG:4326")
    v2.rename_geometry("geom").to_file(path, layer="mining_polygons")
    got = read_polygons(path)
    assert (got.AREA == 12.5).all() and got.attrs["derived"] == []  # the file's own AREA is kept
    assert (got.ISO3_CODE == "ZAF").all() and got.crs == CRS_GRID


def test_maus_tang_combined_set_without_area_gets_it_on_the_equal_area_grid(tmp_path, zaf_mines):
    path = tmp_path / "mining_combined.gpkg"
    zaf_mines[["ISO3_CODE", "COUNTRY_NAME", "geometry"]].to_crs("EPSG:4326").to_file(path)
    got = read_polygons(path)
    assert got.attrs["derived"] == ["AREA"]
    np.testing.assert_allclose(got.AREA.to_numpy(), zaf_mines.true_km2.to_numpy(), rtol=1e-6)


def test_tang_werner_shapefile_projected_without_country_gets_countries_by_spatial_join(tmp_path, zaf_mines):
    """Tang & Werner: a shapefile, a projected CRS, no country and no AREA column."""
    path = tmp_path / "74548_mine_polygons.shp"
    tw = zaf_mines[["geometry"]].assign(id=np.arange(len(zaf_mines))).to_crs("ESRI:54009")  # World Mollweide
    tw.to_file(path)
    got = read_polygons(path, country="ZAF")
    assert set(got.attrs["derived"]) == {"AREA", "ISO3_CODE", "COUNTRY_NAME"}
    assert len(got) == len(zaf_mines) and (got.COUNTRY_NAME == "South Africa").all()
    np.testing.assert_allclose(got.AREA.to_numpy(), zaf_mines.true_km2.to_numpy(), rtol=1e-4)
    with pytest.raises(LabelError, match="codes present: \\['ZAF'\\]"):
        read_polygons(path, country="BWA")


def test_multi_layer_geopackage_needs_a_layer_and_reads_the_one_named(tmp_path, zaf_mines):
    path = tmp_path / "several.gpkg"
    zaf_mines.iloc[:2].to_file(path, layer="mines_2019")
    zaf_mines.to_file(path, layer="mines_2020")
    with pytest.raises(LabelError, match=r"has layers \['mines_2019', 'mines_2020'\].*--layer"):
        read_polygons(path)
    assert len(read_polygons(path, layer="mines_2020")) == len(zaf_mines)
    with pytest.raises(LabelError, match=r"no layer 'mines'.*--layer"):
        read_polygons(path, layer="mines")


def test_a_column_mapping_reads_other_schemas(tmp_path, zaf_mines):
    path = tmp_path / "other.gpkg"
    other = zaf_mines[["geometry"]].assign(iso_a3="ZAF", area_km2=3.0)
    other.to_file(path)
    got = read_polygons(path, columns=["ISO3_CODE=iso_a3", "AREA=area_km2"], country="ZAF")
    assert (got.AREA == 3.0).all() and (got.COUNTRY_NAME == "South Africa").all()
    with pytest.raises(LabelError, match="not OURS=THEIRS"):
        read_polygons(path, columns=["iso_a3"])
    with pytest.raises(LabelError, match=r"lack; their columns are \['iso_a3', 'area_km2'\]"):
        read_polygons(path, columns={"ISO3_CODE": "ISO"})


def test_every_polygon_command_takes_layer_and_columns(tmp_path, client, zaf_mines, capsys):
    from miningxr.cli import build_parser, main

    sub = next(
        a for a in build_parser()._actions if hasattr(a, "choices") and a.choices and "ingest" in a.choices
    )
    for cmd in ("ingest", "evaluate", "demo"):
        opts = {o for a in sub.choices[cmd]._actions for o in a.option_strings}
        if cmd != "demo":
            assert {"--polygons", "--layer", "--columns"} <= opts, cmd
    path = tmp_path / "several.gpkg"
    zaf_mines.iloc[:1].to_file(path, layer="other")
    zaf_mines.to_file(path, layer="mines")
    store = tmp_path / "s.zarr"
    bb = zaf_mines.to_crs("EPSG:4326").total_bounds
    bbox = " ".join(map(str, bb))
    args = shlex.split(f"ingest --store {store} --bbox {bbox} --year 2020 --polygons {path} -q")
    assert main(args) == 2 and "--layer" in capsys.readouterr().err
    assert not store.exists()  # refused before anything was written
    assert main([*args, "--layer", "mines"]) == 0
    mask = open_store(store).mining
    assert mask.attrs["polygons"] == "several.gpkg" and int(mask.sum()) > 0
