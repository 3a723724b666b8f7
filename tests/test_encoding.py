"""The int16 packing every source, store and reader shares: properties over all inputs."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from miningxr.encoding import FILL_VALUE, SCALE_FACTOR, decode_dn, encode_dn, landsat_attrs, normalize

#: the decoded values one int16 holds: reflectance and scaled temperature, -3.2767 .. 3.2767
LIMIT = np.iinfo(np.int16).max * SCALE_FACTOR
values = hnp.arrays(
    np.float64,
    hnp.array_shapes(max_dims=3, max_side=6),
    elements=st.floats(-LIMIT, LIMIT) | st.just(np.nan),
)


@given(values)
def test_encode_then_decode_is_within_half_a_step_and_keeps_no_data(v):
    dn = encode_dn(v)
    assert dn.dtype == np.int16
    back = decode_dn(dn)
    assert np.array_equal(np.isnan(back), np.isnan(v))
    ok = ~np.isnan(v)
    assert np.all(np.abs(back[ok] - v[ok]) <= SCALE_FACTOR / 2 + 1e-6)


@given(hnp.arrays(np.int16, hnp.array_shapes(max_dims=3, max_side=6)))
def test_decode_then_encode_gives_back_every_packed_number(dn):
    assert np.array_equal(encode_dn(decode_dn(dn)), dn)


@given(hnp.arrays(np.float64, st.integers(1, 20), elements=st.floats(allow_nan=False, allow_infinity=True)))
def test_values_beyond_int16_are_clipped_never_wrapped_or_taken_for_no_data(v):
    dn = encode_dn(v).astype(np.int64)
    assert np.all(dn != FILL_VALUE) or np.all(np.isinf(v[dn == FILL_VALUE]))
    finite = np.isfinite(v)
    assert np.all(np.sign(dn[finite & (np.abs(v) > 1e-3)]) == np.sign(v[finite & (np.abs(v) > 1e-3)]))


def test_infinities_are_no_data():
    assert encode_dn(np.array([np.inf, -np.inf])).tolist() == [FILL_VALUE, FILL_VALUE]


@given(hnp.arrays(np.int16, st.tuples(st.integers(1, 4), st.integers(1, 5))))
def test_normalize_of_packed_numbers_equals_normalize_of_their_decoded_values(dn):
    mean, std = [0.1, 0.2, 0.3, 0.4][: dn.shape[0]], [0.05, 0.1, 0.2, 0.4][: dn.shape[0]]
    a = normalize(dn, mean, std, band_axis=0)
    b = normalize(decode_dn(dn), mean, std, band_axis=0)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.all(a[dn == FILL_VALUE] == 0)


def test_the_cf_attributes_decode_what_encode_packs():
    import xarray as xr

    v = np.array([0.1234, np.nan, -0.5], np.float32)
    ds = xr.decode_cf(xr.Dataset({"v": ("i", encode_dn(v), landsat_attrs())}))
    np.testing.assert_allclose(ds.v.values, v, atol=SCALE_FACTOR / 2)
