"""End-to-end pipeline wall-clock per stage, and a labelled projection of the paper-scale presets on an H100.

Measured: the whole pipeline (`collect → train-vae → encode → train-mdn → train-controller → evaluate →
report`) for a preset (`tiny` with --quick, `cpu-small` otherwise) runs into a temporary directory, and the
per-stage seconds are read back from its `report.json` (`timings`). Stage seconds include compilation.

Projection (NOT a measurement; no GPU was used): every model stage's work is counted in FLOPs from the
preset's sizes (V: conv FLOPs per frame, training = 3× forward; M: LSTM + MDN head per sequence step,
training = 3× forward; C: per rollout step, V's encoder + one M step + C, or one dream step; episodes at
their maximum length, so an upper bound). Measured steady-state per-step costs give the fraction of this
CPU's matmul peak (measured in the same run) that each kind of step reaches: V's training step and M's
training step (from this run's `vm_training` at the paper's batch shapes, or measured here) and the dream
step (this run's `dream`, or measured here). Real-env rollouts and encoding use V's fraction. The projection
assumes the same fraction of an H100 SXM's fp32 peak (67 TFLOP/s, the spec sheet's non-tensor-core figure):
`seconds = FLOPs / (fraction × 67e12)`. Stage wall-clocks of the small preset are not used for the
projection, because at that size they are mostly compilation. Environment stepping and rendering are not counted as FLOPs, so
`collect` is not projected and the controller/evaluate projections exclude the env's own cost.

With `--from-run DIR`, the stage seconds are read from a run that has already finished (its `report.json` and
`config.json`) instead of running the pipeline again: its preset's counted FLOPs and fractions of this CPU's peak.

    .venv/bin/python benchmarks/bench_pipeline.py [--quick] [--from-run runs/cpu-small]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

H100_FP32_PEAK = 67e12  # H100 SXM5, fp32 (non-tensor-core), NVIDIA spec sheet
EPISODE_STEPS = {"CarRacing-v0": 1000, "TakeCover-v0": 2100, "CartPolePixels-v1": 500}


def vae_forward_flops(vae) -> dict:
    """Forward FLOPs per frame of V's encoder (to μ, log σ²) and decoder (z → frame)."""
    widths = (3, *vae.encoder_widths)
    size, encoder = 64, 0
    for cin, cout in zip(widths[:-1], widths[1:]):
        size = (size - 4) // 2 + 1
        encoder += 2 * size * size * 16 * cin * cout
    encoder += 2 * (size * size * widths[-1]) * vae.z_size * 2
    decoder = 2 * vae.z_size * vae.decoder_dense
    chans = (vae.decoder_dense, *vae.decoder_widths, 3)
    size = 1
    for (cin, cout), k in zip(zip(chans[:-1], chans[1:]), (5, 5, 6, 6)):
        decoder += 2 * size * size * k * k * cin * cout
        size = (size - 1) * 2 + k
    return {"encoder": encoder, "decoder": decoder}


def mdn_step_flops(mdn) -> int:
    inputs = mdn.z_size + mdn.action_size + int(mdn.restart_input)
    head = mdn.z_size * mdn.num_mixtures * 3 + int(mdn.reward_head) + int(mdn.done_head)
    return 2 * inputs * 4 * mdn.hidden_size + 2 * mdn.hidden_size * 4 * mdn.hidden_size + 2 * mdn.hidden_size * head


def controller_flops(config, mode: str, outputs: int = 3) -> int:
    z, h = config.vae.z_size, config.mdn.hidden_size
    return {"z": 2 * z * outputs, "z_hidden": 2 * z * config.controller.hidden_units
            + 2 * config.controller.hidden_units * outputs,
            "z_h": 2 * (z + h) * outputs, "z_c_h": 2 * (z + 2 * h) * outputs}[mode]


