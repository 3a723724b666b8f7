"""The STAC source: a local catalog of Landsat C2 L2-like COGs, composited by stackstac + Dask."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from miningxr import ingest, open_landsat, open_store
from miningxr.config import StoreLayout
from miningxr.grid import GridSlice
from miningxr.sources import SourceError
from miningxr.sources._common import encode_dn
from miningxr.sources.stac import ASSETS, QA_ASSET, SR_OFFSET, SR_SCALE, ST_OFFSET, ST_SCALE

pystac = pytest.importorskip("pystac")
rasterio = pytest.importorskip("rasterio")
pytest.importorskip("stackstac")

CLEAR, CLOUD, SHADOW, DILATED, FILL = 21824, 21824 | 1 << 3, 21824 | 1 << 4, 21824 | 1 << 1, 1
YEARS = {2019: 4, 2020: 3}  # scenes per year


@pytest.fixture(scope="module")
def stac_slice(shard_slice) -> GridSlice:
    return GridSlice(shard_slice.row0, shard_slice.row0 + 256, shard_slice.col0, shard_slice.col0 + 512)


@pytest.fixture(scope="module")
def scenes(stac_slice):
    """Per year, a list of (dn (7, h, w) uint16, qa (h, w) uint16, covered rows) per scene."""
    rng = np.random.default_rng(7)
    h, w = stac_slice.row1 - stac_slice.row0, stac_slice.col1 - stac_slice.col0
    out = {}
    for year, n in YEARS.items():
        out[year] = []
        for i in range(n):
            dn = np.empty((7, h, w), np.uint16)
            dn[:6] = rng.integers(7273 + 400, 7273 + 20000, (6, h, w))  # reflectance 0.01..0.56
            dn[6] = rng.integers(42000, 48000, (h, w))  # 292..313 K
            qa = rng.choice([CLEAR, CLEAR, CLEAR, CLOUD, SHADOW, DILATED], (h, w)).astype(np.uint16)
            # the last scene of each year covers only the top half: the rest is fill
            rows = slice(0, h // 2) if i == n - 1 else slice(0, h)
            qa[rows.stop:], dn[:, rows.stop:] = FILL, 0
            out[year].append((dn, qa))
    return out


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, stac_slice, scenes):
    """A self-contained static STAC catalog of COGs on disk, like a Landsat C2 L2 collection."""
    from rasterio.transform import Affine

    root = tmp_path_factory.mktemp("stac")
    gb = stac_slice.geobox
    bb = gb.geographic_extent.boundingbox
    a = gb.affine
    cat = pystac.Catalog(id="landsat-test", description="Landsat C2 L2-like scenes for tests")
    for year, items in scenes.items():
        for i, (dn, qa) in enumerate(items):
            sid = f"LC08_TEST_{year}_{i}"
            (root / sid).mkdir()
            item = pystac.Item(id=sid, geometry=None, bbox=[bb.left, bb.bottom, bb.right, bb.top],
                               datetime=dt.datetime(year, 3 + 2 * i, 10, tzinfo=dt.timezone.utc),
                               properties={"proj:epsg": 6933, "proj:shape": list(dn.shape[1:]),
                                           "proj:transform": [a.a, a.b, a.c, a.d, a.e, a.f]})
            item.geometry = {"type": "Polygon", "coordinates": [[[bb.left, bb.bottom], [bb.right, bb.bottom],
                             [bb.right, bb.top], [bb.left, bb.top], [bb.left, bb.bottom]]]}
            layers = {**{ASSETS[b]: dn[k] for k, b in enumerate(ASSETS)}, QA_ASSET: qa}
            for key, arr in layers.items():
                path = root / sid / f"{sid}_{key}.tif"
                with rasterio.open(path, "w", driver="COG", width=arr.shape[1], height=arr.shape[0],
                                   count=1, dtype="uint16", crs="EPSG:6933", nodata=1 if key == QA_ASSET else 0,
                                   transform=Affine(a.a, a.b, a.c, a.d, a.e, a.f), blocksize=256) as dst:
                    dst.write(arr, 1)
                item.add_asset(key, pystac.Asset(href=str(path), media_type=pystac.MediaType.COG,
                                                 roles=["data"]))
            cat.add_item(item)
    cat.normalize_hrefs(str(root))
    cat.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"


def _expected(scenes, year):
    """numpy median of the clear pixels, in the store's int16 numbers."""
    dn = np.stack([s[0] for s in scenes[year]]).astype(float)  # (scene, band, y, x)
    qa = np.stack([s[1] for s in scenes[year]])
    clear = (qa & 0b11111) == 0
    dn[~np.broadcast_to(clear[:, None], dn.shape)] = np.nan
    dn[dn == 0] = np.nan
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning, match="All-NaN"):
        med = np.nanmedian(dn, axis=0)
    med[:6] = med[:6] * SR_SCALE + SR_OFFSET
    med[6] = (med[6] * ST_SCALE + ST_OFFSET - 273.15) / 100
    return encode_dn(med)


