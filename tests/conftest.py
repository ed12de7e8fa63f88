"""Shared test settings.

Hypothesis runs derandomized, so CI is reproducible; set
``HYPOTHESIS_PROFILE=explore`` to search with fresh random examples.
"""

import os

import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "explore",
    deadline=None,
    max_examples=500,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The tests are small; extra threads only add noise on a 2-core machine.
torch.set_num_threads(1)
