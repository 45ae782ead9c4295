"""Suite-wide settings: hypothesis must not fail a run because the machine is busy; the kernel
choices measured by the suite (and its subprocesses) go to a cache of its own, not the user's."""

import os
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, settings

os.environ.setdefault("ITOP_CACHE_DIR", tempfile.mkdtemp(prefix="itop-test-cache-"))

settings.register_profile("itop", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("itop")


@pytest.fixture
def fixed_kernels():
    """ITOP_KERNELS=dense for the test (and the processes it starts), restored after: kernel choices
    timed per process may round differently (docs/performance.md), so tests that compare numbers
    bit for bit across processes, or a masked model against a plain dense one, pin them."""
    from itop.sparse import dispatch

    before = os.environ.get("ITOP_KERNELS")
    os.environ["ITOP_KERNELS"] = "dense"
    dispatch.reset()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("ITOP_KERNELS", None)
        else:
            os.environ["ITOP_KERNELS"] = before
        dispatch.reset()


@pytest.fixture
def one_thread():
    """PyTorch on one thread for the test (as `itop train` sets for small steps), restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
