"""`wmj bench`: the benchmark suite. Every throughput figure is measured in the same run as its anchor.

    wmj bench [--quick] [--only NAME ...] [--out DIR]

Runs the registered benchmarks (the modules under `benchmarks/` in the repository), each inside a
try/except so that one failure is recorded without stopping the suite, then writes
`<out>/<timestamp>.json` (machine info, jax version, devices and every figure), regenerates
`benchmarks/BENCHMARKS.md` (a table per benchmark: figure, anchor, ratio and the command) and draws the
scaling curves as PNGs next to the JSON. Methodology (compile time apart, warm-up, median of repeats,
`block_until_ready`) lives in each benchmark; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
MARKDOWN = REPO / "benchmarks" / "BENCHMARKS.md"


def _benchmarks_module(name: str):
    """Imports `benchmarks.<name>` from the repository root (the suite is not part of the installed package)."""
    import importlib

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module(f"benchmarks.{name}")


def run_on_cpu_devices(code: str, devices: int, timeout: int = 900) -> dict:
    """Runs Python `code` in a fresh process with `devices` simulated CPU devices and returns the JSON it prints
    after 'RESULT'. The device count is fixed when jax starts, hence the process. RuntimeError if it fails."""
    import json
    import subprocess

    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip())
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0 or "RESULT" not in proc.stdout:
        raise RuntimeError(f"the run on {devices} simulated CPU devices failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.split("RESULT", 1)[1])


# ------------------------------------------------------------------------------------------ pixel CartPole
def bench_cartpole(quick: bool = False, toy: bool = False) -> dict:
    """Our pixel CartPole (64×64×3 frames) and gymnax CartPole-v1 (state) at 1..4096 envs vs gymnasium CartPole-v1.

    Ours: `jit(scan(vmap(env.step)))` with random actions, gymnax auto-reset; every step's frames are returned
    (stacked), so no rendering can be skipped. (Carrying only the last frames is not enough: XLA then sinks
    the drawing out of the loop and draws once.) At most 16,384 frames per call keep the output near 200 MB. Anchor: gymnasium's CartPole-v1 (numpy, state observations, no pixels) in
    one process, timed before and after ours. The labels say which side renders pixels.
    """
    import jax
    import jax.numpy as jnp
    import gymnax

    import worldmodels_jax.envs  # noqa: F401  (registers CartPolePixels-v1)

    sizes = (1, 16) if toy else ((1, 64, 256, 1024) if quick else (1, 64, 256, 1024, 4096))
    repeats = 2 if toy else 3

    def steps_for(n: int) -> int:
        if toy:
            return 10
        return int(max(10, min(1000, 16_384 // n)))

    def gymnasium_sps(steps: int) -> float | None:
        try:
            import gymnasium as gym
        except ImportError:
            return None
        env = gym.make("CartPole-v1")
        env.reset(seed=0)
        env.action_space.seed(0)
        start = time.perf_counter()
        for _ in range(steps):
            _, _, term, trunc, _ = env.step(env.action_space.sample())
            if term or trunc:
                env.reset()
        return steps / (time.perf_counter() - start)

    def ours(env_id: str, n: int, steps: int) -> dict:
        env, params = gymnax.make(env_id)

        @jax.jit
        def rollout(key):
            key_reset, key_run = jax.random.split(key)
            obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key_reset, n), params)

            def body(state, key_t):
                key_a, key_s = jax.random.split(key_t)
                action = jax.random.randint(key_a, (n,), 0, 2)
                obs, state, _, _, _, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
                    jax.random.split(key_s, n), state, action, params)
                return state, obs

            return jax.lax.scan(body, state, jax.random.split(key_run, steps))[1]

        start = time.perf_counter()
        jax.block_until_ready(rollout(jax.random.PRNGKey(0)))
        compile_s = time.perf_counter() - start
        jax.block_until_ready(rollout(jax.random.PRNGKey(1)))
        times = []
        for r in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(rollout(jax.random.PRNGKey(r + 2)))
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        return {"steps_per_s": n * steps / median, "steps_per_call": steps, "compile_s": compile_s,
                "all_seconds": times}

    gym_steps = 500 if toy else 5000
    before = gymnasium_sps(gym_steps)
    table: dict = {"CartPolePixels-v1": {}, "CartPole-v1": {}}
    for n in sizes:
        for env_id in table:
            if env_id == "CartPole-v1" and toy and n > 1:
                continue
            table[env_id][n] = ours(env_id, n, steps_for(n))
            print(f"{env_id:18s} envs {n:5d}: {table[env_id][n]['steps_per_s']:12,.0f} steps/s", flush=True)
    after = gymnasium_sps(gym_steps)
    anchors = [x for x in (before, after) if x is not None]
    gym = sum(anchors) / len(anchors) if anchors else None
    for rows in table.values():
        for row in rows.values():
            row["ratio_vs_gymnasium"] = row["steps_per_s"] / gym if gym else None
    return {"benchmark": "cartpole_env", "quick": quick, "toy": toy,
            "gymnasium_cartpole_v1_state_steps_per_s": gym, "gymnasium_before_after": [before, after],
            "ours": table, "anchor_label": "gymnasium CartPole-v1, numpy, STATE observations (no pixels), 1 process"}


# ------------------------------------------------------------------------------------------ registry
def _peak(context: dict) -> float | None:
    return (context.get("matmul") or {}).get("peak_flop_per_s")


def _run_module(module: str, **kwargs) -> Callable[[bool, bool, dict, Path], dict]:
    def runner(quick: bool, toy: bool, context: dict, out: Path) -> dict:
        mod = _benchmarks_module(module)
        return mod.run(quick=quick, **kwargs)

    return runner


def _matmul(quick, toy, context, out):
    return _benchmarks_module("bench_matmul_peak").run(quick=quick, toy=toy)


def _dream(quick, toy, context, out):
    return _benchmarks_module("bench_dream").run(quick=quick, toy=toy, peak_flop_per_s=_peak(context))


def _pipeline(quick, toy, context, out):
    return _benchmarks_module("bench_pipeline").run(quick=quick, toy=toy, peak_flop_per_s=_peak(context),
                                                    context=context)


def _paper_costs(quick, toy, context, out):
    """The paper preset's stages timed here: `full` sizes on an accelerator, `quick` ones on a CPU."""
    import jax

    module = _benchmarks_module("bench_paper_costs")
    if toy:
        return module.run(preset="tiny", size="toy", peak_flop_per_s=_peak(context))
    size = "quick" if quick or jax.default_backend() == "cpu" else "full"
    return module.run(size=size, peak_flop_per_s=_peak(context))


