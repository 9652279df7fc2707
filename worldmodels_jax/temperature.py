"""The temperature experiment (World Models §5, the DoomTakeCover table): C trained only inside M's dream.

For each dream temperature τ a controller is trained with CMA-ES entirely inside `DreamEnv` at that τ
(fitness, and the periodic evaluation of the distribution mean that picks the kept controller, are both
dream returns: no real episode is seen during training). It is then scored over the same number of
episodes in the dream at that τ and in the real environment, with V and M in the loop. A random policy
gives the last row. A cold dream is exploitable (high dream score, random-level real score); a warmer
one transfers.

Everything lives in the pipeline's run directory, so the experiment is resumable:

    stages/dream-tau<τ>.json          training finished at τ (summary, timing)
    checkpoints/dream-tau<τ>/          CMA-ES state + best mean so far, every `eval_every` generations
    checkpoints/controller-dream-tau<τ>/   the kept controller
    stages/score-tau<τ>.json          dream and real scores at τ
    stages/score-random.json          the random policy's row
    temperature_table.{md,json}       the table
"""

from __future__ import annotations

import time

import jax
import numpy as np

from worldmodels_jax.errors import ConfigError, NonFiniteError
from worldmodels_jax.evolution import ESConfig, es_state_is_finite, make_evolution
from worldmodels_jax.models.controller import init_controller
from worldmodels_jax.models.vae import param_shapes
from worldmodels_jax.rollouts import evaluate_params, population_returns, random_policy_returns, summarize_returns
from worldmodels_jax.rundir import write_json_atomic

TEMPERATURES = (0.10, 0.50, 1.00, 1.15, 1.30)
"""The paper's temperatures."""


def tau_tag(temperature: float) -> str:
    """'tau1.15': the name of everything kept for one temperature."""
    if not temperature > 0:
        raise ConfigError(f"dream temperatures must be > 0, got {temperature}")
    return f"tau{temperature:.2f}"


def _tau_key(root: jax.Array, temperature: float, purpose: int) -> jax.Array:
    """A key per (τ, purpose) that does not depend on Python's salted string hash."""
    return jax.random.fold_in(jax.random.fold_in(root, int(round(temperature * 1000))), purpose)


def _dream(pipeline, temperature: float):
    env, params = pipeline.dream_env()
    return env, pipeline.replicated(params.replace(temperature=float(temperature)))


def train_in_dream(pipeline, temperature: float, mode: str | None = None, es: ESConfig | None = None) -> dict:
    """Trains C with CMA-ES only inside the dream at `temperature`; keeps the best mean by dream score.

    Resumes from the last chunk's checkpoint; returns the finished record if training at this τ is done.
    """
    tag = tau_tag(temperature)
    stage = f"dream-{tag}"
    done = pipeline.run.stage_done(stage)
    if done is not None:
        return done
    ccfg = pipeline.config.controller
    mode = mode or ccfg.modes[0]
    es = es or ccfg.es
    if not pipeline.config.mdn.done_head:
        raise ConfigError("training in the dream needs M's done head: set mdn.done_head=True")
    start = time.perf_counter()
    env, env_params = _dream(pipeline, temperature)
    agent = pipeline.agent(mode, obs_kind="features")
    wm = pipeline.world_model_params(False)
    max_steps = pipeline._max_steps(ccfg.max_episode_steps)
    eval_steps = int(env_params.max_steps_in_episode)

    # M's parameters and the starting frames are arguments of the compiled programs, not constants in them
    def fitness(population, key, env_params, wm):
        return population_returns(env, env_params, agent, wm, population, key, es.rollouts, max_steps,
                                  ccfg.chunk_steps, es.common_random_numbers, pipeline.mesh)

    @jax.jit
    def evaluate_with(params, key, env_params, wm):
        return evaluate_params(env, env_params, agent, wm, params, key, es.eval_episodes, eval_steps,
                               ccfg.chunk_steps, pipeline.mesh).returns

    template = init_controller(jax.random.PRNGKey(0), agent.controller.config)
    init, run_chunk_with, mean_params = make_evolution(fitness, template, es)

    def run_chunk(state, generations):
        return run_chunk_with(state, generations, env_params, wm)

    def evaluate_mean(params, key):
        return evaluate_with(params, key, env_params, wm)

    root = pipeline.key("train-controller")
    state = init(_tau_key(root, temperature, 0))
    key_eval = _tau_key(root, temperature, 1)
    best = {"score": np.float32(-np.inf), "params": template}
    checkpointer = pipeline.run.checkpointer(stage)
    restored = checkpointer.restore({"state": state, "best_score": best["score"], "best_params": template})
    if restored is None:
        pipeline.run.reset_metrics(stage)
    else:
        state = restored[1]["state"]
        best = {"score": restored[1]["best_score"], "params": restored[1]["best_params"]}
        kept = [r for r in pipeline.run.read_metrics(stage) if r["generation"] <= int(state.generation)]
        pipeline.run.reset_metrics(stage)
        if kept:
            pipeline.run.log_metrics(stage, kept)
    state = pipeline.replicated(state)
    with pipeline._bar(es.generations, f"C[τ={temperature:.2f}]", int(state.generation)) as bar:
        while int(state.generation) < es.generations:
            generations = min(es.eval_every, es.generations - int(state.generation))
            state, metrics = run_chunk(state, generations)
            if not es_state_is_finite(state):
                raise NonFiniteError(f"the {es.strategy} state became non-finite at generation "
                                     f"{int(state.generation)} (τ={temperature}); the last good checkpoint "
                                     f"is kept in {checkpointer.directory}")
            mean = mean_params(state)
            returns = np.asarray(evaluate_mean(mean, jax.random.fold_in(key_eval, int(state.generation))))
            score = float(returns.mean())
            if score >= float(best["score"]):  # ties go to the later (longer-trained) mean
                best = {"score": np.float32(score), "params": mean}
            records = [{k: v[i] for k, v in jax.device_get(metrics).items()} for i in range(generations)]
            records[-1].update({"dream_eval_mean": score, "dream_eval_std": float(returns.std()),
                                "best_dream_eval": float(best["score"])})
            pipeline.run.log_metrics(stage, records)
            checkpointer.save(int(state.generation), {"state": state, "best_score": best["score"],
                                                      "best_params": best["params"]})
            bar.set_postfix(pop=f"{float(records[-1]['return_mean']):.0f}", dream=f"{score:.0f}")
            bar.update(generations)
    pipeline.run.checkpointer(f"controller-{stage}").save(0, best["params"])
    record = {"temperature": temperature, "mode": mode, "best_dream_eval": float(best["score"]),
              "generations": int(state.generation), "population": es.population, "rollouts": es.rollouts,
              "seconds": time.perf_counter() - start}
    pipeline.run.mark_done(stage, record)
    return record


