import itertools

import pytest
import xarray as xr
from hypothesis import given
from hypothesis import strategies as st

from miningxr.grid import (
    GLOBAL_GEOBOX,
    GLOBAL_SHAPE,
    GridSlice,
    Region,
    RegionError,
    as_region,
    as_slice,
    block_edges,
)


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


# --------------------------------------------------------------------------- properties


@st.composite
def grid_slices(draw, max_side: int = 5000) -> GridSlice:
    """Any slice of the global grid up to ``max_side`` pixels a side, edges included."""
    h, w = GLOBAL_SHAPE
    rows = draw(st.integers(1, max_side))
    cols = draw(st.integers(1, max_side))
    row0 = draw(st.integers(0, h - rows) | st.just(h - rows) | st.just(0))
    col0 = draw(st.integers(0, w - cols) | st.just(w - cols) | st.just(0))
    return GridSlice(row0, row0 + rows, col0, col0 + cols)


@given(a=st.integers(-(10**6), 10**6), n=st.integers(1, 10**5), step=st.integers(1, 4096))
def test_block_edges_cut_at_multiples_of_the_step(a, n, step):
    b = a + n
    edges = block_edges(a, b, step)
    assert edges[0] == a and edges[-1] == b
    assert all(x < y for x, y in itertools.pairwise(edges))
    assert all(e % step == 0 for e in edges[1:-1])
    assert all(y - x <= step for x, y in itertools.pairwise(edges))
    # no multiple of step inside a block: every block lies within one step-aligned cell
    assert all((y - 1) // step == x // step for x, y in itertools.pairwise(edges))


@given(grid_slices())
def test_a_slice_round_trips_through_its_region_geobox_and_coordinates(s):
    assert as_slice(as_region(s)) == s
    assert GridSlice.of_geobox(s.geobox) == s
    assert GridSlice.of_coords(xr.Dataset(coords=s.coords())) == s


@given(grid_slices(), st.sampled_from([64, 512, 2048]))
def test_aligned_covers_the_slice_with_whole_shards(s, shard):
    a = s.aligned(shard)
    assert a.row0 <= s.row0 and a.col0 <= s.col0 and a.row1 >= s.row1 and a.col1 >= s.col1
    h, w = GLOBAL_SHAPE
    assert a.row0 % shard == 0 and a.col0 % shard == 0
    assert a.row1 % shard == 0 or a.row1 == h
    assert a.col1 % shard == 0 or a.col1 == w
    assert GridSlice.covering(s.shard_ids(shard), shard) == a
    # the block chunks tile the slice exactly
    rows, cols = s.block_chunks(shard)
    assert sum(rows) == s.shape[0] and sum(cols) == s.shape[1]


@given(grid_slices(max_side=300), grid_slices(max_side=300))
def test_intersection_is_the_common_part_and_within_cuts_it_out(a, b):
    common = a.intersection(b)
    rows = set(range(a.row0, a.row1)) & set(range(b.row0, b.row1))
    cols = set(range(a.col0, a.col1)) & set(range(b.col0, b.col1))
    if not rows or not cols:
        assert common is None
        return
    assert common == GridSlice(min(rows), max(rows) + 1, min(cols), max(cols) + 1)
    cut = xr.Dataset(coords=a.coords()).isel(common.within(a))
    assert GridSlice.of_coords(cut) == common


@given(st.sets(st.tuples(st.integers(0, 12), st.integers(0, 12)), min_size=1, max_size=60))
def test_sparse_cover_is_disjoint_rectangles_whose_union_is_the_shards(ids):
    from miningxr.grid import sparse_cover

    rects = sparse_cover(ids, 512)
    covered = [s for r in rects for s in r.shard_ids(512)]
    assert len(covered) == len(set(covered)) and set(covered) == ids
