"""One side of the sparse-store benchmark, run in a process of its own so its peak RSS is its own.

    python benchmarks/sparse_side.py OUT STORE [STORE ...]

For each store: tile index, one training epoch, predict every region, evaluate and export.
Prints one JSON line: the seconds the work took (imports and start-up excluded).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(out: Path, stores: list[Path]) -> None:
    import distributed

    import miningxr
    from miningxr.config import TrainConfig

    cfg = TrainConfig(base_filters=8, depth=3, epochs=1, batch_size=32, patience=1)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=os.cpu_count(), processes=False, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster),
    ):
        t0 = time.perf_counter()
        for k, store in enumerate(stores):
            run = out / f"run{k}"
            miningxr.tile_index(store)
            result = miningxr.train(store, config=cfg, out_dir=run, verbose=0)
            pred = run / "p.zarr"
            for node in miningxr.open_regions(store).children.values():
                prob = miningxr.predict(node.to_dataset(), result.model_path, overlap=0)
                miningxr.write_predictions(prob, pred, progress=False)
            miningxr.evaluate(store, pred, split="test")
            miningxr.export_store(store, pred, run / "exports")
        seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "peak_rss_mb": _peak_rss_mb()}))


def _peak_rss_mb() -> float | None:
    """This process's peak resident memory, from ``VmHWM``: it belongs to the address space
    that ``exec`` made, so unlike ``ru_maxrss`` (kept across exec on Linux) it does not count
    the parent's memory at the fork."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


if __name__ == "__main__":
    main(Path(sys.argv[1]), [Path(s) for s in sys.argv[2:]])