def stage_flops(config) -> dict:
    """Counted model FLOPs per stage of a preset (upper bounds for the rollout stages)."""
    vae = vae_forward_flops(config.vae)
    frames = config.collect.num_envs * config.collect.steps * config.collect.num_shards
    vae_frames = min(frames, config.train_vae.max_frames) if config.train_vae.max_frames else frames
    mdn = mdn_step_flops(config.mdn)
    tm = config.train_mdn
    episode = config.controller.max_episode_steps or EPISODE_STEPS.get(config.env_id, 1000)
    es = config.controller.es
    rollout_steps = es.generations * (es.population * es.rollouts + es.eval_episodes / es.eval_every)
    controller_total = 0.0
    evaluate_total = 0.0
    eval_episode = config.evaluate.max_episode_steps or episode
    for mode in config.controller.modes:
        uses_m = mode in ("z_h", "z_c_h")
        real_step = vae["encoder"] + (mdn if uses_m else 0) + controller_flops(config, mode)
        dream_step = mdn + controller_flops(config, mode)
        step = dream_step if config.controller.where == "dream" else real_step
        controller_total += rollout_steps * episode * step
        evaluate_total += config.evaluate.episodes * eval_episode * real_step
    return {
        "collect": None,
        "train-vae": 3.0 * (vae["encoder"] + vae["decoder"]) * vae_frames * config.train_vae.epochs,
        "encode": float(vae["encoder"] * frames),
        "train-mdn": 3.0 * mdn * tm.batch_size * tm.seq_len * tm.steps,
        "train-controller": controller_total,
        "evaluate": evaluate_total,
    }


def run_pipeline(config, out: Path) -> dict:
    from worldmodels_jax.pipeline import Pipeline

    start = time.perf_counter()
    Pipeline(config, out, progress=False).run_all()
    total = time.perf_counter() - start
    report = json.loads((out / "report.json").read_text())
    return {"timings": report["timings"], "total_s": total, "results": report.get("results", {})}


def read_finished_run(out: Path) -> tuple:
    """(config, measured) of a finished run directory: its configuration and its report's per-stage seconds."""
    from worldmodels_jax.errors import ConfigError
    from worldmodels_jax.pipeline import load_config

    report_path = Path(out) / "report.json"
    if not report_path.exists():
        raise ConfigError(f"{out} has no report.json: finish the run first (`wmj run --out {out}`), or leave out "
                          "--from-run to run the pipeline here")
    report = json.loads(report_path.read_text())
    timings = report.get("timings") or {}
    return load_config(out), {"timings": timings, "total_s": float(sum(timings.values())),
                              "results": report.get("results", {})}


def _best_jax_rate(section: dict) -> float | None:
    rates = [v["items_per_s"] for k, v in section.items() if k.startswith("jax") and isinstance(v, dict)
             and "items_per_s" in v]
    return max(rates) if rates else None


def measure_vae_seconds_per_frame(vae_config, batch: int, batches: int = 2) -> float:
    """Steady-state seconds per frame of V's training step (Adam), via the package's `make_vae_trainer`."""
    import jax
    import numpy as np

    from worldmodels_jax.train.vae import VAETrainConfig, make_vae_trainer

    init, train_epoch = make_vae_trainer(vae_config, VAETrainConfig(epochs=1, batch_size=batch))
    state = init(jax.random.PRNGKey(0))
    frames = jax.numpy.asarray(np.random.default_rng(0).integers(0, 255, (batch * batches, 64, 64, 3), np.uint8))
    state, _ = jax.block_until_ready(train_epoch(state, frames, jax.random.PRNGKey(1)))  # compile + warm-up
    start = time.perf_counter()
    jax.block_until_ready(train_epoch(state, frames, jax.random.PRNGKey(2)))
    return (time.perf_counter() - start) / (batch * batches)


