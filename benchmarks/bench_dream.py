"""Dream rollouts (M + C) per second: our jitted, vmapped, scanned dream against the original's numpy loop.

The dream is the CarRacing world model's: z 32, action 3, an LSTM of 256 units, a mixture of K = 5 Gaussians
per latent dimension at temperature τ = 1, and the linear controller on [z, h] (867 parameters per member).
Every population member has its own controller; M's weights are shared. One "dream step" is one member
acting and M imagining the next z.

Contestants, all measured in the same process:

- `package`: the package's own code path, exactly what `wmj` trains in: `rollouts.population_returns` over
  `envs.dream.DreamEnv` with an `Agent(obs_kind="features")` (gymnax auto-reset, per-member keys, the
  early-exit `while_loop` over chunks of a `scan`).
- `scan`: a bare `lax.scan` of `MDNRNN.step` + `mdn_sample` + `Controller` over the population (the
  package's model code without the env/rollout machinery).
- `fused`: a standalone variant written for this benchmark, to show the headroom: one matmul on [z, a, h]
  with TF's single kernel, no log-softmax, and one random draw per step for the whole population instead
  of one per member. Same maths, same distribution.
- `matmul_bound` (not a dream): only the step's four matmuls at the same shapes, chained; its FLOP/s is
  the ceiling for a dream step at that population on this machine.
- anchor `numpy`: `benchmarks/numpy_dream.py`, the original's per-agent, per-step loop (one agent, one step at
  a time, one process), timed round-robin with the JAX contestants so that load drift hits all alike.

Counted FLOPs per dream step are the four matmuls: input projection 2·35·1024, recurrent 2·256·1024,
MDN head 2·256·480 and controller 2·288·3 = 843,456 FLOP. Achieved FLOP/s is that times steps/s, and its
fraction of the fp32 matmul peak measured in the same run (`bench_matmul_peak`) is the "physical limit" figure.
Goals (issue 4): ≥ 30× the numpy loop at population 256, and ≥ 50 % of measured peak.

Compile time is reported separately; each figure is the median of timed calls after a warm-up call, with
`block_until_ready` on the result; contestants are interleaved call by call.

    .venv/bin/python benchmarks/bench_dream.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import numpy_dream  # noqa: E402

Z, ACTION, HIDDEN, K, TAU = 32, 3, 256, 5, 1.0


def flops_per_step(z: int = Z, action: int = ACTION, hidden: int = HIDDEN, k: int = K) -> dict:
    """The matmul FLOPs of one dream step (2 per multiply-add)."""
    parts = {
        "input_projection": 2 * (z + action) * 4 * hidden,
        "recurrent": 2 * hidden * 4 * hidden,
        "mdn_head": 2 * hidden * z * k * 3,
        "controller": 2 * (z + hidden) * action,
    }
    parts["total"] = sum(parts.values())
    return parts


def _models(hidden: int = HIDDEN):
    from worldmodels_jax.models.controller import Controller, ControllerConfig, action_mapping_for
    from worldmodels_jax.models.mdnrnn import MDNRNN, MDNRNNConfig, init_mdnrnn
    from gymnax.environments import spaces

    config = MDNRNNConfig(z_size=Z, action_size=ACTION, hidden_size=hidden, num_mixtures=K)
    memory = MDNRNN(config)
    memory_params = init_mdnrnn(jax.random.PRNGKey(0), config)
    space = spaces.Box(jnp.array([-1.0, 0.0, 0.0]), jnp.array([1.0, 1.0, 1.0]), (3,), jnp.float32)
    mapping = action_mapping_for(space, "carracing")
    controller = Controller(ControllerConfig(mode="z_h", z_size=Z, feature_size=hidden, num_outputs=3))
    return memory, memory_params, controller, mapping, space


def _population(controller, pop: int):
    from worldmodels_jax.models.controller import init_controller

    keys = jax.random.split(jax.random.PRNGKey(1), pop)
    params = jax.vmap(lambda k: init_controller(k, controller.config))(keys)
    # The default init is tiny; scale so actions vary like a CMA-ES candidate with σ ≈ 0.1 would.
    return jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(2), x.shape), params)


def make_package(pop: int, steps: int, hidden: int = HIDDEN):
    """The package path: population_returns over DreamEnv + Agent(features)."""
    from worldmodels_jax.envs.actions import ActionEncoder, action_spec
    from worldmodels_jax.envs.dream import DreamEnv, DreamParams
    from worldmodels_jax.rollouts import Agent, WorldModelParams, population_returns

    memory, memory_params, controller, mapping, space = _models(hidden)
    env = DreamEnv(memory, space, ActionEncoder(action_spec(space), "box"))
    initial = jax.random.normal(jax.random.PRNGKey(3), (16, Z))
    env_params = DreamParams(memory_params=memory_params, initial_mu=initial,
                             initial_logvar=jnp.full((16, Z), -2.0), temperature=TAU,
                             max_steps_in_episode=10 * steps + 1)
    agent = Agent(controller=controller, mapping=mapping, obs_kind="features")
    population = _population(controller, pop)
    chunk = min(50, steps)
    assert steps % chunk == 0

    @jax.jit
    def run(population, key):
        return population_returns(env, env_params, agent, WorldModelParams(memory=memory_params), population,
                                  key, rollouts=1, max_steps=steps, chunk=chunk)

    def check(out):  # every member dreams `steps` steps (reward +1 each, no done head)
        assert np.allclose(np.asarray(out), steps), np.asarray(out)[:4]

    return run, population, check


def make_scan(pop: int, steps: int, hidden: int = HIDDEN):
    """A bare scan of MDNRNN.step + mdn_sample + Controller over the population."""
    from worldmodels_jax.models.mdnrnn import mdn_sample

    memory, memory_params, controller, mapping, _ = _models(hidden)
    population = _population(controller, pop)

    @jax.jit
    def run(population, key):
        z0 = jax.random.normal(key, (pop, Z))
        carry0 = memory.apply({"params": memory_params}, (pop,), method="initial_carry")
        reset = jnp.zeros((pop,), bool)

        def body(state, key_t):
            z, carry = state
            raw = jax.vmap(lambda p, z, h: controller.apply({"params": p}, z, h))(population, z, carry.h)
            carry, out, _ = memory.apply({"params": memory_params}, carry, z, mapping(raw), reset, method="step")
            z = mdn_sample(key_t, out, TAU)
            return (z, carry), None

        (z, carry), _ = jax.lax.scan(body, (z0, carry0), jax.random.split(key, steps))
        return z, carry.h

    return run, population, None


def make_fused(pop: int, steps: int, hidden: int = HIDDEN):
    """The headroom variant: one kernel on [z, a, h], no log-softmax, one random draw per step for everyone."""
    from worldmodels_jax.models.mdnrnn import FORGET_BIAS, MDNOutput, mdn_sample_from_uniform

    memory, memory_params, controller, _, _ = _models(hidden)
    population = _population(controller, pop)
    kernel = jnp.concatenate([memory_params["w_x"], memory_params["w_h"]], axis=0)  # [z + a + h, 4h]
    bias = memory_params["b"]
    head_w = memory_params["head"]["mdn_dense"]["kernel"]
    head_b = memory_params["head"]["mdn_dense"]["bias"]

    @jax.jit
    def run(population, key):
        c_w, c_b = population["out"]["kernel"], population["out"]["bias"]  # [P, z + h, 3], [P, 3]
        z0 = jax.random.normal(key, (pop, Z))
        zeros = jnp.zeros((pop, hidden), jnp.float32)

        def body(state, key_t):
            z, h, c = state
            raw = jnp.tanh(jnp.einsum("pi,pio->po", jnp.concatenate([z, h], -1), c_w) + c_b)
            action = jnp.stack([raw[:, 0], (raw[:, 1] + 1.0) * 0.5, jnp.clip(raw[:, 2], 0.0, 1.0)], -1)
            gates = jnp.concatenate([z, action, h], -1) @ kernel + bias
            i, j, f, o = jnp.split(gates, 4, axis=-1)
            c = c * jax.nn.sigmoid(f + FORGET_BIAS) + jax.nn.sigmoid(i) * jnp.tanh(j)
            h = jnp.tanh(c) * jax.nn.sigmoid(o)
            out = (h @ head_w + head_b).reshape(pop, Z, 3, K)
            mixture = MDNOutput(logits=out[:, :, 0], mu=out[:, :, 1], logsigma=out[:, :, 2], reward=None, done_logit=None)
            z = mdn_sample_from_uniform(jax.random.uniform(key_t, (2, pop, Z)), mixture, TAU)
            return (z, h, c), None

        (z, h, _), _ = jax.lax.scan(body, (z0, zeros, zeros), jax.random.split(key, steps))
        return z, h

    return run, population, None


def make_matmul_bound(pop: int, steps: int, hidden: int = HIDDEN):
    """Not a dream: only the step's four matmuls at the same shapes, chained so none can be hoisted.

    Its FLOP/s is the ceiling a dream step can reach on this machine at this population (the matmul peak
    is measured on large square matrices, which these shapes are not).
    """
    memory, memory_params, controller, _, _ = _models(hidden)
    population = _population(controller, pop)
    kernel = jnp.concatenate([memory_params["w_x"], memory_params["w_h"]], axis=0)
    head_w = memory_params["head"]["mdn_dense"]["kernel"]

    @jax.jit
    def run(population, key):
        c_w = population["out"]["kernel"]
        z0 = jax.random.normal(key, (pop, Z))
        h0 = jnp.zeros((pop, hidden), jnp.float32)

        def body(state, _):
            z, h = state
            action = jnp.einsum("pi,pio->po", jnp.concatenate([z, h], -1), c_w)
            gates = jnp.concatenate([z, action, h], -1) @ kernel
            h = gates[:, :hidden] * 1e-3
            z = (h @ head_w)[:, :Z] * 1e-3
            return (z, h), None

        return jax.lax.scan(body, (z0, h0), None, length=steps)[0]

    return run, population, None


VARIANTS = {"package": make_package, "scan": make_scan, "fused": make_fused, "matmul_bound": make_matmul_bound}


def _compile(make, pop: int, steps: int, hidden: int = HIDDEN):
    """Builds a variant, compiles it (timed) and checks its first result; returns (call, compile_s)."""
    run, population, check = make(pop, steps, hidden)
    start = time.perf_counter()
    out = jax.block_until_ready(run(population, jax.random.PRNGKey(0)))
    compile_s = time.perf_counter() - start
    if check is not None:
        check(out)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(out)), "non-finite dream"
    calls = iter(range(1, 1_000_000))
    return (lambda: jax.block_until_ready(run(population, jax.random.PRNGKey(next(calls))))), compile_s


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def time_variant(make, pop: int, steps: int, repeats: int, hidden: int = HIDDEN) -> dict:
    """Compile, warm up, then the median of `repeats` timed calls of one variant."""
    call, compile_s = _compile(make, pop, steps, hidden)
    call()  # warm-up
    times = [_timed(call) for _ in range(repeats)]
    median = statistics.median(times)
    return {"steps_per_s": pop * steps / median, "seconds_per_call": median, "steps_per_call": steps,
            "compile_s": compile_s, "all_seconds": times}


def run(quick: bool = False, toy: bool = False, peak_flop_per_s: float | None = None,
        variants: tuple[str, ...] = tuple(VARIANTS)) -> dict:
    """Steps/s per population and variant, ratios to the numpy loop and fractions of the matmul peak.

    For each population, every variant is compiled and warmed up, then the contestants (the JAX variants
    and the numpy loop) are timed round-robin, one call each in turn, `repeats` times, so that load drift on
    a shared machine hits all of them alike; each figure is the median, and each population's ratios use
    the numpy timings taken in its own rounds.
    """
    if toy:
        hidden, pops, steps, repeats, numpy_steps = 32, (8,), {8: 10}, 2, 50
    elif quick:
        hidden, pops, repeats, numpy_steps = HIDDEN, (64, 256, 1024), 3, 300
        steps = {64: 400, 256: 200, 1024: 50}
    else:
        hidden, pops, repeats, numpy_steps = HIDDEN, (64, 256, 1024, 4096), 5, 1000
        steps = {64: 1000, 256: 500, 1024: 200, 4096: 50}
    peak_source = "given by the suite (bench_matmul_peak, same run)"
    if peak_flop_per_s is None:
        from benchmarks import bench_matmul_peak

        peak_flop_per_s = bench_matmul_peak.run(quick=True, toy=toy)["peak_flop_per_s"]
        peak_source = "bench_matmul_peak (same process)"
    flops = flops_per_step(hidden=hidden)

    np_params = numpy_dream.random_params(np.random.default_rng(0), hidden=hidden)
    numpy_dream.rollout(np_params, 5)  # warm-up
    numpy_call = lambda: numpy_dream.rollout(np_params, numpy_steps)  # noqa: E731
    table: dict = {name: {} for name in variants}
    numpy_by_pop: dict = {}
    for pop in pops:
        calls = {}
        compile_s = {}
        for name in variants:
            calls[name], compile_s[name] = _compile(VARIANTS[name], pop, steps[pop], hidden)
            calls[name]()  # warm-up
        times: dict = {name: [] for name in (*variants, "numpy")}
        for _ in range(repeats):
            for name in variants:
                times[name].append(_timed(calls[name]))
            times["numpy"].append(_timed(numpy_call))
        numpy_sps = numpy_steps / statistics.median(times["numpy"])
        numpy_by_pop[pop] = {"steps_per_s": numpy_sps, "all_seconds": times["numpy"], "steps_per_call": numpy_steps}
        for name in variants:
            median = statistics.median(times[name])
            row = {"steps_per_s": pop * steps[pop] / median, "seconds_per_call": median,
                   "steps_per_call": steps[pop], "compile_s": compile_s[name], "all_seconds": times[name]}
            row["flop_per_s"] = row["steps_per_s"] * flops["total"]
            row["fraction_of_peak"] = row["flop_per_s"] / peak_flop_per_s
            row["ratio_vs_numpy"] = row["steps_per_s"] / numpy_sps
            table[name][pop] = row
            print(f"{name:8s} pop {pop:5d}: {row['steps_per_s']:12,.0f} steps/s = {row['ratio_vs_numpy']:6.1f}x numpy "
                  f"({numpy_sps:,.0f}), {row['flop_per_s'] / 1e9:6.1f} GFLOP/s ({100 * row['fraction_of_peak']:.0f}% "
                  f"of peak), compile {row['compile_s']:.1f}s", flush=True)
    goal_pop = 256 if 256 in pops else pops[-1]
    summary = {}
    if "package" in variants:
        best = max(table["package"].values(), key=lambda r: r["fraction_of_peak"])
        summary = {"package_ratio_at_256": table["package"][goal_pop]["ratio_vs_numpy"],
                   "package_best_fraction_of_peak": best["fraction_of_peak"],
                   "goal_ratio_at_256": 30.0, "goal_fraction_of_peak": 0.5}
    all_numpy = [row["steps_per_s"] for row in numpy_by_pop.values()]
    return {
        "benchmark": "dream", "quick": quick, "toy": toy, "device": str(jax.devices()[0]), "jax": jax.__version__,
        "sizes": {"z": Z, "action": ACTION, "hidden": hidden, "mixtures": K, "temperature": TAU},
        "flops_per_step": flops, "peak_flop_per_s": peak_flop_per_s, "peak_source": peak_source,
        "numpy_steps_per_s": statistics.median(all_numpy), "numpy_by_population": numpy_by_pop,
        "populations": list(pops), "variants": table, "summary": summary,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--toy", action="store_true")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    result = run(args.quick, args.toy, variants=tuple(args.variants))
    print(json.dumps(result["summary"], indent=2))
