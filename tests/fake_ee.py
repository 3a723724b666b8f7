"""An in-process fake of the Earth Engine service, at the ``ee.data`` boundary.

The real ``ee`` client builds every expression and xee drives it exactly as against Google;
only the three calls that would leave the process are replaced:

- ``ee.data.getAlgorithms``: the algorithm signatures that ship with earthengine-api's own
  test suite (``ee/tests/algorithms.json``), so ``ee.Initialize`` needs no network;
- ``ee.data.computeValue``: ``getInfo()`` — the serialized expression graph is evaluated by a
  small interpreter of the functions xee uses;
- ``ee.data.computePixels``: the same interpreter, with pixels served from the synthetic source
  on the requested grid, in Earth Engine's units (reflectance; thermal in kelvin).

The fake serves ``LANDSAT/COMPOSITES/C02/T1_L2_ANNUAL`` for the synthetic source's years, refuses
a grid that is not on the global 30 m EPSG:6933 lattice (so a test proves our requests land on
our pixels), records every request, and can inject faults.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable

import numpy as np

from miningxr.config import BANDS, SyntheticConfig
from miningxr.encoding import FILL_VALUE, SCALE_FACTOR
from miningxr.grid import GLOBAL_GEOBOX, RESOLUTION
from miningxr.sources.synthetic import _block

COLLECTION = "LANDSAT/COMPOSITES/C02/T1_L2_ANNUAL"
LIMIT = 48 * 2**20


class FakeImage:
    def __init__(self, bands: dict[str, Callable], props: dict):
        self.bands = bands  # name -> f(row0, col0, h, w) -> float array, NaN = masked
        self.props = props

    def info(self) -> dict:
        return {
            "type": "Image",
            "id": self.props.get("system:id"),
            "bands": [
                {
                    "id": b,
                    "data_type": {"type": "PixelType", "precision": "float"},
                    "crs": "EPSG:6933",
                    "crs_transform": [30, 0, 0, 0, -30, 0],
                }
                for b in self.bands
            ],
            "properties": dict(self.props),
        }


class _Fn:
    def __init__(self, names, body, values, env):
        self.names, self.body, self.values, self.env = names, body, values, env

    def __call__(self, *args):
        return Interpreter(self.values, {**self.env, **dict(zip(self.names, args, strict=True))}).eval(
            self.body
        )


class Interpreter:
    """Evaluates Earth Engine's serialized (cloud API) expressions for the functions xee uses."""

    def __init__(self, values: dict, env: dict | None = None, service: FakeEarthEngine | None = None):
        self.values, self.env = values, env or {}
        self.service = service or FakeEarthEngine.current

    def eval(self, node: dict):
        if "constantValue" in node:
            return node["constantValue"]
        if "valueReference" in node:
            return self.eval(self.values[node["valueReference"]])
        if "argumentReference" in node:
            return self.env[node["argumentReference"]]
        if "arrayValue" in node:
            return [self.eval(v) for v in node["arrayValue"].get("values", [])]
        if "dictionaryValue" in node:
            return {k: self.eval(v) for k, v in node["dictionaryValue"].get("values", {}).items()}
        if "functionDefinitionValue" in node:
            d = node["functionDefinitionValue"]
            return _Fn(d.get("argumentNames", []), {"valueReference": d["body"]}, self.values, self.env)
        if "functionInvocationValue" in node:
            inv = node["functionInvocationValue"]
            args = {k: self.eval(v) for k, v in inv.get("arguments", {}).items()}
            if "functionReference" in inv:
                return self.eval({"valueReference": inv["functionReference"]})(*args.values())
            name = inv["functionName"]
            fn = getattr(self, "f_" + name.replace(".", "_"), None)
            if fn is None:
                raise NotImplementedError(f"fake Earth Engine has no {name}")
            return fn(**args)
        raise ValueError(f"cannot evaluate {node}")

    # --- collections -------------------------------------------------------------------------
    def f_ImageCollection_load(self, id, version=None):
        if id != COLLECTION:
            import ee

            raise ee.EEException(f"ImageCollection.load: ImageCollection asset '{id}' not found.")
        return list(self.service.images)

    def f_Collection_filter(self, collection, filter):
        return [im for im in collection if filter(im)]

    def f_Filter_dateRangeContains(self, leftValue=None, rightField=None, **_):
        start, end = leftValue
        return lambda im: start <= im.props[rightField] < end

    def f_DateRange(self, start, end=None, timeZone=None):
        return (_ms(start), _ms(end))

    def f_Collection_size(self, collection):
        return len(collection)

    def f_Element_toDictionary(self, element, properties=None):
        return {}  # the collection's own properties: none

    def f_Collection_first(self, collection):
        return collection[0].info() if collection else None

    def f_Reducer_toList(self, **_):
        return "toList"

    def f_Reducer_repeat(self, reducer, count):
        return ("repeat", reducer, count)

    def f_Collection_reduceColumns(self, collection, reducer, selectors, **_):
        return {"list": [[im.props[s] for im in collection] for s in selectors]}

    def f_Dictionary_get(self, dictionary, key, defaultValue=None):
        return dictionary.get(key, defaultValue)

    def f_Collection_toList(self, collection, count, offset=0):
        return list(collection)[offset : offset + count]

    def f_List_slice(self, list, start, end=None, step=None):
        return list[start:end:step]

    def f_ImageCollection_fromImages(self, images):
        return list(images)

    def f_Collection_iterate(self, collection, function, first=None):
        acc = first
        for im in collection:
            acc = function(im, acc)
        return acc

    # --- images ------------------------------------------------------------------------------
    def f_Image_constant(self, value):
        image = FakeImage({"constant": lambda r, c, h, w: np.full((h, w), float(value))}, {})
        image.constant = float(value)
        return image

    def f_Image_mask(self, image, mask=None):
        if mask is None:
            raise NotImplementedError("Image.mask() as a getter")
        return image  # fully masked constant placeholder; only ever dropped by xee

    def f_Image_addBands(self, dstImg, srcImg, names=None, overwrite=False):
        bands = dict(dstImg.bands)
        for name in names or srcImg.bands:
            new = name if name not in bands or overwrite else f"{name}_{len(bands)}"
            bands[new] = srcImg.bands[name]
        return FakeImage(bands, dstImg.props)

    def f_Image_bandNames(self, image):
        return list(image.bands)

    def f_Image_select(self, input, bandSelectors, newNames=None):
        picked = [b for b in bandSelectors]
        names = newNames or picked
        return FakeImage({n: input.bands[b] for n, b in zip(names, picked, strict=True)}, input.props)

    def f_Image_unmask(self, input, value=None, sameFootprint=True):
        value = getattr(value, "constant", value)

        def filled(f):
            return lambda r, c, h, w: np.nan_to_num(f(r, c, h, w), nan=float(value))

        return FakeImage({n: filled(f) for n, f in input.bands.items()}, input.props)