def _neuroevolution(quick, toy, context, out):
    return _benchmarks_module("bench_neuroevolution").run(quick=quick, out=out)


def _cartpole(quick, toy, context, out):
    return bench_cartpole(quick=quick, toy=toy)


def _scaling(quick, toy, context, out):
    """Cost against population and episode length (the dream), from this run's results plus a sweep."""
    dream_module = _benchmarks_module("bench_dream")
    pop = 16 if toy else 256
    lengths = (10, 20) if toy else ((50, 100, 200) if quick else (50, 100, 200, 400, 800))
    hidden = 32 if toy else dream_module.HIDDEN
    by_length = {}
    for steps in lengths:
        row = dream_module.time_variant(dream_module.make_package, pop, steps, 2 if toy else 3, hidden)
        by_length[steps] = {"seconds_per_call": row["seconds_per_call"], "steps_per_s": row["steps_per_s"],
                            "seconds_per_step": row["seconds_per_call"] / steps}
        print(f"dream package pop {pop} episode length {steps}: {row['seconds_per_call']:.3f} s", flush=True)
    by_population = {}
    dream = context.get("dream") or {}
    for name, rows in (dream.get("variants") or {}).items():
        by_population[name] = {p: r["seconds_per_call"] / r["steps_per_call"] for p, r in rows.items()}
    devices = _benchmarks_module("bench_devices").run(quick=quick, toy=toy)
    return {"benchmark": "scaling", "episode_length": {"population": pop, "rows": by_length},
            "population_seconds_per_batched_step": by_population, "devices": devices}


BENCHMARKS: dict[str, dict[str, Any]] = {
    "matmul": {"run": _matmul, "command": "python benchmarks/bench_matmul_peak.py", "toy": True},
    "cartpole_env": {"run": _cartpole, "command": "wmj bench --only cartpole_env", "toy": True},
    "takecover_env": {"run": _run_module("bench_takecover_env"),
                      "command": "python -m benchmarks.bench_takecover_env", "toy": False},
    "carracing_env": {"run": _run_module("bench_carracing_env"),
                      "command": "python benchmarks/bench_carracing_env.py", "toy": False},
    "dream": {"run": _dream, "command": "python benchmarks/bench_dream.py", "toy": True},
    "neuroevolution": {"run": _neuroevolution, "command": "python benchmarks/bench_neuroevolution.py",
                       "toy": False},
    "vm_training": {"run": _run_module("bench_vm_training"), "command": "python -m benchmarks.bench_vm_training",
                    "toy": False},
    "dqn": {"run": _run_module("bench_dqn"), "command": "wmj bench --only dqn (or python benchmarks/bench_dqn.py)",
            "toy": False},
    "pipeline": {"run": _pipeline, "command": "python benchmarks/bench_pipeline.py", "toy": True},
    "scaling": {"run": _scaling, "command": "wmj bench --only dream scaling", "toy": True},
    # Not in --quick unless named: three fresh processes, each compiling the CarRacing controller's programs (~2 min).
    "compile_cache": {"run": _run_module("bench_compile_cache"), "command": "python benchmarks/bench_compile_cache.py",
                      "toy": False, "in_quick": False},
    # Not in --quick unless named (--only paper_costs): its compilations at the paper's sizes take ~5 minutes.
    "paper_costs": {"run": _paper_costs, "command": "python benchmarks/bench_paper_costs.py --size quick", "toy": True,
                    "in_quick": False},
}


# ------------------------------------------------------------------------------------------ machine info
def machine_info() -> dict:
    import jax

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(), "jax": jax.__version__,
            "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
            "device_kind": jax.devices()[0].device_kind}
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu_model"] = names[0]
    except OSError:
        pass
    try:
        info["load_avg_1m_5m_15m"] = list(os.getloadavg())
    except OSError:
        pass
    for package in ("flax", "optax", "evosax", "gymnax", "numpy", "torch", "gymnasium", "stable_baselines3"):
        try:
            module = __import__(package)
            info[f"{package}_version"] = getattr(module, "__version__", "?")
        except Exception:  # noqa: BLE001
            info[f"{package}_version"] = None
    return info


