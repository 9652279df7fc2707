"""Each stage of a preset timed at the preset's own sizes on this machine's devices, and the preset's wall-clock
projected from those costs.

What runs is the pipeline's own code (`Pipeline.collect_shard_function`, `make_vae_trainer`,
`make_frame_encoder`, `make_mdn_trainer`, `Pipeline.controller_training`), at the preset's model sizes, batch
shapes, population and episode batch, with fewer units than the preset runs: fewer frames, M steps and
episode steps, one ES generation. V, M and C are at their initialisation. Each function is called once to
compile (its seconds are reported as `compile_s`), then timed `repeats` times (the median, results fetched or
`block_until_ready`). A stage's projected seconds are its preset's units times the measured seconds per unit:

- collect: frames (num_envs × steps × shards), the shard fetched to the host (the disk write is not timed);
- train-vae: frames × epochs;
- encode: frames;
- train-mdn: Adam steps at the preset's batch × seq_len (the held-out NLL after each chunk is not timed);
- train-controller, per mode: generations × one generation of population × rollouts episodes, plus
  generations / eval_every evaluations of the mean over eval_episodes (at `--size full`, an evaluation batch as
  large as a generation's is not timed again: it runs the same episode program). Episodes are timed at
  `episode_steps` and scaled to the preset's episode length. A batch of episodes steps every lane until its last
  episode ends, so this is the cost of full-length episodes: an upper bound, and a tight one at 1,024 episodes;
- evaluate: per mode, episodes × episode length at the evaluation's per-lane step cost.

The anchor is this device's matmul peak, measured in the same run (`bench_matmul_peak`): each stage's counted
model FLOPs (`bench_pipeline`'s counts) per second, as a fraction of it. The projected total is a PROJECTION
from costs measured here, not a timed run of the preset, and the output labels it so.

    .venv/bin/python benchmarks/bench_paper_costs.py --size quick        # the paper preset, ~6 min on 2 CPU cores
    python3 benchmarks/bench_paper_costs.py --size full --out costs.json  # on a GPU (benchmarks/device_check.sh)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@dataclasses.dataclass(frozen=True)
class Size:
    collect_steps: int  # steps per env of the timed collect shard (num_envs is the preset's)
    vae_batches: int  # V training batches timed (the preset's batch size)
    encode_chunks: int  # ENCODE_CHUNK-frame chunks encoded
    mdn_steps: int  # M's Adam steps timed (the preset's batch and seq_len)
    episode_steps: int  # steps per timed episode (a multiple of the episode loop's chunk, or below it)
    repeats: int
    time_evaluations: bool = True  # False: an evaluation batch as large as a generation's is costed as one


SIZES = {
    "toy": Size(collect_steps=4, vae_batches=1, encode_chunks=1, mdn_steps=1, episode_steps=5, repeats=1),
    "quick": Size(collect_steps=50, vae_batches=4, encode_chunks=4, mdn_steps=2, episode_steps=10, repeats=2),
    "full": Size(collect_steps=1000, vae_batches=100, encode_chunks=40, mdn_steps=20, episode_steps=1000, repeats=1,
                 time_evaluations=False),
}


def timed(fn, *args, repeats: int) -> dict:
    """Seconds of `fn(*args)`: the first call (compile + run) apart, then the median of `repeats` calls."""
    import jax

    def once():
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        return time.perf_counter() - start, out

    compile_s, out = once()
    seconds = [once()[0] for _ in range(repeats)]
    return {"seconds": statistics.median(seconds), "compile_s": compile_s, "repeats": repeats, "output": out}


def _save(out, rows: list, **header) -> None:
    if out is not None:
        rows = [{k: v for k, v in r.items() if k != "output"} for r in rows]
        Path(out).write_text(json.dumps({**header, "rows": rows}, indent=2, default=float))


def _row(name, measured: dict, units_timed: float, unit: str, preset_units: float, flops_per_unit: float | None,
         peak: float | None) -> dict:
    per_unit = measured["seconds"] / units_timed
    row = {"stage": name, "unit": unit, "units_timed": units_timed, "seconds": measured["seconds"],
           "compile_s": measured["compile_s"], "seconds_per_unit": per_unit, "preset_units": preset_units,
           "projected_s": per_unit * preset_units}
    if flops_per_unit:
        row["flop_per_s"] = flops_per_unit / per_unit
        row["fraction_of_matmul_peak"] = row["flop_per_s"] / peak if peak else None
    print(f"{name:26s} {units_timed:>12,.0f} {unit:14s} {measured['seconds']:8.3f} s  "
          f"(compile {measured['compile_s']:6.1f} s)  {per_unit:.3e} s/{unit}  "
          f"-> {preset_units:,.0f} {unit}s: {per_unit * preset_units / 3600:.4g} h", flush=True)
    return row


def stage_of(row_name: str) -> str:
    """The pipeline stage a row belongs to (the mean's evaluations run inside the controller stage)."""
    if row_name.startswith(("train-controller", "evaluate-mean")):
        return "train-controller"
    return "evaluate" if row_name.startswith("evaluate-") else row_name


def run(preset: str = "carracing-paper", size: str = "quick", peak_flop_per_s: float | None = None,
        modes: tuple[str, ...] | None = None, out: str | Path | None = None) -> dict:
    """Times each stage and projects the preset's seconds (module docstring). With `out`, the rows measured so far
    are written there as JSON after each stage, so a run cut short still leaves its figures."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.bench_pipeline import EPISODE_STEPS, controller_flops, mdn_step_flops, vae_forward_flops
    from worldmodels_jax.configs import get_preset
    from worldmodels_jax.errors import ConfigError
    from worldmodels_jax.pipeline import ENCODE_CHUNK, Pipeline, make_frame_encoder
    from worldmodels_jax.rollouts import WorldModelParams
    from worldmodels_jax.train.mdn import SequenceData, make_mdn_trainer
    from worldmodels_jax.train.vae import make_vae_trainer

    if size not in SIZES:
        raise ConfigError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    s = SIZES[size]
    config = get_preset(preset)
    ccfg = config.controller
    if ccfg.where == "dream":
        raise ConfigError(f"{preset} trains C in M's dream; this benchmark times controllers in the real env "
                          "(see benchmarks/bench_dream.py for dream steps)")
    modes = tuple(modes or ccfg.modes)
    if peak_flop_per_s is None:
        from benchmarks import bench_matmul_peak

        peak_flop_per_s = bench_matmul_peak.run(quick=True, toy=size == "toy")["peak_flop_per_s"]
    episode = ccfg.max_episode_steps or EPISODE_STEPS.get(config.env_id, 1000)
    steps = min(s.episode_steps, episode)
    timed_config = dataclasses.replace(config, controller=dataclasses.replace(
        ccfg, modes=modes, max_episode_steps=steps, chunk_steps=min(ccfg.chunk_steps, steps)))
    devices = jax.devices()
    print(f"{preset}, size {size}, on {len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), "
          f"jax {jax.__version__}; matmul peak {peak_flop_per_s / 1e12:.2f} TFLOP/s", flush=True)

    header = {"benchmark": "paper_costs", "preset": preset, "size": size, "backend": jax.default_backend(),
              "device_kind": devices[0].device_kind, "devices": len(devices), "jax": jax.__version__,
              "matmul_peak_flop_per_s": peak_flop_per_s, "episode_steps_timed": steps, "episode_steps": episode}
    rows = []

    def record(row: dict) -> None:
        rows.append(row)
        _save(out, rows, **header, complete=False)

    key = jax.random.PRNGKey(0)
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = Pipeline(timed_config, Path(tmp) / "run", progress=False)
        config = pipeline.config  # resolved (M's sizes follow the env)
        vae_flops = vae_forward_flops(config.vae)
        frames_total = config.collect.num_envs * config.collect.steps * config.collect.num_shards

        # collect: one shard of num_envs x collect_steps, fetched to the host as the stage does.
        collect, _ = pipeline.collect_shard_function(steps=min(s.collect_steps, config.collect.steps))
        measured = timed(lambda k: jax.device_get(collect(k)), key, repeats=s.repeats)
        record(_row("collect", measured, config.collect.num_envs * min(s.collect_steps, config.collect.steps),
                    "frame", frames_total, None, peak_flop_per_s))

        # train-vae: Adam steps of the preset's batch.
        init_v, train_epoch = make_vae_trainer(config.vae, config.train_vae)
        vae_state = init_v(jax.random.fold_in(key, 1))
        frames = jax.random.randint(jax.random.fold_in(key, 2), (s.vae_batches * config.train_vae.batch_size, 64, 64, 3),
                                    0, 256).astype(jnp.uint8)
        measured = timed(train_epoch, vae_state, frames, jax.random.fold_in(key, 3), repeats=s.repeats)
        vae_frames = min(frames_total, config.train_vae.max_frames or frames_total)
        record(_row("train-vae", measured, frames.shape[0], "frame", vae_frames * config.train_vae.epochs,
                    3.0 * (vae_flops["encoder"] + vae_flops["decoder"]), peak_flop_per_s))
        vae_params = vae_state.params
        del vae_state, frames

        # encode
        encode = jax.jit(make_frame_encoder(pipeline.vae))
        frames = jax.random.randint(jax.random.fold_in(key, 4), (s.encode_chunks * ENCODE_CHUNK, 64, 64, 3),
                                    0, 256).astype(jnp.uint8)
        measured = timed(encode, vae_params, frames, repeats=s.repeats)
        record(_row("encode", measured, frames.shape[0], "frame", frames_total, vae_flops["encoder"],
                    peak_flop_per_s))
        del frames

        # train-mdn: Adam steps of batch x seq_len on sequences as long as the collected ones.
        tm = dataclasses.replace(config.train_mdn, steps=s.mdn_steps, chunk_steps=s.mdn_steps)
        init_m, train_chunk = make_mdn_trainer(pipeline.memory, tm)
        length = min(config.collect.steps, max(tm.seq_len + 1, 2))
        sequences = max(tm.batch_size, 2)
        z = config.vae.z_size
        raw_action = jnp.zeros((sequences, length, *pipeline.spec.raw_shape), pipeline.spec.raw_dtype)
        data = SequenceData(
            mu=jax.random.normal(jax.random.fold_in(key, 5), (sequences, length, z)),
            logvar=jnp.full((sequences, length, z), -2.0), action=pipeline.action_encoder(raw_action),
            reward=jnp.zeros((sequences, length)), terminated=jnp.zeros((sequences, length), bool),
            truncated=jnp.zeros((sequences, length), bool),
            first=jnp.zeros((sequences, length), bool).at[:, 0].set(True))
        mdn_state = init_m(jax.random.fold_in(key, 6))
        measured = timed(train_chunk, mdn_state, data, jax.random.fold_in(key, 7), repeats=s.repeats)
        record(_row("train-mdn", measured, s.mdn_steps, "step", config.train_mdn.steps,
                    3.0 * mdn_step_flops(config.mdn) * tm.batch_size * tm.seq_len, peak_flop_per_s))
        memory_params = mdn_state.params
        del mdn_state, data

        # train-controller and evaluate, per mode.
        es = ccfg.es
        scale = episode / steps
        for mode in modes:
            uses_memory = pipeline.agent(mode).uses_memory  # the rule the pipeline itself applies
            stats = None
            if ccfg.normalize_features:
                h = pipeline.memory.feature_size
                stats = {"z_mean": jnp.zeros(z), "z_std": jnp.ones(z), "h_mean": jnp.zeros(h), "h_std": jnp.ones(h)}
            wm = pipeline.replicated(WorldModelParams(vae=vae_params, memory=memory_params if uses_memory else None,
                                                      feature_stats=stats))
            training = pipeline.controller_training(mode, wm)
            state = pipeline.replicated(training.init(jax.random.fold_in(key, 8)))
            step_flops = vae_flops["encoder"] + (mdn_step_flops(config.mdn) if uses_memory else 0) + \
                controller_flops(config, mode, pipeline.action_mapping().num_outputs)
            lanes = es.population * es.rollouts
            measured = timed(lambda st: training.run_chunk(st, 1), state, repeats=s.repeats)
            generation = _row(f"train-controller-{mode}", measured, lanes * steps, "episode-step",
                              es.generations * lanes * episode, step_flops, peak_flop_per_s)
            record(generation)
            mean_evaluations = (es.generations // es.eval_every) * es.eval_episodes * episode
            if s.time_evaluations or es.eval_episodes != lanes:
                mean = training.mean_params(measured["output"][0])
                measured = timed(training.evaluate, mean, jax.random.fold_in(key, 9), repeats=s.repeats)
                evaluation = _row(f"evaluate-mean-{mode}", measured, es.eval_episodes * steps, "episode-step",
                                  mean_evaluations, step_flops, peak_flop_per_s)
                evaluation["mean_episode_length_timed"] = float(np.asarray(measured["output"].lengths).mean())
            else:  # the same episode program on a batch of the same size: the generation's cost per lane-step
                per_unit = generation["seconds_per_unit"]
                evaluation = {"stage": f"evaluate-mean-{mode}", "unit": "episode-step", "preset_units": mean_evaluations,
                              "seconds_per_unit": per_unit, "projected_s": per_unit * mean_evaluations,
                              "note": f"not timed: {es.eval_episodes} episodes, the generation's batch, at its cost"}
            record(evaluation)
            evaluate_units = config.evaluate.episodes * (config.evaluate.max_episode_steps or episode)
            record({"stage": f"evaluate-{mode}", "unit": "episode-step", "preset_units": evaluate_units,
                    "seconds_per_unit": evaluation["seconds_per_unit"],
                    "projected_s": evaluation["seconds_per_unit"] * evaluate_units,
                    "note": f"not timed: at the per-lane step cost of {es.eval_episodes} episodes; "
                            f"{config.evaluate.episodes} run in the stage"})
    for row in rows:
        row.pop("output", None)
    total = sum(r["projected_s"] for r in rows)
    by_stage = {}
    for r in rows:
        stage = stage_of(r["stage"])
        by_stage[stage] = by_stage.get(stage, 0.0) + r["projected_s"]
    label = (f"PROJECTED, not a timed run: {preset}'s units x seconds per unit measured on {len(devices)} "
             f"{devices[0].device_kind} in this run; episodes at full length (an upper bound)")
    print(f"{label}\n" + "\n".join(f"  {k:18s} {v / 3600:10.4g} h" for k, v in by_stage.items())
          + f"\n  {'total':18s} {total / 3600:10.4g} h ({total / 86400:.3g} days)", flush=True)
    result = {**header, "scale_to_episode": scale, "rows": rows, "projected_s_by_stage": by_stage,
              "projected_total_s": total, "label": label}
    _save(out, rows, **{k: v for k, v in result.items() if k != "rows"}, complete=True)
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="carracing-paper")
    parser.add_argument("--size", default="quick", choices=tuple(SIZES), help="how many units to time per stage")
    parser.add_argument("--modes", nargs="+", default=None, help="controller modes to time (default: the preset's)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    return run(args.preset, args.size, modes=tuple(args.modes) if args.modes else None, out=args.out)


if __name__ == "__main__":
    main()
