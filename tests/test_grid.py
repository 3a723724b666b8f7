import pytest

from miningxr.grid import GLOBAL_GEOBOX, GridSlice, Region, RegionError, as_region


def test_global_grid_is_equal_area_30m_with_edges_on_multiples_of_30():
    a = GLOBAL_GEOBOX.affine
    assert str(GLOBAL_GEOBOX.crs) == "EPSG:6933"
    assert (a.a, a.e) == (30, -30)
    assert a.c % 30 == 0 and a.f % 30 == 0


def test_bbox_slice_is_aligned_to_shards():
    sl = Region.from_bbox((29.0, -26.0, 29.3, -25.8)).slice(2048)
    assert sl.row0 % 2048 == 0 and sl.col0 % 2048 == 0
    assert sl.shape[0] % 2048 == 0 and sl.shape[1] % 2048 == 0


def test_slice_round_trips_through_its_coordinates():
    sl = GridSlice(1000, 1100, 2000, 2300)
    import xarray as xr

    ds = xr.Dataset(coords=sl.coords())
    assert GridSlice.of_coords(ds) == sl
    assert GridSlice.of_geobox(sl.geobox) == sl


def test_country_region_covers_its_shards():
    zaf = Region.from_country("zaf")
    assert zaf.name == "ZAF"
    assert 0 < len(zaf.shard_ids(2048)) < len(zaf.slice(2048).shard_ids(2048))


@pytest.mark.parametrize("code,hint", [("XYZ", "ISO 3166-1 alpha-3"), ("ZAG", "'ZAF'")])
def test_unknown_country_code_names_the_fix(code, hint):
    with pytest.raises(RegionError, match=hint):
        Region.from_country(code)


@pytest.mark.parametrize(
    "bbox,msg",
    [
        ((29.0, -26.0, 29.0, -25.0), "empty"),
        ((170.0, -10.0, -170.0, 10.0), "antimeridian"),
        ((0.0, 80.0, 1.0, 89.0), "beyond the global grid"),
        ((0.0, 1.0, 2.0), "4 numbers"),
    ],
)
def test_bad_bbox_is_refused_with_a_reason(bbox, msg):
    with pytest.raises(RegionError, match=msg):
        Region.from_bbox(bbox)


def test_as_region_accepts_codes_bboxes_and_slices():
    assert as_region("ZAF").name == "ZAF"
    assert as_region((29.0, -26.0, 29.1, -25.9)).name.startswith("bbox")
    assert as_region(GridSlice(0, 10, 0, 10)).slice(1) == GridSlice(0, 10, 0, 10)
