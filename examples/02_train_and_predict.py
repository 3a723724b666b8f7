# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Ingest, label, train a UNet, predict and evaluate
#
# The whole pipeline in a notebook, on the synthetic source and a CPU: one 2048 x 2048 shard
# (61 x 61 km), a small UNet, a few epochs. `miningxr demo` runs the same steps from the
# command line; on a GPU, raise `epochs` and `base_filters`.

# %%
import os
import tempfile
from pathlib import Path

import distributed

import miningxr
from miningxr.evaluate import plot_map
from miningxr.grid import Region
from miningxr.sources.synthetic import mine_polygons

work = Path(os.environ.get("MININGXR_EXAMPLE_DIR") or tempfile.mkdtemp(prefix="miningxr-example-"))
work.mkdir(parents=True, exist_ok=True)
client = distributed.Client(processes=False, dashboard_address=":0")
print("Dask dashboard:", client.dashboard_link)

# %% [markdown]
# ## Ingest one shard into the global store, burn the mining polygons, index the tiles

# %%
region = Region.from_bbox((29.05, -25.95, 29.0501, -25.9499)).slice(2048)
store = work / "store.zarr"
print(miningxr.ingest(store, region, 2020))
mine_polygons(region, 2020).to_file(work / "mines.gpkg", layer="mining_polygons")
miningxr.write_mask(store, work / "mines.gpkg")
index = miningxr.tile_index(store)
index.groupby("split").agg(tiles=("selected", "sum"), mining=("mining_fraction", "mean"))

# %% [markdown]
# ## Train a small UNet from the Zarr-backed `tf.data` loader

# %%
config = miningxr.TrainConfig(base_filters=16, epochs=6, learning_rate=2e-3, batch_size=32)
result = miningxr.train(store, config=config, out_dir=work / "run", verbose=2)
print(result)

# %% [markdown]
# ## `miningxr.predict(ds, model)`: lazy, aligned to its input, with its CRS

# %%
ds = miningxr.open_store(store, region, 2020)
prob = miningxr.predict(ds, result.model_path)
prob

# %%
metrics = miningxr.evaluate(store, prob, split="test")
{k: round(v, 3) for k, v in metrics.items() if isinstance(v, float)}

# %%
plot_map(ds.isel(year=0), prob, work / "map.png", index=index)
from IPython.display import Image

Image(str(work / "map.png"))

# %%
client.close()
