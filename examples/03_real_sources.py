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
# # Real imagery: Google Earth Engine and STAC
#
# Needs network access and, for Earth Engine, an account (see `docs/sources.md`). Not run in
# CI: the same code paths are tested offline against a fake Earth Engine and a local STAC
# catalog of COGs (`tests/test_sources_gee.py`, `tests/test_sources_stac.py`).

# %%
import miningxr

# %% [markdown]
# ## Earth Engine through xee
#
# Authenticate once (`earthengine authenticate`), or point `key_file=` at a service-account key.

# %%
ds = miningxr.open_landsat("ZAF", 2020, source="gee", project="my-cloud-project")
ds  # lazy: one computePixels request per band, year and 1024x1024 block when computed

# %% [markdown]
# ## STAC through stackstac: per-year median of cloud-free Landsat C2 L2 scenes

# %%
bbox = (29.0, -26.1, 29.3, -25.8)
ds = miningxr.open_landsat(
    bbox,
    2020,
    source="stac",
    preset="planetary-computer",  # signed URLs
    query={"eo:cloud_cover": {"lt": 60}},
)
ds
# preset="earth-search" reads requester-pays S3 (needs AWS credentials); a static catalog on
# disk: catalog="path/to/catalog.json". Years before 2013 mix Landsat 5 and 7: handled per scene.

# %% [markdown]
# ## Into the store, then the same pipeline as the synthetic examples
#
# ```bash
# miningxr ingest --store zaf.zarr --country ZAF --polygons global_mining_polygons_v2.gpkg \
#     --year 2020 --source gee --gee-project my-cloud-project
# ```
# then `miningxr train`, `miningxr predict`, `miningxr evaluate`, as in `02_train_and_predict.py`.

# %%
model_path = "miningxr-run/model.keras"
prob = miningxr.predict(ds, model_path)
