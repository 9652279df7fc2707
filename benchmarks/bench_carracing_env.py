"""Steps per second of our JAX CarRacing (pixels included) against gymnasium's CarRacing-v3, side by side.

    python benchmarks/bench_carracing_env.py --quick     # ~2 minutes on a 2-core CPU
    python benchmarks/bench_carracing_env.py             # longer timing windows

Ours: `jit(scan(vmap(env.step)))` with uniformly random actions, every step renders the 64x64x3 frame, and
the batch starts with episode clocks spread over [0, 1000) so auto-resets (new track + rasterization) happen
at their natural rate of one per 1000 env-steps. Gymnasium: one CarRacing-v3 process stepping random actions
(it renders its 96x96 state frame on every step, and resets when an episode ends). Both sides report the best
of 3 timing windows (a shared, loaded machine only ever slows a window down); gymnasium is timed before and
after our sizes and the two are averaged. Compilation is excluded.

It also times one controller generation of `carracing-cpu-small` (V + C on pixels, z mode, population 32 x 4
rollouts, 100 steps; V and C at their initialisation) with V's forward-only convolutions as 'forward' (the
default since 2026-11-30: the RGB layer laid out space-to-depth, the 6x6-or-smaller layers as one matmul) against
'xla' (before), interleaved rounds in one process, and prints the ratio.

On a host with several cores it also times a z + h generation (V + M + C, 32 x 4 x 100 steps) with the episodes on
one simulated CPU device against split over one per core, for V's of 2.4, 8.1 and 29.6 MFLOP per frame: the
measurement behind `pipeline.cpu_devices_for` (which `--cpu-devices auto` uses).
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

SIZES = (1, 64, 256, 1024)


def gymnasium_steps_per_s(steps: int, seed: int = 0, repeats: int = 3) -> float | None:
    """Random-action steps/s of gymnasium's CarRacing-v3 (best of `repeats` windows of `steps` steps), or None
    when gymnasium[box2d] is missing."""
    try:
        import gymnasium as gym

        env = gym.make("CarRacing-v3")
    except Exception:  # noqa: BLE001 (ImportError or gymnasium's DependencyNotInstalled)
        return None
    env.reset(seed=seed)
    env.action_space.seed(seed)
    for _ in range(5):  # warm-up
        env.step(env.action_space.sample())
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            _, _, term, trunc, _ = env.step(env.action_space.sample())
            if term or trunc:
                env.reset()
        best = max(best, steps / (time.perf_counter() - t0))
    env.close()
    return best


def ours_steps_per_s(num_envs: int, steps: int, seed: int = 0, repeats: int = 3) -> tuple[float, float]:
    """(steps/s, compile seconds) of `num_envs` vmapped envs stepping random actions: best of `repeats`
    compiled rollouts of `steps` steps, each continuing from the last."""
    import worldmodels_jax  # noqa: F401
    from worldmodels_jax.envs.carracing import CarRacing

    env = CarRacing()
    params = env.default_params
    key = jax.random.PRNGKey(seed)
    k_reset, k_clock, k_run = jax.random.split(key, 3)
    obs, state = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(jax.random.split(k_reset, num_envs), params)
    state = state.replace(time=jax.random.randint(k_clock, (num_envs,), 0, params.max_steps_in_episode))
    low = jnp.array([-1.0, 0.0, 0.0])

    @jax.jit
    def rollout(state, obs, key):
        def body(carry, k):
            state, obs, ret = carry
            k_act, k_step = jax.random.split(k)
            action = jax.random.uniform(k_act, (num_envs, 3), minval=low, maxval=1.0)
            obs, state, reward, _, _, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
                jax.random.split(k_step, num_envs), state, action, params)
            return (state, obs, ret + reward), None

        return jax.lax.scan(body, (state, obs, jnp.zeros(num_envs)), jax.random.split(key, steps))[0]

    keys = jax.random.split(k_run, repeats + 1)
    t0 = time.perf_counter()
    state, obs, _ = jax.block_until_ready(rollout(state, obs, keys[0]))
    compile_s = time.perf_counter() - t0
    best = 0.0
    for k in keys[1:]:
        t0 = time.perf_counter()
        state, obs, _ = jax.block_until_ready(rollout(state, obs, k))
        best = max(best, num_envs * steps / (time.perf_counter() - t0))
    return best, compile_s


def controller_generation_steps_per_s(impls=("forward", "xla"), steps: int = 100, rounds: int = 4) -> dict:
    """Env-steps/s of one CarRacing C generation (population 32 x 4 rollouts, `steps` steps, z mode) with V's
    convolutions in each impl: the median of `rounds` interleaved rounds."""
    import dataclasses

    from worldmodels_jax.configs import PRESETS
    from worldmodels_jax.envs.carracing import CarRacing
    from worldmodels_jax.models.controller import Controller, ControllerConfig, action_mapping_for, init_controller
    from worldmodels_jax.models.vae import ConvVAE, init_vae
    from worldmodels_jax.rollouts import Agent, WorldModelParams, population_returns

    env = CarRacing()
    params = env.default_params
    vae_config = PRESETS["carracing-cpu-small"].vae
    mapping = action_mapping_for(env.action_space(params), "carracing")
    c_config = ControllerConfig(mode="z", z_size=vae_config.z_size, num_outputs=mapping.num_outputs)
    k_vae, k_pop, k_run = jax.random.split(jax.random.PRNGKey(0), 3)
    wm = WorldModelParams(vae=init_vae(k_vae, vae_config))
    template = init_controller(k_pop, c_config)
    population = jax.tree.map(lambda x: 0.5 * jax.random.normal(k_pop, (32, *x.shape)), template)
    calls = {}
    for impl in impls:
        agent = Agent(controller=Controller(c_config), mapping=mapping,
                      vae=ConvVAE(dataclasses.replace(vae_config, conv_impl=impl)), z_sample=False)
        calls[impl] = jax.jit(lambda pop, key, agent=agent: population_returns(env, params, agent, wm, pop, key, 4,
                                                                               steps, 50, True))
        jax.block_until_ready(calls[impl](population, k_run))
    times = {impl: [] for impl in impls}
    for key in jax.random.split(k_run, rounds):
        for impl in impls:
            t0 = time.perf_counter()
            jax.block_until_ready(calls[impl](population, key))
            times[impl].append(time.perf_counter() - t0)
    return {impl: 32 * 4 * steps / float(np.median(t)) for impl, t in times.items()}


_DEVICES_CHILD = """
import json, statistics, tempfile, time, dataclasses
import jax, jax.numpy as jnp
from worldmodels_jax.configs import PRESETS, small_vae
from worldmodels_jax.evolve import make_mesh
from worldmodels_jax.models.controller import init_controller
from worldmodels_jax.models.memory import init_memory
from worldmodels_jax.models.vae import init_vae
from worldmodels_jax.pipeline import Pipeline
from worldmodels_jax.rollouts import WorldModelParams, population_returns

