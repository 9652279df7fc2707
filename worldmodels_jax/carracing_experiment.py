"""The paper's CarRacing table on our JAX CarRacing-v0, and a trained V + M + C on gymnasium's CarRacing-v3.

    table = carracing_table(pipeline)          # after pipeline.run_all(); writes carracing_table.{md,json}
    result = evaluate_on_gymnasium(pipeline, episodes=5)   # needs `pip install -e '.[gymnasium]'`

Every row of the table is measured on the same `evaluate.episodes` (100) random tracks: the evaluate
stage's key, split per episode exactly as `rollouts.evaluate_params` splits it. Those keys are derived from
the run's seed by a different path than the collection and controller-training keys, so the tracks were
never seen in training (tracks are drawn from 24 uniforms per key).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from worldmodels_jax.errors import ConfigError
from worldmodels_jax.rollouts import summarize_returns
from worldmodels_jax.rundir import to_jsonable, write_json_atomic

ROWS = (("random", "Random"), ("scripted", "Scripted driver"), ("z", "V only, z"),
        ("z_hidden", "V only, z + hidden layer"), ("z_h", "Full world model, z + h"))
PAPER = {"z": "632 ± 251", "z_hidden": "788 ± 141", "z_h": "906 ± 21"}
"""The paper's CarRacing-v0 scores (gymnasium's Box2D env, full-size models), for reference."""


def scripted_driver_returns(env, env_params, key: jax.Array, episodes: int, max_steps: int) -> jax.Array:
    """Returns of the scripted pure-pursuit driver on the tracks `evaluate_params(..., key, episodes)` uses.

    One `lax.scan` over `max_steps` steps, vmapped over episodes; rewards after an episode ends are masked.
    """
    from worldmodels_jax.envs.carracing import scripted_driver

    if episodes < 1 or max_steps < 1:
        raise ConfigError(f"episodes and max_steps must be >= 1, got {episodes}, {max_steps}")

    def one(k):
        obs, state = env.reset(jax.random.fold_in(k, 0), env_params)
        del obs
        run_key = jax.random.fold_in(k, 1)

        def step(carry, t):
            state, alive, ret = carry
            action = scripted_driver(state, env_params)
            _, state, reward, terminated, truncated, _ = env.step(
                jax.random.fold_in(run_key, t), state, action, env_params)
            ret = ret + jnp.where(alive, reward, 0.0)
            alive = alive & ~(terminated | truncated)
            return (state, alive, ret), None

        (_, _, ret), _ = jax.lax.scan(step, (state, jnp.array(True), jnp.float32(0.0)), jnp.arange(max_steps))
        return ret

    return jax.jit(jax.vmap(one))(jax.random.split(key, episodes))


def carracing_table(pipeline) -> dict:
    """The table | Method | Mean ± std | for a finished CarRacing run; writes carracing_table.{md,json}.

    Random and the controllers come from the evaluate stage; the scripted driver is run here on the same
    tracks (and recorded as the stage 'evaluate-scripted', so a resumed run does not redo it).
    """
    from worldmodels_jax.envs.carracing import CarRacing

    if not isinstance(pipeline.env, CarRacing) or pipeline.env.discrete:
        raise ConfigError(f"the CarRacing table needs env CarRacing-v0, the run uses {pipeline.config.env_id}")
    evaluated = pipeline.run.stage_done("evaluate")
    if evaluated is None:
        raise ConfigError(f"{pipeline.run.path} has no finished evaluate stage; run the pipeline first")
    cfg = pipeline.config.evaluate
    max_steps = int(cfg.max_episode_steps or pipeline.env_params.max_steps_in_episode)

    def scripted():
        returns = scripted_driver_returns(pipeline.env, pipeline.env_params, pipeline.key("evaluate"),
                                          cfg.episodes, max_steps)
        return {"results": {"scripted": summarize_returns(jax.device_get(returns))}}

    scripted_record = pipeline._timed("evaluate-scripted", scripted)
    results = {**evaluated["results"], **scripted_record["results"]}
    stages = ("collect", "train-vae", "encode", "train-mdn",
              *(f"train-controller-{m}" for m in pipeline.config.controller.modes), "evaluate", "evaluate-scripted")
    timings = {s: (pipeline.run.stage_done(s) or {}).get("seconds") for s in stages}
    rows = [{"key": k, "method": name, **results[k]} for k, name in ROWS if k in results]
    table = {"env_id": pipeline.config.env_id, "preset": pipeline.config.preset, "seed": pipeline.config.seed,
             "episodes": cfg.episodes, "max_episode_steps": max_steps, "rows": rows, "paper": PAPER,
             "timings_s": timings, "total_s": float(sum(v for v in timings.values() if v is not None)),
             "settings": run_settings(pipeline.config)}
    lines = [f"CarRacing table, preset `{table['preset']}` on {table['env_id']}: mean ± std over "
             f"{cfg.episodes} random tracks never seen in training, {max_steps}-step episodes.", "",
             "| Method | Mean ± std | Paper (CarRacing-v0) |", "|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['mean']:.1f} ± {row['std']:.1f} | {PAPER.get(row['key'], '')} |")
    lines += ["", "Stage wall times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items() if v is not None)
              + f"; total {table['total_s']:.0f}"]
    table["markdown"] = "\n".join(lines)
    write_json_atomic(pipeline.run.path / "carracing_table.json", table)
    (pipeline.run.path / "carracing_table.md").write_text(table["markdown"] + "\n")
    return table


def make_host_policy(pipeline, mode: str, seed: int = 0):
    """A host-side `act(obs64, state) -> (action, state)` for gymnasium, with V (and M) in the loop.

    Returns (act, initial_state). The state holds M's carry, a PRNG key and a first-step flag.
    """
    pipeline.check_trained(mode)
    agent = pipeline.agent(mode)
    wm = pipeline.world_model_params(agent.uses_memory)
    c_params = pipeline.controller_params(mode)

    @jax.jit  # V's, M's and C's parameters are arguments, not constants in the program
    def step(carry, obs, first, key, wm, c_params):
        key, sub = jax.random.split(key)
        action, carry = agent.act(wm, c_params, carry, obs, first, sub)
        return action, carry, key

    def act(obs, state):
        carry, key, first = state
        action, carry, key = step(carry, jnp.asarray(obs), jnp.asarray(first), key, wm, c_params)
        return np.asarray(action), (carry, key, False)

    return act, (agent.init_carry(wm), jax.random.PRNGKey(seed), True)


def _gymnasium_outcomes(records: list[dict]) -> dict:
    """Per-episode returns, lengths, endings, tile coverage, forward speed and time on the road of
    `gymnasium_bridge.run_policy_episodes`, their means (and those of the steer, gas and brake sent), and how
    many episodes ended each way."""
    from worldmodels_jax.envs.gymnasium_bridge import ENDINGS

    endings = [r["ending"] for r in records]
    return {"returns": [float(r["return"]) for r in records], "steps": [int(r["steps"]) for r in records],
            "endings": endings, "tiles": [float(r["tiles"]) for r in records],
            "forward_speed": [float(r["forward_speed"]) for r in records],
            "on_road": [float(r["on_road"]) for r in records],
            "ending_counts": {e: endings.count(e) for e in ENDINGS},
            **{f"{k}_mean": float(np.mean([r[k] for r in records]))
               for k in ("tiles", "forward_speed", "on_road", "steer", "gas", "brake") if k in records[0]}}


PHYSICS = ("gymnasium", "ours")


def gymnasium_record_name(env_id: str, frames: str = "gymnasium", physics: str = "gymnasium") -> str:
    """The file in a run directory that `evaluate_on_gymnasium` writes."""
    if physics == "ours":
        return f"gymnasium_{env_id}_physics-ours.json"
    return f"gymnasium_{env_id}.json" if frames == "gymnasium" else f"gymnasium_{env_id}_frames-{frames}.json"


def evaluate_on_gymnasium(pipeline, episodes: int, modes: tuple[str, ...] | None = None, seed: int = 0,
                          max_steps: int | None = None, env_id: str = "CarRacing-v3", frames: str = "gymnasium",
                          physics: str = "gymnasium") -> dict:
    """Runs each trained controller on gymnasium's CarRacing-v3 for `episodes` tracks (seeds seed..seed+N-1),
    recording each episode's return, length, ending (lap, off the playfield, time limit), tile coverage, forward
    speed and time on the road.

    Frames are cropped to rows 0:84 and resized to 64x64 (`gymnasium_bridge.preprocess_frame`). With `frames`
    "ours" or "ours_during_zoom", V sees our renderer's frame of the same car pose on the same track instead
    (`gymnasium_bridge.run_policy_episodes`). With `physics="ours"` our env drives the same gymnasium tracks, with
    our physics and frames (`gymnasium_bridge.track_start_states`, `carracing_diagnostics.drive_from`): the
    remaining gap to gymnasium is then the physics. Writes `gymnasium_record_name(env_id, frames, physics)` into the
    run directory and returns its contents.
    """
    from worldmodels_jax.envs import gymnasium_bridge as gb

    if env_id != gb.ENV_ID:
        raise ConfigError(f"the gymnasium bridge runs {gb.ENV_ID}, got {env_id!r}")
    if pipeline.config.env_id != "CarRacing-v0":
        raise ConfigError(f"{pipeline.run.path} was trained on {pipeline.config.env_id}; the gymnasium bridge "
                          "runs continuous CarRacing controllers trained on CarRacing-v0")
    if not isinstance(episodes, (int, np.integer)) or episodes < 1:
        raise ConfigError(f"episodes must be an int >= 1, got {episodes!r}")
    if frames not in gb.FRAMES:
        raise ConfigError(f"frames must be one of {', '.join(gb.FRAMES)}, got {frames!r}")
    if physics not in PHYSICS:
        raise ConfigError(f"physics must be one of {', '.join(PHYSICS)}, got {physics!r}")
    if physics == "ours" and frames == "ours_during_zoom":
        raise ConfigError("physics 'ours' draws our frames throughout; drop --frames ours_during_zoom")
    gb._gymnasium()  # clear error before any model is loaded
    modes = tuple(modes or pipeline.config.controller.modes)
    if physics == "ours":
        return _on_gymnasium_tracks(pipeline, episodes, modes, seed, max_steps, env_id)
    results = {}
    for mode in modes:
        act, state = make_host_policy(pipeline, mode, seed)
        start = time.perf_counter()
        records = gb.run_policy_episodes(act, state, episodes, seed=seed, max_steps=max_steps, frames=frames)
        results[mode] = {**summarize_returns([r["return"] for r in records]), **_gymnasium_outcomes(records),
                         "seconds": time.perf_counter() - start}
    payload = {"env_id": env_id, "episodes": episodes, "seed": seed, "max_steps": max_steps, "frames": frames,
               "physics": "gymnasium", "results": results}
    write_json_atomic(Path(pipeline.run.path) / gymnasium_record_name(env_id, frames), payload)
    return payload


def _on_gymnasium_tracks(pipeline, episodes: int, modes: tuple[str, ...], seed: int, max_steps: int | None,
                         env_id: str) -> dict:
    """`evaluate_on_gymnasium(physics="ours")`: our env on gymnasium's tracks seed..seed+episodes-1."""
    from worldmodels_jax.carracing_diagnostics import drive_from
    from worldmodels_jax.envs import gymnasium_bridge as gb

    for mode in modes:  # before gymnasium builds the tracks
        pipeline.check_trained(mode)
    starts = gb.track_start_states(range(seed, seed + episodes), pipeline.env, pipeline.env_params)
    results = {}
    for mode in modes:
        start = time.perf_counter()
        records = drive_from(pipeline, mode, starts, max_steps or pipeline.env_params.max_steps_in_episode, seed)
        results[mode] = {**summarize_returns([r["return"] for r in records]), **_gymnasium_outcomes(records),
                         "seconds": time.perf_counter() - start}
    payload = {"env_id": env_id, "episodes": episodes, "seed": seed, "max_steps": max_steps, "frames": "ours",
               "physics": "ours", "results": results}
    write_json_atomic(Path(pipeline.run.path) / gymnasium_record_name(env_id, physics="ours"), payload)
    return payload


