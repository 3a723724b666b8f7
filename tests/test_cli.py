import shlex

import pytest

from miningxr.cli import main


def test_ingest_then_status_reports_all_shards_done(tmp_path, capsys, client):
    store = str(tmp_path / "s.zarr")
    assert main(shlex.split(f"ingest --store {store} --bbox 29.05 -25.95 29.06 -25.94 --year 2020 -q")) == 0
    assert main(["status", "--store", store]) == 0
    out = capsys.readouterr().out
    assert "1 shard(s) done, 0 left" in out


def test_unknown_country_exits_2_with_the_fix(tmp_path, capsys):
    assert (
        main(["ingest", "--store", str(tmp_path / "s.zarr"), "--country", "XXY", "--year", "2020", "-q"]) == 2
    )
    assert "unknown country code 'XXY'" in capsys.readouterr().err


def test_status_of_a_non_store_says_how_to_make_one(tmp_path, capsys):
    assert main(["status", "--store", str(tmp_path / "none.zarr")]) == 2
    assert "miningxr ingest --store" in capsys.readouterr().err


def test_help_teaches_the_pipeline(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "miningxr demo" in capsys.readouterr().out


def test_ingest_by_country_takes_shards_around_its_mines_plus_mine_free_samples(
    tmp_path, client, polygons_path, small_layout_config
):
    import geopandas as gpd

    from miningxr.catalog import Catalog
    from miningxr.grid import CRS_GRID, GridSlice, Region

    store = tmp_path / "s.zarr"
    assert (
        main(
            shlex.split(
                f"ingest --store {store!s} --country ZAF --polygons {polygons_path!s} --year 2020 --buffer-km 1 --config {small_layout_config!s} -q"
            )
        )
        == 0
    )
    with Catalog(store) as cat:
        ids = {(r, c) for r, c in cat.shards()[["shard_row", "shard_col"]].itertuples(index=False)}
    mines = gpd.read_file(polygons_path).to_crs(CRS_GRID)
    near = set(Region.from_geometry(mines.buffer(1000)).shard_ids(512))
    zaf = Region.from_country("ZAF").geometry
    assert near and near <= ids and len(ids) == 2 * len(near)
    for s in ids - near:  # the negatives: inside the country, away from every mine
        extent = GridSlice.of_shard(s, 512).geobox.extent
        assert extent.intersects(zaf)
        assert not mines.buffer(1000).intersects(extent.geom).any()


def test_ingest_by_country_without_its_polygons_is_a_clear_error(tmp_path, capsys, polygons_path):
    assert (
        main(
            shlex.split(
                f"ingest --store {tmp_path / 's.zarr'!s} --country BWA --polygons {polygons_path!s} --year 2020 -q"
            )
        )
        == 2
    )
    assert "BWA" in capsys.readouterr().err


def test_the_cli_reference_in_docs_is_current():
    from pathlib import Path

    from miningxr.cli import reference

    page = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
    assert page.read_text() == reference(), "run: python -m miningxr.cli --reference > docs/cli.md"


def test_train_with_a_scheduler_reads_on_that_cluster(store, client, monkeypatch, tmp_path):
    import miningxr.model.train
    import miningxr.tiles

    seen = {}
    monkeypatch.setattr(miningxr.tiles, "tile_index", lambda s, **kw: miningxr.tiles.load_tile_index(s))
    monkeypatch.setattr(
        miningxr.model.train,
        "train",
        lambda *a, client, **kw: seen.update(address=client.scheduler.address) or "trained",
    )
    assert (
        main(
            shlex.split(
                f"train --store {store!s} --out {tmp_path!s} --scheduler {client.scheduler.address} -q"
            )
        )
        == 0
    )
    assert seen["address"] == client.scheduler.address


def test_train_without_a_scheduler_reads_in_process(store, monkeypatch, tmp_path):
    import miningxr.model.train
    import miningxr.tiles

    seen = {}
    monkeypatch.setattr(miningxr.tiles, "tile_index", lambda s, **kw: miningxr.tiles.load_tile_index(s))
    monkeypatch.setattr(miningxr.model.train, "train", lambda *a, **kw: seen.update(kw) or "trained")
    assert main(["train", "--store", str(store), "--out", str(tmp_path), "-q"]) == 0
    assert seen["client"] is None


def test_a_mistake_is_one_line_and_a_bug_is_a_traceback(monkeypatch, capsys, tmp_path):
    from miningxr import cli

    # a user's mistake: one line that names the fix, exit status 2, no traceback
    assert cli.main(["status", "--store", str(tmp_path / "none.zarr")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "miningxr ingest" in err and "Traceback" not in err

    # anything else is a bug: its traceback, and a line saying so, exit status 1
    def broken(args):
        raise KeyError("internal")

    monkeypatch.setitem(cli.COMMANDS, "status", broken)
    assert cli.main(["status", "--store", str(tmp_path / "none.zarr")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'internal'" in err and "this is a bug in miningxr" in err


def test_evaluate_and_export_a_sparse_store_region_by_region(
    two_regions, two_region_predictions, tmp_path, capsys
):
    import json

    path, _ = two_regions
    out = tmp_path / "eval"
    command = f"evaluate --store {path} --predictions {two_region_predictions} --split all --out {out} -q"
    assert main(command.split()) == 0
    report = json.loads((out / "report.json").read_text())
    assert len(report["per_region"]) == 2 and sorted(report["per_year"]) == ["2019", "2020"]
    assert (out / "map.png").stat().st_size > 10_000
    exports = tmp_path / "exports"
    assert (
        main(f"export --store {path} --predictions {two_region_predictions} --out {exports} -q".split()) == 0
    )
    assert len(list(exports.glob("mining_probability_r*_20*.tif"))) == 4  # 2 regions x 2 years
    assert (exports / "mining_predicted.gpkg").exists()