steps, rounds, devices = {steps}, {rounds}, jax.device_count()
small = PRESETS["carracing-cpu-small"]
configs = {{"carracing-cpu-small": small,
            "half-width V": dataclasses.replace(small, vae=small_vae(16, (16, 32, 64, 128))),
            "carracing-paper": PRESETS["carracing-paper"]}}
result = {{}}
for name, config in configs.items():
    pipeline = Pipeline(config, tempfile.mkdtemp(), progress=False)
    agent = pipeline.agent("z_h")
    key = jax.random.PRNGKey(0)
    wm = WorldModelParams(vae=init_vae(key, config.vae), memory=init_memory(key, pipeline.memory))
    template = init_controller(key, agent.controller.config)
    population = jax.tree.map(lambda x: 0.1 * jax.random.normal(key, (32, *x.shape)), template)
    calls = {{n: jax.jit(lambda p, k, mesh=make_mesh(n): population_returns(
        pipeline.env, pipeline.env_params, agent, wm, p, k, 4, steps, 50, True, mesh)) for n in (1, devices)}}
    for call in calls.values():
        jax.block_until_ready(call(population, key))
    times = {{n: [] for n in calls}}
    for k in jax.random.split(key, rounds):
        for n, call in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(call(population, k))
            times[n].append(time.perf_counter() - t0)
    one, many = (32 * 4 * steps / statistics.median(times[n]) for n in (1, devices))
    result[name] = {{"encoder_mflop": config.vae.encoder_flops / 1e6, "one_device_steps_per_s": one,
                     "devices_steps_per_s": many, "devices": devices, "ratio": many / one}}
