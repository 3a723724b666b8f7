import numpy as np
import pytest

from miningxr import evaluate, load_tile_index, open_predictions, open_regions, open_store
from miningxr.evaluate import _auc, plot_map, plot_tiles


def test_auc_from_histograms_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 50, 300), rng.integers(0, 50, 500)
    hp, hn = np.bincount(pos, minlength=50), np.bincount(neg, minlength=50)
    want = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (300 * 500)
    assert _auc(hp, hn) == pytest.approx(want)


def test_perfect_predictions_score_one(store, polygons_path):
    ds = open_store(store)
    truth = ds.mining.astype("float32")
    r = evaluate(store, truth, split="test", polygons=polygons_path)
    assert r["iou"] == 1 and r["f1"] == 1 and r["auc"] == 1
    assert r["polygon_detection_rate"] == 1 and r["polygons_in_split"] > 0
    assert r["area_true_km2"] == pytest.approx(r["area_predicted_km2"])


def test_metrics_cover_every_pixel_of_the_split(store):
    ds = open_store(store)
    index = load_tile_index(store)
    r = evaluate(store, ds.mining.astype("float32") * 0 + 0.7, split="test")
    n_test = int((index.split == "test").sum()) * 64 * 64
    assert r["pixels"] == n_test
    assert r["recall"] == 1 and r["precision"] == pytest.approx((r["tp"]) / n_test)


def test_plots_are_written(store, tmp_path):
    ds = open_store(store)
    prob = ds.mining.astype("float32")
    index = load_tile_index(store)
    assert plot_tiles(ds, prob, index, tmp_path / "t.png").stat().st_size > 10_000
    assert plot_map(ds, prob, tmp_path / "m.png", index=index).stat().st_size > 10_000


def test_a_sparse_store_is_scored_per_region_and_year(two_regions, two_region_predictions, tmp_path):
    from miningxr import evaluate

    path, _ = two_regions
    report = evaluate(path, two_region_predictions, split="all", out=tmp_path / "r.json")
    assert sorted(report["per_year"]) == ["2019", "2020"] and len(report["per_region"]) == 2
    # every pixel of both regions with a prediction (all but residual cloud), once per year;
    # the parts add up to the whole
    tree = open_regions(path)
    predicted = sum(
        int(open_predictions(two_region_predictions, node.to_dataset()).notnull().sum())
        for node in tree.children.values()
    )
    assert report["pixels"] == predicted > 0.9 * 2 * 2 * 1024 * 1024
    assert sum(r["pixels"] for r in report["per_year"].values()) == report["pixels"]
    assert sum(r["tp"] for r in report["per_region"].values()) == report["tp"]
    test = evaluate(path, two_region_predictions, split="test")
    assert 0 < test["pixels"] < report["pixels"]


@pytest.mark.parametrize("shape", ["(y, x)", "(y, x) with a scalar year", "(year, y, x)"])
def test_predictions_in_memory_of_any_year_shape_are_scored_alike(store, shape):
    truth = open_store(store).mining.astype("float32")
    pred = {
        "(y, x)": truth,
        "(y, x) with a scalar year": truth.assign_coords(year=2020),
        "(year, y, x)": truth.expand_dims(year=[2020]),
    }[shape]
    r = evaluate(store, pred, split="all")
    assert r["iou"] == 1 and r["pixels"] == 2048 * 2048 and len(r["per_year"]) == 1
