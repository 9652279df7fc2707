"""The evolution engine (worldmodels_jax.evolve): protocol, chunking, sharding, durability, bad values and input."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from worldmodels_jax import evolve as ev
from worldmodels_jax.errors import ConfigError, EnvError, NonFiniteError
from worldmodels_jax.evolution import ESConfig, make_strategy
from worldmodels_jax.evolve import (EvolveConfig, FunctionProblem, MLPPolicy, ObsNorm, env_problem, evolve, make_engine,
                                    mlp_for_env)
from worldmodels_jax.rollouts import WorldModelParams, population_returns

ROOT = Path(__file__).resolve().parents[1]
# The CLI runs below share compiled programs through the persistent cache (threshold: conftest.py).
SUBPROCESS_ENV = {"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(ROOT / ".jax_cache")}


def _cartpole(config: EvolveConfig, hidden=(8,)):
    env, params = gymnax.make("CartPole-v1")
    return env_problem(env, mlp_for_env(env, params, hidden), env_params=params, config=config)


def _small_es(**kw) -> ESConfig:
    base = dict(strategy="CMA_ES", population=16, sigma_init=0.5, rollouts=2, l2_coef=0.0, eval_every=2,
                eval_episodes=8, generations=4)
    return ESConfig(**{**base, **kw})


def _subprocess(code: str, env_extra: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, **SUBPROCESS_ENV, **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@dataclasses.dataclass(frozen=True)
class LinearAgent:
    """action = 1 if w·obs > 0 (the same agent as tests/test_evolution.py)."""

    def init_carry(self, wm_params):
        return jnp.zeros(())

    def act(self, wm_params, c_params, carry, obs, first, key):
        return (jnp.dot(c_params, obs) > 0).astype(jnp.int32), carry


# ------------------------------------------------------------------------------------------- protocol
def test_episodes_match_population_returns_with_common_random_numbers():
    """The engine's P × R rollout equals rollouts.population_returns (same seeds, same masking)."""
    env, params = gymnax.make("CartPole-v1")
    weights = jnp.array([[0.0, 0.0, 1.0, 0.0], [0.1, 0.5, 3.0, 1.0], [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
    problem = env_problem(env, agent=LinearAgent(), template=weights[0], env_params=params,
                          config=EvolveConfig(max_steps=120, step_chunk=16))
    key = jax.random.PRNGKey(3)
    ret, lengths, stats = jax.jit(lambda w, k: problem.episodes(w, jax.random.split(k, 3), {}, True))(weights, key)
    expected = population_returns(env, params, LinearAgent(), WorldModelParams(), weights, key, rollouts=3,
                                  max_steps=120, chunk=16)
    np.testing.assert_allclose(np.asarray(ret).mean(axis=1), np.asarray(expected))
    assert float(stats["env_steps"]) == float(jnp.sum(lengths)) == float(jnp.sum(ret))  # CartPole: reward 1 per step
    assert np.all(np.asarray(lengths) <= 120) and np.any(np.asarray(lengths) < 120)


def test_small_dense_layers_leave_the_engine_s_generations_unchanged():
    """The policy's Dense layers as multiply-adds (the CPU default) give the generations of XLA's dots."""
    metrics = {}
    for small in (0, None):
        config = EvolveConfig(seed=4, small_dense=small, early_exit=False)
        problem = _cartpole(config, hidden=(32,))
        assert problem.agent.small_dense_entries == (0 if small == 0 else ev.resolve_small_dense(None))
        engine = make_engine(problem, _small_es(), config)
        _, metrics[small] = engine.run_generations(engine.init(), 3)
    for name in ("return_mean", "return_max", "fitness_best", "env_steps"):
        np.testing.assert_allclose(metrics[None][name], metrics[0][name], rtol=1e-6)


def test_step_without_reset_is_gymnax_step_before_its_auto_reset():
    """The engine's step: gymnax's `step` (same key split) minus the reset, so a finished episode's state stays
    the stepped one (`final_observation`) instead of a fresh episode's."""
    from worldmodels_jax.envs.stepping import step_without_reset

    env, params = gymnax.make("CartPole-v1")
    _, state = env.reset(jax.random.PRNGKey(0), params)
    for t in range(60):  # push right until the pole falls: the last step terminates
        key = jax.random.PRNGKey(100 + t)
        obs, nxt, reward, terminated, truncated, info = env.step(key, state, 1, params)
        obs2, nxt2, reward2, terminated2, truncated2 = step_without_reset(env, key, state, 1, params)
        assert float(reward2) == float(reward) and bool(terminated2) == bool(terminated)
        assert bool(truncated2) == bool(truncated)
        close = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)  # noqa: E731
        close(obs2, info["final_observation"])
        if terminated:
            assert np.abs(np.asarray(obs2) - np.asarray(obs)).max() > 0.1  # gymnax reset, we did not
            break
        close(obs2, obs)
        jax.tree.map(close, nxt2, nxt)
        state = nxt
    assert bool(terminated)


def test_step_without_reset_keeps_a_wrapper_s_own_step():
    """gymnax wrappers forward attributes to the wrapped env; the engine must still step through the wrapper."""
    from gymnax.wrappers.purerl import StickyActionWrapper

    from worldmodels_jax.envs.stepping import step_without_reset

    inner, params = gymnax.make("CartPole-v1")
    env = StickyActionWrapper(inner, sticky_action_prob=0.5)
    _, state = env.reset(jax.random.PRNGKey(0), params)
    for t in range(5):
        key = jax.random.PRNGKey(200 + t)
        obs, nxt, reward, terminated, truncated, info = env.step(key, state, t % 2, params)
        obs2, nxt2, *_ = step_without_reset(env, key, state, t % 2, params)
        np.testing.assert_allclose(np.asarray(obs2), np.asarray(obs), rtol=1e-6, atol=1e-6)
        assert int(nxt2.last_action) == int(nxt.last_action)  # the wrapper's state, not the inner env's
        state = nxt
    # and the engine runs episodes through it
    problem = env_problem(env, agent=LinearAgent(), template=jnp.zeros(4), env_params=params,
                          config=EvolveConfig(max_steps=20, step_chunk=10))
    ret, lengths, _ = problem.episodes(jnp.ones((2, 4)), jax.random.split(jax.random.PRNGKey(1), 2), {}, True)
    assert ret.shape == (2, 2) and np.all(np.asarray(lengths) >= 1)


def test_obs_norm_merge_matches_numpy():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, (n, 3)).astype(np.float32) for n in (5, 40, 1, 17)]
    norm = ObsNorm(jnp.zeros(()), jnp.zeros(3), jnp.zeros(3))
    for batch in batches:
        d = batch - np.asarray(norm.mean)
        norm = norm.merge(jnp.float32(len(batch)), jnp.asarray(d.sum(0)), jnp.asarray((d * d).sum(0)))
    everything = np.concatenate(batches)
    assert float(norm.count) == len(everything)
    np.testing.assert_allclose(norm.mean, everything.mean(0), rtol=1e-5)
    np.testing.assert_allclose(norm.std(), everything.std(0), rtol=1e-4)
    empty = norm.merge(jnp.float32(0), jnp.zeros(3), jnp.zeros(3))
    np.testing.assert_array_equal(empty.mean, norm.mean)