def run_settings(config) -> dict:
    """The resolved configuration of a run less its seed: what runs pooled over seeds must share."""
    settings = json.loads(json.dumps(to_jsonable(config)))
    settings.pop("seed", None)
    return settings


def _table_file(out: str | Path) -> Path:
    """A run's table file: `out` itself when it is a JSON file, else carracing_table.json in the run directory."""
    path = Path(out)
    return path if path.suffix == ".json" else path / "carracing_table.json"


def load_table(out: str | Path) -> dict:
    """A finished run's table: `out` is its run directory or a carracing_table JSON file. A table written before
    tables recorded their settings (2026-12-07) gets them from its run directory's config.json, when given one."""
    run_dir = Path(out).suffix != ".json"
    path = _table_file(out)
    if not path.exists():
        raise ConfigError(f"no CarRacing table at {path}: finish the run with experiments/carracing.py first")
    table = json.loads(path.read_text())
    if "settings" not in table and run_dir and (path.parent / "config.json").exists():
        settings = json.loads((path.parent / "config.json").read_text())
        table["seed"] = settings.pop("seed", None)
        table["settings"] = settings
    return table


def load_tables(paths: list[str | Path]) -> dict[str, dict]:
    """`load_table` for each path, keyed by a label naming the run: a run directory's name, a table file's name
    less "carracing_table_", or for a bare carracing_table.json its directory's name. Two paths that would share
    a label are refused, since one table would silently replace the other."""
    tables: dict[str, dict] = {}
    sources: dict[str, Path] = {}
    for path in map(Path, paths):
        if path.suffix != ".json":
            label = path.name
        elif path.stem == "carracing_table":
            label = path.resolve().parent.name
        else:
            label = path.stem.removeprefix("carracing_table_")
        if label in sources:
            same = _table_file(sources[label]).resolve() == _table_file(path).resolve()
            raise ConfigError(f"{sources[label]} and {path} " + ("are the same run" if same else
                              f"would both be labelled {label!r}") + ": pass each run once, under distinct names")
        tables[label], sources[label] = load_table(path), path
    return tables