def measure_mdn_seconds_per_step(mdn_config, batch: int, seq_len: int) -> float:
    """Steady-state seconds per sequence-step of M's training step (Adam, NLL, clipping)."""
    import jax
    import jax.numpy as jnp
    import optax

    from worldmodels_jax.models.mdnrnn import MDNRNN, init_mdnrnn, mdn_nll

    model = MDNRNN(mdn_config)
    params = init_mdnrnn(jax.random.PRNGKey(0), mdn_config)
    optimizer = optax.chain(optax.clip(1.0), optax.adam(1e-3))
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    z = jax.random.normal(keys[0], (batch, seq_len + 1, mdn_config.z_size))
    a = jax.random.normal(keys[1], (batch, seq_len, mdn_config.action_size))
    reset = jnp.zeros((batch, seq_len), bool)

    @jax.jit
    def step(params, opt_state):
        def loss(p):
            out, _, _ = model.apply({"params": p}, z[:, :-1], a, reset)
            return mdn_nll(out, z[:, 1:])

        grads = jax.grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    state = jax.block_until_ready(step(params, optimizer.init(params)))
    state = jax.block_until_ready(step(*state))
    start = time.perf_counter()
    jax.block_until_ready(step(*state))
    return (time.perf_counter() - start) / (batch * seq_len)


def measured_efficiencies(cpu_peak: float, toy: bool, context: dict | None = None) -> dict:
    """Fraction of the CPU matmul peak reached by V's and M's training steps and by the dream (measured).

    Taken from this run's `vm_training` (paper batch shapes) and `dream` results when the suite ran them,
    otherwise measured here at a small batch.
    """
    from worldmodels_jax.configs import get_preset

    context = context or {}
    paper = get_preset("carracing-paper")
    small = get_preset("tiny") if toy else paper
    out = {}
    vm = context.get("vm_training") or {}
    vae_rate = _best_jax_rate(vm.get("vae", {})) if vm else None
    vae_flops = 3.0 * sum(vae_forward_flops(paper.vae).values())
    if vae_rate:
        out["vae"] = {"fraction": vae_flops * vae_rate / cpu_peak, "source": "vm_training (paper V, batch 100)"}
    else:
        seconds = measure_vae_seconds_per_frame(small.vae, batch=8 if toy else 16)
        flops = 3.0 * sum(vae_forward_flops(small.vae).values())
        out["vae"] = {"fraction": flops / seconds / cpu_peak,
                      "source": f"measured here ({'tiny' if toy else 'paper'} V, batch {8 if toy else 16})"}
    mdn_rate = _best_jax_rate(vm.get("mdnrnn", {})) if vm else None
    if mdn_rate:
        out["mdn"] = {"fraction": 3.0 * mdn_step_flops(paper.mdn) * mdn_rate / cpu_peak,
                      "source": "vm_training (paper M, batch 100)"}
    else:
        batch, seq = (4, 8) if toy else (16, 50)
        seconds = measure_mdn_seconds_per_step(small.mdn, batch, seq)
        out["mdn"] = {"fraction": 3.0 * mdn_step_flops(small.mdn) / seconds / cpu_peak,
                      "source": f"measured here (batch {batch} × {seq})"}
    dream = context.get("dream") or {}
    rows = list((dream.get("variants") or {}).get("package", {}).values())
    if rows:
        out["dream"] = {"fraction": max(r["fraction_of_peak"] for r in rows),
                        "source": "dream benchmark, package path, best population"}
    else:
        from benchmarks import bench_dream

        hidden = 32 if toy else bench_dream.HIDDEN
        pop, steps = (16, 10) if toy else (256, 50)
        row = bench_dream.time_variant(bench_dream.make_package, pop, steps, 2, hidden)
        out["dream"] = {"fraction": row["steps_per_s"] * bench_dream.flops_per_step(hidden=hidden)["total"] / cpu_peak,
                        "source": f"measured here (package dream, population {pop})"}
    for value in out.values():
        value["fraction"] = min(1.0, value["fraction"])
    return out


STAGE_KIND = {"train-vae": "vae", "encode": "vae", "train-mdn": "mdn", "evaluate": "vae"}


