"""The STAC source: a local catalog of Landsat C2 L2-like COGs, composited by stackstac + Dask."""

from __future__ import annotations

import datetime as dt
import shlex

import numpy as np
import pytest

from miningxr import ingest, open_landsat, open_store
from miningxr.config import StoreLayout
from miningxr.encoding import decode_dn, encode_dn
from miningxr.grid import GridSlice
from miningxr.sources import SourceError
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
            qa[rows.stop :], dn[:, rows.stop :] = FILL, 0
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
            item = pystac.Item(
                id=sid,
                geometry=None,
                bbox=[bb.left, bb.bottom, bb.right, bb.top],
                datetime=dt.datetime(year, 3 + 2 * i, 10, tzinfo=dt.UTC),
                properties={
                    "proj:epsg": 6933,
                    "proj:shape": list(dn.shape[1:]),
                    "proj:transform": [a.a, a.b, a.c, a.d, a.e, a.f],
                },
            )
            item.geometry = _footprint(bb)
            layers = {**{ASSETS[b]: dn[k] for k, b in enumerate(ASSETS)}, QA_ASSET: qa}
            for key, arr in layers.items():
                path = root / sid / f"{sid}_{key}.tif"
                with _cog(
                    path, arr, Affine(a.a, a.b, a.c, a.d, a.e, a.f), nodata=1 if key == QA_ASSET else 0
                ) as dst:
                    dst.write(arr, 1)
                item.add_asset(
                    key, pystac.Asset(href=str(path), media_type=pystac.MediaType.COG, roles=["data"])
                )
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
    ds = open_landsat(stac_slice, [2019, 2020], source="stac", catalog=catalog, decode=False, chunks=256)
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
    report = ingest(
        tmp_path / "s.zarr",
        stac_slice,
        2020,
        source="stac",
        layout=layout,
        source_options={"catalog": str(catalog)},
        progress=False,
    )
    assert report.ok and report.written == 2
    got = open_store(tmp_path / "s.zarr", stac_slice, 2020).landsat.values
    want = open_landsat(stac_slice, 2020, source="stac", catalog=catalog).landsat.values
    np.testing.assert_array_equal(got, decode_dn(encode_dn(want)))  # packed, decoded in float32


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
        open_landsat(stac_slice, 2020, source="stac", catalog=catalog, assets={**ASSETS, "nir": "B5"})


def test_cli_ingest_from_a_stac_catalog(tmp_path, client, catalog, stac_slice, capsys):
    from miningxr.cli import main

    bb = stac_slice.geobox.geographic_extent.boundingbox
    inner = [bb.left + 1e-3, bb.bottom + 1e-3, bb.left + 2e-3, bb.bottom + 2e-3]
    store = tmp_path / "s.zarr"
    bbox = " ".join(map(str, inner))
    command = f"ingest --store {store} --bbox {bbox} --year 2020 --source stac --stac-catalog {catalog} -q"
    assert main(shlex.split(command)) == 0
    got = open_store(store, stac_slice, 2020).landsat.values
    want = open_landsat(stac_slice, 2020, source="stac", catalog=catalog).landsat.values
    np.testing.assert_array_equal(got, decode_dn(encode_dn(want)))


# --------------------------------------------------------------------------- real files, real items

DATA = __import__("pathlib").Path(__file__).parent / "data" / "landsat-c2-l2"
REAL_CATALOG = DATA / "catalog.json"
SCENE = DATA / "LC08_L2SP_005009_20150710_02_T2" / "LC08_L2SP_005009_20150710_20200908_02_T2_"
#: a part of the real scene with clear land, cloud and cloud shadow (Greenland, 2015-07-10)
REAL_BBOX = (-40.45, 72.62, -40.05, 72.76)
REAL_FILES = {
    "blue": "SR_B2",
    "green": "SR_B3",
    "red": "SR_B4",
    "nir": "SR_B5",
    "swir1": "SR_B6",
    "swir2": "SR_B7",
    "thermal": "ST_B10",
}