def _ms(date) -> int:
    if isinstance(date, (int, float)):
        return int(date)
    d = dt.datetime.fromisoformat(str(date)).replace(tzinfo=dt.UTC)
    return int(d.timestamp() * 1000)


class FakeEarthEngine:
    """Install with ``with FakeEarthEngine(config) as fake:``; ``fake.requests`` records grids.

    ``fault(request_number, grid) -> Exception | None`` lets a test fail chosen requests.
    """

    current: FakeEarthEngine | None = None

    def __init__(
        self,
        config: SyntheticConfig | None = None,
        fault: Callable[[int, dict], BaseException | None] | None = None,
    ):
        self.config = config or SyntheticConfig()
        self.fault = fault
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.images = [self._image(y) for y in range(self.config.first_year, self.config.last_year + 1)]

    def _image(self, year: int) -> FakeImage:
        cfg = self.config

        def band(i: int, name: str):
            def pixels(r, c, h, w):
                dn = _block(cfg, year, r, r + h, c, c + w)[0, i]
                vals = np.where(dn == FILL_VALUE, np.nan, dn * SCALE_FACTOR)
                # Earth Engine's composite serves thermal in kelvin
                return vals * 100 + 273.15 if name == "thermal" else vals

            return pixels

        props = {
            "system:time_start": _ms(f"{year}-01-01"),
            "system:id": f"{COLLECTION}/{year}",
            "system:index": str(year),
        }
        return FakeImage({b: band(i, b) for i, b in enumerate(BANDS)}, props)

    # --- the replaced ee.data calls ----------------------------------------------------------
    def compute_value(self, obj):
        import ee

        return self._eval(ee.serializer.encode(obj, for_cloud_api=True))

    def compute_pixels(self, params: dict):
        import ee

        grid = params["grid"]
        with self.lock:
            n = len(self.requests)
            self.requests.append(grid)
        if self.fault is not None:
            exc = self.fault(n, grid)
            if exc is not None:
                raise exc
        image = self._eval(ee.serializer.encode(params["expression"], for_cloud_api=True))
        r, c, h, w = self._window(grid)
        if h * w * len(image.bands) * 5 > LIMIT:
            raise ee.EEException(
                f"Total request size ({h * w * len(image.bands) * 5} bytes) "
                f"must be less than or equal to {LIMIT} bytes."
            )
        out = np.empty((h, w), dtype=[(b, "<f4") for b in image.bands])
        for b, f in image.bands.items():
            out[b] = f(r, c, h, w)
        return out

    def _eval(self, encoded: dict):
        return Interpreter(encoded["values"], service=self).eval({"valueReference": encoded["result"]})

    @staticmethod
    def _window(grid: dict) -> tuple[int, int, int, int]:
        import ee

        t = grid["affineTransform"]
        if grid.get("crsCode") != "EPSG:6933" or (t["scaleX"], t["scaleY"], t["shearX"], t["shearY"]) != (
            RESOLUTION,
            -RESOLUTION,
            0,
            0,
        ):
            raise ee.EEException(f"fake serves only the 30 m EPSG:6933 grid, got {grid}")
        origin = GLOBAL_GEOBOX.affine
        col, row = (t["translateX"] - origin.c) / RESOLUTION, (origin.f - t["translateY"]) / RESOLUTION
        if col != int(col) or row != int(row):
            raise ee.EEException(f"request grid is off the global lattice: {t}")
        return int(row), int(col), grid["dimensions"]["height"], grid["dimensions"]["width"]

    # --- install / uninstall -----------------------------------------------------------------
    def __enter__(self) -> FakeEarthEngine:
        import ee
        from ee import apitestcase

        self._saved = {
            k: getattr(ee.data, k)
            for k in ("getAlgorithms", "computeValue", "computePixels", "_install_cloud_api_resource")
        }
        ee.Reset()
        ee.data._install_cloud_api_resource = lambda: None
        ee.data.getAlgorithms = apitestcase.GetAlgorithms
        ee.data.computeValue = self.compute_value
        ee.data.computePixels = self.compute_pixels
        ee.Initialize(None, project="fake-project")
        FakeEarthEngine.current = self
        return self

    def __exit__(self, *exc) -> None:
        import ee

        for k, v in self._saved.items():
            setattr(ee.data, k, v)
        ee.Reset()
        FakeEarthEngine.current = None
