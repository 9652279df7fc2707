import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# The suite compiles with LLVM at -O1 (XLA's default is -O2). Compiling dominates this suite on a 2-core CPU, and
# -O1 compiles about twice as fast without slowing what runs (measured on a Zen 3 VM: tests/test_layers.py from
# a cold cache 250 -> 127 s; the TakeCover dream test 125 -> 107 s; a V gradient step 0.218 -> 0.222 s). -O0 was
# tried and rejected: its programs run slower. Subprocesses that tests start inherit the flag.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=1").strip()

# Programs that compile in over 0.5 s go to the persistent cache; subprocesses given a cache directory inherit this.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # noqa: E402
import pytest  # noqa: E402

# Compiled executables are shared between tests (and runs) that build identical computations.
jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.dirname(__file__), "..", ".jax_cache"))


@pytest.fixture
def key():
    return jax.random.PRNGKey(0)


@pytest.fixture(autouse=True, scope="module")
def _fresh_jax_caches_per_module():
    """Each test file starts without the compiled programs of the files before it (a worker runs many)."""
    yield
    jax.clear_caches()


# The slowest test files first (summed test seconds of a clean-clone run on the 2-core CPU, 2026-11-30). `make test` hands whole files to its
# two workers in collection order (--dist loadfile --no-loadscope-reorder); a long file started last would leave
# one worker idle at the end. Files not named here follow in their usual order.
SLOWEST_FILES = ("test_evolve.py", "test_takecover_dream.py", "test_pipeline.py", "test_models.py", "test_layers.py",
                 "test_carracing.py", "test_attention.py", "test_takecover.py", "test_benchmarks.py", "test_dream.py",
                 "test_transformer_m.py", "test_evolve_multihost.py", "test_carracing_experiment.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept
