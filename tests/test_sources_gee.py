"""The Earth Engine source through the real xee backend, against an in-process fake service."""

from __future__ import annotations

import json
import logging
import shlex
import time

import numpy as np
import pytest
from fake_ee import FakeEarthEngine

from miningxr import ingest, open_landsat, open_store, status
from miningxr.config import StoreLayout
from miningxr.encoding import decode_dn, encode_dn
from miningxr.grid import GridSlice
from miningxr.sources import SourceError
from miningxr.sources.synthetic import open_synthetic

ee = pytest.importorskip("ee")
pytest.importorskip("xee")

# small shards keep each test to a few dozen requests; the grid is the same global grid
LAYOUT = StoreLayout(chunk=256, shard=512)
FAST = {"initial_delay": 0.001, "max_delay": 0.01}
GEE_INGEST = {"source": "gee", "layout": LAYOUT, "source_options": FAST, "progress": False}


@pytest.fixture
def two_shards(shard_slice) -> GridSlice:
    r0, c0 = shard_slice.row0, shard_slice.col0
    return GridSlice(r0, r0 + 512, c0, c0 + 1024)


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    """A machine where nobody ran `earthengine authenticate` and no ADC exists."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # google-auth would probe the GCE metadata server
    for var in (
        "GOOGLE_APPLICATION_CREDENTIALS",
        "EE_CREDENTIALS",
        "CLOUDSDK_CONFIG",
        "MININGXR_GEE_KEY_FILE",
        "MININGXR_GEE_PROJECT",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    ee.Reset()
    yield
    ee.Reset()


def test_gee_cube_equals_the_synthetic_cube_pixel_for_pixel(shard_slice):
    gs = GridSlice(shard_slice.row0, shard_slice.row0 + 512, shard_slice.col0, shard_slice.col0 + 768)
    with FakeEarthEngine():
        got = open_landsat(gs, [2019, 2020], source="gee", decode=False, chunks=256).load()
    want = open_synthetic(gs, [2019, 2020], decode=False)
    assert got.landsat.dtype == np.int16
    np.testing.assert_array_equal(got.landsat.values, want.landsat.values)
    np.testing.assert_array_equal(got.x.values, want.x.values)
    np.testing.assert_array_equal(got.y.values, want.y.values)
    assert got.attrs["source"] == "gee"


def test_gee_requests_land_on_the_global_grid_under_the_size_limit(shard_slice):
    gs = GridSlice(shard_slice.row0, shard_slice.row0 + 512, shard_slice.col0, shard_slice.col0 + 512)
    with FakeEarthEngine() as fake:  # the fake refuses any grid off the 30 m EPSG:6933 lattice
        open_landsat(gs, 2020, source="gee", chunks=512, request_side=256).landsat.load()
    dims = {(g["dimensions"]["width"], g["dimensions"]["height"]) for g in fake.requests}
    assert dims == {(256, 256)}
    assert len(fake.requests) == 4 * 7  # four requests per band, one band per request


def test_gee_ingest_equals_synthetic_ingest(tmp_path, client, two_shards):
    with FakeEarthEngine():
        report = ingest(
            tmp_path / "gee.zarr",
            two_shards,
            2020,
            **GEE_INGEST,
        )
    assert report.ok and report.written == 2
    ingest(tmp_path / "syn.zarr", two_shards, 2020, layout=LAYOUT, progress=False)
    a = open_store(tmp_path / "gee.zarr", two_shards, 2020).landsat.values
    b = open_store(tmp_path / "syn.zarr", two_shards, 2020).landsat.values
    np.testing.assert_array_equal(a, b)


def test_gee_quota_errors_are_retried_and_nothing_is_lost(tmp_path, client, two_shards):
    failed_once: set = set()

    def quota(n, grid):
        key = json.dumps(grid, sort_keys=True)
        if n % 3 == 0 and key not in failed_once:
            failed_once.add(key)
            return ee.EEException("Too many concurrent aggregations. (HTTP 429)")
        return None

    with FakeEarthEngine(fault=quota) as fake:
        report = ingest(
            tmp_path / "s.zarr",
            two_shards,
            2020,
            **GEE_INGEST,
        )
    assert failed_once and report.ok and not report.failed
    assert len(fake.requests) == 2 * 7 + len(failed_once)  # each refused request was sent again
    got = open_store(tmp_path / "s.zarr", two_shards, 2020).landsat.values
    want = open_synthetic(two_shards, 2020).landsat.values
    np.testing.assert_array_equal(got, decode_dn(encode_dn(want)))  # packed, decoded in float32


def test_gee_permanent_error_marks_only_its_shard_failed(tmp_path, client, two_shards):
    bad_x = two_shards.geobox.affine.c + 512 * 30  # the second shard's left edge

    def refuse(n, grid):
        if grid["affineTransform"]["translateX"] >= bad_x:
            return ee.EEException(
                "Image.load: Asset 'LANDSAT/COMPOSITES/C02/T1_L2_ANNUAL' is not "
                "accessible to project fake-project."
            )
        return None

    path = tmp_path / "s.zarr"
    with FakeEarthEngine(fault=refuse):
        report = ingest(path, two_shards, 2020, **GEE_INGEST)
    assert report.written == 1 and len(report.failed) == 1
    (err,) = report.failed.values()
    assert "refused" in err and "not accessible" in err
    st = status(path)
    assert int(st["failed"].sum()) == 1 and int(st["done"].sum()) == 1
    assert "not accessible" in st["error"].dropna().iloc[0]


def test_gee_year_without_a_composite_is_a_clear_error(shard_slice):
    from miningxr.config import SyntheticConfig

    with (
        FakeEarthEngine(SyntheticConfig(last_year=2020)),
        pytest.raises(SourceError, match=r"no Earth Engine composite for year\(s\) \[2021\]"),
    ):
        open_landsat(shard_slice, [2020, 2021], source="gee")


def test_gee_without_credentials_says_how_to_authenticate(no_credentials, shard_slice):
    with pytest.raises(SourceError, match="earthengine authenticate") as info:
        open_landsat(shard_slice, 2020, source="gee")
    assert "--gee-key-file" in str(info.value)


def test_gee_missing_key_file_names_the_option(no_credentials, shard_slice, tmp_path):
    with pytest.raises(SourceError, match=r"key file .* does not exist"):
        open_landsat(shard_slice, 2020, source="gee", key_file=tmp_path / "nope.json")


@pytest.fixture
def service_account_key(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "p",
        "private_key_id": "abc123secretkeyid",
        "private_key": pem,
        "client_email": "sa@p.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    path = tmp_path / "key.json"
    path.write_text(json.dumps(info))
    return path, pem


@pytest.fixture
def short_google_retries(monkeypatch):
    """The Google API client retries the unreachable discovery request with real back-off (15-35 s
    of sleeping): the same retries, with its sleeps cut to a millisecond. Returns the delays asked."""
    import types

    import googleapiclient.http

    asked: list[float] = []

    def sleep(seconds: float) -> None:
        asked.append(seconds)
        time.sleep(min(seconds, 0.001))

    monkeypatch.setattr(googleapiclient.http, "time", types.SimpleNamespace(**{**vars(time), "sleep": sleep}))
    return asked


def test_gee_without_network_says_so_and_never_logs_the_key(
    no_credentials, shard_slice, service_account_key, caplog, capsys, short_google_retries
):
    path, pem = service_account_key
    caplog.set_level(logging.DEBUG)
    with pytest.raises(SourceError, match="cannot reach Earth Engine") as info:
        open_landsat(shard_slice, 2020, source="gee", key_file=path, project="p")
    out = capsys.readouterr()
    secret = pem.splitlines()[1]
    for text in (str(info.value), caplog.text, out.out, out.err):
        assert secret not in text and "PRIVATE KEY" not in text and "abc123secretkeyid" not in text
    assert short_google_retries, "the client gave up without retrying: the delays were not injected"


def test_cli_ingest_from_earth_engine_then_status(tmp_path, client, capsys, small_layout_config):
    from miningxr.cli import main

    store = str(tmp_path / "s.zarr")
    with FakeEarthEngine():
        assert (
            main(
                shlex.split(
                    f"ingest --store {store} --bbox 29.05 -25.95 29.051 -25.949 --year 2020 --source gee --gee-project fake-project --config {small_layout_config!s} -q"
                )
            )
            == 0
        )
    assert main(["status", "--store", store]) == 0
    assert "shard(s) done, 0 left" in capsys.readouterr().out