def dream_controller_params(pipeline, temperature: float, mode: str | None = None):
    mode = mode or pipeline.config.controller.modes[0]
    template = param_shapes(init_controller, pipeline.controller_config(mode))
    return pipeline.load_params(f"controller-dream-{tau_tag(temperature)}", template)


def score_in_dream_and_real(pipeline, temperature: float, c_params, mode: str, episodes: int, key: jax.Array) -> dict:
    """Returns {"dream": summary, "real": summary}: `episodes` episodes at τ in the dream and in the real env."""
    ccfg = pipeline.config.controller
    env, env_params = _dream(pipeline, temperature)
    wm_dream = pipeline.world_model_params(False)
    dream_agent = pipeline.agent(mode, obs_kind="features")
    real_agent = pipeline.agent(mode)
    wm_real = pipeline.world_model_params(True)
    key_dream, key_real = jax.random.split(key)
    dream_steps = int(env_params.max_steps_in_episode)
    dream = jax.jit(lambda p, k, env_params, wm: evaluate_params(env, env_params, dream_agent, wm, p, k, episodes,
                                                                 dream_steps, ccfg.chunk_steps, pipeline.mesh).returns)
    real = jax.jit(lambda p, k, wm: evaluate_params(pipeline.env, pipeline.env_params, real_agent, wm, p, k,
                                                    episodes, pipeline._max_steps(0), ccfg.chunk_steps,
                                                    pipeline.mesh).returns)
    c_params = pipeline.replicated(c_params)
    return {"dream": summarize_returns(dream(c_params, key_dream, env_params, wm_dream)),
            "real": summarize_returns(real(c_params, key_real, wm_real))}


def score_random(pipeline, episodes: int, key: jax.Array, dream_temperature: float = 1.0) -> dict:
    """The random policy's row: uniform random actions in the real env (and, for reference, in the dream)."""
    env, env_params = _dream(pipeline, dream_temperature)
    key_dream, key_real = jax.random.split(key)
    dream = random_policy_returns(env, env_params, key_dream, episodes, int(env_params.max_steps_in_episode),
                                  mesh=pipeline.mesh)
    real = random_policy_returns(pipeline.env, pipeline.env_params, key_real, episodes, pipeline._max_steps(0),
                                 mesh=pipeline.mesh)
    return {"dream": summarize_returns(dream.returns), "real": summarize_returns(real.returns),
            "dream_temperature": dream_temperature}


