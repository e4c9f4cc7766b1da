import os
import tempfile
from pathlib import Path

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


# Feature networks train once per data set and are kept between sessions here (tests that need one share it)
FEATURE_CACHE = Path(tempfile.gettempdir()) / "diffvae-test-feature-cache"


@pytest.fixture(scope="session", autouse=True)
def _cache_in_a_session_folder(tmp_path_factory):
    """``$DIFFVAE_CACHE`` is a folder of this session, so no test writes into ~/.cache (folder packs land
    here and go with the session); its ``features/`` links to FEATURE_CACHE's, kept between sessions."""
    cache = tmp_path_factory.mktemp("diffvae-cache")
    (FEATURE_CACHE / "features").mkdir(parents=True, exist_ok=True)
    (cache / "features").symlink_to(FEATURE_CACHE / "features", target_is_directory=True)
    old = os.environ.get("DIFFVAE_CACHE")
    os.environ["DIFFVAE_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("DIFFVAE_CACHE", None)
    else:
        os.environ["DIFFVAE_CACHE"] = old


@pytest.fixture(scope="session")
def feature_cache(_cache_in_a_session_folder):
    """The session's cache folder, whose feature networks are shared between sessions (they train once per dataset)."""
    return str(_cache_in_a_session_folder)
