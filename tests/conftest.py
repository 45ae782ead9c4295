"""Suite-wide settings: hypothesis must not fail a run because the machine is busy; the kernel
choices measured by the suite (and its subprocesses) go to a cache of its own, not the user's."""

import os
import tempfile

from hypothesis import HealthCheck, settings

os.environ.setdefault("ITOP_CACHE_DIR", tempfile.mkdtemp(prefix="itop-test-cache-"))

settings.register_profile("itop", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("itop")