def project(efficiency: dict, presets=("carracing-paper", "takecover-paper")) -> dict:
    """Per-stage H100 seconds for the paper presets (see the module docstring: a projection, not a measurement)."""
    from worldmodels_jax.configs import get_preset

    projections = {}
    for name in presets:
        config = get_preset(name)
        stages = {}
        for stage, flops in stage_flops(config).items():
            if flops is None:
                stages[stage] = {"flops": None, "h100_s": None, "note": "env-bound, no FLOP model: not projected"}
                continue
            kind = STAGE_KIND.get(stage) or ("dream" if config.controller.where == "dream" else "vae")
            e = efficiency[kind]["fraction"]
            stages[stage] = {"flops": flops, "kind": kind, "assumed_fraction_of_peak": e,
                             "h100_s": flops / (e * H100_FP32_PEAK), "h100_s_at_full_peak": flops / H100_FP32_PEAK}
        total = sum(s["h100_s"] for s in stages.values() if s["h100_s"] is not None)
        projections[name] = {"stages": stages, "h100_total_s_excluding_collect": total}
    return {"label": "PROJECTION, not measured: counted FLOPs / (H100 SXM fp32 spec peak 67 TFLOP/s × the fraction "
                     "of peak the same kind of step (V training, M training, dream) reached on this CPU in this run); "
                     "env stepping and rendering excluded; rollouts at full episode length (upper bound)",
            "h100_fp32_peak": H100_FP32_PEAK, "efficiency": efficiency, "presets": projections}


def run(quick: bool = False, toy: bool = False, peak_flop_per_s: float | None = None,
        out_dir: str | None = None, context: dict | None = None, from_run: str | Path | None = None) -> dict:
    """Runs the pipeline (or reads a finished run, `from_run`), then projects the paper presets."""
    from worldmodels_jax.configs import get_preset

    if from_run is not None:  # read before measuring anything, so a bad directory fails at once
        config, measured = read_finished_run(Path(from_run))
    elif toy:
        tiny = get_preset("tiny")
        config = dataclasses.replace(
            tiny, controller=dataclasses.replace(tiny.controller, modes=("z",),
                                                 es=dataclasses.replace(tiny.controller.es, generations=2)),
            evaluate=dataclasses.replace(tiny.evaluate, episodes=2), gif_steps=0)
    else:
        config = get_preset("tiny" if quick else "cpu-small")
    preset = config.preset
    if peak_flop_per_s is None:
        from benchmarks import bench_matmul_peak

        peak_flop_per_s = bench_matmul_peak.run(quick=True, toy=toy)["peak_flop_per_s"]
    if from_run is None:
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            measured = run_pipeline(config, Path(tmp) / "run")
    flops = stage_flops(config)
    stages = {}
    for stage, seconds in measured["timings"].items():
        row = {"seconds": seconds}
        if flops.get(stage) and seconds:
            row["counted_flops"] = flops[stage]
            row["flop_per_s"] = flops[stage] / seconds
            row["fraction_of_cpu_peak"] = row["flop_per_s"] / peak_flop_per_s
        stages[stage] = row
        print(f"{preset}{' (toy)' if toy else ''} {stage:28s} {seconds:8.1f} s", flush=True)
    projection = project(measured_efficiencies(peak_flop_per_s, toy, context))
    for name, p in projection["presets"].items():
        print(f"PROJECTED (not measured) {name} on H100: {p['h100_total_s_excluding_collect'] / 3600:.2f} h "
              f"(excluding collect)", flush=True)
    return {"benchmark": "pipeline", "quick": quick, "toy": toy, "preset": preset, "stages": stages,
            "from_run": None if from_run is None else str(from_run),
            "total_s": measured["total_s"], "results": measured["results"], "cpu_peak_flop_per_s": peak_flop_per_s,
            "projection": projection}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--from-run", default=None, help="a finished run directory: read its stage seconds instead "
                                                         "of running the pipeline")
    args = parser.parse_args()
    print(json.dumps(run(args.quick, from_run=args.from_run), indent=2, default=str))
