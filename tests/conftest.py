"""Test session setup: converted-weights and assembled-model caches go to a temporary folder, so tests
never read or litter the user's ~/.cache/tinygemma."""

import os
import tempfile

import pytest


@pytest.fixture(scope="session", autouse=True)
def isolated_cache():
    with tempfile.TemporaryDirectory(prefix="tinygemma-test-cache-") as d:
        old = os.environ.get("TINYGEMMA_CACHE")
        os.environ["TINYGEMMA_CACHE"] = d
        yield d
        if old is None:
            os.environ.pop("TINYGEMMA_CACHE", None)
        else:
            os.environ["TINYGEMMA_CACHE"] = old


@pytest.fixture(scope="session")
def default_lm(isolated_cache):
    """The embedded default model on the fast path (converted once per test session)."""
    import tinygemma

    return tinygemma.load()
