"""TakeCover environment throughput: steps/s with 64×64×3 pixels, at 1, 64, 256 and 1024 parallel envs.

Each figure times `jit(scan(vmap(env.step)))`: `steps` steps of `num_envs` environments under uniform random
actions, with gymnax auto-reset, inside one compiled call. The latest observations are carried through the
scan (and returned) so rendering cannot be optimised away, without storing every frame. The figure is the median over
repeats of (num_envs × steps) / seconds, after a warm-up call; compile time is reported separately.
Note that gymnax's `step` renders twice per step (the stepped observation and the reset observation used for
auto-reset), so a "step with pixels" here costs two renders; the render-free dynamics are timed too.

    .venv/bin/python -m benchmarks.bench_takecover_env          # full run
    .venv/bin/python -m benchmarks.bench_takecover_env --quick  # a smoke run (well under a minute idle)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from worldmodels_jax.envs.takecover import TakeCover, uniform_random_action

NUM_ENVS = (1, 64, 256, 1024)


def _make_rollout(env: TakeCover, num_envs: int, steps: int, pixels: bool):
    params = env.default_params

    def rollout(key):
        key_reset, key_run = jax.random.split(key)
        keys = jax.random.split(key_reset, num_envs)
        if pixels:
            last, state = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
        else:
            state = jax.vmap(env.init_state, in_axes=(0, None))(keys, params)
            last = jnp.zeros((num_envs,), jnp.int32)

        def body(carry, key_t):
            state, last = carry
            key_act, key_env = jax.random.split(key_t)
            action = jax.vmap(uniform_random_action)(jax.random.split(key_act, num_envs))
            env_keys = jax.random.split(key_env, num_envs)
            if pixels:
                obs, state, reward, _, _, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
                    env_keys, state, action, params
                )
                last = obs  # carried, so every step's frames must be computed
            else:
                state, hits = jax.vmap(env.transition, in_axes=(0, 0, 0, None))(env_keys, state, action, params)
                last = last + hits + state.time
            return (state, last), None

        (_, last), _ = jax.lax.scan(body, (state, last), jax.random.split(key_run, steps))
        return last

    return jax.jit(rollout)


def _time(fn, repeats: int) -> tuple[float, float, list[float]]:
    t0 = time.perf_counter()
    jax.block_until_ready(fn(jax.random.PRNGKey(0)))
    compile_s = time.perf_counter() - t0
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(jax.random.PRNGKey(r + 1)))
        times.append(time.perf_counter() - t0)
    return compile_s, statistics.median(times), times


def run(quick: bool = False) -> dict:
    """Measure and return steps/s per number of parallel envs (with pixels, and dynamics only)."""
    env = TakeCover()
    steps = 20 if quick else 100
    repeats = 2 if quick else 5
    results: dict = {
        "benchmark": "takecover_env",
        "quick": quick,
        "steps_per_call": steps,
        "repeats": repeats,
        "device": str(jax.devices()[0]),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "pixels": {},
        "dynamics_only": {},
    }
    for pixels in (True, False):
        table = results["pixels" if pixels else "dynamics_only"]
        for n in NUM_ENVS:
            if quick and pixels and n == 1024:
                n_steps = max(steps // 2, 5)
            else:
                n_steps = steps
            fn = _make_rollout(env, n, n_steps, pixels)
            compile_s, median_s, times = _time(fn, repeats)
            table[n] = {
                "steps_per_s": n * n_steps / median_s,
                "seconds_per_call": median_s,
                "steps_per_call": n_steps,
                "compile_s": compile_s,
                "all_seconds": times,
            }
            print(
                f"{'pixels' if pixels else 'dynamics'} num_envs={n:5d}: {n * n_steps / median_s:12,.0f} steps/s "
                f"({1e3 * median_s / n_steps:.2f} ms per batched step, compile {compile_s:.1f}s)",
                flush=True,
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats (smoke run)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    results = run(quick=args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    print(json.dumps({k: v for k, v in results.items() if k not in ("pixels", "dynamics_only")}, indent=2))


if __name__ == "__main__":
    main()
