"""``miningxr demo``: the whole pipeline on the synthetic source, into one folder.

``miningxr demo`` maps one year; ``miningxr demo --temporal`` follows a span of years: it
trains on the reference year's polygons, predicts every year, runs :func:`~miningxr.change`
and checks the mined area and onset years against the synthetic source's per-year truth.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .change import change, change_accuracy, consistent_mining, observed_mining
from .cluster import dask_client
from .config import Config, check_temporal_span
from .errors import UsageError
from .evaluate import evaluate, plot_map, plot_tiles
from .export import export
from .grid import GridSlice, Region
from .ingest import ingest
from .jsonio import write_json
from .labels import write_mask
from .model.train import train
from .paths import Location, as_location, local_path
from .predict import open_predictions, predict, write_predictions
from .sources.synthetic import mine_polygons, mine_table, mining_truth
from .store import open_store
from .tiles import tile_index

log = logging.getLogger("miningxr")


@contextmanager
def _stage(name: str, times: dict[str, float]) -> Iterator[None]:
    log.info("stage %s ...", name)
    t0 = time.perf_counter()
    yield
    times[name] = round(time.perf_counter() - t0, 1)
    log.info("stage %s done in %.1fs", name, times[name])


def _demo_region(args: argparse.Namespace, cfg: Config) -> tuple[GridSlice, int]:
    """The demo's shards from the shard at ``--lon/--lat``: its slice and how many shards."""
    shard = cfg.store.shard
    r0, c0 = GridSlice.of_geobox(
        Region.from_bbox((args.lon, args.lat, args.lon + 1e-4, args.lat + 1e-4)).slice(shard).geobox
    ).shard_ids(shard)[0]
    ids = [(r0 + i, c0 + j) for i in range(args.shards[0]) for j in range(args.shards[1])]
    return GridSlice.covering(ids, shard), len(ids)


def _demo_training(args: argparse.Namespace, cfg: Config) -> Config:
    """The demo's training settings: a small UNet that trains on CPU in a minute, unless the
    config file sets its own. Mining pixels are weighed as much as others (``pos_weight`` 1,
    not the seed project's 10): with two negative tiles per positive the classes are balanced
    enough, and a weight of 10 bought recall with false mines on buildings and bare fields
    (test IoU 0.57 against 0.95 on one shard of 2020, 16 epochs)."""
    if cfg.train != Config().train:
        return cfg
    # --temporal trains on one year and predicts thirty: at 10 epochs its background sat at
    # 0.14-0.17 and some years' mines fell under the threshold (per-year area 37-43% short in
    # 2010-2014); at 20 every year 1990-2020 was within 9% (docs/benchmarks.md)
    epochs = args.epochs or (20 if args.temporal else 10)
    return cfg.replace(
        "train",
        base_filters=args.base_filters,
        epochs=epochs,
        learning_rate=2e-3,
        patience=epochs,
        pos_weight=1.0,
    )


def _setup(args: argparse.Namespace) -> tuple[Config, Path, GridSlice, int]:
    """The demo's config, its output folder (made), its region and how many shards it has."""
    cfg = Config.from_file(args.config) if args.config else Config()
    out = local_path(args.out, what="the demo's folder (--out)")
    out.mkdir(parents=True, exist_ok=True)
    return (cfg, out, *_demo_region(args, cfg))


def _stores(args: argparse.Namespace, out: Path) -> tuple[Location, Location]:
    """The demo's imagery store and prediction store: in ``--out``, or below ``--store`` (a
    folder or an object-storage URL such as ``s3://bucket/demo``)."""
    root = as_location(args.store, what="--store") if getattr(args, "store", None) else as_location(out)
    return root / "store.zarr", root / "predictions.zarr"


@contextmanager
def _client(args: argparse.Namespace) -> Iterator[str]:
    """The demo's Dask client (``--scheduler`` or a LocalCluster); yields its dashboard link."""
    with dask_client(args.scheduler) as client:
        print(f"Dask dashboard: {client.dashboard_link}")
        yield client.dashboard_link


