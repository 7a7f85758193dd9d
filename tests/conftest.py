import os
import sys

# Eight simulated CPU devices for the sharding tests; must precede any JAX import.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """The whole suite runs in one process: without this, every module's compiled
    programs stay cached to the end, and late in the suite the CPU client aborted
    (twice, in XLA compile and in an orbax restore). A module compiles its own
    programs, so dropping JAX's caches after each module costs little."""
    yield
    if "jax" in sys.modules:
        sys.modules["jax"].clear_caches()
    gc.collect()
