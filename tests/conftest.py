"""Suite-wide settings: hypothesis must not fail a run because the machine is busy."""

from hypothesis import HealthCheck, settings

settings.register_profile("itop", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("itop")
