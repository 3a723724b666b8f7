import pytest

from miningxr.cli import main


def test_ingest_then_status_reports_all_shards_done(tmp_path, capsys, client):
    store = str(tmp_path / "s.zarr")
    assert main(["ingest", "--store", store, "--bbox", "29.05", "-25.95", "29.06", "-25.94", "--year", "2020", "-q"]) == 0
    assert main(["status", "--store", store]) == 0
    out = capsys.readouterr().out
    assert "1 shard(s) done, 0 left" in out


def test_unknown_country_exits_2_with_the_fix(tmp_path, capsys):
    assert main(["ingest", "--store", str(tmp_path / "s.zarr"), "--country", "XXY", "--year", "2020", "-q"]) == 2
    assert "unknown country code 'XXY'" in capsys.readouterr().err


def test_status_of_a_non_store_says_how_to_make_one(tmp_path, capsys):
    assert main(["status", "--store", str(tmp_path / "none.zarr")]) == 2
    assert "miningxr ingest --store" in capsys.readouterr().err


def test_help_teaches_the_pipeline(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "miningxr demo" in capsys.readouterr().out
