"""``miningxr demo``: the whole pipeline on the synthetic source, into one folder."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .cluster import dask_client
from .config import Config
from .evaluate import evaluate, plot_map, plot_tiles
from .export import export
from .grid import GridSlice, Region
from .ingest import ingest
from .jsonio import write_json
from .labels import write_mask
from .model.train import train
from .predict import open_predictions, predict, write_predictions
from .sources.synthetic import mine_polygons
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


def run_demo(args: argparse.Namespace) -> int:
    cfg = Config.from_file(args.config) if args.config else Config()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store, pred_store = out / "store.zarr", out / "predictions.zarr"
    shard = cfg.store.shard
    r0, c0 = GridSlice.of_geobox(
        Region.from_bbox((args.lon, args.lat, args.lon + 1e-4, args.lat + 1e-4)).slice(shard).geobox
    ).shard_ids(shard)[0]
    ids = [(r0 + i, c0 + j) for i in range(args.shards[0]) for j in range(args.shards[1])]
    region = GridSlice.covering(ids, shard)
    times: dict[str, float] = {}
    progress = not args.quiet
    t_all = time.perf_counter()
    with dask_client(args.scheduler) as client:
        dashboard = client.dashboard_link
        print(f"Dask dashboard: {dashboard}")
        with _stage("ingest", times):
            print(
                ingest(
                    store,
                    region,
                    args.year,
                    layout=cfg.store,
                    source_options={"config": cfg.synthetic},
                    progress=progress,
                )
            )
        with _stage("labels", times):
            polys = mine_polygons(region, args.year, config=cfg.synthetic)
            polys.to_file(out / "mines.gpkg", layer="mining_polygons", driver="GPKG")
            print(write_mask(store, out / "mines.gpkg", progress=progress))
        with _stage("tiles", times):
            tiles_cfg = (
                cfg.replace("tiles", negative_ratio=0.5).tiles if cfg.tiles == Config().tiles else cfg.tiles
            )
            index = tile_index(store, year=args.year, config=tiles_cfg)
            counts = index[index.selected].groupby("split").positive.agg(["size", "sum"])
            log.info("tiles (selected, positive) per split:\n%s", counts.to_string())
        with _stage("train", times):
            tcfg = cfg.train
            if tcfg == Config().train:  # demo defaults: a small UNet that trains on CPU in a minute
                tcfg = cfg.replace(
                    "train",
                    base_filters=args.base_filters,
                    epochs=args.epochs,
                    learning_rate=2e-3,
                    patience=args.epochs,
                ).train
            result = train(store, index=index, config=tcfg, out_dir=out / "run", verbose=2 if progress else 0)
        with _stage("predict", times):
            ds = open_store(store, years=args.year)
            prob = predict(ds, result.model_path, config=cfg.predict, overlap=args.overlap)
            print(write_predictions(prob, pred_store, progress=progress))
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
miningxr demo: synthetic region of {len(ids)} shard(s) ({region.shape[0]}x{region.shape[1]} px), year {args.year}
  test split   IoU {report["iou"]:.3f}   F1 {report["f1"]:.3f}   precision {report["precision"]:.3f}   recall {report["recall"]:.3f}   AUC {report["auc"]:.3f}
  mining area  found {report["area_predicted_km2"]:.1f} km2 vs true {report["area_true_km2"]:.1f} km2 (test split)
  polygons     {report.get("polygons_detected", 0)}/{report.get("polygons_in_split", 0)} detected
  time         {"  ".join(f"{k} {v:.0f}s" for k, v in times.items())}   total {report["total_seconds"]:.0f}s
  dashboard    {dashboard}
  outputs      {out}/ (report.json, map.png, tiles.png, exports/, run/model.keras, store.zarr, predictions.zarr)
""")
    return 0
