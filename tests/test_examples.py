"""The synthetic examples run as notebooks: converted by jupytext, executed by nbclient."""

from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _execute(name: str, tmp_path, monkeypatch) -> None:
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("MININGXR_EXAMPLE_DIR", str(tmp_path / "out"))
    nb = jupytext.read(EXAMPLES / name)
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors


def test_open_and_label_example_runs(tmp_path, monkeypatch):
    _execute("01_open_and_label.py", tmp_path, monkeypatch)


@pytest.mark.slow
def test_train_and_predict_example_runs(tmp_path, monkeypatch):
    _execute("02_train_and_predict.py", tmp_path, monkeypatch)
    assert (tmp_path / "out" / "map.png").stat().st_size > 10_000
    assert (tmp_path / "out" / "run" / "model.keras").exists()