def settings_differences(tables: dict[str, dict]) -> list[str]:
    """How the runs behind `tables` ({label: table}) were set up differently, one line per difference; empty when
    they share one configuration up to the seed. A field that a run's settings lack (added to the code since)
    counts as its default. Tables without settings are compared by their preset's name only."""
    from worldmodels_jax.pipeline import _config_from_json, config_differences

    presets: dict[str, list[str]] = {}
    for label, table in tables.items():
        presets.setdefault(str(table.get("preset")), []).append(label)
    differences = []
    if len(presets) > 1:
        differences.append("preset: " + " vs ".join(f"{name} ({', '.join(labels)})" for name, labels in presets.items()))
    unrecorded = [label for label, table in tables.items() if "settings" not in table]
    if unrecorded and len(unrecorded) < len(tables):
        differences.append(f"{', '.join(unrecorded)} {'records' if len(unrecorded) == 1 else 'record'} only the "
                           "preset's name, not the settings (tables written before 2026-12-07, whose presets may "
                           "have changed since): pass their run directories instead, or summarize them on their own")
    recorded = {label: table["settings"] for label, table in tables.items() if "settings" in table}
    if len(recorded) > 1:
        (first, reference), *others = recorded.items()
        reference_config = _config_from_json({**reference, "seed": 0})
        for label, settings in others:
            for line in config_differences({**settings, "seed": 0}, reference_config):
                path, _, change = line.partition(": ")
                stored, _, new = change.partition(" -> ")
                differences.append(f"{path}: {new} in {first}, {stored} in {label}")
    return differences