def temperature_table(pipeline, temperatures=TEMPERATURES, episodes: int | None = None,
                      mode: str | None = None, log=print) -> dict:
    """Trains V and M (if not yet), then for each τ trains C in the dream and scores it; writes the table.

    Every finished piece is kept in the run directory, so a rerun skips it.
    """
    temperatures = tuple(float(t) for t in temperatures)
    if not temperatures:
        raise ConfigError("give at least one temperature")
    tags = [tau_tag(t) for t in temperatures]
    if len(set(tags)) != len(tags):
        raise ConfigError(f"temperatures must differ at 2 decimals, got {temperatures}")
    episodes = episodes or pipeline.config.evaluate.episodes
    if episodes < 1:
        raise ConfigError(f"episodes must be >= 1, got {episodes}")
    mode = mode or pipeline.config.controller.modes[0]
    start = time.perf_counter()
    for stage in ("collect", "train_vae", "encode", "train_mdn"):
        record = getattr(pipeline, stage)()
        log(f"{stage}: done in {record.get('seconds', 0):.0f}s")
    key = pipeline.key("evaluate")
    rows = []
    for temperature in temperatures:
        tag = tau_tag(temperature)
        trained = train_in_dream(pipeline, temperature, mode)
        scored = pipeline.run.stage_done(f"score-{tag}")
        if scored is None:
            t0 = time.perf_counter()
            scores = score_in_dream_and_real(pipeline, temperature, dream_controller_params(pipeline, temperature, mode),
                                             mode, episodes, _tau_key(key, temperature, 2))
            scored = {**scores, "seconds": time.perf_counter() - t0}
            pipeline.run.mark_done(f"score-{tag}", scored)
        rows.append({"temperature": temperature, "dream": scored["dream"], "real": scored["real"],
                     "train_seconds": trained["seconds"], "score_seconds": scored["seconds"],
                     "best_dream_eval": trained["best_dream_eval"], "generations": trained["generations"]})
        log(f"τ={temperature:.2f}: dream {_pm(scored['dream'])}, real {_pm(scored['real'])}")
    random_row = pipeline.run.stage_done("score-random")
    if random_row is None:
        t0 = time.perf_counter()
        random_row = {**score_random(pipeline, episodes, jax.random.fold_in(key, 7)),
                      "seconds": time.perf_counter() - t0}
        pipeline.run.mark_done("score-random", random_row)
    log(f"random: real {_pm(random_row['real'])}")
    timings = {name: (pipeline.run.stage_done(name) or {}).get("seconds")
               for name in ("collect", "train-vae", "encode", "train-mdn")}
    table = {"env_id": pipeline.config.env_id, "preset": pipeline.config.preset, "mode": mode,
             "episodes": episodes, "rows": rows, "random": random_row, "timings": timings,
             "this_call_seconds": time.perf_counter() - start,
             "total_seconds": sum(v for v in timings.values() if v) + sum(r["train_seconds"] + r["score_seconds"]
                                                                          for r in rows) + random_row["seconds"]}
    table["checks"] = pattern_checks(table)
    write_json_atomic(pipeline.run.path / "temperature_table.json", table)
    (pipeline.run.path / "temperature_table.md").write_text(format_table(table))
    return table


def _pm(summary: dict) -> str:
    return f"{summary['mean']:.0f} ± {summary['std']:.0f}"


def pattern_checks(table: dict) -> dict:
    """The paper's pattern, as booleans: cold dreams exploited, best real score warm and ≥ 3× random."""
    rows = table["rows"]
    random_real = table["random"]["real"]["mean"]
    cold = [r for r in rows if r["temperature"] <= 0.5]
    best = max(rows, key=lambda r: r["real"]["mean"])
    return {
        "cold_dream_exploited": bool(cold) and all(r["dream"]["mean"] >= 2 * r["real"]["mean"] for r in cold),
        "best_real_temperature": best["temperature"],
        "best_real_is_warm": best["temperature"] >= 1.0,
        "best_real_over_random": best["real"]["mean"] / max(random_real, 1e-9),
        "best_real_at_least_3x_random": best["real"]["mean"] >= 3 * random_real,
    }


def format_table(table: dict) -> str:
    lines = [f"# Temperature table: {table['env_id']}, preset {table['preset']}, controller {table['mode']}", "",
             f"C trained with CMA-ES only inside M's dream at each τ; mean ± std over {table['episodes']} episodes.",
             "", "| τ | Dream score | Real score |", "|---|---|---|"]
    best = max(table["rows"], key=lambda r: r["real"]["mean"])
    for row in table["rows"]:
        real = _pm(row["real"])
        lines.append(f"| {row['temperature']:.2f} | {_pm(row['dream'])} | {f'**{real}**' if row is best else real} |")
    rnd = table["random"]
    lines.append(f"| Random policy | {_pm(rnd['dream'])} (τ={rnd['dream_temperature']:g}) | {_pm(rnd['real'])} |")
    checks = table["checks"]
    lines += ["", f"- Cold dreams (τ ≤ 0.5) exploited (dream ≥ 2× real): {checks['cold_dream_exploited']}",
              f"- Best real score at τ = {checks['best_real_temperature']:.2f} "
              f"({checks['best_real_over_random']:.1f}× random; warm: {checks['best_real_is_warm']})", "",
              "Seconds per piece (training C in the dream / scoring):", ""]
    lines += [f"- τ={r['temperature']:.2f}: {r['train_seconds']:.0f} / {r['score_seconds']:.0f} "
              f"({r['generations']} generations, best dream eval of the mean {r['best_dream_eval']:.0f})"
              for r in table["rows"]]
    timings = ", ".join(f"{k} {v:.0f}" for k, v in table["timings"].items() if v is not None)
    lines += [f"- V and M: {timings}", f"- total: {table['total_seconds']:.0f}", ""]
    return "\n".join(lines)
