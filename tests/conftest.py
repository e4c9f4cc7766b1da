import os
import tempfile

import pytest


@pytest.fixture(scope="session")
def feature_cache():
    """One feature-network cache for the whole session (the networks train once per dataset)."""
    path = os.path.join(tempfile.gettempdir(), "diffvae-test-feature-cache")
    old = os.environ.get("DIFFVAE_CACHE")
    os.environ["DIFFVAE_CACHE"] = path
    yield path
    if old is None:
        os.environ.pop("DIFFVAE_CACHE", None)
    else:
        os.environ["DIFFVAE_CACHE"] = old
