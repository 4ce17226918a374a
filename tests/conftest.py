"""Test configuration: 4 forced host devices (for pmap tests), strict numpy.

XLA_FLAGS must be set before JAX initializes its backends, so this runs at
import time of the conftest, before any test module imports jax.
"""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