print("RESULT" + json.dumps(result))
"""


def controller_generation_devices(steps: int = 100, rounds: int = 4, devices: int | None = None) -> dict:
    """Env-steps/s of one z + h generation (population 32 x 4 rollouts, `steps` steps, V and M in the loop) with
    the episodes on one CPU device against split over `devices` simulated ones (default: one per core), for three
    V sizes; interleaved rounds in one process, the median of `rounds`. What `pipeline.cpu_devices_for` rests on."""
    from worldmodels_jax.bench import run_on_cpu_devices

    return run_on_cpu_devices(_DEVICES_CHILD.format(steps=steps, rounds=rounds), devices or os.cpu_count() or 1)


def run(quick: bool = False, sizes: tuple[int, ...] = SIZES) -> dict:
    """Measure both and return the figures (steps/s, ratios, machine facts)."""
    gym_steps = 100 if quick else 500
    ours_steps = {1: 100, 64: 30, 256: 20, 1024: 10} if quick else {1: 500, 64: 200, 256: 100, 1024: 50}
    load_before = os.getloadavg()
    g_before = gymnasium_steps_per_s(gym_steps)
    ours, compile_s = {}, {}
    for n in sizes:
        ours[n], compile_s[n] = ours_steps_per_s(n, ours_steps.get(n, 20))
    g_after = gymnasium_steps_per_s(gym_steps, seed=1)
    # Both comparisons are about the CPU: V's CPU convolutions, and simulated CPU devices.
    on_cpu = jax.default_backend() == "cpu"
    generation = controller_generation_steps_per_s(rounds=3 if quick else 6) if on_cpu else None
    devices = controller_generation_devices(rounds=3 if quick else 5) if on_cpu and (os.cpu_count() or 1) > 1 else None
    anchors = [g for g in (g_before, g_after) if g is not None]
    gym_sps = float(np.mean(anchors)) if anchors else None
    return {
        "gymnasium_carracing_v3_steps_per_s": gym_sps,
        "gymnasium_before_after": (g_before, g_after),
        "ours_steps_per_s": ours,
        "ratio": {n: (ours[n] / gym_sps if gym_sps else None) for n in sizes},
        "compile_s": compile_s,
        "controller_generation_steps_per_s": generation,
        "controller_generation_ratio_forward_vs_xla": generation["forward"] / generation["xla"] if generation else None,
        "controller_generation_devices": devices,
        "steps_timed": {"gymnasium": gym_steps, "ours": {n: ours_steps.get(n, 20) for n in sizes}},
        "jax_backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m_before_after": (load_before[0], os.getloadavg()[0]),
        "quick": quick,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short timing windows (~2 minutes)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="numbers of parallel envs")
    args = parser.parse_args(argv)
    res = run(quick=args.quick, sizes=tuple(args.sizes))
    g = res["gymnasium_carracing_v3_steps_per_s"]
    print(f"backend={res['jax_backend']} cpus={res['cpu_count']} load(1m) before/after="
          f"{res['load_avg_1m_before_after'][0]:.1f}/{res['load_avg_1m_before_after'][1]:.1f}")
    if g is None:
        print("gymnasium CarRacing-v3: not available (pip install -e .[gymnasium]); no ratios")
    else:
        b, a = res["gymnasium_before_after"]
        print(f"gymnasium CarRacing-v3: {g:.1f} steps/s (before {b:.1f}, after {a:.1f})")
    print(f"{'envs':>6} {'steps/s':>12} {'ratio':>9} {'compile s':>10}")
    for n, sps in res["ours_steps_per_s"].items():
        ratio = res["ratio"][n]
        print(f"{n:>6} {sps:>12.0f} {('%.0fx' % ratio) if ratio else '-':>9} {res['compile_s'][n]:>10.1f}")
    gen = res["controller_generation_steps_per_s"]
    if gen:
            print(f"C generation (V + C, 32 x 4 x 100 steps): V convs 'forward' {gen['forward']:.0f} steps/s, 'xla' "
              f"{gen['xla']:.0f} steps/s: {res['controller_generation_ratio_forward_vs_xla']:.2f}x")
    for name, row in (res["controller_generation_devices"] or {}).items():
        print(f"C generation (V + M + C, z + h, 32 x 4 x 100 steps), V of {name} ({row['encoder_mflop']:.1f} MFLOP "
              f"per frame): {row['devices']} CPU devices {row['devices_steps_per_s']:.0f} steps/s, 1 device "
              f"{row['one_device_steps_per_s']:.0f}: {row['ratio']:.2f}x")
    return res


if __name__ == "__main__":
    main()
