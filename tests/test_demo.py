"""``miningxr demo --temporal``: a small run end to end, its outputs, and its refusals."""

import json

import pandas as pd
import pytest
import rasterio

from miningxr.cli import main

SMALL = "[store]\nchunk = 256\nshard = 512\n\n[tiles]\nblock_tiles = 2\n"


def test_temporal_demo_writes_change_outputs_and_scores_them_against_the_truth(tmp_path, client, capsys):
    config = tmp_path / "c.toml"
    config.write_text(SMALL)
    out = tmp_path / "demo"
    command = (
        f"demo --temporal --first-year 2017 --last-year 2020 --year 2020 --shards 2 2 --epochs 1 "
        f"--base-filters 4 --overlap 0 --config {config} --out {out} -q"
    )
    assert main(command.split()) == 0
    printed = capsys.readouterr().out
    for year in range(2017, 2021):
        assert f"\n  {year} " in printed  # the area curve, year by year
    assert "onset year" in printed and "flicker" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["years"] == [2017, 2020] and report["train_year"] == 2020
    assert set(report["flicker_per_pixel_decade"]) == {"truth", "observed", "consistent"}
    change = out / "change"
    for name in ("change.csv", "change.parquet", "expansion.gpkg", "change.png", "onset.png", "mining.gif"):
        assert (change / name).stat().st_size > 0, name
    onset = next(change.glob("onset*.tif"))
    with rasterio.open(onset) as src:
        assert src.count == 1 and src.colormap(1)
    curve = pd.read_csv(change / "area_vs_truth.csv")
    assert curve.year.tolist() == [2017, 2018, 2019, 2020]
    # the truth grows as the synthetic mines do, and is never empty here
    assert (curve.true_km2 > 0).all()


def test_temporal_demo_refuses_a_training_year_outside_its_span_before_writing(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(f"demo --temporal --first-year 2000 --last-year 2010 --year 2020 --out {out}".split()) == 2
    assert "--year 2020" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("span", [("2019", "2020")])
def test_temporal_demo_needs_three_years_at_least(tmp_path, capsys, span):
    out = tmp_path / "demo"
    first, last = span
    assert main(f"demo --temporal --first-year {first} --last-year {last} --out {out}".split()) == 2
    assert "at least 3 years" in capsys.readouterr().err


def test_temporal_demo_over_a_region_without_mines_says_so_before_ingesting(tmp_path, client, capsys):
    config = tmp_path / "c.toml"
    config.write_text(SMALL)
    out = tmp_path / "demo"
    command = (
        f"demo --temporal --first-year 2018 --last-year 2020 --shards 1 1 --config {config} --out {out} -q"
    )
    assert main(command.split()) == 2
    assert "no synthetic mine is open in 2020" in capsys.readouterr().err
    assert not (out / "store.zarr").exists()


@pytest.mark.slow  # ~1-2 min: the whole demo, its stores in S3
def test_the_demo_with_its_stores_in_s3_runs_and_logs_no_credential(tmp_path, s3_prefix, client, capsys):
    """``miningxr demo --store s3://...`` against the S3 server on loopback: the imagery and
    prediction stores live in the bucket, the report and pictures in --out, and nothing the
    demo prints or logs holds the server's credentials."""
    from conftest import S3_KEY_ID, S3_SECRET

    from miningxr.paths import as_location

    out = tmp_path / "demo"
    command = f"demo --store {s3_prefix}/demo --shards 1 1 --epochs 4 --base-filters 8 --out {out} -v"
    assert main(command.split()) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["outputs"]["store"] == f"{s3_prefix}/demo/store.zarr"
    assert report["outputs"]["predictions"] == f"{s3_prefix}/demo/predictions.zarr"
    for name in ("store.zarr", "predictions.zarr"):
        assert as_location(f"{s3_prefix}/demo/{name}").exists("zarr.json")
        assert not (out / name).exists()
    # a real score of real predictions read back from the bucket (4 epochs: not a good model)
    assert report["pixels"] > 0 and 0 < report["iou"] <= 1 and report["area_true_km2"] > 0
    printed = capsys.readouterr()
    logs = (out / "miningxr.log").read_text() + printed.out + printed.err
    assert s3_prefix in logs
    assert S3_KEY_ID not in logs and S3_SECRET not in logs
