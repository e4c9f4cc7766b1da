import os
import tempfile

import pytest

# One thread per test process (and per subprocess a test starts): a 2-thread torch process that
# shares 2 cores with anything else spins in OpenMP barriers and slows down up to 10×, so the suite
# stays within its time on a busy machine (CI, another session) only single-threaded.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    import torch

    torch.set_num_threads(1)
    yield


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
