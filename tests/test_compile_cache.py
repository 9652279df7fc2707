"""The persistent compilation cache (`compile_cache.py`), and programs that take the weights as arguments, so that
a run with other weights loads the programs another run compiled."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import jax
import pytest

from worldmodels_jax.compile_cache import CACHE_MAX_BYTES, use_compilation_cache
from worldmodels_jax.configs import get_preset
from worldmodels_jax.errors import ConfigError
from worldmodels_jax.models.memory import init_memory
from worldmodels_jax.models.vae import init_vae
from worldmodels_jax.pipeline import Pipeline
from worldmodels_jax.rollouts import WorldModelParams

REQUEST, HIT = "/jax/compilation_cache/compile_requests_use_cache", "/jax/compilation_cache/cache_hits"
_events: list[str] = []
_counting = {"on": False}


def _count_cache_events(event: str, **_) -> None:
    if _counting["on"] and event in (REQUEST, HIT):
        _events.append(event)


jax.monitoring.register_event_listener(_count_cache_events)


def test_a_run_with_other_weights_loads_the_controller_programs_from_the_cache(tmp_path):
    """Two controller stages whose V and M differ: the second compiles nothing (it finds every program the first
    one compiled), because the weights are arguments of the programs, not constants in them."""
    tiny = get_preset("tiny")
    es = dataclasses.replace(tiny.controller.es, generations=1, eval_every=1)
    config = dataclasses.replace(tiny, controller=dataclasses.replace(tiny.controller, es=es, modes=("z_h",)))
    previous = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # keep even quick compiles
    try:
        returns = []
        # Weights never drawn before, so that the suite's cache (.jax_cache, kept between local runs) cannot hold
        # programs with them built in: with the weights as constants, the second run would have to compile.
        fresh = int.from_bytes(os.urandom(3), "little")
        for seed in (0, 1):
            pipeline = Pipeline(config, tmp_path / f"run{seed}", progress=False)
            key = jax.random.PRNGKey(fresh + seed)
            wm = WorldModelParams(vae=init_vae(jax.random.fold_in(key, 0), pipeline.config.vae),
                                  memory=init_memory(jax.random.fold_in(key, 1), pipeline.memory))
            training = pipeline.controller_training("z_h", wm)
            _events.clear()
            _counting["on"] = True
            state, metrics = training.run_chunk(training.init(jax.random.PRNGKey(0)), 1)
            evaluation = training.evaluate(training.mean_params(state), jax.random.PRNGKey(1))
            _counting["on"] = False
            returns.append((float(metrics["return_mean"][0]), float(evaluation.returns.mean())))
            if seed == 1:  # every program looked up is found (with the weights as constants, 2 of 3 were compiled)
                assert _events.count(REQUEST) >= 3 and _events.count(HIT) == _events.count(REQUEST), _events
    finally:
        _counting["on"] = False
        jax.config.update("jax_persistent_cache_min_compile_time_secs", previous)
    assert returns[0] != returns[1]  # the programs found in the cache ran the second run's own weights


def _cache_files(path) -> list[str]:
    return [name for name in os.listdir(path) if name.endswith("-cache")] if path.exists() else []


@pytest.mark.parametrize("choice", ["dir", "auto", "off"])
def test_the_compilation_cache_option_puts_programs_where_it_says(tmp_path, choice):
    """A fresh process: `dir` keeps programs there, `auto` under $XDG_CACHE_HOME/worldmodels_jax/xla, `off`
    nowhere."""
    chosen, xdg = tmp_path / "chosen", tmp_path / "xdg"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env.update(XDG_CACHE_HOME=str(xdg), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    code = ("import jax, jax.numpy as jnp; from worldmodels_jax.compile_cache import use_compilation_cache; "
            f"print(use_compilation_cache({str(chosen) if choice == 'dir' else choice!r})); "
            "print(jax.config.jax_compilation_cache_max_size); "
            "jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).block_until_ready()")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    printed, size = out.stdout.split()
    auto_dir = xdg / "worldmodels_jax" / "xla"
    if choice == "off":
        assert printed == "None" and not _cache_files(auto_dir) and not _cache_files(chosen)
    else:
        where = chosen if choice == "dir" else auto_dir
        assert printed == str(where) and int(size) == CACHE_MAX_BYTES
        assert len(_cache_files(where)) >= 1


def test_a_cache_directory_that_cannot_be_made_gets_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="--compilation-cache off"):
        use_compilation_cache(str(blocker / "cache"))
    with pytest.raises(ConfigError, match="auto, off or a directory"):
        use_compilation_cache("")