def to_jsonable(value):
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None


# ------------------------------------------------------------------------------------------ markdown
def _fmt(value, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if abs(value) >= 1e9:
        text = f"{value / 1e9:.1f} G"
    elif abs(value) >= 1e6:
        text = f"{value / 1e6:.2f} M"
    elif abs(value) >= 1e4:
        text = f"{value / 1e3:.1f} k"
    elif abs(value) >= 100:
        text = f"{value:.0f} "
    else:
        text = f"{value:.3g} "
    return (text + unit).strip()


def _ratio(value) -> str:
    return "—" if value is None else f"{value:.2f}×" if value < 10 else f"{value:.0f}×"


def _get(d, *path):
    for key in path:
        if d is None:
            return None
        d = d.get(key) if isinstance(d, dict) else None
        if d is None:
            return None
    return d


def _rows(name: str, r: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the markdown table for one benchmark's result."""
    if name == "matmul":
        rows = [[f"`jnp.dot` fp32 n={s['n']}", _fmt(s["flop_per_s"], "FLOP/s"), "—", "—"] for s in r["sizes"]]
        rows.append(["peak (best size)", _fmt(r["peak_flop_per_s"], "FLOP/s"), "—", "—"])
        return ["Figure", "Value", "Anchor", "Ratio"], rows
    if name == "cartpole_env":
        anchor = r.get("gymnasium_cartpole_v1_state_steps_per_s")
        rows = []
        for env_id, sizes in r["ours"].items():
            label = "pixel CartPole 64×64×3 (ours)" if "Pixels" in env_id else "gymnax CartPole-v1 (state)"
            for n, row in sizes.items():
                rows.append([f"{label}, {n} envs", _fmt(row["steps_per_s"], "steps/s"),
                             f"gymnasium CartPole-v1 (state, 1 process) {_fmt(anchor, 'steps/s')}",
                             _ratio(row.get("ratio_vs_gymnasium"))])
        return ["Figure", "Value", "Anchor", "Ratio"], rows
    if name == "takecover_env":
        rows = [[f"TakeCover {kind.replace('_', ' ')}, {n} envs", _fmt(row["steps_per_s"], "steps/s"),
                 "no CPU original (VizDoom not installed)", "—"]
                for kind in ("pixels", "dynamics_only") for n, row in r.get(kind, {}).items()]
        return ["Figure", "Value", "Anchor", "Ratio"], rows
    if name == "carracing_env":
        anchor = r.get("gymnasium_carracing_v3_steps_per_s")
        rows = [[f"CarRacing pixels (ours), {n} envs", _fmt(sps, "steps/s"),
                 f"gymnasium CarRacing-v3, 1 process {_fmt(anchor, 'steps/s')}", _ratio(r["ratio"].get(n))]
                for n, sps in r["ours_steps_per_s"].items()]
        generation = r.get("controller_generation_steps_per_s")  # absent from runs before 2026-11-30
        if generation:
            rows.append(["CarRacing C generation (V + C on pixels, 32 × 4 × 100 steps), V's convs 'forward'",
                         _fmt(generation["forward"], "steps/s"),
                         f"the same with V's convs 'xla' {_fmt(generation['xla'], 'steps/s')}",
                         _ratio(r["controller_generation_ratio_forward_vs_xla"])])
        for v, row in (r.get("controller_generation_devices") or {}).items():  # from 2026-12-01
            rows.append([f"CarRacing z + h generation (V + M + C, 32 × 4 × 100 steps), V of `{v}` "
                         f"({row['encoder_mflop']:.1f} MFLOP/frame), episodes split over {row['devices']} CPU devices",
                         _fmt(row["devices_steps_per_s"], "steps/s"),
                         f"on 1 CPU device {_fmt(row['one_device_steps_per_s'], 'steps/s')}", _ratio(row["ratio"])])
        return ["Figure", "Value", "Anchor", "Ratio"], rows
    if name == "dream":
        numpy_sps = r["numpy_steps_per_s"]
        rows = []
        for variant, sizes in r["variants"].items():
            for pop, row in sizes.items():
                anchor = _get(r, "numpy_by_population", str(pop), "steps_per_s") or numpy_sps
                rows.append([f"{variant}, population {pop}", _fmt(row["steps_per_s"], "steps/s"),
                             f"numpy per-agent loop {_fmt(anchor, 'steps/s')}", _ratio(row["ratio_vs_numpy"]),
                             f"{_fmt(row['flop_per_s'], 'FLOP/s')} = {100 * row['fraction_of_peak']:.0f}% of "
                             f"{_fmt(r['peak_flop_per_s'], 'FLOP/s')}", f"{row['compile_s']:.1f} s"])
        return ["Figure", "Value", "Anchor", "Ratio", "Counted FLOP/s (of matmul peak)", "Compile"], rows
    if name == "neuroevolution":
        rows = []
        for t in r["throughput"]:
            anchor = f"evosax GymnaxProblem + CMA_ES {_fmt(t['evosax_steps_per_s'], 'env steps/s')}"
            rows.append([f"generation, population {t['population']}, 1 device", _fmt(t["ours_steps_per_s"], "env steps/s"),
                         anchor, _ratio(t["ratio"])])
            if "ours_dots_s_per_generation" in t:
                work = t["ours_steps_per_s"] * t["ours_s_per_generation"]
                rows.append([f"generation, population {t['population']}, 1 device, policy as XLA dots "
                             "(`small_dense=0`)", _fmt(work / t["ours_dots_s_per_generation"], "env steps/s"), anchor,
                             _ratio(t["ratio_dots"])])
            if t.get("auto_devices", 1) > 1:
                rows.append([f"generation, population {t['population']}, {t['auto_devices']} CPU devices "
                             "(what `wmj evolve` picks)", _fmt(t["ours_auto_steps_per_s"], "env steps/s"), anchor,
                             _ratio(t["ratio_auto"])])
        for s in r.get("time_to_solve", []):
            ours, theirs = _get(s, "ours", "seconds"), _get(s, "evosax", "seconds")
            rows.append([f"time to 475, population {s['population']}", _fmt(ours, "s"),
                         f"evosax {_fmt(theirs, 's')}", _ratio(s.get("speedup"))])
        return ["Figure", "Value", "Anchor", "Ratio"], rows
    if name == "vm_training":
        rows = []
        for part, unit in (("vae", "frames/s"), ("mdnrnn", "seq-steps/s")):
            sub = r.get(part, {})
            anchor = _get(sub, "torch", "items_per_s")
            for key, val in sub.items():
                if isinstance(val, dict) and "items_per_s" in val and key != "torch":
                    rows.append([f"{part} training step, {key}", _fmt(val["items_per_s"], unit),
                                 f"PyTorch CPU {_fmt(anchor, unit)}", _ratio(_get(sub, "ratio_vs_torch", key))])
            paired = sub.get("paired")
            if paired:
                rows.append([f"{part} training step, {paired['contestant']} and PyTorch alone, paired "
                             f"({paired['repeats']} rounds)", f"{paired['ours_ms_median']:.1f} ms/step",
                             f"PyTorch CPU {paired['torch_ms_median']:.1f} ms/step",
                             f"{_ratio(paired['ratio_median'])} (quartiles {paired['ratio_q1']:.2f}-"
                             f"{paired['ratio_q3']:.2f})"])
        return ["Figure", "Value", "Anchor", "Ratio"], rows
    if name == "dqn":
        rows = []
        variants = [k[len("ours_"):] for k in r if k.startswith("ours_")] or ["default"]
        for seed, sb3 in r.get("sb3", {}).items():
            for variant in variants:
                ours = r.get(f"ours_{variant}", r.get("ours", {})).get(seed, {})
                ratio = (ours["seconds"] / sb3["seconds"]) if ours.get("seconds") and sb3.get("seconds") else None
                missed = lambda x: "" if x.get("reached", True) else " (did not reach 475)"  # noqa: E731
                rows.append([f"DQN wall-clock to 475 incl. compile, seed {seed}, {variant}",
                             f"{_fmt(ours.get('seconds'), 's')}, {ours.get('env_steps')} steps{missed(ours)}",
                             f"SB3 DQN {_fmt(sb3.get('seconds'), 's')}, {sb3.get('env_steps')} steps{missed(sb3)}",
                             _ratio(ratio) + " (time, lower is better)"])
        for variant, m in r.get("summary", {}).items():
            rows.append([f"DQN wall-clock to 475, median over seeds, {variant}", _fmt(m["median_ours_s"], "s"),
                         f"SB3 DQN {_fmt(m['median_sb3_s'], 's')}", _ratio(m["median_ratio"]) + " (goal ≤ 0.2×)"])
        scaling = r.get("seed_scaling", {})
        for variant, sc in (scaling.items() if "ratio_total" not in scaling else [("default", scaling)]):
            if "error" in sc:
                rows.append([f"vmapped seeds, {variant}", "**FAILED**", "—", "—"])
                continue
            if sc.get("devices", 1) > 1:
                variant = f"{variant} (the seeds split over {sc['devices']} simulated CPU devices, one per core)"
            n = max(int(k) for k in sc if str(k).isdigit())
            one, many = sc.get(1, sc.get("1", {})), sc.get(n, sc.get(str(n), {}))
            rows.append([f"{n} vmapped seeds, compile + run ({sc.get('env_steps_per_seed')} steps each), {variant}",
                         _fmt(many.get("total_s"), "s"), f"1 seed {_fmt(one.get('total_s'), 's')}",
                         _ratio(sc.get("ratio_total")) + " (goal ≤ 2×)"])
            rows.append([f"{n} vmapped seeds, run only, {variant}", _fmt(many.get("run_s"), "s"),
                         f"1 seed {_fmt(one.get('run_s'), 's')}", _ratio(sc.get("ratio_run"))])
        return ["Figure", "Value", "Anchor", "Ratio"], rows
    if name == "pipeline":
        rows = [[f"`{r['preset']}` {stage} (measured)", _fmt(row["seconds"], "s"),
                 "—", f"{100 * row['fraction_of_cpu_peak']:.1f}% of CPU peak" if "fraction_of_cpu_peak" in row else "—"]
                for stage, row in r["stages"].items()]
        for preset, p in r["projection"]["presets"].items():
            for stage, s in p["stages"].items():
                if s["h100_s"] is not None:
                    rows.append([f"**PROJECTED** `{preset}` {stage} on H100", _fmt(s["h100_s"], "s"),
                                 "projection (see note)", f"assumes {100 * s['assumed_fraction_of_peak']:.1f}% of peak"])
        return ["Figure", "Value", "Anchor", "Efficiency"], rows
    if name == "paper_costs":
        peak = f"matmul peak {_fmt(r.get('matmul_peak_flop_per_s'), 'FLOP/s')}"
        rows = []
        for row in r["rows"]:
            if "seconds" not in row:
                continue
            fraction = row.get("fraction_of_matmul_peak")
            rows.append([f"`{r['preset']}` {row['stage']}, {row['units_timed']:,.0f} {row['unit']}s timed (measured)",
                         _fmt(row["seconds_per_unit"], f"s/{row['unit']}"), peak,
                         "—" if fraction is None else f"{100 * fraction:.1f}% of peak"])
        where = f"{r['devices']} × {r['device_kind']}"
        for stage, seconds in r["projected_s_by_stage"].items():
            rows.append([f"**PROJECTED** `{r['preset']}` {stage}, on {where}", _fmt(seconds / 3600, "h"),
                         "measured s/unit × the preset's units", "—"])
        rows.append([f"**PROJECTED** `{r['preset']}` total, on {where}", _fmt(r["projected_total_s"] / 3600, "h"),
                     f"{r['projected_total_s'] / 86400:.2f} days", "—"])
        return ["Figure", "Value", "Anchor", "Efficiency"], rows
    if name == "compile_cache":
        rows = [[f"`{r['preset']}` {program}, first call", _fmt(row["warm_s"], "s"),
                 f"no cache: {_fmt(row['off_s'], 's')} (empty cache: {_fmt(row['cold_s'], 's')})",
                 f"×{row['off_over_warm']:.1f}"]
                for program, row in {**r["rows"], "total": r["total"]}.items()]
        return ["Figure (another run's weights, cache warm)", "Value", "Anchor", "Ratio"], rows
    if name == "scaling":
        rows = [[f"dream package, pop {r['episode_length']['population']}, episode length {steps}",
                 _fmt(row["seconds_per_call"], "s"), "—", f"{1e3 * row['seconds_per_step']:.2f} ms/step"]
                for steps, row in r["episode_length"]["rows"].items()]
        devices = r.get("devices")
        if isinstance(devices, dict):
            for n, row in devices["rows"].items():
                rows.append([f"neuroevolution, pop {devices['population']} × {devices['rollouts']} × {devices['steps']} "
                             f"steps, {n} simulated CPU device(s)", _fmt(row["seconds_per_generation"], "s"),
                             f"1 device: ×{row['ratio_to_one_device']:.2f} speed",
                             f"{_fmt(row['steps_per_s'])} steps/s; same returns: {row['same_returns_as_one_device']}"])
        return ["Figure", "Value", "Anchor", "Per step"], rows
    return ["Figure", "Value"], [[k, _fmt(v) if isinstance(v, (int, float)) else str(v)[:80]]
                                 for k, v in r.items() if not isinstance(v, (dict, list))]


NOTES = {
    "carracing_env": "Goal (issue 3): ≥ 300× gymnasium's CarRacing-v3 at 256 envs, measured side by side. Pixels are "
                     "rendered at every step and episodes reset at their natural rate. Before the 2026-11-29 afternoon "
                     "changes the same quick command gave 36.2 k steps/s at 256 envs (255×). Three changes made it "
                     "faster. (1) The track scan compiles to one fused scalar loop: the checkpoint search is a count "
                     "and the destination a one-hot select, with unroll 1 on the CPU. (2) On the CPU, done envs reset "
                     "one at a time, not in vmapped chunks of 8. (3) The renderer takes texel and grass coordinates "
                     "affine in the pixel, and turns each block's 3×3 window into coverage coefficients once per "
                     "block; R and B are one plane, and the car sprite is blended in its box only. It equals "
                     "`render_reference` to ±1 grey level. Since 2026-11-30 the benchmark also times one controller "
                     "generation of `carracing-cpu-small` (V + C on pixels, 32 × 4 rollouts × 100 steps) with V's "
                     "forward-only convolutions 'forward' against 'xla', interleaved. Its first measurement, on a "
                     "Zen 3 VM (`controller_generation_steps_per_s(rounds=6)` alone, not yet in a full run of the "
                     "suite): 10.4 k against 6.7 k steps/s, 1.55×. The table is the full run of 2026-12-01 on the "
                     "slower Zen 3 VM (AMD EPYC family 25 model 1), where both sides are slower than on the Zen 4 VM of "
                     "2026-11-29 (77.5 k steps/s at 256 envs against gymnasium's 149: 521×). Its last three rows "
                     "(from 2026-12-01) time a z + h generation with the episodes split over one simulated CPU device "
                     "per core against one device, for three sizes of V: the measurement behind "
                     "`pipeline.cpu_devices_for`, which `--cpu-devices auto` uses (one device per core from 5 MFLOP "
                     "per frame).",
    "dqn": "Goals (issue 5): our wall-clock to a 20-episode greedy mean of 475, compile included, ≤ 1/5 of SB3 DQN's "
           "(RL Zoo CartPole-v1 hyperparameters, 1 torch thread), measured side by side in one process with the seeds "
           "interleaved; and 8 vmapped seeds ≤ 2× one seed. `default`: threefry keys, XLA's default optimisation; "
           "`fast_compile`: the same programs with `unsafe_rbg` keys and LLVM opt level 1 (less to compile); "
           "`default_over_cores`: the 8 vmapped seeds split over one simulated CPU device per core "
           "(`--xla_force_host_platform_device_count`, a fresh process), so that they use every core, while the "
           "single seed runs on one device. Per-seed load averages are in the JSON.",
    "dream": "Goals (issue 4): ≥ 30× the numpy loop at population 256; ≥ 50% of the matmul peak measured in the "
             "same run. `package` is the code path `wmj` trains in (DreamEnv + Agent + population_returns); "
             "`fused` is a benchmark-only variant that shows the headroom; `matmul_bound` (when present) is not a "
             "dream but the step's matmuls alone at the same shapes, the ceiling at that population. The numpy "
             "loop is one process on one core, as the original ran one agent per worker; JAX uses every core.",
    "pipeline": "Stage seconds are measured and include compilation (at the `tiny` size they are mostly compilation). "
                "Rows marked PROJECTED are not measurements: counted FLOPs ÷ (H100 SXM fp32 spec peak 67 TFLOP/s × "
                "the fraction of the CPU matmul peak that the same kind of step — V training, M training, the dream "
                "— reached on this CPU in this run). `collect` (env-bound) is not projected; env stepping and "
                "rendering are excluded; rollouts are counted at full episode length.",
    "vm_training": "Goal (issue 9): training throughput ≥ 1.0× PyTorch's on this CPU, same maths and parameters "
                   "(every contestant's loss is checked equal first). `jax_fast` is the library's CPU default "
                   "(`train.vae.make_vae_step`: fast convolution layers, convolution stages in micro-batches of 20, "
                   "dense stages on the whole batch); `jax_fast_whole_batch` the same layers without micro-batches; "
                   "`jax_xla` plain Flax layers. M runs the training loss `MDNRNN.observe_nll`. Contestants are "
                   "interleaved round-robin in one process; figures are medians. The 'paired' rows then run the goal's "
                   "pair alone for 15 more rounds: the median of the per-round ratios (PyTorch's time / ours, two "
                   "back-to-back measurements) with its quartiles, the figure least moved by drifting load. V's "
                   "ratio still moves between runs by more than its margin: seven runs on 2026-11-30 gave V 1.00, "
                   "1.04, 1.12, 1.01 (01:05-01:24) and 0.80, 0.90, 1.05 (03:28-03:33) paired, 0.93-1.03 "
                   "round-robin; M 1.10-1.18 paired in all seven. Those seven ran on a Zen 4 VM (AVX-512; PyTorch "
                   "443 frames/s there). On a Zen 3 VM (AMD EPYC family 25 model 1, AVX2; PyTorch 193-194 frames/s, "
                   "plain Flax 35-36, close to the anchors' 249 and 42 in shared/MEASUREMENTS.md), two runs of "
                   "`python -m benchmarks.bench_vm_training` on 2026-11-30 (11:41 and 11:45) gave V 1.17x and "
                   "1.23x paired (quartiles 1.14-1.26 and 1.13-1.29; 1.23x and 1.12x round-robin: 236 and 218 "
                   "frames/s) and M 1.21x and 1.27x paired (1.39x and 1.20x round-robin).",
    "neuroevolution": "Goal (issue 7): env steps/s ≥ 1.0× evosax `GymnaxProblem` + `CMA_ES` on identical work (CartPole-v1, "
                      "MLP 4-32-2, 4 rollouts of 500 steps, every step simulated). The ratio is the minimum time over 7 "
                      "interleaved repeats; medians are in the JSON. Ours computes the policy's small Dense layers as "
                      "multiply-adds fused with the env step (`EvolveConfig.small_dense`, automatic on the CPU); with "
                      "them as XLA's batched dots (the 'policy as XLA dots' rows) both engines compile the policy "
                      "to the same HLO and the ratio is parity, ±0.1 between runs. The fused step is one large loop that "
                      "XLA spreads over the cores, so `wmj evolve` keeps one device for this policy "
                      "(`evolve.cpu_devices_for`); a policy with larger layers is sharded over one simulated CPU device "
                      "per core from 2048 members per core, and the benchmark then adds rows for that. Time to 475 "
                      "runs with early exit (ours) after compilation on both sides.",
    "compile_cache": "Three fresh processes time the first call (trace, compile or load, run) of V's encoder, one "
                     "z + h ES generation (10-step episodes) and its evaluation: with an empty cache, then with that "
                     "cache and other weights (a second run of the preset), then with the cache off (the anchor). "
                     "The programs take the weights as arguments, so the second run loads what the first compiled.",
    "paper_costs": "Each stage of `carracing-paper` runs the pipeline's own code at the preset's sizes (V 4.35M "
                   "parameters, batch 100; M LSTM 256 on 100 × 999 windows; C's generation of 64 × 16 episodes; "
                   "the mean's evaluation over 1,024), with fewer units than the preset (frames, M steps, episode "
                   "steps), after a compiling call. Rows marked PROJECTED multiply the measured seconds per unit by "
                   "the preset's units (episodes at full length, an upper bound): a projection from costs measured "
                   "on the device named, not a timed run. On a CPU the suite times `--size quick` (10-step "
                   "episodes); on a GPU `--size full` (1000-step episodes; `benchmarks/device_check.sh`).",
    "cartpole_env": "The anchor renders no pixels: it is gymnasium's state-observation CartPole-v1, labelled as such.",
    "scaling": "Devices: the sharded neuroevolution engine on N simulated CPU devices "
               "(`--xla_force_host_platform_device_count=N`, one process per N), the same population each time, "
               "seconds per generation; 'same returns' checks that the generations' mean returns equal 1 device's. "
               "Simulated devices share this machine's cores and XLA runs each device's shard on its own thread. "
               "Since the engine fuses this MLP 4-32-2 into one loop per step (`EvolveConfig.small_dense`), which XLA "
               "already spreads over the cores, one device is the fastest here and the curve shows the sharding's "
               "overhead; with the policy as batched dots, 2 devices on 2 cores were 1.37x faster than one "
               "(20261129T111957Z), and `wmj evolve` shards such policies (`evolve.cpu_devices_for`).",
}


def write_markdown(record: dict, path: Path, json_name: str, plots: list[str]) -> None:
    info = record["machine"]
    lines = ["# Benchmarks", "",
             f"Generated by `wmj bench{' --quick' if record['quick'] else ''}` on {record['timestamp']} "
             f"(results: `{json_name}`). Regenerate with `make bench`.", "",
             f"Machine: {info.get('cpu_model', info['processor'])}, {info['cpu_count']} cores, "
             f"load average {info.get('load_avg_1m_5m_15m', ['?'])[0]:.1f} at the start "
             f"(a shared machine: quote ratios, not absolute figures). JAX {info['jax']} on "
             f"{', '.join(info['devices'])}. No GPU figures here were measured unless a device below says so.", ""]
    for name, entry in record["benchmarks"].items():
        lines += [f"## {name}", "", f"Command: `{BENCHMARKS.get(name, {}).get('command', '?')}`"
                  f" · wall-clock {entry['seconds']:.0f} s", ""]
        if entry["status"] != "ok":
            lines += [f"**FAILED**: `{entry['error']}`", ""]
            continue
        try:
            header, rows = _rows(name, entry["result"])
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
        except Exception as error:  # noqa: BLE001
            lines += [f"(could not tabulate: {error!r}; see the JSON)"]
        if name in NOTES:
            lines += ["", NOTES[name]]
        lines.append("")
    if plots:
        lines += ["## Scaling curves", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


# ------------------------------------------------------------------------------------------ plots
def _finish_plot(fig, ax, path: Path, legend: dict | None = None) -> Path:
    """Grid, legend (with these options; None: no legend), layout; saves `path` and closes the figure."""
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    if legend is not None:
        ax.legend(**legend)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(record: dict, out: Path, stamp: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    dream = _get(record, "benchmarks", "dream", "result")
    if dream:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, rows in dream["variants"].items():
            pops = sorted(int(p) for p in rows)
            ax.plot(pops, [rows[p]["steps_per_s"] if p in rows else rows[str(p)]["steps_per_s"] for p in pops],
                    "o-", label=f"JAX {name}")
        ax.axhline(dream["numpy_steps_per_s"], color="k", ls="--", label="numpy per-agent loop")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("population")
        ax.set_ylabel("dream steps/s")
        ax.set_title(f"Dream (LSTM {dream['sizes']['hidden']}, K 5, z 32) vs the original's loop")
        paths.append(_finish_plot(fig, ax, out / f"{stamp}_dream_scaling.png", legend={}))
    envs = {}
    for name, key in (("cartpole_env", None), ("takecover_env", "pixels"), ("carracing_env", "ours_steps_per_s")):
        r = _get(record, "benchmarks", name, "result")
        if not r:
            continue
        if name == "cartpole_env":
            for env_id, rows in r["ours"].items():
                envs[env_id] = {int(n): row["steps_per_s"] for n, row in rows.items()}
        elif name == "takecover_env":
            envs["TakeCover (pixels)"] = {int(n): row["steps_per_s"] for n, row in r.get("pixels", {}).items()}
        else:
            envs["CarRacing (pixels)"] = {int(n): v for n, v in r[key].items()}
    anchors = {"gymnasium CartPole-v1 (state obs, 1 process)":
               _get(record, "benchmarks", "cartpole_env", "result", "gymnasium_cartpole_v1_state_steps_per_s"),
               "gymnasium CarRacing-v3 (1 process)":
               _get(record, "benchmarks", "carracing_env", "result", "gymnasium_carracing_v3_steps_per_s")}
    if envs:
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, (label, rows) in enumerate(envs.items()):
            ns = sorted(rows)
            ax.plot(ns, [rows[n] for n in ns], "o-", label=label, color=f"C{i}")
        for j, (label, value) in enumerate((k, v) for k, v in anchors.items() if v):
            ax.axhline(value, ls="--", lw=1, color=f"C{len(envs) + j}", label=f"anchor: {label}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("parallel environments")
        ax.set_ylabel("steps/s")
        ax.set_title("Environment throughput")
        paths.append(_finish_plot(fig, ax, out / f"{stamp}_env_scaling.png", legend={"fontsize": 8}))
    scaling = _get(record, "benchmarks", "scaling", "result")
    if scaling:
        rows = scaling["episode_length"]["rows"]
        lengths = sorted(int(k) for k in rows)
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(lengths, [rows[k]["seconds_per_call"] if k in rows else rows[str(k)]["seconds_per_call"]
                          for k in lengths], "o-")
        ax.set_xlabel("episode length (steps)")
        ax.set_ylabel("seconds per population rollout")
        ax.set_title(f"Dream cost vs episode length, population {scaling['episode_length']['population']}")
        paths.append(_finish_plot(fig, ax, out / f"{stamp}_episode_length.png", legend=None))
        devices = scaling.get("devices")
        if isinstance(devices, dict) and devices.get("rows"):
            counts = sorted(int(k) for k in devices["rows"])
            row = lambda n: devices["rows"][n] if n in devices["rows"] else devices["rows"][str(n)]  # noqa: E731
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.plot(counts, [row(n)["seconds_per_generation"] for n in counts], "o-", label="median")
            ax.plot(counts, [row(n)["best_seconds_per_generation"] for n in counts], "s--", label="best")
            ax.set_xscale("log", base=2)
            ax.set_xticks(counts, [str(n) for n in counts])
            ax.set_ylim(bottom=0)
            ax.set_xlabel(f"simulated CPU devices (sharing {devices.get('cpu_count')} cores)")
            ax.set_ylabel("seconds per generation")
            ax.set_title(f"Neuroevolution, CartPole, population {devices['population']}, same work at every N")
            paths.append(_finish_plot(fig, ax, out / f"{stamp}_devices.png", legend={}))
    return paths


# ------------------------------------------------------------------------------------------ the suite
def run_suite(names: list[str], quick: bool, toy: bool, out: Path, markdown: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    record = {"timestamp": stamp, "quick": quick, "toy": toy, "machine": machine_info(), "benchmarks": {}}
    context: dict = {}
    for name in names:
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        try:
            result = BENCHMARKS[name]["run"](quick, toy, context, out)
            context[name] = result
            record["benchmarks"][name] = {"status": "ok", "result": to_jsonable(result)}
        except Exception as error:  # noqa: BLE001  (one failure must not stop the suite)
            traceback.print_exc()
            record["benchmarks"][name] = {"status": "failed", "error": f"{type(error).__name__}: {error}"[:500]}
        record["benchmarks"][name]["seconds"] = time.perf_counter() - start
        print(f"== {name}: {record['benchmarks'][name]['status']} in "
              f"{record['benchmarks'][name]['seconds']:.0f} s", flush=True)
        (out / f"{stamp}.partial.json").write_text(json.dumps(to_jsonable(record), indent=2))
    record["machine"]["load_avg_at_end"] = list(os.getloadavg())
    try:
        plots = write_plots(record, out, stamp)
    except Exception as error:  # noqa: BLE001
        traceback.print_exc()
        plots, record["plot_error"] = [], repr(error)
    record["plots"] = [str(p) for p in plots]
    json_path = out / f"{stamp}.json"
    json_path.write_text(json.dumps(to_jsonable(record), indent=2))
    (out / f"{stamp}.partial.json").unlink(missing_ok=True)
    rel = lambda p: os.path.relpath(p, markdown.parent)  # noqa: E731
    write_markdown(to_jsonable(record), markdown, rel(json_path), [rel(p) for p in plots])
    print(f"wrote {json_path} and {markdown}", flush=True)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wmj bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the CPU-sized suite (≤ 10 minutes on 2 idle cores)")
    parser.add_argument("--only", nargs="+", default=None, choices=list(BENCHMARKS), metavar="NAME",
                        help=f"run only these benchmarks: {', '.join(BENCHMARKS)}")
    parser.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    parser.add_argument("--markdown", default=None,
                        help="markdown file to regenerate (default benchmarks/BENCHMARKS.md, or OUT/BENCHMARKS.md "
                             "when --out is given)")
    parser.add_argument("--toy", action="store_true", help="toy sizes (for tests; benchmarks without one are skipped)")
    parser.add_argument("--regenerate", default=None, metavar="JSON",
                        help="only rewrite the markdown from an earlier results JSON (no benchmark runs)")
    args = parser.parse_args(argv)
    if args.regenerate:
        json_path = Path(args.regenerate)
        record = json.loads(json_path.read_text())
        markdown = Path(args.markdown) if args.markdown else MARKDOWN
        rel = lambda p: os.path.relpath(p, markdown.parent)  # noqa: E731
        write_markdown(record, markdown, rel(json_path), [rel(p) for p in record.get("plots", [])])
        print(f"wrote {markdown}")
        return 0
    names = args.only or [n for n in BENCHMARKS if not args.quick or BENCHMARKS[n].get("in_quick", True)]
    if args.toy:
        skipped = [n for n in names if not BENCHMARKS[n]["toy"]]
        names = [n for n in names if BENCHMARKS[n]["toy"]]
        if skipped:
            print(f"--toy: skipping {', '.join(skipped)} (no toy size)")
    if "matmul" not in names and any(n in names for n in ("dream", "pipeline", "paper_costs")):
        names = ["matmul", *names]  # the physical limit is measured in the same run
    if "scaling" in names:
        names = [n for n in names if n != "scaling"] + ["scaling"]
    out = Path(args.out) if args.out else RESULTS_DIR
    markdown = Path(args.markdown) if args.markdown else (out / "BENCHMARKS.md" if args.out else MARKDOWN)
    record = run_suite(names, args.quick, args.toy, out, markdown)
    failed = [n for n, e in record["benchmarks"].items() if e["status"] != "ok"]
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