PAPER_ORDER = ("z_h", "z_hidden", "z")
"""The paper's ordering, best first: z + h > z + hidden > z (906, 788, 632)."""


def _sign_test_p(wins: int, n: int) -> float:
    """One-sided exact sign test: P(at least `wins` of `n` fair coin flips come up heads)."""
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n


def _seeds_for_two_se(mean: float, spread: float) -> int | None:
    """How many seeds would put a paired gap of this mean and per-seed std at two standard errors, were both to
    hold: the smallest n with mean >= 2 * spread / sqrt(n), at least 2. None for a gap that is not positive."""
    if mean <= 0:
        return None
    return max(2, math.ceil(4 * spread**2 / mean**2 - 1e-9))


def summarize_seeds(tables: dict[str, dict], order: tuple[str, ...] = PAPER_ORDER, allow_mixed: bool = False) -> dict:
    """Over runs of different seeds (`{label: table}`), the mean ± standard error of each controller and, for each
    pair in the paper's `order`, the paired per-seed differences: mean ± standard error, how many standard errors
    from zero, the seeds that favour the first, a one-sided sign test, and how many seeds would reach two
    standard errors were the gap and its spread to hold. The order counts as reproduced when each consecutive
    difference is at least two standard errors above zero.

    The runs must share their settings up to the seed (`settings_differences`); `allow_mixed` pools them anyway
    and lists the differences under "mixed_settings"."""
    if len(tables) < 2:
        raise ConfigError(f"a summary over seeds needs at least 2 tables, got {len(tables)}")
    mixed = settings_differences(tables)
    if mixed and not allow_mixed:
        shown = "; ".join(mixed[:5]) + (f"; and {len(mixed) - 5} more" if len(mixed) > 5 else "")
        raise ConfigError(f"these runs differ in more than their seed: {shown}. Summarize runs of one setting at a "
                          "time, or pass --allow-mixed to pool them anyway")
    scores = {}
    for label, table in tables.items():
        means = {row["key"]: row["mean"] for row in table["rows"]}
        missing = [mode for mode in order if mode not in means]
        if missing:
            raise ConfigError(f"table {label} has no row for {', '.join(missing)}; summaries need runs of every "
                              f"mode in {', '.join(order)}")
        scores[label] = means
    n = len(scores)

    def mean_se(values) -> tuple[float, float]:
        values = np.asarray(values, np.float64)
        return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))

    modes = {}
    for mode in order:
        mean, se = mean_se([s[mode] for s in scores.values()])
        modes[mode] = {"mean": mean, "se": se}
    pairs = {}
    for i, better in enumerate(order):
        for worse in order[i + 1:]:
            diffs = [s[better] - s[worse] for s in scores.values()]
            mean, se = mean_se(diffs)
            wins = sum(d > 0 for d in diffs)
            pairs[f"{better} - {worse}"] = {"mean": mean, "se": se, "standard_errors": mean / se if se else math.inf,
                                            "wins": wins, "sign_test_p": _sign_test_p(wins, n),
                                            "seeds_for_two_se": _seeds_for_two_se(mean, se * math.sqrt(n))}
    consecutive = [pairs[f"{a} - {b}"] for a, b in zip(order[:-1], order[1:])]
    per_seed = {label: " > ".join(sorted(order, key=lambda m: -s[m])) for label, s in scores.items()}
    return {"seeds": n, "labels": list(scores), "scores": scores, "modes": modes, "pairs": pairs,
            "order": list(order), "means_in_order": all(modes[a]["mean"] > modes[b]["mean"]
                                                         for a, b in zip(order[:-1], order[1:])),
            "order_reproduced": all(p["standard_errors"] >= 2.0 for p in consecutive),
            "seeds_in_order": sum(o == " > ".join(order) for o in per_seed.values()), "per_seed_order": per_seed,
            "mixed_settings": mixed}


