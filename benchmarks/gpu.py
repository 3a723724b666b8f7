"""Does the accelerator wait? Training and prediction throughput of the full model.

    python benchmarks/gpu.py [--out benchmarks/results] [--cpu]

On a machine with a GPU (TensorFlow sees one), it measures the seed's full model (base 64,
depth 4, mixed precision):

* training tiles/s fed by the Zarr loader (``training_dataset``) beside the same model fed from
  memory (``training_dataset(in_memory=True)``: every chunk read once up front, then the same
  cut/shuffle/batch/augment from RAM). Target: the loader at >= 0.9 of the in-memory feed;
* predict throughput at full size (``predict(mode="window")`` over whole shards, and the
  default tiling; on a GPU also 2048 px windows and tiles in batches of 256, the variants that
  would decide the defaults; both modes again in the precision the hardware runs natively,
  ``bfloat16`` on a GPU since Ampere or a CPU with AMX; and the same pipeline around a
  one-filter network, which is what the CPUs must keep up with), and what it means for one
  year of the world's land (every land shard of the built-in country table). Target: under one hour on one H100.

Without a GPU (or with ``--cpu``) it runs a small CPU version of the same measures (base 8,
depth 2, float32, a few steps) and says so: CI runs it to keep it working; its figures say
nothing about an accelerator. Results go to ``gpu.json`` beside ``benchmarks/run.py``'s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

LON, LAT = 29.05, -25.95


def _fit_tiles_per_second(model, make, steps: int, batch: int) -> float:
    """Tiles/s of ``model.fit`` over ``steps`` batches of a fresh pipeline, after a warm-up
    epoch (tracing, the first reads)."""
    ds = make()
    model.fit(ds, steps_per_epoch=max(2, steps // 4), epochs=1, verbose=0, shuffle=False)
    t0 = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)  # tf.data shuffles
    return steps * batch / (time.perf_counter() - t0)


def world_land_pixels(shard: int = 2048) -> tuple[int, int]:
    """Shards and pixels of one year of the land surface: every shard a country of the built-in
    table touches (what ``ingest`` and ``predict`` would process)."""
    from miningxr.grid import Region, country_table

    ids = set().union(*(Region.from_country(c).shard_ids(shard) for c in country_table().ISO3_CODE))
    return len(ids), len(ids) * shard * shard


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--cpu", action="store_true", help="the small CPU version even where a GPU is found")
    args = p.parse_args(argv)

    import distributed
    import keras
    import numpy as np
    import tensorflow as tf

    import miningxr
    from miningxr.config import PredictConfig, TrainConfig
    from miningxr.grid import GridSlice, Region
    from miningxr.model.losses import get_loss
    from miningxr.predict import native_precision
    from miningxr.sources.synthetic import mine_polygons
    from miningxr.tfimport import mixed_policy

    gpus = tf.config.list_physical_devices("GPU")
    full = bool(gpus) and not args.cpu
    if full:
        device = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
        cfg = TrainConfig(base_filters=64, depth=4, mixed_precision=True, batch_size=64)
        shards, steps = (2, 2), 200
    else:
        device = "CPU (no GPU found)" if not gpus else "CPU (--cpu)"
        cfg = TrainConfig(base_filters=8, depth=2, batch_size=32)
        shards, steps = (1, 1), 12
        print(
            "benchmarks/gpu.py: no GPU, so a small CPU version (base 8, depth 2, float32): "
            "the figures keep the script working and say nothing about an accelerator",
            flush=True,
        )
    if cfg.mixed_precision:  # what miningxr's training uses: float16 on a GPU
        keras.mixed_precision.set_global_policy(mixed_policy())

    work = Path(tempfile.mkdtemp(prefix="miningxr-gpu-"))
    results: dict = {"device": device, "full_model": full, "config": cfg.__dict__.copy()}
    try:
        with (
            distributed.LocalCluster(
                n_workers=1, threads_per_worker=os.cpu_count(), processes=False, dashboard_address=":0"
            ) as cluster,
            distributed.Client(cluster),
        ):
            r, c = Region.from_bbox((LON, LAT, LON + 1e-4, LAT + 1e-4)).slice(2048).shard_ids(2048)[0]
            region = GridSlice.covering([(r, c), (r + shards[0] - 1, c + shards[1] - 1)], 2048)
            store = work / "s.zarr"
            miningxr.ingest(store, region, 2020, progress=False)
            mine_polygons(region, 2020).to_file(work / "mines.gpkg", layer="mining_polygons")
            miningxr.write_mask(store, work / "mines.gpkg", progress=False)
            index = miningxr.tile_index(store).assign(selected=True, split="train")
            stats = index.attrs["stats"]

            model = miningxr.build_unet(cfg, stats=stats)
            model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=get_loss(cfg.loss, cfg.pos_weight))
            feeds = {
                "zarr": lambda: miningxr.training_dataset(store, index, "train", config=cfg, repeat=True),
                "memory": lambda: miningxr.training_dataset(
                    store, index, "train", config=cfg, repeat=True, in_memory=True
                ),
            }
            best = dict.fromkeys(feeds, 0.0)
            for _ in range(2):  # in turns: the machine's speed drifts
                for name, make in feeds.items():
                    best[name] = max(best[name], _fit_tiles_per_second(model, make, steps, cfg.batch_size))
            ratio = best["zarr"] / best["memory"]
            results["train"] = {
                "zarr_tiles_per_s": best["zarr"],
                "memory_tiles_per_s": best["memory"],
                "ratio": ratio,
                "target": 0.9,
                "meets_target": ratio >= 0.9 if full else None,
            }
            print(
                f"train {device}: Zarr loader {best['zarr']:.0f} tiles/s, in-memory feed "
                f"{best['memory']:.0f} tiles/s, ratio {ratio:.2f} (target >= 0.9 on a GPU)",
                flush=True,
            )

            model_path = work / "m.keras"
            model.save(model_path)
            ds = miningxr.open_store(store)
            pixels = ds.sizes["y"] * ds.sizes["x"]
            n_shards, world = world_land_pixels()
            results["world_land"] = {"shards": n_shards, "pixels": world}
            # the defaults of each mode, and on a GPU the variants that would decide them: windows
            # of a whole prediction shard (less halo, more memory), tiles in bigger batches
            variants = {
                "window": (model_path, PredictConfig(mode="window")),
                "tiles": (model_path, PredictConfig(mode="tiles")),
            }
            if full:
                variants["window_2048"] = (model_path, PredictConfig(mode="window", block=2048))
                variants["tiles_b256"] = (model_path, PredictConfig(mode="tiles", batch_size=256))
            # the network in the precision the hardware runs natively (bfloat16 on a GPU since
            # Ampere or a CPU with AMX): float32 is the default, and the model trained in float16
            native = native_precision()
            if native != "float32":
                variants[f"window_{native}"] = (model_path, PredictConfig(mode="window", precision="auto"))
                variants[f"tiles_{native}"] = (model_path, PredictConfig(mode="tiles", precision="auto"))
                if full:
                    variants[f"window_2048_{native}"] = (
                        model_path,
                        PredictConfig(mode="window", block=2048, precision="auto"),
                    )
            # everything but the network: a UNet of one filter and one level, so what is left is
            # reading, decoding, the halo, normalizing and the nodata mask, on the CPUs. One year
            # of the land in an hour needs this part at 50 Mpx/s as much as the accelerator
            pipe_path = work / "pipeline.keras"
            miningxr.build_unet(TrainConfig(base_filters=1, depth=1), stats=stats).save(pipe_path)
            variants["pipeline_only"] = (pipe_path, PredictConfig(mode="window"))
            for mode, (path, pcfg) in variants.items():
                run = lambda path=path, pcfg=pcfg: miningxr.predict(ds, path, config=pcfg).compute()  # noqa: E731
                run()  # warm: model load, tracing
                t0 = time.perf_counter()
                out = run()
                dt = time.perf_counter() - t0
                assert np.isfinite(out.values).any()
                rate = pixels / dt
                hours = world / rate / 3600
                results[f"predict_{mode}"] = {
                    "pixels_per_s": rate,
                    "world_land_hours": hours,
                    "target_hours": 1.0,
                    "meets_target": hours <= 1.0 if full else None,
                }
                print(
                    f"predict {mode} {device}: {rate / 1e6:.2f} Mpx/s -> one year of the land "
                    f"surface ({n_shards:,} shards, {world:.2e} px) in {hours:.1f} h (target < 1 h on "
                    "one H100)",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {out / 'gpu.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
