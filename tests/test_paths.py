"""URLs are refused, never taken for folder names, until object storage works (issue #20)."""

import pytest

from miningxr import UsageError, open_store
from miningxr.cli import main
from miningxr.paths import local_path


@pytest.mark.parametrize("url", ["s3://bucket/s.zarr", "gs://b/s.zarr", "az://c/s.zarr", "memory://s.zarr"])
def test_a_url_is_refused_naming_the_issue(url):
    with pytest.raises(UsageError, match=r"is a URL.*issue #20"):
        local_path(url)
    with pytest.raises(UsageError, match="is a URL"):
        open_store(url)


@pytest.mark.parametrize(
    "command",
    [
        "ingest --store s3://bucket/s.zarr --bbox 29 -26 29.05 -25.95 --year 2020",
        "demo --out s3://bucket/demo",
        "change --predictions gs://bucket/p.zarr --out change",
        "evaluate --store s.zarr --predictions p.zarr --out az://container/eval",
        "status --store s3://bucket/s.zarr",
    ],
)
def test_cli_refuses_urls_and_writes_no_folder_named_after_them(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(command.split()) == 2
    assert "is a URL" in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), list(tmp_path.rglob("*"))
