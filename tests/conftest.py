import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# One persistent compilation cache for the whole run: both pytest workers and every subprocess a test starts
# (they inherit these variables) load a program another one already compiled instead of compiling it again.
# Compiling dominates this suite on a 2-core CPU (about 0.15 s per small program), and many tests build the
# same programs (the tiny pipeline, the evolve CLI in and out of process), so every program is cached.
# The size limit turns on JAX's file lock, so the two workers never read a half-written entry.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))

import jax  # noqa: E402,F401
import pytest  # noqa: E402


@pytest.fixture
def key():
    return jax.random.PRNGKey(0)
