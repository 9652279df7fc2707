"""Neuroevolution cost against the number of devices (issue 8, scaling curves): the sharded engine on 1, 2, 4, ...
simulated CPU devices.

Each device count runs in its own process, started with `XLA_FLAGS=--xla_force_host_platform_device_count=N`
(the device count is fixed when jax starts). The work is the same at every N: CMA-ES on CartPole-v1 with an MLP
4-32-2, one population of `population` members × 4 rollouts × 500 steps per generation (`early_exit=False`, so
every step is simulated), the population axis sharded over a `Mesh` of all N devices (`make_mesh`). Reported per N:
compile seconds, median and best seconds per generation, env steps/s, the ratio to N = 1 measured in the same run,
and whether the generations' mean returns equal N = 1's (the sharded engine must give the same results).

On a CPU the simulated devices share the same cores. XLA runs each device's shard on a thread of its own, so up
to the core count N devices can beat one (whose small per-step ops leave cores idle: 1.37x with 2 devices on 2
cores, pop 4096); beyond the core count the curve shows the sharding's overhead (collectives, smaller per-device
batches, oversubscribed cores). On a multi-GPU host the same code splits the population over real devices.

    python benchmarks/bench_devices.py [--quick] [--toy]
"""

from __future__ import annotations

import argparse
import json
import os
import textwrap

from worldmodels_jax.bench import run_on_cpu_devices

_CHILD = """
import json, statistics, sys, time
import jax, numpy as np
import gymnax
from worldmodels_jax.evolution import ESConfig
from worldmodels_jax.evolve import EvolveConfig, env_problem, make_engine, make_mesh, mlp_for_env

devices, population, generations, repeats, steps = {devices}, {population}, {generations}, {repeats}, {steps}
assert jax.device_count() == devices, jax.devices()
env, params = gymnax.make("CartPole-v1")
es = ESConfig(strategy="CMA_ES", population=population, sigma_init=0.1, rollouts=4, l2_coef=0.0)
cfg = EvolveConfig(seed=0, max_steps=steps, early_exit=False)
problem = env_problem(env, mlp_for_env(env, params, (32,)), env_params=params, config=cfg)
engine = make_engine(problem, es, cfg, mesh=make_mesh(devices))
begin = time.perf_counter()
state, metrics = jax.block_until_ready(engine.run_generations(engine.init(), generations))
compile_s = time.perf_counter() - begin
first_returns = np.asarray(metrics["return_mean"]).tolist()
times = []
for _ in range(repeats):
    begin = time.perf_counter()
    state, metrics = jax.block_until_ready(engine.run_generations(state, generations))
    times.append((time.perf_counter() - begin) / generations)
work = float(np.asarray(metrics["sim_steps"])[0])
print("RESULT" + json.dumps({{"devices": devices, "mesh": list(engine.mesh.devices.shape), "compile_s": compile_s,
                             "seconds_per_generation": statistics.median(times), "best_seconds_per_generation": min(times),
                             "steps_per_generation": work, "first_returns": first_returns}}))
"""


def run_one(devices: int, population: int, generations: int, repeats: int, steps: int = 500,
            timeout: int = 900) -> dict:
    """One device count, in a fresh process."""
    code = textwrap.dedent(_CHILD.format(devices=devices, population=population, generations=generations,
                                         repeats=repeats, steps=steps))
    return run_on_cpu_devices(code, devices, timeout)


def run(quick: bool = True, toy: bool = False) -> dict:
    if toy:
        counts, population, generations, repeats, steps = (1, 2), 16, 1, 2, 50
    else:
        counts = (1, 2, 4) if quick else (1, 2, 4, 8)
        population, generations, repeats, steps = (1024, 2, 3, 500) if quick else (4096, 2, 5, 500)
    rows = {}
    for n in counts:
        row = run_one(n, population, generations, repeats, steps)
        row["steps_per_s"] = row["steps_per_generation"] / row["seconds_per_generation"]
        rows[n] = row
        print(f"{n} device(s): {row['seconds_per_generation']:.3f} s/generation, compile {row['compile_s']:.1f} s",
              flush=True)
    base = rows[counts[0]]
    for row in rows.values():
        row["ratio_to_one_device"] = base["seconds_per_generation"] / row["seconds_per_generation"]
        row["same_returns_as_one_device"] = bool(all(
            abs(a - b) <= 1e-4 * max(1.0, abs(b)) for a, b in zip(row["first_returns"], base["first_returns"])))
    return {"benchmark": "devices", "population": population, "rollouts": 4, "steps": steps,
            "generations_per_call": generations, "repeats": repeats, "cpu_count": os.cpu_count(),
            "rows": rows,
            "note": "simulated CPU devices share this machine's cores: up to the core count they run in parallel "
                    "threads; beyond it the curve shows the sharding's overhead"}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--toy", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(args.quick, args.toy), indent=2))