def _train_on_one_year(
    args: argparse.Namespace, cfg: Config, years: list[int], out: Path, times: dict[str, float]
) -> tuple[Any, Any]:
    """The stages both demos share: ingest ``years``, rasterize the polygons of ``--year``,
    build its tile index and train. Returns the tile index and the training result."""
    store, _ = _stores(args, out)
    region, _ = _demo_region(args, cfg)
    progress = not args.quiet
    # the polygons trained on, checked before anything is written
    polys = mine_polygons(region, args.year, config=cfg.synthetic)
    if polys.empty:
        raise UsageError(
            f"no synthetic mine is open in {args.year} in the demo's region ({region.describe()}): "
            "nothing to train on; choose more --shards, another --lon/--lat or another --year"
        )
    with _stage("ingest", times):
        print(
            ingest(
                store,
                region,
                years,
                layout=cfg.store,
                source_options={"config": cfg.synthetic},
                progress=progress,
            )
        )
    with _stage("labels", times):
        polys.to_file(out / "mines.gpkg", layer="mining_polygons", driver="GPKG")
        print(write_mask(store, out / "mines.gpkg", progress=progress))
    train_cfg = _demo_training(args, cfg)
    with _stage("tiles", times):
        index = tile_index(store, year=args.year, config=cfg.tiles)
        counts = index[index.selected].groupby("split").positive.agg(["size", "sum"])
        log.info("tiles (selected, positive) per split:\n%s", counts.to_string())
    with _stage("train", times):
        result = train(
            store, index=index, config=train_cfg.train, out_dir=out / "run", verbose=2 if progress else 0
        )
    return index, result


def _predict_years(
    args: argparse.Namespace,
    cfg: Config,
    out: Path,
    years: list[int],
    model: Path,
    overlap: int,
    times: dict[str, float],
) -> Any:
    """Predict ``years`` of the demo's store into its prediction store (``--overlap`` or
    ``overlap``); returns the cube predicted."""
    with _stage("predict", times):
        store, pred_store = _stores(args, out)
        ds = open_store(store, years=years)
        prob = predict(
            ds, model, config=cfg.predict, overlap=overlap if args.overlap is None else args.overlap
        )
        print(write_predictions(prob, pred_store, progress=not args.quiet))
    return ds


def run_demo(args: argparse.Namespace) -> int:
    if getattr(args, "temporal", False):
        return run_temporal_demo(args)
    cfg, out, region, n_shards = _setup(args)
    store, pred_store = _stores(args, out)
    times: dict[str, float] = {}
    t_all = time.perf_counter()
    with _client(args) as dashboard:
        index, result = _train_on_one_year(args, cfg, [args.year], out, times)
        ds = _predict_years(args, cfg, out, [args.year], result.model_path, 16, times)
        with _stage("evaluate", times):
            report = evaluate(store, pred_store, split="test", polygons=out / "mines.gpkg", index=index)
            prob = open_predictions(pred_store, ds, year=args.year)
            plot_tiles(ds, prob, index, out / "tiles.png")
            plot_map(ds, prob, out / "map.png", index=index)
        with _stage("export", times):
            paths = export(prob, out / "exports")
    report.update(
        stage_seconds=times,
        total_seconds=round(time.perf_counter() - t_all, 1),
        dashboard=dashboard,
        train_test_metrics=result.test_metrics,
        outputs={
            "store": str(store),
            "predictions": str(pred_store),
            "model": str(result.model_path),
            "tiles_png": str(out / "tiles.png"),
            "map_png": str(out / "map.png"),
            **{k: str(v) for k, v in paths.items()},
        },
    )
    write_json(report, out / "report.json")
    print(f"""
miningxr demo: synthetic region of {n_shards} shard(s) ({region.shape[0]}x{region.shape[1]} px), year {args.year}
  test split   IoU {report["iou"]:.3f}   F1 {report["f1"]:.3f}   precision {report["precision"]:.3f}   recall {report["recall"]:.3f}   AUC {report["auc"]:.3f}
  mining area  found {report["area_predicted_km2"]:.1f} km2 vs true {report["area_true_km2"]:.1f} km2 (test split)
  polygons     {report.get("polygons_detected", 0)}/{report.get("polygons_in_split", 0)} detected
  time         {"  ".join(f"{k} {v:.0f}s" for k, v in times.items())}   total {report["total_seconds"]:.0f}s
  dashboard    {dashboard}
  outputs      {out}/ (report.json, map.png, tiles.png, exports/, run/model.keras{"" if args.store else ", store.zarr, predictions.zarr"})
  stores       {store}, {pred_store}
  on a map     miningxr serve --store {store} --predictions {pred_store}
""")
    return 0


