import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.sampled_from([256, 512, 700, 2048]),
    cols=st.sampled_from([256, 1000, 2048]),
    seed=st.integers(0, 2**16),
)
def test_the_counts_are_numpys_under_any_chunking(store, polygons_path, rows, cols, seed):
    """Every count of the report (confusion, AUC histograms, per-polygon pixels and hits) is
    what numpy counts over the whole split at once, whatever the prediction's chunks, NaN
    (no data) included."""
    from miningxr.evaluate import BINS
    from miningxr.grid import GridSlice
    from miningxr.labels import rasterize_blocks, read_polygons

    ds = open_store(store)
    truth = ds.mining.values > 0
    rng = np.random.default_rng(seed)
    prob = rng.random(truth.shape, dtype=np.float32)
    prob[rng.random(truth.shape) < 0.05] = np.nan
    pred = ds.mining.astype("float32").copy(data=prob).chunk({"y": rows, "x": cols})
    r = evaluate(store, pred, split="test", polygons=polygons_path, threshold=0.4)
    index = load_tile_index(store)
    test = index[index.split == "test"]
    split = np.zeros(truth.shape, bool)
    gs = GridSlice.of_coords(ds)
    for tr, tc in zip(test.tile_row - gs.row0 // 64, test.tile_col - gs.col0 // 64, strict=True):
        split[tr * 64 : (tr + 1) * 64, tc * 64 : (tc + 1) * 64] = True
    where = split & np.isfinite(prob)
    hit = prob >= 0.4
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (
        int((hit & truth & where).sum()),
        int((hit & ~truth & where).sum()),
        int((~hit & truth & where).sum()),
        int((~hit & ~truth & where).sum()),
    )
    b = np.clip((np.nan_to_num(prob) * BINS).astype(int), 0, BINS - 1)
    assert r["auc"] == pytest.approx(
        _auc(np.bincount(b[truth & where], minlength=BINS), np.bincount(b[~truth & where], minlength=BINS))
    )
    gdf = read_polygons(polygons_path, require_columns=False)  # in the grid's CRS, as evaluate reads them
    ids = rasterize_blocks(
        gs, gdf, (gs.shape[0],), (gs.shape[1],), values=np.arange(1, len(gdf) + 1)
    ).compute()
    pixels = np.bincount(ids[where], minlength=len(gdf) + 1)[1:]
    hits = np.bincount(ids[where & hit], minlength=len(gdf) + 1)[1:]
    assert r["polygons_in_split"] == int((pixels > 0).sum())
    assert r["polygons_detected"] == int((hits[pixels > 0] / pixels[pixels > 0] >= 0.5).sum())