def _reproject(name: str, gslice: GridSlice) -> np.ndarray:
    """One vendored file reprojected onto the grid slice by rasterio alone (nearest, 0 = none)."""
    from rasterio.warp import Resampling, reproject

    out = np.zeros(gslice.shape, np.float64)
    with rasterio.open(f"{SCENE}{name}.TIF") as src:
        reproject(
            rasterio.band(src, 1),
            out,
            dst_transform=gslice.geobox.affine,
            dst_crs="EPSG:6933",
            resampling=Resampling.nearest,
            dst_nodata=0,
        )
    return out


def _independent_composite(gslice: GridSlice) -> np.ndarray:
    """The real scene as the store should hold it, computed without stackstac or miningxr's
    reader: rasterio reprojection, QA_PIXEL bits 0-4 masked, the C2 L2 scale factors."""
    qa = _reproject("QA_PIXEL", gslice).astype(np.uint16)
    clear = (qa > 0) & ((qa & 0b11111) == 0)
    out = []
    for band, name in REAL_FILES.items():
        dn = _reproject(name, gslice)
        dn = np.where(clear & (dn > 0), dn, np.nan)
        out.append(
            (dn * ST_SCALE + ST_OFFSET - 273.15) / 100 if band == "thermal" else dn * SR_SCALE + SR_OFFSET
        )
    return encode_dn(np.stack(out))


