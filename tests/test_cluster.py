"""Which cluster a command runs on."""

import pytest

from miningxr import StoreError
from miningxr.cluster import dask_client


def test_the_current_client_is_used_and_a_callers_error_reaches_the_caller(client):
    with dask_client() as c:
        assert c is client
    # a MiningxrError is a ValueError: it must not be taken for "no client yet"
    with pytest.raises(StoreError, match="raised inside"), dask_client():
        raise StoreError("raised inside")
