"""The report stage: report.md, report.json, learning curves, reconstructions and a dream-vs-real GIF."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from worldmodels_jax.models.controller import init_controller
from worldmodels_jax.models.mdnrnn import mdn_sample
from worldmodels_jax.models.vae import ConvVAE, for_inference, init_vae, param_count, param_shapes
from worldmodels_jax.plots import plot_curves
from worldmodels_jax.rollouts import WorldModelParams
from worldmodels_jax.rundir import write_json_atomic


def _curves(pipeline) -> list[str]:
    run = pipeline.run
    written = []
    vae = run.read_metrics("train-vae")
    if vae:
        x = np.arange(len(vae))
        plot_curves(run.path / "plots" / "vae_loss.png",
                    {"loss": (x, [r["loss"] for r in vae]), "reconstruction": (x, [r["reconstruction_loss"] for r in vae])},
                    "V training", "epoch × shard", "loss")
        written.append("plots/vae_loss.png")
    mdn = run.read_metrics("train-mdn")
    if mdn:
        x = np.array([r["step"] for r in mdn])
        plot_curves(run.path / "plots" / "mdn_nll.png",
                    {"train NLL": (x, [r["nll"] for r in mdn]), "held-out NLL": (x, [r["held_out_nll"] for r in mdn])},
                    "M training", "step", "NLL per latent dim")
        written.append("plots/mdn_nll.png")
    curves = {}
    for mode in pipeline.config.controller.modes:
        records = run.read_metrics(f"train-controller-{mode}")
        if records:
            curves[f"{mode} population mean"] = (np.array([r["generation"] for r in records]),
                                                 [r["return_mean"] for r in records])
            evals = [r for r in records if "eval_mean" in r]
            curves[f"{mode} mean-params eval"] = (np.array([r["generation"] for r in evals]),
                                                  [r["eval_mean"] for r in evals])
    if curves:
        plot_curves(run.path / "plots" / "controller_returns.png", curves, "C training (CMA-ES)", "generation", "return")
        written.append("plots/controller_returns.png")
    return written


def dream_vs_real_gif(pipeline, steps: int, observe_steps: int = 10, temperature: float = 0.3) -> str:
    """Real frames | V's reconstructions | M's open-loop imagination (after `observe_steps` real frames), decoded by V."""
    import imageio.v2 as imageio

    env, env_params = pipeline.env, pipeline.env_params
    mode = "z_h" if "z_h" in pipeline.config.controller.modes else pipeline.config.controller.modes[0]
    wm = pipeline.world_model_params(True)
    agent = pipeline.agent(mode)
    c_params = pipeline.controller_params(mode)
    key = jax.random.PRNGKey(pipeline.config.seed + 123)

    @jax.jit  # V's, M's and C's parameters are arguments, not constants in the program
    def record(key, wm, c_params):
        key_reset, key_run = jax.random.split(key)
        obs, state = env.reset(key_reset, env_params)

        def step(carry, key_t):
            obs, state, agent_carry, first = carry
            key_act, key_env = jax.random.split(key_t)
            action, agent_carry = agent.act(wm, c_params, agent_carry, obs, first, key_act)
            next_obs, state, _, _, _, _ = env.step(key_env, state, action, env_params)
            return (next_obs, state, agent_carry, jnp.array(False)), (obs, action)

        _, (frames, actions) = jax.lax.scan(step, (obs, state, agent.init_carry(wm), jnp.array(True)),
                                            jax.random.split(key_run, steps))
        return frames, actions

    frames, actions = record(key, wm, c_params)
    vae, memory = for_inference(pipeline.vae), pipeline.memory

    @jax.jit
    def imagine(frames, actions, key, wm):
        mu, _ = vae.apply({"params": wm.vae}, frames, method=ConvVAE.encode)
        recon = vae.apply({"params": wm.vae}, mu, method=ConvVAE.decode)
        encoded = pipeline.action_encoder(actions)

        def step(carry, inputs):
            lstm, z_prev = carry
            t, z_real, a_t, key_t = inputs
            z_in = jnp.where(t < observe_steps, z_real, z_prev)
            lstm, output, _ = memory.apply({"params": wm.memory}, lstm, z_in, a_t, t == 0, method="step")
            z_next = mdn_sample(key_t, output, temperature)
            return (lstm, z_next), z_in

        init = (memory.apply({"params": wm.memory}, method="initial_carry"), mu[0])
        _, z_dream = jax.lax.scan(step, init, (jnp.arange(steps), mu, encoded, jax.random.split(key, steps)))
        dream = vae.apply({"params": wm.vae}, z_dream, method=ConvVAE.decode)
        return recon, dream

    recon, dream = imagine(frames, actions, key, wm)
    to_u8 = lambda x: np.asarray(jnp.clip(x * 255, 0, 255)).astype(np.uint8)  # noqa: E731
    frames, recon, dream = np.asarray(frames), to_u8(recon), to_u8(dream)
    movie = []
    for t in range(steps):
        row = np.concatenate([frames[t], recon[t], dream[t]], axis=1)
        if t >= observe_steps:
            row[:2, 128:] = [255, 0, 0]  # a red bar marks imagined frames
        movie.append(np.kron(row, np.ones((3, 3, 1), np.uint8)))
    path = pipeline.run.path / "dream_vs_real.gif"
    imageio.mimsave(path, movie, duration=0.08, loop=0)
    return path.name


def write_report(pipeline) -> dict:
    cfg = pipeline.config
    run = pipeline.run
    evaluate = run.stage_done("evaluate") or {}
    results = evaluate.get("results", {})
    timings = {}
    for stage in ("collect", "train-vae", "encode", "train-mdn", "train-controller", "evaluate"):
        record = run.stage_done(stage)
        if record is not None:
            timings[stage] = record.get("seconds")
    for mode in cfg.controller.modes:
        record = run.stage_done(f"train-controller-{mode}")
        if record is not None:
            timings[f"train-controller-{mode}"] = record.get("seconds")
            timings["train-controller"] = timings.get("train-controller", 0.0)
    timings["train-controller"] = sum(v for k, v in timings.items() if k.startswith("train-controller-"))
    param_counts = {
        "vae": param_count(param_shapes(init_vae, cfg.vae)),
        "mdn_rnn": param_count(pipeline.memory_params_template()),
        "controller": {mode: param_count(param_shapes(init_controller, pipeline.controller_config(mode)))
                       for mode in cfg.controller.modes},
    }
    artifacts = _curves(pipeline)
    if (run.path / "reconstructions.png").exists():
        artifacts.append("reconstructions.png")
    if cfg.gif_steps > 0 and run.stage_done("train-mdn") and any(run.stage_done(f"train-controller-{m}") for m in cfg.controller.modes):
        artifacts.append(dream_vs_real_gif(pipeline, cfg.gif_steps))
    training = {mode: run.stage_done(f"train-controller-{mode}") for mode in cfg.controller.modes}
    report = {
        "env": cfg.env_id, "preset": cfg.preset, "seed": cfg.seed, "param_counts": param_counts,
        "results": results, "timings": timings, "artifacts": artifacts,
        "training": {"vae": run.stage_done("train-vae"), "mdn": run.stage_done("train-mdn"), "controller": training},
        "devices": [str(d) for d in jax.devices()],
    }
    write_json_atomic(run.path / "report.json", report)
    lines = [f"# World Models run: {cfg.env_id}, preset `{cfg.preset}`", "",
             f"Devices: {', '.join(report['devices'])}. Seed {cfg.seed}.", "",
             "## Results (real environment)", "", "| Controller | Mean ± std | Episodes |", "|---|---|---|"]
    names = {"z_h": "Full world model, z + h", "z": "V only, z", "z_hidden": "V only, z + hidden layer",
             "z_c_h": "Full world model, z + c + h", "random": "Random policy"}
    for mode, summary in results.items():
        lines.append(f"| {names.get(mode, mode)} | {summary['mean']:.1f} ± {summary['std']:.1f} | {summary['episodes']} |")
    lines += ["", "## Parameter counts", "", f"- V: {param_counts['vae']:,}", f"- M: {param_counts['mdn_rnn']:,}"]
    lines += [f"- C ({mode}): {count:,}" for mode, count in param_counts["controller"].items()]
    lines += ["", "## Wall-clock per stage (seconds)", "", "| Stage | Seconds |", "|---|---|"]
    lines += [f"| {stage} | {seconds:.1f} |" for stage, seconds in timings.items() if seconds is not None]
    lines += ["", "## Artifacts", ""] + [f"- [{a}]({a})" for a in artifacts]
    (run.path / "report.md").write_text("\n".join(lines) + "\n")
    return {"artifacts": artifacts}


def imagined_episode_gif(pipeline, path, steps: int, temperature: float, mode: str | None = None) -> dict:
    """An episode imagined entirely by M under the trained controller, decoded by V, as a GIF."""
    import imageio.v2 as imageio

    modes = pipeline.config.controller.modes
    mode = mode or ("z_h" if "z_h" in modes else modes[0])
    env, env_params = pipeline.dream_env()
    env_params = env_params.replace(temperature=temperature)
    agent = pipeline.agent(mode, obs_kind="features")
    c_params = pipeline.controller_params(mode)
    vae_params = pipeline.vae_params()
    wm = pipeline.world_model_params(False)
    z_size = pipeline.config.vae.z_size

    @jax.jit  # M's starting frames and V's, M's and C's parameters are arguments, not constants in the program
    def dream(key, env_params, wm, c_params, vae_params):
        key_reset, key_run = jax.random.split(key)
        obs, state = env.reset(key_reset, env_params)

        def step(carry, key_t):
            obs, state, alive = carry
            key_act, key_env = jax.random.split(key_t)
            action, _ = agent.act(wm, c_params, None, obs, jnp.array(False), key_act)
            next_obs, state, reward, terminated, truncated, _ = env.step(key_env, state, action, env_params)
            return (next_obs, state, alive & ~(terminated | truncated)), (obs[:z_size], alive)

        _, (zs, alive) = jax.lax.scan(step, (obs, state, jnp.array(True)), jax.random.split(key_run, steps))
        frames = pipeline.vae.apply({"params": vae_params}, zs, method=ConvVAE.decode)
        return frames, alive

    frames, alive = dream(jax.random.PRNGKey(pipeline.config.seed + 7), env_params, wm, c_params, vae_params)
    frames = np.asarray(jnp.clip(frames * 255, 0, 255)).astype(np.uint8)
    alive = np.asarray(alive)
    length = int(alive.sum())
    movie = [np.kron(f, np.ones((4, 4, 1), np.uint8)) for f in frames[: max(length, 1)]]
    imageio.mimsave(path, movie, duration=0.05, loop=0)
    return {"path": str(path), "steps": length, "temperature": temperature, "mode": mode}
