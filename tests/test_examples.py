"""The synthetic examples run as notebooks: converted by jupytext, executed by nbclient."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _execute(name: str, tmp_path, monkeypatch) -> None:
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend: figures become outputs
    monkeypatch.setenv("MININGXR_EXAMPLE_DIR", str(tmp_path / "out"))
    nb = jupytext.read(EXAMPLES / name)
    # a cell that raises fails the test here (nbclient raises CellExecutionError)
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    return nb


def _outputs(nb) -> tuple[str, int]:
    """The notebook's printed text, and how many pictures it drew."""
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    pictures = sum("image/png" in o.get("data", {}) for o in outputs)
    return text, pictures


def test_open_and_label_example_runs(tmp_path, monkeypatch):
    text, pictures = _outputs(_execute("01_open_and_label.py", tmp_path, monkeypatch))
    assert "CRS: EPSG:6933" in text
    pixels = re.search(r"mining pixels: (\d+) = ([\d.]+) km2", text)
    assert pixels and int(pixels[1]) > 0 and float(pixels[2]) == pytest.approx(int(pixels[1]) * 0.0009)
    assert pictures >= 3  # false colour + NDVI, the mask, the growth


@pytest.mark.slow
def test_train_and_predict_example_runs(tmp_path, monkeypatch):
    _execute("02_train_and_predict.py", tmp_path, monkeypatch)
    assert (tmp_path / "out" / "map.png").stat().st_size > 10_000
    assert (tmp_path / "out" / "run" / "model.keras").exists()
