"""miningxr serve: a real uvicorn server on loopback, read by real HTTP clients (httpx, fsspec
through xr.open_zarr, and in the slow step Debian's chromium driven by Playwright)."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import threading
from pathlib import Path
from unittest import mock

import httpx
import numpy as np
import pytest
import xarray as xr
import zarr

pytest.importorskip("xpublish")

from miningxr import evaluate, open_predictions, open_store, predict, store_regions
from miningxr.config import ServeConfig
from miningxr.server import LAYERS, TRUTH_RGBA, MiningServer, running, serve_app, tile_geobox
from miningxr.store import region_name, store_layout

SHARD = 512


def _png(body: bytes) -> np.ndarray:
    from PIL import Image

    img = Image.open(io.BytesIO(body))
    assert img.format == "PNG" and img.size == (256, 256)
    return np.asarray(img.convert("RGBA"))


def _tile_over(gslice, z: int) -> tuple[int, int, int]:
    """The XYZ tile at zoom ``z`` holding the centre of a grid slice."""
    import morecantile

    bb = gslice.geobox.geographic_extent.boundingbox
    t = morecantile.tms.get("WebMercatorQuad").tile((bb.left + bb.right) / 2, (bb.bottom + bb.top) / 2, z)
    return t.z, t.x, t.y


@pytest.fixture(scope="module")
def served(two_regions, two_region_predictions, client):
    path, _ = two_regions
    server = MiningServer(path, two_region_predictions)
    with running(serve_app(server)) as url:
        yield url, server


def test_regions_lists_what_is_served(served, two_regions):
    url, _ = served
    info = httpx.get(f"{url}/regions").json()
    _, regions = two_regions
    assert sorted(r["name"] for r in info["regions"]) == sorted(region_name(g, SHARD) for g in regions)
    assert info["years"] == [2019, 2020]
    assert all(r["predicted_years"] == [2019, 2020] for r in info["regions"])
    assert {k for k, v in info["layers"].items() if v["available"]} == set(LAYERS)
    assert info["on_demand"] is False


def test_every_layer_is_a_png_tile(served, two_regions):
    url, _ = served
    _, regions = two_regions
    z, x, y = _tile_over(regions[0], 11)
    for layer in LAYERS:
        r = httpx.get(f"{url}/tiles/{layer}/{z}/{x}/{y}.png", params={"year": 2020}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png"
        rgba = _png(r.content)
        if layer in ("truecolor", "falsecolor", "probability"):
            assert (rgba[..., 3] > 0).mean() > 0.2, layer  # the region covers much of this tile
    # far from every region: a transparent tile, not an error
    r = httpx.get(f"{url}/tiles/truecolor/11/0/0.png", params={"year": 2020})
    assert r.status_code == 200 and (_png(r.content)[..., 3] == 0).all()


def test_truth_tile_shows_the_mask_where_it_is(served, two_regions):
    """Each tile pixel, looked up independently (pyproj, nearest pixel of the mask), agrees."""
    from pyproj import Transformer

    from miningxr.grid import pixel_affine

    url, _ = served
    path, regions = two_regions
    mask = open_store(path, region=regions[0]).mining.values
    rows, cols = np.nonzero(mask)
    r0, c0 = regions[0].row0 + int(np.median(rows)), regions[0].col0 + int(np.median(cols))
    from miningxr.grid import GridSlice

    z, x, y = _tile_over(GridSlice(r0, r0 + 1, c0, c0 + 1), 13)
    body = httpx.get(f"{url}/tiles/truth/{z}/{x}/{y}.png").content
    shown = _png(body)
    gbox = tile_geobox(z, x, y)
    xs, ys = gbox.coords["x"].values, gbox.coords["y"].values
    gx, gy = np.meshgrid(xs, ys)
    ex, ey = Transformer.from_crs("EPSG:3857", "EPSG:6933", always_xy=True).transform(gx, gy)
    col, row = ~pixel_affine(regions[0].row0, regions[0].col0) @ (ex, ey)
    row, col = np.floor(row).astype(int), np.floor(col).astype(int)
    inside = (row >= 0) & (row < mask.shape[0]) & (col >= 0) & (col < mask.shape[1])
    expected = np.zeros(shown.shape[:2], bool)
    expected[inside] = mask[row[inside], col[inside]] == 1
    assert expected.any(), "the test tile should hold mining"
    assert ((shown[..., 3] > 0) == expected).mean() > 0.99
    assert (shown[expected] == TRUTH_RGBA).all(axis=-1).mean() > 0.99


def test_zarr_over_http_equals_the_store(served, two_regions, two_region_predictions):
    url, _ = served
    path, _ = two_regions
    for gslice in store_regions(path):
        name = region_name(gslice, SHARD)
        # chunks=None: read in this thread, not as tasks on the cluster the server computes on
        # (two clients of one small cluster, each waiting on the other, would deadlock it)
        remote = xr.open_zarr(f"{url}/datasets/{name}/zarr", zarr_format=3, consolidated=True, chunks=None)
        local = open_store(path, region=gslice)
        # the same packed numbers; decoded, the same values (a client decodes to float64, the
        # scale_factor being a JSON number; open_store decodes to float32)
        packed = xr.open_zarr(
            f"{url}/datasets/{name}/zarr", zarr_format=3, consolidated=True, chunks=None, mask_and_scale=False
        )
        raw = zarr.open_array(str(path), path="landsat", mode="r")
        years = [int(y) - store_layout(path).first_year for y in local.year.values]
        np.testing.assert_array_equal(
            packed.landsat.values, raw[years[0] : years[-1] + 1, :, gslice.rows, gslice.cols]
        )
        assert remote.landsat.dims == local.landsat.dims and remote.landsat.shape == local.landsat.shape
        np.testing.assert_allclose(remote.landsat.values, local.landsat.values, rtol=1e-6)
        np.testing.assert_array_equal(remote.mining.values, local.mining.values)
        prob = open_predictions(two_region_predictions, local)
        np.testing.assert_array_equal(remote.mining_probability.values, prob.values)
        assert set(np.unique(remote.onset_year.values)) <= {0, 2019, 2020}


def test_mining_endpoint_matches_evaluate(served, two_regions, two_region_predictions):
    url, _ = served
    path, regions = two_regions
    bb = regions[0].geobox.geographic_extent.boundingbox
    bbox = f"{bb.left},{bb.bottom},{bb.right},{bb.top}"
    got = httpx.get(f"{url}/mining", params={"bbox": bbox, "year": 2020}, timeout=300).json()
    ds = open_store(path, region=regions[0])
    report = evaluate(path, open_predictions(two_region_predictions, ds, year=2020), split="all")
    assert got["regions"] == [region_name(regions[0], SHARD)]
    assert got["pixels"] == regions[0].shape[0] * regions[0].shape[1]
    assert got["mined_km2"] == pytest.approx(report["area_predicted_km2"])
    assert got["truth_km2"] == pytest.approx(report["area_true_km2"])
    areas = [f["properties"]["area_km2"] for f in got["polygons"]["features"]]
    assert sum(areas) == pytest.approx(got["mined_km2"])
    assert sum(got["onset_km2"].values()) <= got["mined_km2"] + 1e-9
    assert set(got["onset_km2"]) <= {"2019", "2020"}
    for f in got["polygons"]["features"]:
        assert f["geometry"]["type"] in ("Polygon", "MultiPolygon")
        assert f["properties"]["onset_year"] in (None, 2019, 2020)
        lon, lat = f["geometry"]["coordinates"][0][0][:2]
        assert bb.left - 1e-6 <= lon <= bb.right + 1e-6 and bb.bottom - 1e-6 <= lat <= bb.top + 1e-6


def test_point_reads_one_pixel(served, two_regions, two_region_predictions):
    url, _ = served
    path, regions = two_regions
    g = regions[1]
    bb = g.geobox.geographic_extent.boundingbox
    lon, lat = (bb.left + bb.right) / 2, (bb.bottom + bb.top) / 2
    got = httpx.get(f"{url}/point", params={"lon": lon, "lat": lat, "year": 2019}).json()
    assert got["region"] == region_name(g, SHARD)
    ds = open_store(path, region=g)
    i, j = got["row"] - g.row0, got["col"] - g.col0
    prob = open_predictions(two_region_predictions, ds, year=2019)
    assert got["probability"] == pytest.approx(float(prob.values[i, j]))
    assert got["mining"] == int(ds.mining.values[i, j])
    assert got["reflectance"]["red"] == pytest.approx(
        float(ds.landsat.sel(year=2019, band="red").values[i, j])
    )


@pytest.mark.parametrize(
    ("path", "params", "status", "says"),
    [
        ("/mining", {"bbox": "1,2,3", "year": 2020}, 422, "four"),
        ("/mining", {"bbox": "a,b,c,d", "year": 2020}, 422, "four numbers"),
        ("/mining", {"bbox": "29.1,-25.9,29.0,-26.0", "year": 2020}, 422, "min > max"),
        ("/mining", {"bbox": "10,10,10.1,10.1", "year": 2020}, 422, "does not overlap"),
        ("/mining", {"bbox": "29.0,-26.0,29.1,-25.9", "year": 1999}, 404, "holds years"),
        ("/mining", {"bbox": "29.0,-26.0,29.1,-25.9", "year": "twenty"}, 422, "year"),
        ("/mining", {"bbox": "29.0,-26.0,29.1,-25.9", "year": 2020, "threshold": 2}, 422, "threshold"),
        ("/tiles/nope/11/1/1.png", {}, 422, "unknown layer"),
        ("/tiles/truecolor/11/1/1.png", {}, 404, "year="),
        ("/tiles/truth/3/9/9.png", {}, 422, "does not exist"),
        ("/tiles/truth/30/1/1.png", {}, 422, "zoom"),
        ("/point", {"lon": 200, "lat": 0, "year": 2020}, 422, "not a place"),
        ("/point", {"lon": 10, "lat": 10, "year": 2020}, 422, "outside"),
        ("/datasets/nowhere/zarr/zarr.json", {}, 404, ""),
    ],
)
def test_bad_parameters_get_a_4xx_that_names_the_fix(served, path, params, status, says):
    url, _ = served
    r = httpx.get(url + path, params=params)
    assert r.status_code == status, r.text
    assert says in r.text


def test_rendered_tiles_are_kept_until_predictions_change(two_regions, two_region_predictions, client):
    path, regions = two_regions
    server = MiningServer(path, two_region_predictions, config=ServeConfig(tile_cache=3))
    z, x, y = _tile_over(regions[0], 12)
    with mock.patch.object(server, "_render", wraps=server._render) as render:
        first = server.tile("probability", z, x, y, 2020)
        assert server.tile("probability", z, x, y, 2020) == first and render.call_count == 1
        server.tile("probability", z, x, y, 2019)  # another year is another tile
        assert render.call_count == 2
        for dx in (1, 2, 3):  # three more tiles push the oldest out of a cache of three
            server.tile("truecolor", z, x + dx, y, 2020)
        assert len(server._tiles) == 3
        server.tile("probability", z, x, y, 2020)
        assert render.call_count == 6
        server._refresh()  # what an on-demand prediction does: nothing rendered before is kept
        assert not server._tiles
        assert server.tile("probability", z, x, y, 2020) == first and render.call_count == 7
    uncached = MiningServer(path, two_region_predictions, config=ServeConfig(tile_cache=0))
    with mock.patch.object(uncached, "_render", wraps=uncached._render) as render:
        uncached.tile("truecolor", z, x, y, 2020)
        uncached.tile("truecolor", z, x, y, 2020)
        assert render.call_count == 2 and not uncached._tiles


@pytest.mark.filterwarnings("ignore:Dataset has no geotransform")
def test_tiles_rendered_by_8_concurrent_requests_equal_those_rendered_one_by_one(
    two_regions, two_region_predictions, client
):
    """Rendering is thread-safe: every layer at three zooms, asked over HTTP by 8 clients at
    once, gives the bytes the server renders one tile after the other in-process (rasterio's
    warp then warns "Dataset has no geotransform" from some threads, odc-geo#131, for nothing:
    ``miningxr serve`` silences that one message)."""
    import concurrent.futures

    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    from serve_load import tile_paths

    path, regions = two_regions
    server = MiningServer(path, two_region_predictions, config=ServeConfig(tile_cache=0))
    paths = tile_paths(regions, n=40)
    want = []
    for p in paths:
        layer, z, x, y = p.split("?")[0].removesuffix(".png").split("/")[2:6]
        want.append(server.tile(layer, int(z), int(x), int(y), 2020))
    with running(serve_app(server)) as url, concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda p: httpx.get(url + p, timeout=120).content, paths))
    assert len({*want}) > 10  # distinct tiles, not one blank repeated
    assert [g == w for g, w in zip(got, want, strict=True)] == [True] * len(paths)


def test_the_catalog_is_read_once_a_year_until_the_server_s_own_predictions_change_it(
    two_regions, two_region_predictions, client
):
    import miningxr.server as srv

    path, regions = two_regions
    server = MiningServer(path, two_region_predictions, config=ServeConfig(tile_cache=0))
    with mock.patch.object(srv, "predicted_shards", wraps=srv.predicted_shards) as read:
        assert all(server.predicted(r.gslice, 2020) for r in server.regions.values())
        server.predicted(regions[0], 2020)
        server.describe()  # /regions asks it of every region and year
        assert read.call_count == 2  # 2020, then 2019 for describe
        server._refresh()  # an on-demand prediction was written: read again
        assert server.predicted(regions[1], 2020) and read.call_count == 3


def test_a_far_out_tile_is_refused_naming_the_zoom(two_regions, client):
    _, regions = two_regions
    z, x, y = _tile_over(regions[0], 6)
    server = MiningServer(two_regions[0], config=ServeConfig(max_tile_pixels=10_000))
    with running(serve_app(server)) as small:
        r = httpx.get(f"{small}/tiles/truth/{z}/{x}/{y}.png")
    assert r.status_code == 413 and "zoom in to" in r.json()["detail"]


def test_without_predictions_the_prediction_layers_say_how_to_get_them(two_regions, client):
    path, regions = two_regions
    server = MiningServer(path)
    z, x, y = _tile_over(regions[0], 11)
    with running(serve_app(server)) as url:
        r = httpx.get(f"{url}/tiles/probability/{z}/{x}/{y}.png", params={"year": 2020})
        assert r.status_code == 404 and "--predictions" in r.json()["detail"]
        bb = regions[0].geobox.geographic_extent.boundingbox
        r = httpx.get(
            f"{url}/mining", params={"bbox": f"{bb.left},{bb.bottom},{bb.right},{bb.top}", "year": 2020}
        )
        assert r.status_code == 404 and "--model" in r.json()["detail"]


def test_on_demand_prediction_equals_predict_and_runs_once_per_shard(
    two_regions, two_region_model, tmp_path, client
):
    import miningxr.server as serve_module

    path, regions = two_regions
    cache = tmp_path / "on-demand.zarr"
    server = MiningServer(path, cache, two_region_model)
    before = {name: server.dataset(name) for name in server.regions}
    bb = regions[0].geobox.geographic_extent.boundingbox
    # a bbox inside the first shard of the first region
    w, s = bb.left + 0.001, bb.top - 0.05
    bbox = f"{w},{s},{w + 0.05},{bb.top - 0.001}"
    calls = []
    real = serve_module.write_predictions

    def counted(pred, *a, **k):
        calls.append(pred.shape)
        return real(pred, *a, **k)

    with mock.patch.object(serve_module, "write_predictions", counted), running(serve_app(server)) as url:
        results: list[httpx.Response] = []

        def ask() -> None:
            results.append(httpx.get(f"{url}/mining", params={"bbox": bbox, "year": 2020}, timeout=300))

        threads = [threading.Thread(target=ask) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(r.status_code == 200 for r in results), [r.text for r in results]
        assert len(calls) == 1, "four requests of one shard predicted it more than once"
        assert sum(r.json()["predicted_on_demand"] for r in results) == 1
        # a tile of the probability over that shard now comes from the cache
        z, x, y = _tile_over(regions[0], 12)
        assert httpx.get(f"{url}/tiles/probability/{z}/{x}/{y}.png", params={"year": 2020}).status_code == 200
    # the predicted region's dataset was rebuilt with its predictions, the other's left alone
    first, other = (region_name(g, SHARD) for g in regions)
    assert "mining_probability" in server.dataset(first) and server.dataset(first) is not before[first]
    assert server.dataset(other) is before[other]
    # the whole prediction shard was predicted, where the store holds imagery: the first region
    ds = open_store(path, region=regions[0], years=[2020])
    expected = predict(ds, two_region_model, year=2020).values
    got = open_predictions(cache, ds, year=2020).values
    np.testing.assert_allclose(got, expected, atol=0.5 / 250 + 1e-6)  # the uint8 store's step / 2


def test_on_demand_prediction_of_a_shard_two_regions_share(two_region_model, tmp_path, client):
    """Three small shards in an L inside one 2048 px prediction shard are two regions of the
    store (two rectangles); predicting that shard on demand predicts both."""
    from conftest import TWO_PLACES

    from miningxr import ingest
    from miningxr.config import StoreLayout
    from miningxr.grid import GridSlice, Region

    lon, lat = TWO_PLACES[0]
    r, c = Region.from_bbox((lon, lat, lon + 1e-4, lat + 1e-4)).slice(512).shard_ids(512)[0]
    r, c = r // 4 * 4, c // 4 * 4  # the top-left small shard of a prediction shard
    path = tmp_path / "l.zarr"
    for ids in ([(r, c), (r, c + 1)], [(r + 1, c)]):
        ingest(
            path, GridSlice.covering(ids, 512), 2020, layout=StoreLayout(chunk=256, shard=512), progress=False
        )
    cache = tmp_path / "p.zarr"
    server = MiningServer(path, cache, two_region_model)
    assert len(server.regions) == 2
    made = server.ensure_predicted(GridSlice.covering([(r, c)], 512), 2020)
    assert made and all(server.predicted(reg.gslice, 2020) for reg in server.regions.values())
    # what was predicted: the rectangle over both regions in that shard, in one piece
    cover = GridSlice.covering([(r, c), (r + 1, c + 1)], 512)
    want = predict(open_store(path, region=cover, years=[2020]), two_region_model, year=2020)
    for reg in server.regions.values():
        ds = open_store(path, region=reg.gslice, years=[2020])
        got = open_predictions(cache, ds, year=2020)
        assert np.isfinite(got.values).mean() > 0.9, reg.name  # NaN only where the imagery has none
        np.testing.assert_allclose(got.values, want.sel(y=ds.y, x=ds.x).values, atol=0.5 / 250 + 1e-6)


def test_on_demand_needs_a_prediction_store(two_regions, two_region_model, client, capsys):
    from miningxr.cli import main
    from miningxr.errors import UsageError

    with pytest.raises(UsageError, match="--predictions"):
        MiningServer(two_regions[0], model=two_region_model)
    assert main(["serve", "--store", str(two_regions[0]), "--model", str(two_region_model)]) == 2
    assert "give --predictions too" in capsys.readouterr().err


def test_on_demand_prediction_made_another_way_than_the_store_is_refused_before_serving(
    two_regions, two_region_model, two_region_predictions, tmp_path, client, capsys
):
    """The store was predicted in float32 tiles: a server that would add bfloat16 shards to it
    does not start, and says how to start one that fits."""
    from miningxr.cli import main
    from miningxr.config import PredictConfig
    from miningxr.errors import StoreError

    path, _ = two_regions
    with pytest.raises(StoreError, match="precision 'float32', not mode 'tiles', overlap 16, precision 'bf"):
        MiningServer(
            path, two_region_predictions, two_region_model, predict_config=PredictConfig(precision="bfloat16")
        )
    config = tmp_path / "c.toml"
    config.write_text('[predict]\nmode = "window"\n')
    command = f"serve --store {path} --predictions {two_region_predictions} --model {two_region_model}"
    assert main([*command.split(), "--config", str(config)]) == 2
    assert "serve it with those settings (--config with a [predict] table)" in capsys.readouterr().err
    # the store's own settings: it serves
    assert MiningServer(path, two_region_predictions, two_region_model).model == str(two_region_model)


def test_tilejson_and_xpublish_listing(served, two_regions):
    url, _ = served
    tj = httpx.get(f"{url}/tiles/probability/tilejson.json", params={"year": 2019}).json()
    assert (
        tj["tilejson"] == "3.0.0"
        and tj["tiles"][0] == f"{url}/tiles/probability/{{z}}/{{x}}/{{y}}.png?year=2019"
    )
    w, s, e, n = tj["bounds"]
    assert -117 < w < e < 30 and -27 < s < n < 41  # Nevada to South Africa
    names = httpx.get(f"{url}/datasets").json()
    assert sorted(names) == sorted(region_name(g, SHARD) for g in two_regions[1])
    assert httpx.get(f"{url}/datasets/{names[0]}/info").status_code == 200


def test_binds_loopback_unless_told(two_regions):
    from miningxr.cli import build_parser

    assert ServeConfig().host == "127.0.0.1"
    args = build_parser().parse_args(["serve", "--store", str(two_regions[0])])
    assert args.host is None  # the config's loopback default applies
    with pytest.raises(Exception, match="port"):
        ServeConfig(port=0)


def test_web_page_and_its_scripts_are_served_without_a_cdn(served):
    url, _ = served
    page = httpx.get(url + "/").text
    assert "/static/vendor/leaflet/leaflet.js" in page and "http" not in page.replace(url, "")
    for asset in (
        "/static/vendor/leaflet/leaflet.js",
        "/static/vendor/leaflet/leaflet.css",
        "/static/miningxr.js",
    ):
        r = httpx.get(url + asset)
        assert r.status_code == 200 and len(r.content) > 1000
    js = httpx.get(url + "/static/miningxr.js").text
    assert "https://" not in js and "unpkg" not in js


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
def test_browser_shows_the_mining_layer(served, tmp_path):
    """Headless Chromium loads the page, turns on the probability layer, moves the year slider,
    clicks a pixel and saves a screenshot in which the truth (mining) layer shows."""
    if CHROMIUM is None:
        if os.environ.get("MININGXR_REQUIRE_BROWSER"):  # CI: a missing browser fails, not skips
            pytest.fail("chromium is not installed: apt-get install chromium (.ci/run does)")
        pytest.skip("needs Debian's chromium (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    url, _ = served
    out = Path(tmp_path) / "map.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        page = browser.new_page(viewport={"width": 1000, "height": 800})
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(url + "/")
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        page.get_by_label("Predicted mining probability").check()
        slider = page.locator("#year")
        slider.fill("0")  # the first year
        assert page.locator("#year-label").inner_text() == "2019"
        page.wait_for_load_state("networkidle", timeout=120_000)
        assert any("probability" in u and "year=2019" in u for u in requests)
        page.get_by_label("Predicted mining probability").uncheck()
        page.wait_for_load_state("networkidle", timeout=120_000)
        page.mouse.click(500, 400)
        page.wait_for_selector(".pixel", timeout=60_000)
        page.wait_for_timeout(600)  # the popup fades in
        assert "probability" in page.locator(".pixel").inner_text()
        page.screenshot(path=str(out))
        browser.close()
    assert all(u.startswith(url) for u in requests), "the page fetched something from elsewhere"
    shot = _png_any(out.read_bytes())
    gold = (np.abs(shot[..., :3].astype(int) - np.array(TRUTH_RGBA[:3])) < 40).all(axis=-1)
    assert gold.mean() > 0.001, "the mining (truth) layer does not show in the screenshot"
    if os.environ.get("MININGXR_SCREENSHOT"):  # docs/serve-map.png is made this way
        shutil.copy(out, os.environ["MININGXR_SCREENSHOT"])


def _png_any(body: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(body)).convert("RGBA"))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Dataset has no geotransform")  # odc-geo#131, as above
def test_load_96_tiles_from_8_clients(served, two_regions):
    """Every layer at three zooms from 8 clients at once: no error (``benchmarks/run.py --only
    serve`` times 200)."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    from serve_load import load, tile_paths

    url, _ = served
    _, regions = two_regions
    stats = load(url, tile_paths(regions, n=96), clients=8)
    print(json.dumps(stats))
    assert stats["requests"] == 96 and stats["errors"] == 0, stats
    assert 0 < stats["p50_s"] <= stats["p95_s"]


def test_the_command_serves_until_stopped(two_regions, two_region_predictions):
    """``miningxr serve`` as a user starts it: a process that answers on loopback, and stops on
    SIGINT with status 0."""
    import signal
    import socket
    import subprocess
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "miningxr.cli", "serve", "--store", str(two_regions[0])]
    cmd += ["--predictions", str(two_region_predictions), "--port", str(port)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/regions", timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.5)
        assert r.status_code == 200 and len(r.json()["regions"]) == 2
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port}/" in err and "dashboard" in err