def test_normaliser_statistics_equal_those_of_a_python_loop():
    """The observation statistics gathered during rollouts are those of the observations the policy saw."""
    env, params = gymnax.make("CartPole-v1")
    weights = jnp.array([[0.1, 0.5, 3.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    problem = env_problem(env, agent=LinearAgent(), template=weights[0], env_params=params,
                          config=EvolveConfig(max_steps=40, step_chunk=16, normalize_obs=True))
    pstate = problem.init_state()  # mean 0, std 1: the policy sees raw observations
    keys = jax.random.split(jax.random.PRNGKey(4), 2)
    _, lengths, stats = problem.episodes(weights, keys, pstate, True)
    seen = []
    for w in weights:
        for k in keys:
            obs, state = env.reset(jax.random.fold_in(k, 0), params)
            for t in range(40):
                seen.append(np.asarray(obs))
                _, key_env = jax.random.split(jax.random.fold_in(jax.random.fold_in(k, 1), t))
                obs, state, _, terminated, truncated, _ = env.step(key_env, state, (jnp.dot(w, obs) > 0).astype(jnp.int32),
                                                                   params)
                if terminated or truncated:
                    break
    seen = np.stack(seen)
    merged = problem.update_state(pstate, stats)
    assert float(merged.count) == len(seen) == int(jnp.sum(lengths))
    np.testing.assert_allclose(merged.mean, seen.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(merged.std(), seen.std(0), rtol=1e-4)


def test_antithetic_pairs_where_the_strategy_supports_them():
    template = {"x": jnp.zeros(5)}
    strategy, params = make_strategy(ESConfig(strategy="Open_ES", population=8, sigma_init=0.3), template)
    state = strategy.init(jax.random.PRNGKey(0), {"x": jnp.full(5, 2.0)}, params)
    population, _ = strategy.ask(jax.random.PRNGKey(1), state, params)
    np.testing.assert_allclose(population["x"][:4] + population["x"][4:], 4.0, rtol=1e-6)
    strategy, params = make_strategy(ESConfig(strategy="Open_ES", population=8, antithetic=False), template)
    state = strategy.init(jax.random.PRNGKey(0), {"x": jnp.full(5, 2.0)}, params)
    population, _ = strategy.ask(jax.random.PRNGKey(1), state, params)
    assert not np.allclose(population["x"][:4] + population["x"][4:], 4.0, atol=1e-3)


def test_l2_penalty_and_sign_with_a_known_optimum():
    """Maximising −|x − 1|² − λ·mean(x²) has its optimum at x = 1/(1+λ); CMA-ES must find it (sign check)."""
    problem = FunctionProblem(lambda p: -jnp.sum(jnp.square(p["x"] - 1.0)), {"x": jnp.zeros(3)})
    es = _small_es(population=16, sigma_init=0.5, l2_coef=3.0, eval_every=40, rollouts=1, eval_episodes=1)
    engine = make_engine(problem, es)
    state, metrics, evaluation = engine.run_chunk(engine.init(), 40)
    # mean(x²) over 3 dims: penalty λ/3·Σx² → optimum 1/(1 + λ/3) = 0.5
    np.testing.assert_allclose(engine.mean_params(state)["x"], 0.5, atol=0.03)
    assert float(evaluation["best_eval"]) >= float(evaluation["eval_mean"]) - 1e-6


@pytest.mark.parametrize("strategy", ["CMA_ES", "Open_ES"])
def test_the_engine_s_initial_state_has_the_types_of_its_output_so_it_compiles_once(strategy):
    problem = FunctionProblem(lambda p: -jnp.sum(jnp.square(p["x"] - 1.0)), {"x": jnp.zeros(3)})
    engine = make_engine(problem, _small_es(strategy=strategy, population=8, sigma_init=0.5, eval_every=2, rollouts=1,
                                            eval_episodes=1))
    state = engine.init()
    types = jax.tree.map(jax.typeof, state)
    after, _, _ = engine.run_chunk(state, 2)  # donates `state`
    assert jax.tree.map(jax.typeof, after) == types
    engine.run_chunk(after, 2)
    assert engine.run_chunk._cache_size() == 1


# ------------------------------------------------------------------------------------------- chunking and sharding
def test_chunked_population_equals_unchunked():
    es = _small_es(population=16)
    results = []
    for pop_chunk in (None, 4, 1):
        problem = _cartpole(EvolveConfig(max_steps=80, step_chunk=20, pop_chunk=pop_chunk))
        engine = make_engine(problem, es, EvolveConfig(pop_chunk=pop_chunk))
        state, metrics, evaluation = engine.run_chunk(engine.init(), 3)
        results.append((jax.device_get(state.es_state.mean), jax.device_get(metrics), jax.device_get(evaluation)))
    (mean0, m0, e0), *others = results
    for mean, m, e in others:
        np.testing.assert_array_equal(m["return_mean"], m0["return_mean"])
        np.testing.assert_array_equal(m["env_steps"], m0["env_steps"])
        np.testing.assert_allclose(mean, mean0, rtol=1e-6, atol=1e-7)
        assert float(e["eval_mean"]) == float(e0["eval_mean"])


@pytest.mark.slow
def test_sharded_over_four_devices_equals_one_device():
    code = """
    import json, jax, numpy as np
    import gymnax
    from worldmodels_jax.evolution import ESConfig
    from worldmodels_jax.evolve import EvolveConfig, env_problem, make_engine, make_mesh, mlp_for_env
    assert jax.device_count() == 4, jax.devices()
    env, params = gymnax.make("CartPole-v1")
    es = ESConfig(population=16, sigma_init=0.5, rollouts=2, l2_coef=0.01, eval_every=3, eval_episodes=8)
    out = {}
    for n in (1, 4):
        cfg = EvolveConfig(max_steps=50, step_chunk=25, pop_chunk=2, normalize_obs=True)
        problem = env_problem(env, mlp_for_env(env, params, (8,)), env_params=params, config=cfg)
        engine = make_engine(problem, es, cfg, mesh=make_mesh(n))
        state, metrics, evaluation = engine.run_chunk(engine.init(), 4)
        sharding = str(engine.mesh.devices.shape)
        out[n] = {"mean": np.asarray(state.es_state.mean).tolist(), "returns": np.asarray(metrics["return_mean"]).tolist(),
                  "eval": float(evaluation["eval_mean"]), "norm": np.asarray(state.problem_state.mean).tolist(),
                  "mesh": sharding}
    print("RESULT" + json.dumps(out))
    """
    proc = _subprocess(code, {"XLA_FLAGS": f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count=4",
                              "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    one, four = out["1"], out["4"]
    assert one["mesh"] == "(1,)" and four["mesh"] == "(4,)"
    np.testing.assert_allclose(four["returns"], one["returns"], rtol=1e-5)
    np.testing.assert_allclose(four["mean"], one["mean"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(four["norm"], one["norm"], rtol=1e-4, atol=1e-5)
    assert four["eval"] == pytest.approx(one["eval"], rel=1e-5)


# ------------------------------------------------------------------------------------------- durability
def test_resume_in_process_equals_uninterrupted(tmp_path):
    problem = _cartpole(EvolveConfig(max_steps=60, step_chunk=20, normalize_obs=True))
    es = _small_es(generations=4, eval_every=2)
    full = evolve(problem, es, EvolveConfig(normalize_obs=True), out=tmp_path / "full", progress=False)
    half = evolve(problem, dataclasses.replace(es, generations=2), EvolveConfig(normalize_obs=True),
                  out=tmp_path / "split", progress=False)
    assert half["generations"] == 2
    with pytest.raises(ConfigError, match="resume"):
        evolve(problem, es, out=tmp_path / "split", progress=False)
    resumed = evolve(problem, es, EvolveConfig(normalize_obs=True), out=tmp_path / "split", resume=True, progress=False)
    assert resumed["resumed_from"] == 2 and resumed["generations"] == 4
    np.testing.assert_array_equal(jax.tree.leaves(resumed["mean_params"])[0], jax.tree.leaves(full["mean_params"])[0])
    np.testing.assert_array_equal(resumed["state"].problem_state.mean, full["state"].problem_state.mean)
    assert resumed["best_eval"] == full["best_eval"]
    lines = (tmp_path / "split" / "metrics" / "evolve.jsonl").read_text().splitlines()
    assert [json.loads(line)["generation"] for line in lines] == [1, 2, 3, 4]


def _cli(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "worldmodels_jax.evolve_cli", "--env", "CartPole-v1", "--policy", "mlp",
            "--hidden", "8", "--strategy", "CMA_ES", "--population", "16", "--generations", "8", "--eval-every", "2",
            "--rollouts", "2", "--eval-episodes", "8", "--max-steps", "100", "--sigma", "0.5", "--normalize-obs",
            "--seed", "3", "--quiet", "--json", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory):
    """One uninterrupted `_cli` run on one device: (its summary line, its run directory). Shared by two tests."""
    out = tmp_path_factory.mktemp("cli-reference") / "ref"
    proc = subprocess.run(_cli(out), env={**os.environ, **SUBPROCESS_ENV}, cwd=ROOT, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), out


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path, cli_reference):
    env = {**os.environ, **SUBPROCESS_ENV}
    expected, reference_dir = cli_reference

    victim = subprocess.Popen(_cli(tmp_path / "run", "--chunk-delay", "30"), env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoints = tmp_path / "run" / "checkpoints" / "evolve"
    deadline = time.time() + 180
    while time.time() < deadline and not (checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir())):
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL  # killed mid-run, not finished
    assert sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) == [2]
    assert not (tmp_path / "run" / "summary.json").exists()

    resumed = subprocess.run(_cli(tmp_path / "run", "--resume"), env=env, cwd=ROOT, capture_output=True, text=True,
                             timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    got = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert got["resumed_from"] == 2 and got["generations"] == 8
    assert got["best_eval"] == expected["best_eval"]
    assert got["last_eval"] == expected["last_eval"]  # the final mean's evaluation
    ref_metrics = (reference_dir / "metrics" / "evolve.jsonl").read_text().splitlines()
    run_metrics = (tmp_path / "run" / "metrics" / "evolve.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in run_metrics] == [json.loads(x) for x in ref_metrics]


def test_cpu_devices_for_gives_each_device_enough_members_and_divides_the_work():
    per = ev.MIN_MEMBERS_PER_CPU_DEVICE
    assert ev.cpu_devices_for(64, 8, cores=2) == 1  # small populations stay on one device
    assert ev.cpu_devices_for(2 * per, 8, cores=2) == 2
    assert ev.cpu_devices_for(2 * per, 8, cores=1) == 1  # never more devices than cores
    assert ev.cpu_devices_for(16 * per, 16, cores=8) == 8
    assert ev.cpu_devices_for(3 * per, 16, cores=4) == 2  # 3 does not divide eval_episodes 16
    assert ev.cpu_devices_for(2 * per, 3, cores=2) == 1  # nor does 2 divide 3
    assert ev.cpu_devices_for(2 * per, 8, pop_chunk=3, cores=2) == 1  # 3 does not divide a device's 2048
    assert ev.cpu_devices_for(2 * per, 8, cores=2, fused_policy=True) == 1  # XLA spreads its loop over the cores


def test_cli_picks_one_device_for_a_fused_policy_and_one_per_core_for_dots(monkeypatch):
    from worldmodels_jax import evolve_cli

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    if jax.default_backend() != "cpu" or jax.local_device_count() > 1:
        pytest.skip("the automatic count applies to a single-device CPU process")
    population = str(2 * ev.MIN_MEMBERS_PER_CPU_DEVICE)
    wanted = lambda *extra: evolve_cli._cpu_devices_wanted(  # noqa: E731
        evolve_cli.build_parser().parse_args(["--population", population, *extra]))
    assert wanted() is None  # MLP 4-32-2: fused by the default --small-dense
    assert wanted("--small-dense", "0") == 2
    assert wanted("--hidden", "64", "64") == 2  # its 64 × 64 layer stays a dot


def test_cpu_devices_environ_sets_the_count_and_drops_a_forced_one():
    env = ev.cpu_devices_environ(2, {"XLA_FLAGS": "--xla_force_host_platform_device_count=4 --xla_cpu_foo=1",
                                     "PATH": "/bin"})
    assert env == {"XLA_FLAGS": "--xla_cpu_foo=1", "PATH": "/bin", "JAX_NUM_CPU_DEVICES": "2"}


@pytest.mark.slow
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="simulated CPU devices beyond one need two cores to matter")
def test_cli_on_two_cpu_devices_starts_over_with_them_and_gives_the_one_device_result(tmp_path, cli_reference):
    env = {**os.environ, **SUBPROCESS_ENV}
    proc = subprocess.run(_cli(tmp_path / "two", "--cpu-devices", "2"), env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = {"one": cli_reference[0], "two": json.loads(proc.stdout.strip().splitlines()[-1])}
    assert runs["one"]["devices"] == 1 and runs["two"]["devices"] == 2
    assert runs["two"]["generations"] == runs["one"]["generations"] == 8
    np.testing.assert_allclose(runs["two"]["last_eval"]["eval_mean"], runs["one"]["last_eval"]["eval_mean"], rtol=1e-5)
    np.testing.assert_allclose(runs["two"]["best_eval"], runs["one"]["best_eval"], rtol=1e-5)


# ------------------------------------------------------------------------------------------- bad values, bad input
def test_non_finite_fitness_counts_as_worst_and_is_reported():
    def fn(p):
        score = -jnp.sum(jnp.square(p["x"] - 1.0))
        return jnp.where(p["x"][0] > 1.2, jnp.nan, jnp.where(p["x"][0] < -1.2, jnp.inf, score))

    problem = FunctionProblem(fn, {"x": jnp.zeros(3)})
    engine = make_engine(problem, _small_es(population=16, sigma_init=1.0, rollouts=1, eval_episodes=1))
    state, metrics, _ = engine.run_chunk(engine.init(), 5)
    assert int(np.sum(metrics["non_finite"])) > 0
    assert np.all(np.isfinite(np.asarray(metrics["fitness_best"])))
    assert np.all(np.asarray(metrics["return_max"]) <= 0.0)  # +inf returns were not taken as best
    assert np.all(np.isfinite(np.asarray(state.es_state.mean)))


class _PoisonedStrategy:
    """Wraps an evosax strategy; its tell writes NaN into the mean from generation `at` on (a test double)."""

    def __init__(self, inner, at):
        self.inner, self.at = inner, at

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def tell(self, key, population, fitness, state, params):
        state, metrics = self.inner.tell(key, population, fitness, state, params)
        poison = state.generation_counter >= self.at
        return state.replace(mean=jnp.where(poison, jnp.nan, state.mean)), metrics


def test_nan_es_state_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real = ev.make_strategy
    monkeypatch.setattr(ev, "make_strategy", lambda es, t: (_PoisonedStrategy(real(es, t)[0], 5), real(es, t)[1]))
    problem = FunctionProblem(lambda p: -jnp.sum(jnp.square(p["x"])), {"x": jnp.zeros(3)})
    es = _small_es(population=8, generations=10, eval_every=2, rollouts=1, eval_episodes=1)
    with pytest.raises(NonFiniteError, match="non-finite by generation 6.*last good checkpoint"):
        evolve(problem, es, out=tmp_path, progress=False)
    from worldmodels_jax.checkpoint import Checkpointer

    assert Checkpointer(tmp_path / "checkpoints" / "evolve").latest_step() == 4
    monkeypatch.setattr(ev, "make_strategy", real)
    resumed = evolve(problem, dataclasses.replace(es, generations=6), out=tmp_path, resume=True, progress=False)
    assert resumed["resumed_from"] == 4 and np.all(np.isfinite(resumed["mean_params"]["x"]))


def test_invalid_configuration_is_a_clear_error():
    with pytest.raises(ConfigError, match="population must be >= 2"):
        ESConfig(population=1)
    with pytest.raises(ConfigError, match="unknown evolution strategy"):
        ESConfig(strategy="CMAES")
    with pytest.raises(ConfigError, match="even"):
        ESConfig(strategy="PGPE", population=9)
    with pytest.raises(ConfigError, match="divisible by the number of devices 4"):
        ev.validate(ESConfig(population=10), EvolveConfig(), n_devices=4)
    with pytest.raises(ConfigError, match="pop_chunk 3 must divide"):
        ev.validate(ESConfig(population=16), EvolveConfig(pop_chunk=3), n_devices=2)
    with pytest.raises(ConfigError, match="eval_episodes 6"):
        ev.validate(ESConfig(population=16, eval_episodes=6), EvolveConfig(), n_devices=4)
    with pytest.raises(ConfigError, match="small_dense must be None"):
        EvolveConfig(small_dense=-1)
    with pytest.raises(ConfigError, match=f"only {jax.device_count()} exist"):
        ev.make_mesh(jax.device_count() + 1)
    env, params = gymnax.make("CartPole-v1")
    problem = env_problem(env, MLPPolicy((4,), 2), env_params=params)
    with pytest.raises(ConfigError, match="cannot be built"):
        make_engine(problem, ESConfig(strategy="RandomSearch", population=4))


def test_env_without_the_needed_spaces_is_a_clear_error():
    env, params = gymnax.make("Breakout-MinAtar")  # image observations
    with pytest.raises(EnvError, match="vector observation space"):
        mlp_for_env(env, params, (8,), env_id="Breakout-MinAtar")
    with pytest.raises(EnvError, match="unknown gymnax env"):
        env_problem("NoSuchEnv-v0", MLPPolicy())

    class NoSpaces(type(gymnax.make("CartPole-v1")[0])):
        def action_space(self, params=None):
            raise NotImplementedError("no action space")

    with pytest.raises(EnvError, match="observation_space/action_space"):
        mlp_for_env(NoSpaces(), params)


def test_cli_errors_are_reported_with_exit_code_2(capsys):
    from worldmodels_jax.evolve_cli import main

    assert main(["--population", "1", "--generations", "1", "--quiet"]) == 2
    assert "population must be >= 2" in capsys.readouterr().err
    assert main(["--env", "Breakout-MinAtar", "--generations", "1", "--quiet"]) == 2
    assert "vector observation space" in capsys.readouterr().err
    assert main(["--small-dense", "big", "--generations", "1", "--quiet"]) == 2
    assert "--small-dense must be auto" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- learning
@pytest.mark.slow
def test_cma_es_solves_cartpole_through_the_cli(tmp_path, capsys):
    from worldmodels_jax.evolve_cli import main

    code = main(["--env", "CartPole-v1", "--population", "32", "--generations", "30", "--eval-every", "5",
                 "--rollouts", "2", "--eval-episodes", "16", "--target", "475", "--quiet", "--json",
                 "--out", str(tmp_path)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["best_eval"] >= 475 and summary["stopped_early"]
    assert (tmp_path / "summary.json").exists() and (tmp_path / "config.json").exists()
