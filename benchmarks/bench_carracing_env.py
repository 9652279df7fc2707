"""Steps per second of our JAX CarRacing (pixels included) against gymnasium's CarRacing-v3, side by side.

    python benchmarks/bench_carracing_env.py --quick     # ~2 minutes on a 2-core CPU
    python benchmarks/bench_carracing_env.py             # longer timing windows

Ours: `jit(scan(vmap(env.step)))` with uniformly random actions, every step renders the 64x64x3 frame, and
the batch starts with episode clocks spread over [0, 1000) so auto-resets (new track + rasterization) happen
at their natural rate of one per 1000 env-steps. Gymnasium: one CarRacing-v3 process stepping random actions
(it renders its 96x96 state frame on every step, and resets when an episode ends). Both sides report the best
of 3 timing windows (a shared, loaded machine only ever slows a window down); gymnasium is timed before and
after our sizes and the two are averaged. Compilation is excluded.
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
    anchors = [g for g in (g_before, g_after) if g is not None]
    gym_sps = float(np.mean(anchors)) if anchors else None
    return {
        "gymnasium_carracing_v3_steps_per_s": gym_sps,
        "gymnasium_before_after": (g_before, g_after),
        "ours_steps_per_s": ours,
        "ratio": {n: (ours[n] / gym_sps if gym_sps else None) for n in sizes},
        "compile_s": compile_s,
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
    return res


if __name__ == "__main__":
    main()
