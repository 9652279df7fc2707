"""Neuroevolution throughput and time-to-solve: our engine vs evosax `GymnaxProblem` + `CMA_ES`, side by side.

Identical work: CartPole-v1, evosax's own MLP module 4-32-2 (tanh, categorical action sample), 4 rollouts of
500 steps per candidate, no observation normalisation, CMA-ES with the same x0 and σ₀ = 0.1.

- Throughput: generations (ask → evaluate → tell) of each engine compiled as a `scan` over a chunk of
  generations, timed after compilation; env steps/s counts pop × 4 × 500 per generation for both. Our
  engine runs with `early_exit=False` here so that both simulate every step (identical work), through
  `Engine.run_generations` (no evaluation of the mean, as in the evosax loop). "ours" computes the policy's
  small Dense layers as multiply-adds fused with the env step (`EvolveConfig.small_dense`, the CPU default);
  "ours_dots" is the same engine with them as XLA's batched dots (`small_dense=0`), the same HLO as evosax's.
- Time to solve: wall-clock (after compilation) until the distribution mean's return over 32 episodes,
  evaluated every 5 generations, reaches 475. Ours with early exit on (its default).
- Per-member cost (seconds per member per generation) vs population, written as a PNG.
- On a CPU host where `wmj evolve` would shard a population over one simulated CPU device per core
  (`evolve.cpu_devices_for`: from 2048 members per core, for a policy not fused whole by `small_dense`), the
  benchmark runs in a process with those devices: both sides and "ours" on one device, "ours_auto" on all. With
  the default `small_dense` the MLP 4-32-2 is fused, one device is `wmj evolve`'s pick at every size, and the
  benchmark runs in its own process.

    .venv/bin/python benchmarks/bench_neuroevolution.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROLLOUTS, STEPS, SIGMA, TARGET, EVAL_EVERY, EVAL_EPISODES = 4, 500, 0.1, 475.0, 5, 32


def _evosax_setup(pop: int, rollouts: int = ROLLOUTS):
    from evosax.algorithms import CMA_ES
    from evosax.problems import GymnaxProblem
    from evosax.problems.networks import MLP, categorical_output_fn

    policy = MLP(layer_sizes=(32, 2), output_fn=categorical_output_fn)
    problem = GymnaxProblem("CartPole-v1", policy, episode_length=STEPS, num_rollouts=rollouts,
                            use_normalize_obs=False)
    x0 = problem.sample(jax.random.PRNGKey(0))
    strategy = CMA_ES(pop, x0)
    params = strategy.default_params.replace(std_init=jnp.float32(SIGMA))
    return policy, problem, x0, strategy, params


def _evosax_runner(pop: int):
    _, problem, x0, strategy, params = _evosax_setup(pop)
    _, eval_problem, *_ = _evosax_setup(2, EVAL_EPISODES)

    def generation(carry, _):
        es_state, p_state, key = carry
        key, k_ask, k_eval, k_tell = jax.random.split(key, 4)
        population, es_state = strategy.ask(k_ask, es_state, params)
        fitness, p_state, _ = problem.eval(k_eval, population, p_state)
        es_state, _ = strategy.tell(k_tell, population, -fitness, es_state, params)  # evosax minimises
        return (es_state, p_state, key), jnp.mean(fitness)

    @jax.jit
    def init(key):
        k1, k2, k3 = jax.random.split(key, 3)
        return strategy.init(k1, x0, params), problem.init(k2), k3

    @jax.jit
    def chunk(carry, length_marker):
        carry, _ = jax.lax.scan(generation, carry, None, length=length_marker.shape[0])
        return carry

    @jax.jit
    def eval_mean(es_state, p_state, key):
        mean = jax.tree.map(lambda x: x[None], strategy.get_mean(es_state))
        returns, _, _ = eval_problem.eval(key, mean, p_state)
        return returns[0]

    return init, chunk, eval_mean


def _ours_runner(pop: int, early_exit: bool, eval_episodes: int, pop_chunk: int | None = None, devices: int = 1,
                 small_dense: int | None = None):
    from worldmodels_jax.evolution import ESConfig
    from worldmodels_jax.evolve import EvolveConfig, env_problem, make_engine, make_mesh

    policy, _, x0, _, _ = _evosax_setup(2)
    config = EvolveConfig(seed=0, max_steps=STEPS, early_exit=early_exit, pop_chunk=pop_chunk, small_dense=small_dense)
    problem = env_problem("CartPole-v1", policy, template=x0, config=config)
    es = ESConfig(strategy="CMA_ES", population=pop, sigma_init=SIGMA, rollouts=ROLLOUTS, l2_coef=0.0,
                  eval_every=EVAL_EVERY, eval_episodes=eval_episodes)
    return make_engine(problem, es, config, mesh=make_mesh(devices))


def _block(tree):
    return jax.block_until_ready(tree)


def _fused_policy() -> bool:
    """Whether our engine computes the whole policy as multiply-adds here (`EvolveConfig.small_dense`'s default)."""
    from worldmodels_jax.models.small_dense import all_dense_small, resolve_small_dense

    return all_dense_small(_evosax_setup(2)[2], resolve_small_dense(None))


def _auto_devices(pop: int) -> int:
    """The CPU device count `wmj evolve` picks for this population (1 off the CPU or where the process has fewer)."""
    from worldmodels_jax.evolve import cpu_devices_for

    if jax.default_backend() != "cpu":
        return 1
    wanted = cpu_devices_for(pop, EVAL_EPISODES, fused_policy=_fused_policy())
    return wanted if wanted <= jax.device_count() else 1


def throughput(pop: int, generations: int, repeats: int) -> dict:
    """Median seconds per generation of both engines on identical work.

    Ours runs on one device, and also, where `wmj evolve` would shard this population over several simulated CPU
    devices (one per core, `evolve.cpu_devices_for`) and the process has them, on those devices ("auto").
    """
    work = pop * ROLLOUTS * STEPS
    init, chunk, _ = _evosax_runner(pop)
    marker = jnp.zeros((generations,))
    # Each side is called twice before timing: evosax's init state is weakly typed where its loop's output is
    # not, so its second call compiles again (ours casts the init state, see evolution.strong_types).
    carry = _block(chunk(chunk(init(jax.random.PRNGKey(1)), marker), marker))  # compile
    auto = _auto_devices(pop)
    engines = {"ours": _ours_runner(pop, early_exit=False, eval_episodes=1),  # no evaluation here
               "ours_dots": _ours_runner(pop, early_exit=False, eval_episodes=1, small_dense=0)}
    if auto > 1:
        engines["ours_auto"] = _ours_runner(pop, early_exit=False, eval_episodes=auto, devices=auto)
    states = {}
    for name, engine in engines.items():
        state, _ = _block(engine.run_generations(engine.init(), generations))  # compile
        states[name], _ = _block(engine.run_generations(state, generations))
    wall = {name: [] for name in ("evosax", *engines)}
    cpu = {name: [] for name in wall}
    for _ in range(repeats):  # interleaved, so that load from other processes hits all alike
        start, cpu0 = time.perf_counter(), time.process_time()
        carry = _block(chunk(carry, marker))
        wall["evosax"].append((time.perf_counter() - start) / generations)
        cpu["evosax"].append((time.process_time() - cpu0) / generations)
        for name, engine in engines.items():
            start, cpu0 = time.perf_counter(), time.process_time()
            states[name], metrics = _block(engine.run_generations(states[name], generations))
            wall[name].append((time.perf_counter() - start) / generations)
            cpu[name].append((time.process_time() - cpu0) / generations)
            assert float(np.asarray(metrics["sim_steps"])[0]) == work, "not identical work"
    # The minimum over repeats: on a shared machine, interference only ever adds time.
    t_theirs, t_ours = min(wall["evosax"]), min(wall["ours"])
    row = {"population": pop, "evosax_steps_per_s": work / t_theirs, "ours_steps_per_s": work / t_ours,
           "ratio": t_theirs / t_ours, "ratio_median": statistics.median(wall["evosax"]) / statistics.median(wall["ours"]),
           "ratio_cpu_time": min(cpu["evosax"]) / min(cpu["ours"]),
           "evosax_s_per_member": t_theirs / pop, "ours_s_per_member": t_ours / pop,
           "evosax_s_per_generation": t_theirs, "ours_s_per_generation": t_ours, "auto_devices": auto,
           "ours_dots_s_per_generation": min(wall["ours_dots"]), "ratio_dots": t_theirs / min(wall["ours_dots"]),
           "small_dense_speedup": min(wall["ours_dots"]) / t_ours}
    if auto > 1:
        t_auto = min(wall["ours_auto"])
        row.update(ours_auto_steps_per_s=work / t_auto, ratio_auto=t_theirs / t_auto,
                   ratio_auto_median=statistics.median(wall["evosax"]) / statistics.median(wall["ours_auto"]),
                   ours_auto_s_per_generation=t_auto)
    return row


def time_to_solve(pop: int, max_generations: int) -> dict:
    """Wall-clock (compiled) until the mean's return over 32 episodes reaches 475, both engines."""
    init, chunk, eval_mean = _evosax_runner(pop)
    marker = jnp.zeros((EVAL_EVERY,))
    warm = _block(chunk(chunk(init(jax.random.PRNGKey(7)), marker), marker))  # twice: see throughput()
    _block(eval_mean(warm[0], warm[1], jax.random.PRNGKey(0)))
    start = time.perf_counter()
    carry, generation, theirs = init(jax.random.PRNGKey(1)), 0, None
    while generation < max_generations:
        carry = chunk(carry, marker)
        generation += EVAL_EVERY
        score = float(jnp.mean(eval_mean(carry[0], carry[1], jax.random.fold_in(jax.random.PRNGKey(2), generation))))
        if score >= TARGET:
            theirs = {"seconds": time.perf_counter() - start, "generations": generation, "score": score}
            break
    theirs = theirs or {"seconds": None, "generations": None, "timeout_s": time.perf_counter() - start}

    engine = _ours_runner(pop, early_exit=True, eval_episodes=EVAL_EPISODES)
    warm, _, _ = engine.run_chunk(engine.init(), EVAL_EVERY)  # compile
    _block(engine.run_chunk(warm, EVAL_EVERY))
    start = time.perf_counter()
    state, generation, ours = engine.init(), 0, None
    while generation < max_generations:
        state, _, evaluation = engine.run_chunk(state, EVAL_EVERY)
        generation += EVAL_EVERY
        score = float(evaluation["eval_mean"])
        if score >= TARGET:
            ours = {"seconds": time.perf_counter() - start, "generations": generation, "score": score}
            break
    ours = ours or {"seconds": None, "generations": None, "timeout_s": time.perf_counter() - start}
    speedup = theirs["seconds"] / ours["seconds"] if theirs["seconds"] and ours["seconds"] else None
    return {"population": pop, "evosax": theirs, "ours": ours, "speedup": speedup}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pops = [r["population"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(pops, [r["evosax_s_per_member"] * 1e3 for r in rows], "o-", label="evosax GymnaxProblem + CMA_ES")
    ax.plot(pops, [r["ours_s_per_member"] * 1e3 for r in rows], "s-", label="worldmodels_jax.evolve (CMA_ES)")
    if all("ours_dots_s_per_generation" in r for r in rows):
        ax.plot(pops, [r["ours_dots_s_per_generation"] / r["population"] * 1e3 for r in rows], "x--",
                label="worldmodels_jax.evolve, policy as XLA dots")
    auto = [r for r in rows if r.get("auto_devices", 1) > 1]
    if auto:
        ax.plot([r["population"] for r in auto], [r["ours_auto_s_per_generation"] / r["population"] * 1e3 for r in auto],
                "^", label=f"worldmodels_jax.evolve on {auto[0]['auto_devices']} CPU devices")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("population")
    ax.set_ylabel("ms per member per generation\n(4 rollouts × 500 steps)")
    ax.set_title(f"CartPole-v1, MLP 4-32-2, {jax.device_count()} {jax.devices()[0].platform} device(s)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _populations(quick: bool) -> list[int]:
    return [64, 256, 1024] if quick else [64, 256, 1024, 4096]


def _in_a_process_with_one_device_per_core(quick: bool, out: Path) -> dict | None:
    """On a CPU host whose process has one device, the whole benchmark again in a child process with one simulated
    CPU device per core (so that `ours_auto` can be measured, as `wmj evolve` runs); None where that is not needed."""
    import subprocess

    from worldmodels_jax.evolve import cpu_devices_environ, cpu_devices_for

    cores = os.cpu_count() or 1
    pops = _populations(quick)
    if (jax.default_backend() != "cpu" or jax.device_count() >= cores or os.environ.get("WMJ_BENCH_CHILD")
            or max(cpu_devices_for(p, EVAL_EPISODES, fused_policy=_fused_policy()) for p in pops) < 2):
        return None
    env = {**cpu_devices_environ(cores), "WMJ_BENCH_CHILD": "1", "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--out", str(out), *(["--quick"] if quick else [])]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"the neuroevolution benchmark on {cores} CPU devices failed:\n{proc.stderr[-3000:]}")
    print("\n".join(line for line in proc.stdout.splitlines() if line.startswith(("pop", "time to"))), flush=True)
    return json.loads((out / f"neuroevolution{'_quick' if quick else ''}.json").read_text())


def run(quick: bool = True, out: str | Path = "benchmarks/results") -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    child = _in_a_process_with_one_device_per_core(quick, out)
    if child is not None:
        return child
    pops = _populations(quick)
    generations, repeats = (2, 5) if quick else (3, 7)
    rows = []
    for pop in pops:
        row = throughput(pop, generations, repeats)
        rows.append(row)
        auto = (f"; on {row['auto_devices']} CPU devices {row['ours_auto_steps_per_s'] / 1e6:.2f}M steps/s, ratio "
                f"{row['ratio_auto']:.2f} (median {row['ratio_auto_median']:.2f})") if row["auto_devices"] > 1 else ""
        print(f"pop {pop:5d}: evosax {row['evosax_steps_per_s'] / 1e6:.2f}M steps/s, ours "
              f"{row['ours_steps_per_s'] / 1e6:.2f}M steps/s, ratio {row['ratio']:.2f} (median "
              f"{row['ratio_median']:.2f}, CPU time {row['ratio_cpu_time']:.2f}); policy as dots {row['ratio_dots']:.2f}"
              f"{auto}", flush=True)
    solve_pops = [64] if quick else [64, 256]
    solves = []
    for pop in solve_pops:
        result = time_to_solve(pop, max_generations=200 if quick else 400)
        solves.append(result)
        print(f"time to {TARGET:.0f}, pop {pop}: evosax {result['evosax']}, ours {result['ours']}, "
              f"speedup {result['speedup']}", flush=True)
    plot_path = out / "neuroevolution_per_member.png"
    plot(rows, plot_path)
    record = {"benchmark": "neuroevolution", "quick": quick, "device": str(jax.devices()[0]),
              "device_count": jax.device_count(), "cores": os.cpu_count(), "jax": jax.__version__, "throughput": rows,
              "time_to_solve": solves, "plot": str(plot_path),
              "min_ratio": min(r["ratio"] for r in rows),
              "min_ratio_as_wmj_evolve_runs": min(r.get("ratio_auto", r["ratio"]) for r in rows)}
    (out / f"neuroevolution{'_quick' if quick else ''}.json").write_text(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
    args = parser.parse_args()
    print(json.dumps(run(args.quick, args.out), indent=2))