def test_real_static_catalog_with_relative_hrefs_ingests_the_real_values(tmp_path, client):
    from miningxr.grid import Region

    text = (DATA / "LC08_L2SP_005009_20150710_02_T2" / "LC08_L2SP_005009_20150710_02_T2.json").read_text()
    assert '"href": "./LC08_L2SP_005009_20150710_20200908_02_T2_SR_B5.TIF"' in text  # relative, as shipped
    gslice = Region.from_bbox(REAL_BBOX).slice(1)
    store = tmp_path / "real.zarr"
    report = ingest(
        store,
        REAL_BBOX,
        2015,
        source="stac",
        layout=StoreLayout(chunk=256, shard=512),
        source_options={"catalog": str(REAL_CATALOG)},
        progress=False,
    )
    assert report.ok and report.written > 0, report
    got = open_store(store, gslice, 2015, chunks=256).landsat.isel(year=0)
    dn = encode_dn(got.values)  # the store's int16 numbers, decoded and packed again exactly
    want = _independent_composite(gslice)
    fill = np.iinfo(np.int16).min
    assert ((want != fill).mean() > 0.3) and ((want == fill).mean() > 0.05)  # clear land and cloud both
    same = dn == want
    # GDAL's warper (stackstac's WarpedVRT vs rasterio's reproject) may put the edge between
    # two 515 m source pixels one 30 m pixel apart; everywhere else the values are identical
    assert same.mean() > 0.98, same.mean()
    for b in range(len(REAL_FILES)):
        bad = np.argwhere(~same[b][1:-1, 1:-1]) + 1  # inside the slice, where all 8 neighbours exist
        near = np.stack([want[b][bad[:, 0] + dy, bad[:, 1] + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
        assert (near == dn[b][bad[:, 0], bad[:, 1]]).any(axis=0).all()


def _real_item(name: str, slice_: GridSlice, when: dt.datetime, arrays: dict, root) -> pystac.Item:
    """A real item (its schema: asset keys, platform, id) re-pointed at COGs written over ``slice_``."""
    from rasterio.transform import Affine

    item = pystac.Item.from_file(str(DATA / "items" / f"{name}.json"))
    item.clear_links()
    item.id = f"{item.id}_{when:%Y%m%d}"
    bb = slice_.geobox.geographic_extent.boundingbox
    item.bbox = [bb.left, bb.bottom, bb.right, bb.top]
    item.geometry = _footprint(bb)
    item.datetime = when
    a = slice_.geobox.affine
    for key in list(item.assets):
        if key not in arrays:
            del item.assets[key]
    for key, arr in arrays.items():
        assert key in item.assets, f"{name} has no asset {key}"
        path = root / f"{item.id}_{key}.tif"
        with _cog(path, arr, Affine(*tuple(a)[:6])) as dst:
            dst.write(arr, 1)
        item.assets[key].href = str(path)
    return item


def test_a_year_mixing_landsat_5_7_and_l2sr_scenes_composites_each_band_from_the_scenes_that_have_it(
    tmp_path, stac_slice
):
    rng = np.random.default_rng(3)
    h, w = stac_slice.shape
    sr_keys = ["blue", "green", "red", "nir08", "swir16", "swir22"]
    plan = [
        ("LE07_L2SP_021030_20100109_02_T1", "lwir"),
        ("LT05_L2SP_010067_19860424_02_T2", "lwir"),
        ("LC08_L2SR_099120_20191129_02_T2", None),
    ]
    items, sr, thermal = [], [], []
    for k, (name, tkey) in enumerate(plan):
        arrays = {key: rng.integers(8000, 20000, (h, w)).astype(np.uint16) for key in sr_keys}
        arrays[QA_ASSET] = np.full((h, w), CLEAR, np.uint16)
        if tkey:
            arrays[tkey] = rng.integers(42000, 48000, (h, w)).astype(np.uint16)
            thermal.append(arrays[tkey])
        sr.append(np.stack([arrays[key] for key in sr_keys]))
        items.append(
            _real_item(name, stac_slice, dt.datetime(2011, 3 + k, 1, tzinfo=dt.UTC), arrays, tmp_path)
        )
    from miningxr.sources.stac import mission

    assert [mission(i) for i in items] == ["landsat-7", "landsat-5", "landsat-8"]
    ds = open_landsat(stac_slice, 2011, source="stac", items=items, decode=False, chunks=256)
    got = ds.landsat.values[0]
    want_sr = np.median(np.stack(sr).astype(float), axis=0) * SR_SCALE + SR_OFFSET
    want_t = (np.median(np.stack(thermal).astype(float), axis=0) * ST_SCALE + ST_OFFSET - 273.15) / 100
    assert np.abs(got[:6].astype(int) - encode_dn(want_sr).astype(int)).max() <= 1
    # thermal: the median of the two scenes that have it, not NaN and not three-way
    assert np.abs(got[6].astype(int) - encode_dn(want_t).astype(int)).max() <= 1
    assert ds.attrs["source"] == "stac"


def test_a_scene_lacking_a_required_band_is_named(tmp_path, stac_slice):
    h, w = stac_slice.shape
    arrays = {
        key: np.ones((h, w), np.uint16) for key in ["blue", "green", "red", "nir08", "swir16", QA_ASSET]
    }
    item = _real_item(
        "LC08_L2SR_099120_20191129_02_T2",
        stac_slice,
        dt.datetime(2011, 5, 1, tzinfo=dt.UTC),
        arrays,
        tmp_path,
    )
    with pytest.raises(SourceError, match=r"LC08_L2SR_099120_20191129_02_T2_20110501: \['swir22'\]"):
        open_landsat(stac_slice, 2011, source="stac", items=[item])


def test_planetary_computer_preset_signs_every_asset_href(monkeypatch):
    """The preset signs hrefs with the real planetary-computer package (its token cache seeded,
    as a token request would fill it: the tests have no network)."""
    import datetime as _dt

    pc = pytest.importorskip("planetary_computer")
    from planetary_computer import sas

    from miningxr.sources.stac import PRESETS, _signer, prepare_items

    expiry = (_dt.datetime.now(_dt.UTC) + _dt.timedelta(hours=1)).isoformat()
    url = f"{sas.Settings.get().sas_url}/landsateuwest/landsat-c2"
    monkeypatch.setitem(
        sas.TOKEN_CACHE,
        url,
        sas.SASToken.model_validate({"token": "st=2026&se=2027&sig=abc", "msft:expiry": expiry}),
    )
    item = pystac.Item.from_file(str(DATA / "items" / "LE07_L2SP_021030_20100109_02_T1.json"))
    for a in item.assets.values():
        a.href = "https://landsateuwest.blob.core.windows.net/landsat-c2/level-2/" + a.href.rsplit("/", 1)[-1]
    sign = _signer(PRESETS["planetary-computer"])
    assert sign is pc.sign_url
    (d,), missions = prepare_items([item], sign=sign)
    assert missions == {"landsat-7": 1}
    assert sorted(d["assets"]) == sorted(
        ["blue", "green", "red", "nir", "swir1", "swir2", "thermal", QA_ASSET]
    )
    assert d["assets"]["thermal"]["href"].endswith("_ST_B6.TIF?st=2026&se=2027&sig=abc")
    assert all(a["href"].endswith("sig=abc") for a in d["assets"].values())


def test_earth_search_preset_reads_with_requester_pays(catalog, stac_slice):
    """The preset's GDAL option travels with every read task of the graph."""
    import stackstac

    from miningxr.sources.stac import search_items

    bb = stac_slice.geobox.geographic_extent.boundingbox
    items = search_items(catalog, (bb.left, bb.bottom, bb.right, bb.top), [2020])
    ds = open_landsat(stac_slice, 2020, source="stac", preset="earth-search", items=items, chunks=256)
    envs = [
        v
        for task in dict(ds.landsat.data.__dask_graph__()).values()
        for v in _walk(task)
        if isinstance(v, stackstac.rio_env.LayeredEnv)
    ]
    assert envs and all(e.always.options.get("AWS_REQUEST_PAYER") == "requester" for e in envs)
    assert ds.attrs["stac_preset"] == "earth-search"
    # and the data still read right: the same as without the preset
    plain = open_landsat(stac_slice, 2020, source="stac", items=items, chunks=256)
    np.testing.assert_array_equal(ds.landsat.values, plain.landsat.values)


def _walk(obj, depth=0):
    yield obj
    if depth > 6:
        return
    if isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _walk(o, depth + 1)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _walk(o, depth + 1)
    elif hasattr(obj, "args") and hasattr(obj, "func"):  # dask Task objects
        yield from _walk(getattr(obj, "func", None), depth + 1)
        yield from _walk(list(obj.args), depth + 1)
        yield from _walk(dict(getattr(obj, "kwargs", {}) or {}), depth + 1)
        yield from getattr(obj, "dependencies", ()) or ()
    elif hasattr(obj, "value") and not isinstance(obj, (str, bytes)):
        yield from _walk(obj.value, depth + 1)


def test_an_unknown_preset_names_the_presets(stac_slice):
    with pytest.raises(SourceError, match="planetary-computer, earth-search"):
        open_landsat(stac_slice, 2020, source="stac", preset="usgs")


def test_cli_stac_preset_is_accepted_and_an_unreachable_catalog_is_a_clear_error(tmp_path, capsys):
    from miningxr.cli import main

    store = tmp_path / "s.zarr"
    # the tests have no network: the preset's API cannot be reached, which must say so plainly
    assert (
        main(
            shlex.split(
                f"ingest --store {store!s} --bbox 29.05 -25.95 29.06 -25.94 --year 2020 --source stac --stac-preset planetary-computer -q"
            )
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "cannot read STAC catalog https://planetarycomputer.microsoft.com/api/stac/v1" in err
    assert "Traceback" not in err and not store.exists()
    assert (
        main(
            shlex.split(
                f"ingest --store {store!s} --bbox 29.05 -25.95 29.06 -25.94 --year 2020 --stac-preset earth-search -q"
            )
        )
        == 2
    )
    assert "--stac-catalog and --stac-preset are for --source stac" in capsys.readouterr().err


def _footprint(bb) -> dict:
    """The GeoJSON polygon of a lon/lat bounding box, as STAC items give their footprint."""
    from shapely.geometry import box, mapping

    return dict(mapping(box(bb.left, bb.bottom, bb.right, bb.top)))


def _cog(path, arr, transform, **options):
    """A one-band uint16 Cloud-Optimized GeoTIFF on the grid CRS, open for writing."""
    return rasterio.open(
        path,
        "w",
        driver="COG",
        width=arr.shape[1],
        height=arr.shape[0],
        count=1,
        dtype="uint16",
        crs="EPSG:6933",
        transform=transform,
        **options,
    )