def summary_markdown(summary: dict) -> str:
    """The summary as Markdown: each seed's scores (its best in bold) and order, the means, the paired differences
    and the verdict."""
    names = dict(ROWS)
    order = summary["order"]
    lines = [f"Over {summary['seeds']} seeds ({', '.join(summary['labels'])}):", ""]
    if summary.get("mixed_settings"):
        lines += ["**Pooled over different settings** (--allow-mixed): " + "; ".join(summary["mixed_settings"]), ""]
    lines += ["| seed | " + " | ".join(names[m] for m in order) + " | order |", "|---|" + "---|" * (len(order) + 1)]
    for label, scores in summary["scores"].items():
        best = max(order, key=lambda m: scores[m])
        cells = [f"**{scores[m]:.1f}**" if m == best else f"{scores[m]:.1f}" for m in order]
        ranked = summary["per_seed_order"][label]
        paper = " (the paper's)" if ranked == " > ".join(order) else ""
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {ranked}{paper} |")
    lines += ["", "| Controller | mean ± s.e. over seeds |", "|---|---|"]
    lines += [f"| {names[m]} | {summary['modes'][m]['mean']:.1f} ± {summary['modes'][m]['se']:.1f} |" for m in order]
    lines += ["", "| Paired per seed | mean ± s.e. | standard errors | seeds favouring the first | sign test p | "
                  "seeds for 2 s.e. |", "|---|---|---|---|---|---|"]
    for pair, p in summary["pairs"].items():
        needed = p.get("seeds_for_two_se")
        lines.append(f"| {pair} | {p['mean']:+.1f} ± {p['se']:.1f} | {p['standard_errors']:.1f} | "
                     f"{p['wins']} of {summary['seeds']} | {p['sign_test_p']:.3f} | {needed or '—'} |")
    verdict = "reproduced" if summary["order_reproduced"] else "not reproduced"
    lines += ["", f"The paper's order {' > '.join(order)} is **{verdict}** at two standard errors per consecutive "
                  f"pair; the means are {'' if summary['means_in_order'] else 'not '}in that order, and "
                  f"{summary['seeds_in_order']} of {summary['seeds']} seeds "
                  f"{'shows' if summary['seeds_in_order'] == 1 else 'show'} it.",
              "", "(Seeds for 2 s.e.: how many seeds would put each gap at two standard errors if its mean and "
                  "per-seed spread held; a projection for planning, not a result.)"]
    return "\n".join(lines)


__all__ = ["scripted_driver_returns", "carracing_table", "make_host_policy", "evaluate_on_gymnasium",
           "gymnasium_record_name", "ROWS", "load_table", "load_tables", "run_settings", "settings_differences", "summarize_seeds",
           "summary_markdown"]