def run_temporal_demo(args: argparse.Namespace) -> int:
    """``miningxr demo --temporal``: a span of years, change over time, checked against truth."""
    check_temporal_span(args)
    years = list(range(args.first_year, args.last_year + 1))
    cfg, out, region, n_shards = _setup(args)
    times: dict[str, float] = {}
    t_all = time.perf_counter()
    with _client(args) as dashboard:
        _, result = _train_on_one_year(args, cfg, years, out, times)
        # 8 px of overlap: no seams, and a sixth less work than 16 over 31 years
        ds = _predict_years(args, cfg, out, years, result.model_path, 8, times)
        store, pred_store = _stores(args, out)
        with _stage("change", times):
            table = change(pred_store, out / "change", config=cfg.change, animate=True, store=store)
        with _stage("truth", times):
            prob = open_predictions(pred_store, ds)
            # lazy: change_accuracy reads them a strip of chunks at a time
            mined = consistent_mining(prob, cfg.change)
            truth = mining_truth(region, years, config=cfg.synthetic)
            observed = observed_mining(prob, cfg.change.threshold)
            mines = mine_table(region, config=cfg.synthetic)
            acc = change_accuracy(
                mined,
                truth.mining,
                mine_ids=truth.mine,
                opened=dict(zip(mines.MINE_ID.tolist(), mines.opened.tolist(), strict=True)),
                observed=observed,
            )
    per_year = acc["per_year"]
    per_year.to_csv(out / "change" / "area_vs_truth.csv", index=False)
    plot_area_vs_truth(per_year, out / "change" / "area_vs_truth.png", train_year=args.year)
    later = per_year[per_year.year >= min(years[0] + 5, years[-1])]
    mae = acc.get("onset_mae_years")
    mae = None if mae is None or mae != mae else mae  # None where no mine opened or none was found
    area_err = float(later.relative_error.abs().max())  # NaN where no year had a mine
    report = {
        "region": region.describe(),
        "years": [years[0], years[-1]],
        "train_year": args.year,
        "train_test_metrics": result.test_metrics,
        "onset_mae_years": mae,
        "mines_opened_in_span": len(acc["onset_mines"]) if "onset_mines" in acc else 0,
        "mines_missed": acc.get("mines_missed"),
        "area_max_relative_error_after_5_years": None if area_err != area_err else area_err,
        "flicker_per_pixel_decade": acc["flicker"],
        "change_rows": len(table),
        "stage_seconds": times,
        "total_seconds": round(time.perf_counter() - t_all, 1),
        "dashboard": dashboard,
    }
    write_json(report, out / "report.json")
    curve = "\n".join(
        f"  {r.year}  {r.true_km2:8.2f}  {r.found_km2:8.2f}  {100 * r.relative_error:+6.1f}%"
        + ("   <- trained on this year" if r.year == args.year else "")
        for r in per_year.itertuples()
    )
    fl = acc["flicker"]
    opened, missed = report["mines_opened_in_span"], report["mines_missed"] or 0
    onset = (
        f"mean absolute error {mae:.2f} years over the {opened - missed} mines "
        f"found of {opened} that opened in {years[0] + 1}-{years[-1]}"
        if mae is not None
        else f"no mine opened in {years[0] + 1}-{years[-1]} was found"
        if opened
        else f"no mine opened in {years[0] + 1}-{years[-1]} here"
    )
    print(f"""
miningxr demo --temporal: synthetic region of {n_shards} shard(s) ({region.shape[0]}x{region.shape[1]} px), \
years {years[0]}-{years[-1]}, trained on {args.year}
  year  true km2  found km2  error
{curve}
  onset year   {onset}
  area         largest error from {int(later.year.min())}: {100 * area_err:.1f}%
  flicker      switches per pixel per decade: truth {fl["truth"]:.2f}, yearly predictions \
{fl.get("observed", float("nan")):.2f}, after the temporal rule {fl["consistent"]:.2f}
  time         {"  ".join(f"{k} {v:.0f}s" for k, v in times.items())}   total {report["total_seconds"]:.0f}s
  outputs      {out}/ (report.json, change/: change.csv, onset.tif, expansion.gpkg, change.png, \
onset.png, mining.gif, area_vs_truth.png)
""")
    return 0


def plot_area_vs_truth(per_year, path: Path, *, train_year: int | None = None) -> Path:
    """PNG: the mined km2 found each year against the truth."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    ax.plot(per_year.year, per_year.true_km2, "k-", label="truth")
    ax.plot(per_year.year, per_year.found_km2, "o-", color="tab:orange", ms=3, label="found (after the rule)")
    if train_year is not None:
        ax.axvline(train_year, color="grey", ls=":", label=f"trained on {train_year}")
    ax.set_xlabel("year")
    ax.set_ylabel("mined km2")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
