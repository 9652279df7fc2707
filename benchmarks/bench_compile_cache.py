"""What the persistent compilation cache saves a second run (worldmodels_jax/compile_cache.py).

    python benchmarks/bench_compile_cache.py [--preset carracing-cpu-small]     (or: wmj bench --only compile_cache)

Three fresh processes each time the first call (trace, compile or load from the cache, run) of the programs a run
compiles for its encode and controller stages: V's encoder, one generation of the z + h controller's ES (the preset's
population and rollouts, 10-step episodes) and the evaluation of its mean.
1. `cold`: an empty cache directory; V and M drawn from seed 0.
2. `warm`: the same directory; V and M drawn from seed 1, as another run (another seed) has other weights.
3. `off`: no persistent cache; seed 1. This is the anchor: every run paid it before the cache.
The programs take the weights as arguments, so `warm` finds what `cold` compiled. Ratio: off / warm.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PROGRAMS = ("encode", "controller_generation", "controller_evaluate")


def _child(preset: str, seed: int) -> dict:
    """In this process: the first call of each program, in seconds (the cache is set by the parent)."""
    import dataclasses
    import time

    import jax
    import jax.numpy as jnp

    from worldmodels_jax.configs import get_preset
    from worldmodels_jax.models.memory import init_memory
    from worldmodels_jax.models.vae import init_vae
    from worldmodels_jax.pipeline import ENCODE_CHUNK, Pipeline, make_frame_encoder
    from worldmodels_jax.rollouts import WorldModelParams

    config = get_preset(preset)
    es = dataclasses.replace(config.controller.es, generations=1, eval_every=1)
    config = dataclasses.replace(config, controller=dataclasses.replace(
        config.controller, es=es, max_episode_steps=10, normalize_features=False, modes=("z_h",)))
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = Pipeline(config, Path(tmp) / "run", progress=False)
        key = jax.random.PRNGKey(seed)
        wm = WorldModelParams(vae=init_vae(jax.random.fold_in(key, 0), pipeline.config.vae),
                              memory=init_memory(jax.random.fold_in(key, 1), pipeline.memory))
        frames = jnp.zeros((ENCODE_CHUNK, 64, 64, 3), jnp.uint8)
        start = time.perf_counter()
        jax.block_until_ready(jax.jit(make_frame_encoder(pipeline.vae))(wm.vae, frames))
        seconds["encode"] = time.perf_counter() - start
        training = pipeline.controller_training("z_h", pipeline.replicated(wm))
        state = pipeline.replicated(training.init(jax.random.fold_in(key, 2)))
        start = time.perf_counter()
        state, _ = jax.block_until_ready(training.run_chunk(state, 1))
        seconds["controller_generation"] = time.perf_counter() - start
        start = time.perf_counter()
        jax.block_until_ready(training.evaluate(training.mean_params(state), jax.random.fold_in(key, 3)))
        seconds["controller_evaluate"] = time.perf_counter() - start
    return {"seconds": seconds, "devices": pipeline.mesh.size}


def _spawn(preset: str, seed: int, cache: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r}); "
            "from worldmodels_jax.compile_cache import use_compilation_cache; "
            f"use_compilation_cache({cache!r}); "
            "from benchmarks.bench_compile_cache import _child; "
            f"print('RESULT' + json.dumps(_child({preset!r}, {seed})))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0 or "RESULT" not in proc.stdout:
        raise RuntimeError(f"the {cache} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.split("RESULT", 1)[1])


def run(quick: bool = True, toy: bool = False, preset: str | None = None) -> dict:
    del quick  # one size: the preset's programs
    preset = preset or ("tiny" if toy else "carracing-cpu-small")
    with tempfile.TemporaryDirectory() as cache:
        cold = _spawn(preset, 0, cache)
        print(f"cold (empty cache):           {cold['seconds']}", flush=True)
        warm = _spawn(preset, 1, cache)
        print(f"warm (another run's weights): {warm['seconds']}", flush=True)
    off = _spawn(preset, 1, "off")
    print(f"off (the anchor):             {off['seconds']}", flush=True)
    rows = {name: {"cold_s": cold["seconds"][name], "warm_s": warm["seconds"][name], "off_s": off["seconds"][name],
                   "off_over_warm": off["seconds"][name] / warm["seconds"][name]} for name in PROGRAMS}
    total = {k: sum(r[k] for r in rows.values()) for k in ("cold_s", "warm_s", "off_s")}
    total["off_over_warm"] = total["off_s"] / total["warm_s"]
    for name, row in {**rows, "total": total}.items():
        print(f"{name:<24} cold {row['cold_s']:6.1f} s   warm {row['warm_s']:6.1f} s   off {row['off_s']:6.1f} s   "
              f"off / warm {row['off_over_warm']:5.1f}x", flush=True)
    return {"benchmark": "compile_cache", "preset": preset, "devices": off["devices"], "rows": rows, "total": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="carracing-cpu-small")
    parser.add_argument("--out", default=None, help="also write the result as JSON here")
    args = parser.parse_args()
    result = run(preset=args.preset)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
