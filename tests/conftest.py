import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# The suite trades run time for compile time, because compiling dominates it on a 2-core CPU. Subprocesses that
# tests start inherit the flags. Measured on a Zen 3 VM, from a cold cache:
# - LLVM at -O1 (XLA's default is -O2) compiles about twice as fast without slowing what runs
#   (tests/test_layers.py 250 -> 127 s; a V gradient step 0.218 -> 0.222 s). -O0 was rejected: its programs run slower.
# - XLA CPU's older fusion code generator (`--xla_cpu_use_fusion_emitters=false`) compiles faster again, and what
#   it compiles runs about 15 % slower (2026-11-30: tests/test_layers.py 93 -> 70 s, test_pipeline.py 119 -> 82 s,
#   the TakeCover dream test 109 -> 102 s; that test's programs, cached, ran 50 -> 58 s).
# Users get XLA's defaults; only the suite sets these. WMJ_SUITE_XLA_FLAGS=0 leaves XLA_FLAGS alone (the GPU check,
# benchmarks/device_check.sh, runs another jax, whose XLA might no longer know a flag: an unknown flag is fatal).
SUITE_XLA_FLAGS = {"xla_backend_optimization_level": "1", "xla_cpu_use_fusion_emitters": "false"}
for _flag, _value in SUITE_XLA_FLAGS.items():
    if _flag not in os.environ.get("XLA_FLAGS", "") and os.environ.get("WMJ_SUITE_XLA_FLAGS", "1") != "0":
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --{_flag}={_value}").strip()

# Compiled executables are shared between tests (and runs) that build identical computations: programs that
# compile in over 0.5 s go to the suite's persistent cache. Subprocesses that tests start inherit both (without it,
# `wmj` would use ~/.cache/worldmodels_jax/xla: compile_cache.py).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
SUITE_CACHE_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".jax_cache"))
os.environ["JAX_COMPILATION_CACHE_DIR"] = SUITE_CACHE_DIR

import fcntl  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_compilation_cache_dir", SUITE_CACHE_DIR)  # in case jax was imported before this file


@pytest.fixture
def key():
    return jax.random.PRNGKey(0)


@pytest.fixture(scope="session")
def _shared_tiny_run(tmp_path_factory):
    """One finished `wmj run --preset tiny`, built once for the whole suite: the first pytest worker that needs
    it builds it, under a lock in the workers' common temporary directory; the others find it there."""
    from worldmodels_jax.cli import main as wmj

    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    done = root / "tiny-run-shared"
    with open(root / "tiny-run-shared.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            building = root / f"tiny-run-building-{os.getpid()}"
            assert wmj(["run", "--preset", "tiny", "--out", str(building), "--quiet"]) == 0
            building.rename(done)  # complete, or not there at all
    return done


@pytest.fixture(scope="module")
def tiny_run(_shared_tiny_run, tmp_path_factory):
    """A test file's own copy of the shared finished tiny run (its tests may write into it)."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    shutil.copytree(_shared_tiny_run, out)
    return out


@pytest.fixture(autouse=True, scope="module")
def _fresh_jax_caches_per_module():
    """Each test file starts without the compiled programs of the files before it (a worker runs many)."""
    yield
    jax.clear_caches()


# The slowest test files first, longest first (summed test seconds of two full runs on the 2-core Zen 3 VM,
# 2026-12-07, with the flags above).
# `make test` hands whole files to its two workers in collection order (--dist loadfile --no-loadscope-reorder); a
# long file started last would leave one worker idle at the end. Files not named here follow in their usual order.
SLOWEST_FILES = ("test_evolve.py", "test_carracing_experiment.py", "test_takecover_dream.py", "test_pipeline.py",
                 "test_benchmarks.py", "test_models.py", "test_carracing.py", "test_layers.py", "test_imitation.py",
                 "test_attention.py", "test_controller_init.py", "test_fork.py", "test_takecover.py",
                 "test_transformer_m.py", "test_evolve_multihost.py", "test_dream.py", "test_train_vae.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept


# WMJ_COMPILE_PROFILE=<file>: each test's seconds in JAX tracing, lowering and XLA compilation (a persistent-cache
# hit counts as compile, its retrieval time) beside its wall time, one JSON line per test appended to <file> (every
# worker appends). `python tests/compile_profile.py <file>` sums them per file. Work in subprocesses is not seen.
COMPILE_EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
                  "/jax/core/compile/backend_compile_duration": "compile",
                  "/jax/compilation_cache/compile_time_saved_sec": "cache_saved"}
_compile_seconds: dict[str, float] = {}


def _record_compile_event(event: str, seconds: float, **_) -> None:
    name = COMPILE_EVENTS.get(event)
    if name is not None:
        _compile_seconds[name] = _compile_seconds.get(name, 0.0) + seconds


if os.environ.get("WMJ_COMPILE_PROFILE"):
    jax.monitoring.register_event_duration_secs_listener(_record_compile_event)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):  # runs where the test runs (an xdist worker), setup to teardown
        _compile_seconds.clear()
        start = time.perf_counter()
        yield
        record = {"test": item.nodeid, "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
                  "wall": round(time.perf_counter() - start, 3),
                  **{name: round(_compile_seconds.get(name, 0.0), 3) for name in COMPILE_EVENTS.values()}}
        with open(os.environ["WMJ_COMPILE_PROFILE"], "a") as out:
            out.write(json.dumps(record) + "\n")
