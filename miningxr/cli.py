"""The ``miningxr`` command line: one subcommand per stage, and ``demo`` for all of them.

Run ``miningxr --help`` or ``miningxr SUBCOMMAND --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, get_args

import distributed

from . import __version__
from .change import GROUPINGS, change, summary
from .cluster import dask_client
from .config import (
    Config,
    Loss,
    LrSchedule,
    PredictionDtype,
    PredictMode,
    PredictPrecision,
    TrainConfig,
    check_temporal_span,
)
from .errors import MiningxrError, MiningxrWarning, UsageError
from .evaluate import SPLITS, evaluate, plot_map, plot_tiles
from .export import export_store
from .grid import Region, country_shards
from .ingest import ingest, plan
from .jsonio import json_dumps
from .labels import parse_columns, read_polygons, write_mask
from .paths import local_path, staged
from .predict import open_predictions, predict, write_predictions
from .server import serve
from .shards import failures, status
from .sources import SOURCES
from .sources.stac import PRESETS
from .store import check_output_folder, open_regions, open_store, store_layout
from .tiles import load_tile_index, tile_index

log = logging.getLogger("miningxr")

EPILOG = """\
The pipeline, stage by stage (each writes into one global store on the EPSG:6933 30 m grid):

  miningxr ingest   --store s.zarr --bbox 29.0 -26.0 29.6 -25.6 --year 2020
  miningxr ingest   --store s.zarr --country ZAF --polygons mines.gpkg --year 2020
  miningxr status   --store s.zarr
  miningxr train    --store s.zarr --out run/ --base-filters 16 --epochs 10
  miningxr predict  --store s.zarr --model run/model.keras --out pred.zarr
  miningxr evaluate --store s.zarr --predictions pred.zarr --polygons mines.gpkg
  miningxr export   --store s.zarr --predictions pred.zarr --out exports/
  miningxr serve    --store s.zarr --predictions pred.zarr   (a web map and an API on 127.0.0.1:8000)
  miningxr demo     (all of the above on the synthetic source, no account, no network)

Every command that computes takes --scheduler ADDRESS to run on an existing Dask cluster
(watch it on the dashboard). Without it, ingest, predict and demo start a LocalCluster and
print its dashboard link; train reads in its own tf.data threads, and evaluate and export use
Dask's threads, the fastest choice on one machine. --scheduler local starts a LocalCluster.
"""


def _setup_logging(verbose: int, logfile: Path | None = None) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose >= 0 else logging.WARNING
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    log.setLevel(level)
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(fmt)
        log.addHandler(h)
    if logfile is not None:
        logfile.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(logfile)
        fh.setFormatter(fmt)
        log.addHandler(fh)
    for noisy in ("distributed", "tensorflow", "absl", "pyogrio", "rasterio", "fiona"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _region_args(p: argparse.ArgumentParser, polygons: bool = False) -> None:
    g = p.add_argument_group("region (one of)")
    g.add_argument(
        "--bbox",
        nargs=4,
        type=float,
        metavar=("MINLON", "MINLAT", "MAXLON", "MAXLAT"),
        help="a lon/lat box (EPSG:4326 degrees)",
    )
    g.add_argument("--country", metavar="ISO3", help="an ISO 3166-1 alpha-3 code, e.g. ZAF")
    if polygons:
        _polygon_args(
            p,
            "mining polygons; with --country, ingest the shards around that country's "
            "mines (plus sampled mine-free shards) and rasterize the masks",
        )


def _years_arg(p: argparse.ArgumentParser, help: str) -> None:
    # --year stays as the spelling of one year
    p.add_argument("--years", "--year", dest="years", type=int, nargs="+", metavar="YEAR", help=help)


def _polygon_args(p: argparse.ArgumentParser, help: str) -> None:
    g = p.add_argument_group("mining polygons")
    g.add_argument("--polygons", metavar="FILE", help=help + " (GeoPackage, shapefile, any OGR format)")
    g.add_argument("--layer", metavar="NAME", help="the layer of --polygons to read (files with several)")
    g.add_argument(
        "--columns",
        nargs="+",
        metavar="OURS=THEIRS",
        help="the file's names for our columns ISO3_CODE, COUNTRY_NAME, AREA, e.g. "
        "--columns ISO3_CODE=iso_a3 AREA=area_km2; missing AREA and country columns "
        "are derived",
    )


_CHANGE = (
    "Apply the temporal consistency rule to a prediction store of several years, then write the "
    "mined, new and lost km2 per year and group (change.csv, change.parquet), onset and closure "
    "years as COGs, the new mining of each year as polygons (expansion.gpkg), and pictures "
    "(change.png, onset.png, with --animate mining.gif). See docs/change.md."
)
_LOCAL_CLUSTER_HELP = "Dask scheduler address (tcp://host:8786); default: a new LocalCluster"
_THREADS_HELP = (
    "run on this Dask cluster (tcp://host:8786, or 'local'); default: Dask's threads in this process"
)


def _common(p: argparse.ArgumentParser, scheduler: str | None = _LOCAL_CLUSTER_HELP) -> None:
    if scheduler:
        p.add_argument("--scheduler", metavar="ADDRESS", help=scheduler)
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    p.add_argument(
        "--config",
        metavar="TOML",
        help="a config file (sections store, synthetic, tiles, train, predict, change, serve)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="miningxr",
        description="Map the footprint of mining from Landsat imagery.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"miningxr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "ingest",
        help="write a region's Landsat years into the store (resumable)",
        description="Write every shard of a region and year(s) into the global store. "
        "Shards already done are skipped, so re-running resumes.",
    )
    p.add_argument(
        "--store", help="the Zarr store, a folder or an s3://, gs://, az:// URL (created on first use)"
    )
    _region_args(p, polygons=True)
    p.add_argument("--year", type=int, nargs="+", required=True, help="one or more years")
    p.add_argument(
        "--source",
        default="synthetic",
        choices=SOURCES,
        help="where the pixels come from (default: synthetic, needs no account)",
    )
    p.add_argument("--stac-catalog", help="STAC API URL or local catalog.json (source stac)")
    p.add_argument(
        "--stac-preset",
        choices=list(PRESETS),
        help="a public STAC catalog set up for you (source stac): planetary-computer "
        "(asset URLs signed, no account needed) or earth-search (requester-pays S3: "
        "needs AWS credentials, reads are billed to you)",
    )
    p.add_argument("--gee-project", help="Google Cloud project for Earth Engine (source gee)")
    p.add_argument(
        "--gee-key-file", help="service-account key JSON for Earth Engine (or MININGXR_GEE_KEY_FILE)"
    )
    p.add_argument("--buffer-km", type=float, default=2.0, help="buffer around polygons with --country (km)")
    p.add_argument("--retry-failed", action="store_true", help="retry shards that failed before")
    p.add_argument("--force", action="store_true", help="rewrite shards already done")
    p.add_argument("--all-touched", action="store_true", help="burn every pixel a polygon touches")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (shards, Earth Engine requests and bytes, store size, estimated wall "
        "time) and stop: nothing is requested or written",
    )
    _common(p)

    p = sub.add_parser("status", help="what is done, running, failed and left in a store")
    p.add_argument("--store", required=True)
    p.add_argument("--errors", action="store_true", help="list every failed shard with its error")
    _common(p, scheduler=None)

    p = sub.add_parser("train", help="build the tile index and train a UNet on a store")
    p.add_argument("--store", required=True)
    p.add_argument("--out", default="miningxr-run", help="folder for model.keras, logs, history")
    _years_arg(
        p,
        "imagery years to train on (default: the latest ingested); each (year, tile) is a "
        "sample, a place in the same split every year",
    )
    p.add_argument(
        "--countries",
        nargs="+",
        metavar="ISO3",
        help="keep the tiles inside these countries (e.g. ZAF USA); test metrics per country",
    )
    for name, typ in (
        ("epochs", int),
        ("batch-size", int),
        ("base-filters", int),
        ("depth", int),
        ("learning-rate", float),
        ("dropout", float),
        ("pos-weight", float),
        ("patience", int),
    ):
        p.add_argument(f"--{name}", type=typ)
    p.add_argument("--loss", choices=get_args(Loss))
    p.add_argument(
        "--lr-schedule",
        choices=get_args(LrSchedule),
        help="plateau: halve the rate when validation loss stalls (default); cosine: decay it "
        "to 1%% over --epochs",
    )
    p.add_argument(
        "--mixed-precision",
        action="store_true",
        default=None,
        help="train in float16 on a GPU, in bfloat16 on a CPU with AMX-BF16, weights kept in "
        "float32 (elsewhere it is emulated and slower: a warning says so); train.json records "
        "the policy",
    )
    p.add_argument(
        "--no-augment",
        dest="augment",
        action="store_false",
        default=None,
        help="train without augmentation (the 8 flips/rotations, each tile's brightness and "
        "contrast, each band's gain of 1 +- 0.05)",
    )
    p.add_argument(
        "--in-memory",
        action="store_true",
        default=None,
        help="read the splits once and train from RAM (stores that fit in memory)",
    )
    _common(
        p,
        scheduler="read the training chunks on this Dask cluster's workers (tcp://host:8786, "
        "or 'local'); default: tf.data threads in this process",
    )

    p = sub.add_parser("predict", help="predict mining probability into a prediction Zarr")
    p.add_argument("--store", required=True)
    p.add_argument("--model", required=True, help="a .keras file from `miningxr train`")
    p.add_argument("--out", required=True, help="the prediction Zarr (resumable; adds years to one it holds)")
    _region_args(p, polygons=False)
    _years_arg(p, "imagery years to predict (default: every year the store holds)")
    p.add_argument(
        "--force",
        action="store_true",
        help=(
            "replace predictions of another model or method (mode, overlap, precision) in --out, "
            "or rewrite shards already done"
        ),
    )
    p.add_argument("--overlap", type=int, help="pixels of overlap between tiles (default 16)")
    p.add_argument(
        "--mode",
        choices=get_args(PredictMode),
        help="tiles (default: the model on its training tiles, blended over --overlap) or window "
        "(whole blocks plus a halo of the receptive field: no seams, any chunking alike)",
    )
    p.add_argument(
        "--dtype",
        choices=get_args(PredictionDtype),
        help="how a new prediction store keeps probability: uint8 (default; steps of 1/250, CF "
        "scale_factor) or float32 (4x the bytes)",
    )
    p.add_argument("--batch-size", type=int)
    p.add_argument(
        "--block",
        type=int,
        help="with --mode window: pixels per side of the windows the model runs on (default 1024; "
        "bigger wastes less on the ~100 px halo and holds more memory)",
    )
    p.add_argument(
        "--precision",
        choices=get_args(PredictPrecision),
        help="what the network computes in: float32 (default; the model exactly), bfloat16 (2-3x "
        "faster on CPUs with AMX and GPUs since Ampere, within a few hundredths), float16 "
        "(older GPUs), or auto (bfloat16 or float16 where the hardware runs it natively)",
    )
    _common(p)

    p = sub.add_parser("evaluate", help="metrics, plots and a JSON report over a split")
    p.add_argument("--store", required=True)
    p.add_argument("--predictions", required=True)
    _polygon_args(p, "mining polygons for per-polygon detection")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--out", default="miningxr-eval", help="folder for report.json and PNGs")
    _common(p, scheduler=_THREADS_HELP)

    p = sub.add_parser("export", help="GeoTIFF/COG of probability and mask, GeoPackage of mines")
    p.add_argument("--store", required=True)
    p.add_argument("--predictions", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--threshold", type=float, default=0.5)
    _common(p, scheduler=_THREADS_HELP)

    p = sub.add_parser("change", help="when each mine opened and how mining grew", description=_CHANGE)
    p.add_argument("--predictions", required=True, help="a prediction store of several years")
    p.add_argument("--out", required=True, help="folder for the table, rasters and pictures")
    p.add_argument("--store", help="the imagery store: onset.png is drawn over its false-colour composite")
    p.add_argument("--by", default="region", choices=GROUPINGS, help="group the table by (default: region)")
    _polygon_args(p, "polygons to group by (--by polygon)")
    p.add_argument("--threshold", type=float, help="probability that counts as mined (default 0.5)")
    p.add_argument(
        "--window", type=int, help="years of the majority window of the temporal rule (odd; default 3)"
    )
    p.add_argument("--animate", action="store_true", help="also write mining.gif, the yearly maps")
    _common(p, scheduler=_THREADS_HELP)

    p = sub.add_parser(
        "demo",
        help="the whole pipeline on the synthetic source, into one folder",
        description="Ingest a synthetic region with mines, rasterize the masks, build "
        "the tile index, train a small UNet on CPU, predict, evaluate and "
        "export, into --out. No account and no network needed. With --temporal, follow "
        "mining over a span of years instead: ingest every year, train on the polygons of "
        "--year, predict every year, run `miningxr change` (onset and closure years, area "
        "per year, expansion polygons, pictures) and check it against the synthetic truth.",
    )
    p.add_argument(
        "--out", default="miningxr-demo", help="local folder for the report, pictures, exports, model and log"
    )
    p.add_argument(
        "--store",
        help="where store.zarr and predictions.zarr go: a folder or an object-storage URL "
        "(s3://bucket/demo, gs://..., az://...; credentials from the environment). Default: --out",
    )
    p.add_argument("--lon", type=float, default=29.05)
    p.add_argument("--lat", type=float, default=-25.95)
    p.add_argument(
        "--shards",
        type=int,
        nargs=2,
        default=(1, 2),
        metavar=("ROWS", "COLS"),
        help="how many 2048x2048 shards to process (default 1 2)",
    )
    p.add_argument(
        "--year", type=int, default=2020, help="the year of the mining polygons trained on (default 2020)"
    )
    p.add_argument(
        "--temporal",
        action="store_true",
        help="follow mining over --first-year..--last-year: train on --year, predict every year, "
        "run `miningxr change`, and print the mined area against the truth year by year",
    )
    p.add_argument("--first-year", type=int, default=1990, help="with --temporal (default 1990)")
    p.add_argument("--last-year", type=int, default=2020, help="with --temporal (default 2020)")
    # 10 epochs of the two default shards (~80 steps): validation IoU passed 0.9 by epoch 7-8
    # in the runs measured, where 8 epochs left some runs at 0.85
    p.add_argument(
        "--epochs",
        type=int,
        help="training epochs (default 10; 20 with --temporal, whose model, trained on one year, "
        "must hold over every year)",
    )
    p.add_argument("--base-filters", type=int, default=16)
    p.add_argument(
        "--overlap",
        type=int,
        help="pixels of overlap between predicted tiles (default 16; 8 with --temporal)",
    )
    _common(p)

    p = sub.add_parser(
        "serve",
        help="serve a store on HTTP: a web map, map tiles, Zarr and a mining query",
        description="Serve the store's regions over HTTP (xpublish): a web map at /, XYZ tiles of "
        "true and false colour imagery, the truth, the predicted probability and the onset year "
        "(/tiles/{layer}/{z}/{x}/{y}.png?year=Y), each region as Zarr v3 "
        "(xr.open_zarr('http://HOST:PORT/datasets/REGION/zarr')), GET /mining?bbox=W,S,E,N&year=Y "
        "(mined km2, polygons and onset years), GET /point?lon=..&lat=..&year=Y and GET /regions. "
        "With --model, what is not predicted yet is predicted on demand and cached into "
        "--predictions. Binds 127.0.0.1 (this machine only) unless --host says otherwise; "
        "the API's own documentation is at /docs.",
        epilog="example:\n  miningxr serve --store demo/store.zarr --predictions demo/predictions.zarr\n"
        "  then open http://127.0.0.1:8000/ in a browser",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--store", required=True, help="the imagery store (a path or an object-storage URL)")
    p.add_argument("--predictions", help="a prediction store (with --model: where on-demand predictions go)")
    p.add_argument("--model", help="a .keras model: predict on demand what --predictions lacks")
    p.add_argument(
        "--host",
        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 serves every "
        "interface, so anyone who can reach it can read the store)",
    )
    p.add_argument("--port", type=int, help="TCP port (default 8000)")
    p.add_argument("--threshold", type=float, help="probability counted as mined (default 0.5)")
    p.add_argument(
        "--tile-cache",
        type=int,
        metavar="N",
        help="map tiles kept in memory once rendered (default 2048; 0 renders every request)",
    )
    _common(p)
    return parser


def _config(args: argparse.Namespace) -> Config:
    return Config.from_file(args.config) if getattr(args, "config", None) else Config()


def _region(args: argparse.Namespace) -> Region | None:
    if args.bbox and args.country:
        raise UsageError("give --bbox or --country, not both")
    if args.bbox:
        return Region.from_bbox(args.bbox)
    if args.country:
        return Region.from_country(args.country)
    return None


def cmd_ingest(args: argparse.Namespace) -> int:
    if not args.store and not args.dry_run:
        raise UsageError("ingest needs --store PATH_OR_URL (only --dry-run can do without one)")
    cfg = _config(args)
    region = _region(args)
    if region is None:
        raise UsageError("ingest needs a region: --bbox MINLON MINLAT MAXLON MAXLAT or --country ISO3")
    opts: dict[str, Any] = {}
    if args.source == "stac":
        if not (args.stac_catalog or args.stac_preset):
            raise UsageError("--source stac needs --stac-catalog URL_OR_PATH or --stac-preset NAME")
        opts.update(catalog=args.stac_catalog, preset=args.stac_preset)
    elif args.stac_catalog or args.stac_preset:
        raise UsageError("--stac-catalog and --stac-preset are for --source stac")
    if args.source == "gee":
        opts.update(project=args.gee_project, key_file=args.gee_key_file)
    if args.source == "synthetic":
        opts["config"] = cfg.synthetic
    # the polygons are checked before any imagery is read or written
    columns = parse_columns(args.columns)
    shard_ids = None
    if args.polygons:
        gdf = read_polygons(args.polygons, country=args.country, layer=args.layer, columns=columns)
        if args.country:
            shard_ids = country_shards(
                region, gdf, cfg.store.shard, buffer_m=args.buffer_km * 1000, seed=cfg.tiles.seed
            )
            log.info(
                "%d shard(s) around %d %s polygon(s), with mine-free samples",
                len(shard_ids),
                len(gdf),
                args.country,
            )
    elif args.layer or args.columns:
        raise UsageError("--layer and --columns describe --polygons FILE; give it too")
    if args.dry_run:
        print(
            plan(
                args.store,
                region,
                args.year,
                source=args.source,
                layout=cfg.store if args.config else None,
                shard_ids=shard_ids,
                workers=os.cpu_count() or 1,
            )
        )
        return 0
    report = ingest(
        args.store,
        region,
        args.year,
        source=args.source,
        source_options=opts,
        layout=cfg.store,
        shard_ids=shard_ids,
        retry_failed=args.retry_failed,
        force=args.force,
        scheduler=args.scheduler,
        progress=not args.quiet,
    )
    print(report)
    if not report.ok:
        return 1
    if args.polygons:
        masks = write_mask(
            args.store, gdf, all_touched=args.all_touched, scheduler=args.scheduler, progress=not args.quiet
        )
        print(masks)
        return 0 if masks.ok else 1
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    layout = store_layout(args.store)
    table = status(args.store)
    print(f"store {args.store}: EPSG:6933 30 m global grid, chunks {layout.chunk}, shards {layout.shard}")
    if table.empty:
        print("nothing ingested yet")
        return 0
    print(table.to_string(index=False))
    left = int(table.pending.sum() + table.running.sum() + table.failed.sum())
    print(f"{int(table.done.sum())} shard(s) done, {left} left")
    fails = failures(args.store)
    if not fails.empty:
        show = fails if args.errors else fails.head(5)
        print("failed:")
        for _, r in show.iterrows():
            print(
                f"  {r.variable} year={r.year} shard=({r.shard_row}, {r.shard_col}) attempts={r.attempts}: {r.error}"
            )
        print("retry them with `miningxr ingest ... --retry-failed`")
    return 0


#: the TrainConfig fields that `miningxr train` takes as flags (--epochs, --batch-size, ...)
TRAIN_FLAGS = (
    "epochs",
    "batch_size",
    "base_filters",
    "depth",
    "learning_rate",
    "dropout",
    "pos_weight",
    "patience",
    "loss",
    "lr_schedule",
    "mixed_precision",
    "augment",
    "in_memory",
)


def train_config(cfg: Config, args: argparse.Namespace) -> TrainConfig:
    """The [train] config with the flags the user gave on top."""
    return cfg.replace("train", **{name: getattr(args, name) for name in TRAIN_FLAGS}).train


@contextlib.contextmanager
def _cluster(args: argparse.Namespace) -> Iterator[distributed.Client | None]:
    """The client for ``--scheduler`` (also Dask's default while open), or None without it."""
    if not args.scheduler:
        yield None
        return
    with dask_client(args.scheduler) as client:
        yield client


def cmd_train(args: argparse.Namespace) -> int:
    from .model.train import train  # TensorFlow: loaded only by the commands that need it

    cfg = _config(args)
    with _cluster(args) as client:
        index = tile_index(args.store, years=args.years, config=cfg.tiles)
        if args.countries:
            index = _in_countries(index, args.countries)
        result = train(
            args.store,
            index=index,
            config=train_config(cfg, args),
            out_dir=args.out,
            client=client,
            verbose=0 if args.quiet else 2,
        )
    print(result)
    return 0


def _in_countries(index: Any, countries: list[str]) -> Any:
    """The tiles inside the given countries, refusing codes with no tile, before any training."""
    codes = [c.strip().upper() for c in countries]
    have = sorted(c for c in set(index.country) if c)
    lacking = [c for c in codes if c not in have]
    if lacking:
        raise UsageError(f"no tile of the store lies in {lacking}; its tiles are in {have} (--countries)")
    kept = index[index.country.isin(codes)]
    kept.attrs.update(index.attrs)
    return kept


def cmd_predict(args: argparse.Namespace) -> int:
    cfg = _config(args)
    region = _region(args)
    kwargs = {
        "config": cfg.predict,
        "overlap": args.overlap,
        "batch_size": args.batch_size,
        "mode": args.mode,
        "precision": args.precision,
    }
    if region is not None:
        prob: Any = predict(open_store(args.store, region=region, years=args.years), args.model, **kwargs)
    else:  # every region of a sparse store, each on its own slice of the grid
        prob = predict(open_regions(args.store, years=args.years), args.model, **kwargs)
    dtype = args.dtype or cfg.predict.dtype
    report = write_predictions(
        prob, args.out, scheduler=args.scheduler, progress=not args.quiet, force=args.force, dtype=dtype
    )
    print(report)
    ok = report.ok
    return 0 if ok else 1


def cmd_evaluate(args: argparse.Namespace) -> int:
    loc = check_output_folder(args.out, holds="report.json and the PNGs")
    polygons = None
    if args.polygons:
        polygons = read_polygons(args.polygons, layer=args.layer, columns=args.columns, require_columns=False)
    elif args.layer or args.columns:
        raise UsageError("--layer and --columns describe --polygons FILE; give it too")
    with _cluster(args), staged(loc) as out:  # for a URL: written here, uploaded at the end
        report = evaluate(
            args.store,
            args.predictions,
            split=args.split,
            threshold=args.threshold,
            polygons=polygons,
            out=out / "report.json",
        )
        # the pictures: the first region predicted, its latest year
        region = next(iter(report["per_region"]))
        ds = open_regions(args.store)[region].to_dataset()
        prob = open_predictions(args.predictions, ds).isel(year=-1)
        index = load_tile_index(args.store)
        plot_tiles(ds, prob, index, out / "tiles.png", split=args.split if args.split != "all" else "test")
        plot_map(ds, prob, out / "map.png", index=index, threshold=args.threshold)
    print(json_dumps(report))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    with _cluster(args):
        paths = export_store(args.store, args.predictions, args.out, threshold=args.threshold)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def cmd_change(args: argparse.Namespace) -> int:
    cfg = _config(args).replace("change", threshold=args.threshold, window=args.window).change
    if (args.layer or args.columns) and not args.polygons:
        raise UsageError("--layer and --columns describe --polygons FILE; give it too")
    polygons = (
        read_polygons(args.polygons, layer=args.layer, columns=args.columns, require_columns=False)
        if args.polygons
        else None
    )
    with _cluster(args):
        table = change(
            args.predictions,
            args.out,
            by=args.by,
            polygons=polygons,
            config=cfg,
            animate=args.animate,
            store=args.store,
        )
    if table.empty:
        # complete outputs, but of nothing: say so rather than exit as if all went well
        print(
            f"error: no pixel counts as mined in any year at threshold {cfg.threshold} (the outputs in "
            f"{args.out} show none); check the predictions, or lower --threshold",
            file=sys.stderr,
        )
        return 2
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(json_dumps(summary(table)))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = _config(args)
    flags = {"host": args.host, "port": args.port, "threshold": args.threshold, "tile_cache": args.tile_cache}
    scfg = dataclasses.replace(cfg.serve, **{k: v for k, v in flags.items() if v is not None})
    serve(
        args.store,
        args.predictions,
        args.model,
        config=scfg,
        predict_config=cfg.predict,
        change_config=dataclasses.replace(cfg.change, threshold=scfg.threshold),
        scheduler=args.scheduler,
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo  # TensorFlow: loaded only by the commands that need it

    return run_demo(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "ingest": cmd_ingest,
    "status": cmd_status,
    "train": cmd_train,
    "predict": cmd_predict,
    "evaluate": cmd_evaluate,
    "export": cmd_export,
    "change": cmd_change,
    "demo": cmd_demo,
    "serve": cmd_serve,
}


def reference() -> str:
    """The CLI reference in Markdown, made from the parser itself (``docs/cli.md``)."""
    parser = build_parser()
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: fix it for a stable page
    try:
        parts = [
            "# Command-line reference",
            "",
            "Generated from `miningxr --help` by `python -m miningxr.cli --reference`; "
            "a test keeps it current.",
            "",
            "```text",
            parser.format_help().rstrip(),
            "```",
        ]
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        for name, p in sub.choices.items():
            parts += ["", f"## miningxr {name}", "", "```text", p.format_help().rstrip(), "```"]
    finally:
        if old is None:
            os.environ.pop("COLUMNS")
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(parts) + "\n"


@contextlib.contextmanager
def _warnings_logged() -> Iterator[None]:
    """miningxr's own warnings as lines of the log (``WARNING ...``, in the demo's log file too),
    each once, not in Python's file-and-line form; every other warning as Python shows it."""
    shown, said = warnings.showwarning, set()

    def show(message: Any, category: type[Warning], *rest: Any, **kw: Any) -> None:
        if issubclass(category, MiningxrWarning):
            if str(message) not in said:  # once a command, not once a region or year
                said.add(str(message))
                log.warning("%s", message)
        else:
            shown(message, category, *rest, **kw)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        os.environ["MININGXR_TF_VERBOSE"] = "1"  # TensorFlow's own start-up lines too
    try:
        check_temporal_span(args)  # before the demo's log file makes its folder
        logfile = (
            local_path(
                args.out,
                what="the demo's --out (its log, report and pictures)",
                fix="give a local folder, and --store s3://... to put the demo's stores in a bucket",
            )
            / "miningxr.log"
            if args.command == "demo"
            else None
        )
        _setup_logging(-1 if args.quiet else args.verbose, logfile)
        with _warnings_logged():
            return COMMANDS[args.command](args)
    except MiningxrError as e:
        # a mistake in what was asked: one clear line that names the fix (-v adds the traceback)
        if args.verbose:
            log.exception("failed")
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished shards are kept; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print(
            f"\nminingxr {__version__} failed unexpectedly: this is a bug in miningxr, not a mistake in "
            "what you asked. Please report it with the command and the traceback above.",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    if sys.argv[1:] == ["--reference"]:
        print(reference(), end="")
        sys.exit(0)
    sys.exit(main())