def test_stac_composite_is_the_median_of_clear_pixels(catalog, scenes, stac_slice):
    ds = open_landsat(stac_slice, [2019, 2020], source="stac", catalog=catalog, decode=False,
                      chunks=256)
    got = ds.landsat.values
    for k, year in enumerate(YEARS):
        want = _expected(scenes, year)
        # float rounding of the scaling may move a value by one int16 step (1e-4 reflectance)
        assert np.abs(got[k].astype(int) - want.astype(int)).max() <= 1
        assert ((got[k] == -32768) == (want == -32768)).all()
    assert (got == -32768).any()  # some pixels have no clear observation at all


def test_stac_cube_is_on_the_grid_slice(catalog, stac_slice):
    ds = open_landsat(stac_slice, 2020, source="stac", catalog=catalog)
    want = open_landsat(stac_slice, 2020)  # the synthetic cube on the same slice
    np.testing.assert_array_equal(ds.x.values, want.x.values)
    np.testing.assert_array_equal(ds.y.values, want.y.values)
    assert ds.landsat.dims == ("year", "band", "y", "x") and ds.attrs["source"] == "stac"


def test_stac_ingest_writes_the_composite(tmp_path, client, catalog, stac_slice):
    layout = StoreLayout(chunk=256, shard=256)
    report = ingest(tmp_path / "s.zarr", stac_slice, 2020, source="stac", layout=layout,
                    source_options={"catalog": str(catalog)}, progress=False)
    assert report.ok and report.written == 2
    got = open_store(tmp_path / "s.zarr", stac_slice, 2020).landsat.values
    want = open_landsat(stac_slice, 2020, source="stac", catalog=catalog).landsat.values
    np.testing.assert_array_equal(got, want)


def test_stac_year_without_scenes_is_a_clear_error(catalog, stac_slice):
    with pytest.raises(SourceError, match=r"no STAC scene .* year\(s\) \[2021\]"):
        open_landsat(stac_slice, [2020, 2021], source="stac", catalog=catalog)


def test_stac_missing_catalog_is_a_clear_error(tmp_path, stac_slice):
    with pytest.raises(SourceError, match="not found"):
        open_landsat(stac_slice, 2020, source="stac", catalog=tmp_path / "none" / "catalog.json")


def test_stac_without_a_catalog_says_which_option(stac_slice):
    with pytest.raises(SourceError, match="--stac-catalog"):
        open_landsat(stac_slice, 2020, source="stac")


def test_stac_unknown_asset_names_say_how_to_map_them(catalog, stac_slice):
    with pytest.raises(SourceError, match="assets="):
        open_landsat(stac_slice, 2020, source="stac", catalog=catalog,
                     assets={**ASSETS, "nir": "B5"})


def test_cli_ingest_from_a_stac_catalog(tmp_path, client, catalog, stac_slice, capsys):
    from miningxr.cli import main

    bb = stac_slice.geobox.geographic_extent.boundingbox
    inner = [bb.left + 1e-3, bb.bottom + 1e-3, bb.left + 2e-3, bb.bottom + 2e-3]
    store = tmp_path / "s.zarr"
    assert main(["ingest", "--store", str(store), "--bbox", *map(str, inner), "--year", "2020",
                 "--source", "stac", "--stac-catalog", str(catalog), "-q"]) == 0
    got = open_store(store, stac_slice, 2020).landsat.values
    want = open_landsat(stac_slice, 2020, source="stac", catalog=catalog).landsat.values
    np.testing.assert_array_equal(got, want)
