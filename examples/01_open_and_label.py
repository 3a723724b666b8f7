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
# # Open Landsat composites as a lazy xarray cube, and label the mines
#
# The synthetic source is the default: no account, no network. The cube is lazy (Dask), on a
# slice of the global EPSG:6933 30 m grid, with CRS and coordinates that rioxarray and odc-geo
# read. Swap in `source="gee"` or `source="stac"` (see `03_real_sources.py`) for real imagery.

# %%
import matplotlib.pyplot as plt

import miningxr
from miningxr.evaluate import false_colour
from miningxr.sources.synthetic import mine_polygons

bbox = (29.0, -26.05, 29.3, -25.85)  # lon/lat: 30 x 22 km with four synthetic mines
ds = miningxr.open_landsat(bbox, [2015, 2020])
ds

# %% [markdown]
# Nothing has been computed yet: every block is a Dask task. The grid is a slice of one global
# GeoBox, so any two cubes agree pixel for pixel.

# %%
print(ds.landsat.data)
print(ds.odc.geobox)
print("CRS:", ds.rio.crs)

# %% [markdown]
# ## A false-colour view: mines are bright in SWIR and have little vegetation

# %%
year = ds.sel(year=2020)
rgb = false_colour(year.landsat)
ndvi = (year.landsat.sel(band="nir") - year.landsat.sel(band="red")) / (
    year.landsat.sel(band="nir") + year.landsat.sel(band="red")
)
fig, ax = plt.subplots(1, 2, figsize=(11, 4))
ax[0].imshow(rgb)
ax[0].set_title("SWIR2-NIR-red, 2020")
ndvi.plot.imshow(ax=ax[1], cmap="RdYlGn", vmin=-0.2, vmax=0.8)
ax[1].set_title("NDVI")
plt.tight_layout()

# %% [markdown]
# ## Mining polygons, rasterized on the same grid with `map_blocks`
#
# Real work reads the global mining polygons GeoPackage with `miningxr.read_polygons(path,
# country="ZAF")`; the synthetic world emits its own polygons in the same schema.

# %%
polygons = mine_polygons(bbox, 2020)
print(polygons[["MINE_ID", "ISO3_CODE", "AREA"]].head())
mask = miningxr.mining_mask(year, polygons)
print("mining pixels:", int(mask.sum()), "=", float(mask.sum()) * 0.0009, "km2")
mask.plot.imshow(cmap="Greys", add_colorbar=False)

# %% [markdown]
# ## Mines grow: compare two years

# %%
grown = ds.landsat.sel(band="swir1", year=2020) - ds.landsat.sel(band="swir1", year=2015)
grown.plot.imshow(cmap="RdBu_r", center=0, figsize=(6, 4))
