"""The CarRacing experiment: its preset, exploration data, the scripted-driver row, `wmj evaluate --gymnasium`, the
summary over seeds and the diagnostics (feature probe, episode outcomes, state oracle)."""

from __future__ import annotations

import builtins
import dataclasses
import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from worldmodels_jax.cli import main as wmj
from worldmodels_jax.configs import CollectConfig, get_preset
from worldmodels_jax.rundir import RunDir
from worldmodels_jax.data import make_collect_shard, make_env
from worldmodels_jax.envs.actions import action_spec
from worldmodels_jax.envs.carracing import noisy_scripted_driver
from worldmodels_jax.errors import ConfigError, NonFiniteError

HAS_GYM = all(importlib.util.find_spec(m) is not None for m in ("gymnasium", "Box2D", "pygame"))
needs_gym = pytest.mark.skipif(not HAS_GYM, reason="needs gymnasium[box2d] (pip install -e '.[gymnasium]')")


def test_cpu_small_resolves_to_the_carracing_preset():
    config = get_preset("cpu-small", "CarRacing-v0")
    assert config.preset == "carracing-cpu-small" and config.env_id == "CarRacing-v0"
    assert set(config.controller.modes) == {"z", "z_hidden", "z_h"}
    assert config.controller.action_mapping == "carracing"
    # the table is over 100 full-length episodes, whatever the training cap
    assert config.evaluate.episodes == 100 and config.evaluate.max_episode_steps == 0
    # C trains on the episodes it is tested on (1000 steps), at the env steps of the earlier 500-step preset
    assert config.controller.max_episode_steps == 0
    t500 = get_preset("cpu-small-t500", "CarRacing-v0")
    assert t500.controller.max_episode_steps == 500

    def steps_per_member(c):
        return c.controller.es.rollouts * c.controller.es.generations * (c.controller.max_episode_steps or 1000)

    assert steps_per_member(config) == steps_per_member(t500) == 120_000
    assert dataclasses.replace(t500.controller, es=config.controller.es, max_episode_steps=0) == config.controller
    # the kept controller is chosen by 64-episode evaluations; the presets measured with 16 keep 16
    e16 = get_preset("cpu-small-e16", "CarRacing-v0")
    assert config.controller.es.eval_episodes == 64
    assert (e16.controller.es.eval_episodes, t500.controller.es.eval_episodes) == (16, 16)
    assert get_preset("cpu-small-imitate", "CarRacing-v0").controller.es.eval_episodes == 16
    assert dataclasses.replace(e16, preset="carracing-cpu-small",
                               controller=dataclasses.replace(e16.controller, es=config.controller.es)) == config
    paper = get_preset("paper", "CarRacing-v0")
    assert paper.preset == "carracing-paper" and paper.collect.policy == "random_controller"  # the original's recipe
    with pytest.raises(ConfigError, match="collect.policy"):
        CollectConfig(policy="greedy")
    with pytest.raises(ConfigError, match="random_prob"):
        CollectConfig(random_prob=1.5)
    with pytest.raises(ConfigError, match="controller_std"):
        CollectConfig(policy="random_controller", controller_std=0.0)


def test_noisy_scripted_collection_drives_and_keeps_random_data_unchanged():
    env, params = make_env("CarRacing-v0")
    spec = action_spec(env.action_space(params))
    key = jax.random.PRNGKey(3)
    def policy(key, episode_key, state, params):
        return noisy_scripted_driver(key, state, params, steer_noise=0.0, speed_noise=0.0)

    driven = make_collect_shard(env, params, spec, 2, 40, 1, 1, policy, random_prob=0.0)(key)
    random = make_collect_shard(env, params, spec, 2, 40, 1, 1)(key)
    # noiseless, the exploration policy is the scripted driver: it gathers tiles; random actions do not
    assert float(driven["reward"].sum(1).min()) > 5.0
    assert float(random["reward"].sum(1).max()) < float(driven["reward"].sum(1).min())
    # random_prob=1: every segment random, the same data as the plain random collection (same keys)
    mixed = make_collect_shard(env, params, spec, 2, 40, 1, 1, policy, random_prob=1.0)(key)
    np.testing.assert_array_equal(np.asarray(mixed["action"]), np.asarray(random["action"]))
    with pytest.raises(ConfigError, match="random_prob"):
        make_collect_shard(env, params, spec, 2, 40, 1, 1, policy, random_prob=-0.1)


def test_noisy_scripted_collection_is_carracing_only_and_the_random_controller_is_any_env(tmp_path):
    from worldmodels_jax.data import Dataset
    from worldmodels_jax.pipeline import Pipeline

    config = dataclasses.replace(get_preset("tiny"), collect=CollectConfig(num_envs=2, steps=8, policy="noisy_scripted"))
    with pytest.raises(ConfigError, match="CarRacing-v0 only"):
        Pipeline(config, tmp_path / "run", progress=False).collect()
    # the original CarRacing recipe, an untrained controller, drives any env through C's action mapping
    config = dataclasses.replace(config, collect=CollectConfig(num_envs=2, steps=8, policy="random_controller"))
    pipeline = Pipeline(config, tmp_path / "run-rc", progress=False)
    pipeline.collect()
    dataset = Dataset.open(pipeline.data_dir, require_complete=True)
    assert dataset.manifest["meta"]["policy"] == "random_controller" and dataset.num_frames == 16


def test_scripted_driver_row_scores_on_the_evaluation_tracks():
    from worldmodels_jax.carracing_experiment import scripted_driver_returns

    env, params = make_env("CarRacing-v0")
    returns = np.asarray(scripted_driver_returns(env, params, jax.random.PRNGKey(0), 2, 60))
    assert returns.shape == (2,)
    assert np.all(returns > 10.0)  # ~15 tiles in 60 steps, minus 6 of frame penalty
    with pytest.raises(ConfigError):
        scripted_driver_returns(env, params, jax.random.PRNGKey(0), 0, 60)


def _untrained_carracing_run(out, modes: tuple[str, ...] = ("z",)):
    """A CarRacing-v0 run directory holding an untrained V, M (if a mode needs it) and controllers: enough for the
    CLI paths."""
    from worldmodels_jax.models.controller import init_controller
    from worldmodels_jax.models.memory import init_memory
    from worldmodels_jax.models.vae import init_vae
    from worldmodels_jax.pipeline import Pipeline

    tiny = get_preset("tiny")
    config = dataclasses.replace(tiny, env_id="CarRacing-v0", mdn=dataclasses.replace(tiny.mdn, action_size=3),
                                 controller=dataclasses.replace(tiny.controller, modes=modes, action_mapping="carracing",
                                                                normalize_features=False))
    pipeline = Pipeline(config, out, progress=False)
    pipeline.run.checkpointer("vae").save(0, init_vae(jax.random.PRNGKey(0), pipeline.config.vae))
    pipeline.run.checkpointer("mdn").save(0, init_memory(jax.random.PRNGKey(2), pipeline.memory))
    for i, mode in enumerate(modes):
        pipeline.run.checkpointer(f"controller-{mode}").save(
            0, init_controller(jax.random.PRNGKey(3 + i), pipeline.controller_config(mode)))
    return pipeline


@needs_gym
def test_wmj_evaluate_gymnasium_runs_a_trained_run_on_carracing_v3(tmp_path, capsys):
    out = tmp_path / "run"
    _untrained_carracing_run(out)
    args = ["evaluate", "--gymnasium", "CarRacing-v3", "--out", str(out), "--episodes", "2", "--max-steps", "15"]
    assert wmj(args) == 0
    printed = capsys.readouterr().out
    assert "CarRacing-v3, 2 tracks" in printed and "endings: max steps 2" in printed
    payload = json.loads((out / "gymnasium_CarRacing-v3.json").read_text())
    result = payload["results"]["z"]
    assert result["episodes"] == 2 and len(result["returns"]) == 2
    assert all(np.isfinite(result["returns"])) and all(r <= 1000 for r in result["returns"])
    assert result["steps"] == [15, 15] and result["endings"] == ["max_steps", "max_steps"]
    assert result["ending_counts"] == {"lap": 0, "off_playfield": 0, "time_limit": 0, "max_steps": 2}
    assert all(0.0 <= t < 0.2 for t in result["tiles"])
    assert result["tiles_mean"] == pytest.approx(np.mean(result["tiles"]))
    assert wmj(args[:-4] + ["--episodes", "1", "--mode", "z_h"]) == 2  # a mode the run did not train
    assert "was not trained" in capsys.readouterr().err
    assert wmj(args + ["--frames", "ours"]) == 0  # V sees our renderer's frames of the same car and track
    ours = json.loads((out / "gymnasium_CarRacing-v3_frames-ours.json").read_text())
    assert ours["frames"] == "ours" and ours["results"]["z"]["steps"] == [15, 15]
    assert "gymnasium_CarRacing-v3_frames-ours.json" in capsys.readouterr().out
    # our env on the same gymnasium tracks: the same track, so the same tiles and start
    assert wmj(args + ["--physics", "ours"]) == 0
    assert "our env on CarRacing-v3's tracks, 2 tracks" in capsys.readouterr().out
    physics = json.loads((out / "gymnasium_CarRacing-v3_physics-ours.json").read_text())
    mine = physics["results"]["z"]
    assert physics["physics"] == "ours" and mine["steps"] == [15, 15] and mine["endings"] == ["max_steps"] * 2
    assert all(0.0 <= t < 0.2 for t in mine["tiles"]) and all(np.isfinite(mine["returns"]))
    assert wmj(args + ["--physics", "ours", "--frames", "ours_during_zoom"]) == 2
    assert "drop --frames ours_during_zoom" in capsys.readouterr().err
    assert payload["frames"] == "gymnasium"  # kept apart from the run on gymnasium's own frames


def test_wmj_evaluate_gymnasium_without_gymnasium_names_the_extra(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _untrained_carracing_run(out)
    real_import = builtins.__import__

    def no_box2d(name, *args, **kwargs):
        if name.split(".")[0] in ("gymnasium", "Box2D"):
            raise ImportError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_box2d)
    assert wmj(["evaluate", "--gymnasium", "CarRacing-v3", "--out", str(out), "--episodes", "1"]) == 2
    assert "pip install -e '.[gymnasium]'" in capsys.readouterr().err
    monkeypatch.setattr(builtins, "__import__", real_import)
    assert wmj(["evaluate", "--gymnasium", "CarRacing-v2", "--out", str(out), "--episodes", "1"]) == 2
    assert "CarRacing-v3" in capsys.readouterr().err


def test_random_policy_baseline_jits_on_carracing():
    """The evaluate stage jits the random baseline; the Box bounds must stay concrete while tracing."""
    from worldmodels_jax.rollouts import random_policy_returns

    env, params = make_env("CarRacing-v0")
    stats = jax.jit(lambda k: random_policy_returns(env, params, k, 2, 5))(jax.random.PRNGKey(0))
    assert stats.returns.shape == (2,) and bool(np.all(stats.lengths == 5))


# ------------------------------------------------------------------------------ the summary over seeds
def _table(**means) -> dict:
    return {"rows": [{"key": key, "mean": float(value), "std": 1.0, "episodes": 100} for key, value in means.items()]}


def test_summary_over_seeds_known_answers(tmp_path):
    """Three seeds whose means, standard errors, paired differences and sign tests are worked out by hand."""
    from worldmodels_jax.carracing_experiment import summarize_seeds, summary_markdown

    tables = {"a": _table(random=-37, z=100, z_hidden=200, z_h=300),
              "b": _table(random=-37, z=110, z_hidden=190, z_h=330),
              "c": _table(random=-37, z=90, z_hidden=210, z_h=330)}
    summary = summarize_seeds(tables)
    third = 1 / np.sqrt(3)
    assert summary["modes"]["z"] == pytest.approx({"mean": 100.0, "se": 10 * third})
    assert summary["modes"]["z_hidden"] == pytest.approx({"mean": 200.0, "se": 10 * third})
    assert summary["modes"]["z_h"] == pytest.approx({"mean": 320.0, "se": np.sqrt(300) * third})  # diffs -20, 10, 10
    pair = summary["pairs"]["z_h - z_hidden"]  # differences 100, 140, 120
    assert pair["mean"] == pytest.approx(120.0) and pair["se"] == pytest.approx(20 * third)
    assert pair["standard_errors"] == pytest.approx(120 / (20 * third))
    assert pair["wins"] == 3 and pair["sign_test_p"] == pytest.approx(1 / 8)
    assert pair["seeds_for_two_se"] == 2  # 4 * 20² / 120² < 1: two seeds, the fewest with a spread, suffice
    assert summary["pairs"]["z_hidden - z"]["mean"] == pytest.approx(100.0)  # differences 100, 80, 120
    assert summary["order_reproduced"] and summary["means_in_order"] and summary["seeds_in_order"] == 3
    assert "**reproduced**" in summary_markdown(summary)
    assert "| b | **330.0** | 190.0 | 110.0 | z_h > z_hidden > z (the paper's) |" in summary_markdown(summary)

    # z + hidden below z on seed c, and only 2 standard errors apart on average: not reproduced.
    tables["c"] = _table(z=90, z_hidden=60, z_h=330)  # z_hidden - z: 100, 80, -30
    summary = summarize_seeds(tables)
    pair = summary["pairs"]["z_hidden - z"]
    assert pair["mean"] == pytest.approx(50.0) and pair["wins"] == 2
    assert pair["sign_test_p"] == pytest.approx(4 / 8)  # P(at least 2 of 3)
    assert pair["standard_errors"] < 2 and not summary["order_reproduced"]
    assert pair["seeds_for_two_se"] == 8  # per-seed std 70: 4 * 70² / 50² = 7.84
    assert summary["pairs"]["z_h - z"]["seeds_for_two_se"] == 2
    behind = summarize_seeds({"a": _table(z=100, z_hidden=50, z_h=90), "b": _table(z=100, z_hidden=60, z_h=80)})
    assert behind["pairs"]["z_h - z"]["mean"] == pytest.approx(-15.0)
    assert behind["pairs"]["z_h - z"]["seeds_for_two_se"] is None  # no number of seeds separates a gap below zero
    assert "| z_h - z | -15.0 ± 5.0 | -3.0 | 0 of 2 | 1.000 | — |" in summary_markdown(behind)
    assert summary["seeds_in_order"] == 2 and summary["per_seed_order"]["c"] == "z_h > z > z_hidden"
    assert "**not reproduced**" in summary_markdown(summary)
    assert "| c | **330.0** | 60.0 | 90.0 | z_h > z > z_hidden |" in summary_markdown(summary)


def _carracing_script():
    """experiments/carracing.py as a module (it is a script, not part of the package)."""
    script_path = Path(__file__).resolve().parents[1] / "experiments" / "carracing.py"
    spec = importlib.util.spec_from_file_location("carracing_script", script_path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_the_experiment_takes_an_existing_runs_own_settings_unless_a_preset_is_given(tmp_path):
    script = _carracing_script()
    e16 = get_preset("cpu-small-e16", "CarRacing-v0")
    forked = dataclasses.replace(e16, controller=dataclasses.replace(
        e16.controller, es=dataclasses.replace(e16.controller.es, generations=480)))
    RunDir(tmp_path / "forked").save_config(forked)  # what `wmj fork` leaves for the script
    assert script.experiment_config(None, tmp_path / "forked", []) == forked
    assert script.experiment_config(None, tmp_path / "forked", ["--evaluate.episodes", "7"]).evaluate.episodes == 7
    assert script.experiment_config(None, tmp_path / "new", []) == get_preset("cpu-small", "CarRacing-v0")
    assert script.experiment_config("cpu-small-e16", tmp_path / "forked", []) == e16


def test_summary_over_seeds_cli_and_its_errors(tmp_path, capsys):
    script = _carracing_script()
    paths = []
    for seed, (z, hidden, h) in enumerate(((100, 200, 300), (110, 190, 330))):
        run = tmp_path / f"run{seed}"
        run.mkdir()
        (run / "carracing_table.json").write_text(json.dumps(_table(z=z, z_hidden=hidden, z_h=h)))
        paths.append(str(run))
    out = tmp_path / "summary.json"
    assert script.main(["--summarize", *paths, "--summary-out", str(out)]) == 0
    assert json.loads(out.read_text())["labels"] == ["run0", "run1"]
    assert "| V only, z | 105.0 ± 5.0 |" in capsys.readouterr().out
    only_z_h = tmp_path / "paper_cpu.json"
    only_z_h.write_text(json.dumps(_table(z_h=500)))
    assert script.main(["--summarize", paths[0], str(only_z_h)]) == 2
    assert "has no row for z_hidden, z" in capsys.readouterr().err
    assert script.main(["--summarize", paths[0]]) == 2
    assert "at least 2 tables" in capsys.readouterr().err
    assert script.main(["--summarize", str(tmp_path / "missing")]) == 2
    assert "no CarRacing table" in capsys.readouterr().err

    # Bare table files are named by their run directory; a run passed twice, or two runs sharing a name, are refused.
    bare = [str(Path(path) / "carracing_table.json") for path in paths]
    assert script.main(["--summarize", *bare, "--summary-out", str(out)]) == 0
    assert json.loads(out.read_text())["labels"] == ["run0", "run1"]
    capsys.readouterr()
    assert script.main(["--summarize", paths[0], bare[0], paths[1]]) == 2
    assert "are the same run" in capsys.readouterr().err
    twin = tmp_path / "elsewhere" / "run0"
    twin.mkdir(parents=True)
    (twin / "carracing_table.json").write_text(json.dumps(_table(z=1, z_hidden=2, z_h=3)))
    assert script.main(["--summarize", paths[0], str(twin), paths[1]]) == 2
    assert "would both be labelled 'run0'" in capsys.readouterr().err


def test_summary_refuses_runs_of_different_settings(tmp_path, capsys):
    """Tables pooled over seeds must come from one configuration; the seed alone may differ."""
    from worldmodels_jax.carracing_experiment import run_settings, settings_differences, summarize_seeds
    from worldmodels_jax.cli import build_config
    from worldmodels_jax.errors import ConfigError

    # carracing_table records the run's seed and resolved settings
    from worldmodels_jax.carracing_experiment import carracing_table, load_table

    pipeline = _untrained_carracing_run(tmp_path / "tiny")
    result = {"mean": 1.0, "std": 0.0, "episodes": 2}
    pipeline.run.mark_done("evaluate", {"results": {"random": result, "z": result}, "seconds": 1.0})
    pipeline.run.mark_done("evaluate-scripted", {"results": {"scripted": result}, "seconds": 1.0})
    table = carracing_table(pipeline)
    assert table["seed"] == pipeline.config.seed and table["settings"] == run_settings(pipeline.config)
    assert table["settings"]["controller"]["modes"] == ["z"] and load_table(tmp_path / "tiny") == table

    script = _carracing_script()

    def run(name, seed, preset="cpu-small", overrides=(), record=True):
        path = tmp_path / name
        path.mkdir()
        config = build_config(preset, "CarRacing-v0", path, [f"--seed={seed}", *overrides])
        table = {**_table(z=100 + seed, z_hidden=200 - seed, z_h=300 + 2 * seed), "preset": config.preset}
        settings = run_settings(config)
        assert "seed" not in settings
        if record:
            table |= {"seed": config.seed, "settings": settings}
        (path / "carracing_table.json").write_text(json.dumps(table))
        (path / "config.json").write_text(json.dumps({**settings, "seed": config.seed}))
        return path

    a, b = run("a", 0), run("b", 1)
    assert script.main(["--summarize", str(a), str(b)]) == 0  # different seeds, the same settings
    capsys.readouterr()
    e64 = run("e64", 2, overrides=["--controller.es.eval-episodes=16"])
    assert script.main(["--summarize", str(a), str(b), str(e64)]) == 2
    err = capsys.readouterr().err
    assert "differ in more than their seed" in err and "controller.es.eval_episodes: 64 in a, 16 in e64" in err
    assert script.main(["--summarize", str(a), str(b), str(e64), "--allow-mixed"]) == 0
    assert "**Pooled over different settings**" in capsys.readouterr().out

    # A table from before tables recorded their settings: its run directory supplies them, its JSON alone cannot.
    old = run("old", 3, record=False)
    assert script.main(["--summarize", str(a), str(old)]) == 0
    capsys.readouterr()
    assert script.main(["--summarize", str(a), str(old / "carracing_table.json")]) == 2
    assert "old records only the preset's name" in capsys.readouterr().err  # labelled by its run directory
    old_e16 = run("old_e16", 4, preset="cpu-small-e16", record=False)
    tables = {"old": json.loads((old / "carracing_table.json").read_text()),
              "old_e16": json.loads((old_e16 / "carracing_table.json").read_text())}
    assert settings_differences(tables) == [
        "preset: carracing-cpu-small (old) vs carracing-cpu-small-e16 (old_e16)"]
    with pytest.raises(ConfigError, match="preset: carracing-cpu-small"):
        summarize_seeds(tables)
    tables["old_e16"]["preset"] = "carracing-cpu-small"  # by name alone, unrecorded tables pool
    assert summarize_seeds(tables)["mixed_settings"] == []


# ------------------------------------------------------------------------------ the feature probe
def test_car_motion_known_answers():
    from worldmodels_jax.carracing_diagnostics import car_motion

    env, params = make_env("CarRacing-v0")
    _, state = env.reset(jax.random.PRNGKey(0), params)
    # angle 0 faces +y, so +y is forward and +x (cos 0, sin 0) is across; angle pi/2 faces -x
    facing_up = state.replace(angle=jnp.float32(0.0), vel=jnp.array([2.0, 5.0]), ang_vel=jnp.float32(0.3))
    motion = car_motion(facing_up)
    np.testing.assert_allclose([motion["forward_speed"], motion["lateral_speed"], motion["yaw_rate"]], [5.0, 2.0, 0.3],
                               atol=1e-6)
    facing_left = state.replace(angle=jnp.float32(np.pi / 2), vel=jnp.array([-3.0, 1.0]))
    motion = car_motion(facing_left)
    np.testing.assert_allclose([motion["forward_speed"], motion["lateral_speed"]], [3.0, 1.0], atol=1e-6)


def test_road_pose_known_answers():
    from worldmodels_jax.carracing_diagnostics import CURVE_AHEAD_TILES, road_pose

    env, params = make_env("CarRacing-v0")
    _, state = env.reset(jax.random.PRNGKey(0), params)
    # a road along +y for 20 points, then turning left by 0.2 rad per point
    headings = np.where(np.arange(40) < 20, 0.0, 0.2 * (np.arange(40) - 19))
    steps = np.stack([-np.sin(headings), np.cos(headings)], -1) * 3.0
    points = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, 0)[:-1]])
    track = np.zeros(state.track.shape, np.float32)
    track[:40, 2:4] = points
    straight = state.replace(track=jnp.asarray(track), n_tiles=jnp.int32(40), pos=jnp.array([1.0, 9.1]),
                             angle=jnp.float32(0.1))
    pose = road_pose(straight)  # 1 unit right of the centre line, turned 0.1 rad left, a straight road ahead
    np.testing.assert_allclose([pose["centre_offset"], pose["heading_error"], pose["curve_ahead"]], [-1.0, 0.1, 0.0],
                               atol=1e-5)
    before_turn = straight.replace(pos=jnp.array([0.0, 3.0 * (19 - CURVE_AHEAD_TILES + 3)]))
    # nearest point 12: the road CURVE_AHEAD_TILES on is point 22's, which has turned 0.2 * 3 = 0.6 rad left
    np.testing.assert_allclose(road_pose(before_turn)["curve_ahead"], 0.6, atol=1e-5)


def test_ridge_r2_known_answers():
    from worldmodels_jax.carracing_diagnostics import ridge_r2

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = np.stack([2 * x[:, 0] - x[:, 1] + 5, rng.normal(size=400), x[:, 2] ** 2], -1)
    r2 = ridge_r2(x[:200], y[:200], x[200:], y[200:], ridge=1e-9)
    assert r2[0] == pytest.approx(1.0, abs=1e-9)  # linear: exact
    assert -0.1 < r2[1] < 0.02  # independent noise: no better than its mean
    assert r2[2] < 0.05  # x² is not linear in x (x symmetric about 0)
    # the ridge shrinks: a heavy one predicts little more than the intercept
    assert ridge_r2(x[:200], y[:200], x[200:], y[200:], ridge=1e3)[0] < 0.1
    # one ridge per target: the same as fitting each target alone
    per_target = ridge_r2(x[:200], y[:200], x[200:], y[200:], ridge=[1e-9, 1e3, 1.0])
    np.testing.assert_allclose(per_target, [ridge_r2(x[:200], y[:200, [i]], x[200:], y[200:, [i]], r)[0]
                                            for i, r in enumerate((1e-9, 1e3, 1.0))])
    with pytest.raises(ConfigError, match="rows"):
        ridge_r2(x[:200], y[:100], x[200:], y[200:])


def test_choose_ridge_shrinks_noisy_targets_and_not_exact_ones():
    from worldmodels_jax.carracing_diagnostics import RIDGE_GRID, choose_ridge

    rng = np.random.default_rng(2)
    x = rng.normal(size=(120, 40))  # 40 features for 120 rows: plain least squares overfits
    y = np.stack([x[:, 0] - x[:, 1], 0.3 * x[:, 0] + rng.normal(size=120)], -1)
    ridge = choose_ridge(x, y, groups=np.arange(120) // 10)
    assert ridge[0] == min(RIDGE_GRID) and ridge[1] > 0.01
    with pytest.raises(ConfigError, match="at least 2 groups"):
        choose_ridge(x, y, groups=np.zeros(120))


def test_probe_r2_splits_whole_episodes_and_reads_a_target_it_is_given():
    from worldmodels_jax.carracing_diagnostics import RIDGE_GRID, probe_r2

    rng = np.random.default_rng(1)
    targets = rng.normal(size=(6, 40, 2))
    use = np.ones((6, 40), bool)
    use[:, 0] = False
    # 'parity' is +-1 by episode: fitted on even episodes only it is constant, so it cannot predict anything
    parity = np.broadcast_to((np.arange(6) % 2 * 2.0 - 1)[:, None, None], (6, 40, 1))
    features = {"itself": targets, "noise": rng.normal(size=(6, 40, 3)), "parity": parity}
    r2, ridges, fit, score = probe_r2(features, targets, use, target_names=("a", "b"))
    assert r2["itself"]["a"] == pytest.approx(1.0) and r2["itself"]["b"] == pytest.approx(1.0)
    assert max(r2["noise"].values()) < 0.05 and max(r2["parity"].values()) < 0.05
    assert fit.sum() == score.sum() == 3 * 39 and not (fit & score).any() and not fit[1].any()
    assert ridges["itself"]["a"] == min(RIDGE_GRID)  # cross-validation prefers no shrinkage for an exact fit
    with pytest.raises(ConfigError, match="too few probe steps"):
        probe_r2(features, targets, np.zeros_like(use), target_names=("a", "b"))


def test_episode_outcomes_known_answers():
    from worldmodels_jax.carracing_diagnostics import episode_outcomes

    steps = 5
    alive = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], bool)
    reward = np.full((3, steps), 2.0)
    lap = np.zeros((3, steps), bool)
    lap[0, 2] = True  # episode 0 finishes its lap on its last step
    lap[2, 4] = True  # after episode 2 ended: not counted
    off = np.zeros((3, steps), bool)
    off[2, 1] = True  # episode 2 leaves the playfield on its last step
    tiles = np.tile(np.linspace(0.2, 1.0, steps), (3, 1))
    speed = np.tile(np.arange(steps, dtype=float), (3, 1))
    on_road = np.tile([True, False, True, True, False], (3, 1))
    o = episode_outcomes({"alive": alive, "reward": reward, "lap": lap, "off": off, "tiles": tiles,
                          "forward_speed": speed, "on_road": on_road})
    assert o["returns"] == [6.0, 10.0, 4.0]
    assert (o["lap_finished"], o["off_playfield"], o["out_of_steps"]) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert o["tiles_visited"] == pytest.approx((0.6 + 1.0 + 0.4) / 3)
    assert o["steps_mean"] == pytest.approx(10 / 3) and o["forward_speed_mean"] == pytest.approx((1 + 2 + 0.5) / 3)
    assert o["on_road"] == pytest.approx((2 / 3 + 3 / 5 + 1 / 2) / 3)
    assert "sent_gas_mean" not in o  # only where the probe recorded the actions sent
    sent_brake = np.where(alive, np.tile([0.5, 0.0, 1.0, 0.5, 0.0], (3, 1)), 9.0)  # 9 once ended: not counted
    sent = episode_outcomes({"alive": alive, "reward": reward, "lap": lap, "off": off, "tiles": tiles,
                             "forward_speed": speed, "on_road": on_road, "sent_gas": np.full((3, steps), 0.25),
                             "sent_brake": sent_brake})
    assert sent["sent_gas_mean"] == pytest.approx(0.25)
    assert sent["sent_brake_mean"] == pytest.approx((1.5 / 3 + 2.0 / 5 + 0.5 / 2) / 3)


def test_outcomes_by_window_known_answers():
    from worldmodels_jax.carracing_diagnostics import outcomes_by_window

    alive = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
    reward = np.array([[1.0, 2, 3, 4, 5], [10, 20, 30, 40, 50]])
    speed = np.array([[2.0, 4, 6, 8, 10], [1, 1, 1, 99, 99]])
    steer = np.array([[0.1, 0.1, -0.2, -0.2, -0.2], [0.0, 0.0, 0.4, 9, 9]])
    gas = np.ones((2, 5))
    on_road = np.array([[1, 1, 0, 0, 1], [1, 0, 1, 1, 1]], bool)
    rows = outcomes_by_window({"alive": alive, "reward": reward, "forward_speed": speed, "steer": steer, "gas": gas,
                               "on_road": on_road}, window=2)
    assert [r["steps"] for r in rows] == [[0, 2], [2, 4], [4, 5]]
    assert [r["episodes_running"] for r in rows] == [2, 2, 1]
    # ended steps count for nothing: episode 1's 40 and 50, speed 99 and steer 9 are after its end
    assert [r["reward_per_episode"] for r in rows] == pytest.approx([(3 + 30) / 2, (3 + 4 + 30) / 2, 5 / 2])
    assert [r["forward_speed"] for r in rows] == pytest.approx([2.0, (6 + 8 + 1) / 3, 10.0])
    assert [r["steer"] for r in rows] == pytest.approx([0.05, (-0.4 + 0.4) / 3, -0.2])
    assert [r["on_road"] for r in rows] == pytest.approx([3 / 4, 1 / 3, 1.0])
    with pytest.raises(ConfigError, match="window"):
        outcomes_by_window({"alive": alive}, window=0)


def test_feature_probe_on_a_run_and_its_cli(tmp_path, capsys):
    from worldmodels_jax.carracing_diagnostics import PROBE_FEATURES, PROBE_TARGETS, feature_probe

    out = tmp_path / "run"
    pipeline = _untrained_carracing_run(out, modes=("z", "z_h"))
    result = feature_probe(pipeline, "z_h", episodes=4, max_steps=12)
    assert list(result["r2"]) == list(PROBE_FEATURES)
    assert all(set(row) == set(PROBE_TARGETS) and all(v <= 1.0 for v in row.values()) for row in result["r2"].values())
    assert result["steps_fit"] <= 2 * 11 and result["steps_scored"] <= 2 * 11  # each episode's first step is left out
    assert 0.0 <= result["target_mean"]["gas"] <= 1.0 and abs(result["target_mean"]["steer"]) <= 0.4 + 1e-6
    assert json.loads((out / "feature_probe_z_h.json").read_text())["r2"] == result["r2"]
    outcomes = result["outcomes"]
    assert outcomes["lap_finished"] + outcomes["off_playfield"] + outcomes["out_of_steps"] == pytest.approx(1.0)
    assert len(outcomes["returns"]) == 4 and outcomes["steps_mean"] <= 12
    assert [w["steps"] for w in result["timeline"]] == [[0, 12]]  # one 250-step window, cut at max_steps
    assert result["timeline"][0]["reward_per_episode"] == pytest.approx(outcomes["return_mean"], abs=1e-4)
    with pytest.raises(ConfigError, match="was not trained"):
        feature_probe(pipeline, "z_hidden", episodes=4, max_steps=12)
    # a V that outputs NaN is reported, not turned into NaN R²s
    vae = pipeline.vae_params()
    poisoned = jax.tree.map(lambda x: x * np.nan, vae)
    pipeline.run.checkpointer("vae").save(1, poisoned)
    with pytest.raises(NonFiniteError, match="non-finite values"):
        feature_probe(pipeline, "z_h", episodes=4, max_steps=12)
    pipeline.run.checkpointer("vae").save(2, vae)
    # the scripted driver stays on the road and is faster than an untrained controller
    driver = feature_probe(pipeline, "scripted", episodes=4, max_steps=60)["outcomes"]
    assert driver["on_road"] == 1.0 and driver["tiles_visited"] > 0.025 and driver["forward_speed_mean"] > 10
    with pytest.raises(ConfigError, match="episodes >= 2"):
        feature_probe(pipeline, "z", episodes=1, max_steps=12)

    (out / "feature_probe_z_h.json").unlink()
    script = _carracing_script()  # probes again, with keys from the run's seed: the same R²s (deterministic)
    assert script.main(["--probe", str(out), "--probe-mode", "z_h", "--probe-episodes", "4", "--probe-steps", "12"]) == 0
    printed = capsys.readouterr().out
    assert "| z, previous z |" in printed and "forward_speed" in printed
    assert json.loads((out / "feature_probe_z_h.json").read_text())["r2"] == result["r2"]
    assert "| 0–12 | 4 |" in printed  # the timeline: one window, four episodes running
    assert script.main(["--probe", str(out), "--probe-mode", "z_hidden"]) == 2
    assert "was not trained" in capsys.readouterr().err


def test_state_oracle_reads_the_true_state_and_trains_at_the_runs_budget(tmp_path, capsys):
    from worldmodels_jax.carracing_diagnostics import (PROBE_TARGETS, StateOracleCarRacing, car_motion, road_pose,
                                                       train_state_oracle, true_state_features)

    env, params = make_env("CarRacing-v0")
    _, state = env.reset(jax.random.PRNGKey(0), params)
    _, state, *_ = env.step(jax.random.PRNGKey(1), state, jnp.array([0.3, 1.0, 0.0]), params)
    expected = {**car_motion(state), **road_pose(state)}
    np.testing.assert_allclose(true_state_features(state), [expected[name] for name in PROBE_TARGETS], rtol=1e-6)
    mean, std = tuple(range(8)), tuple(range(1, 9))
    np.testing.assert_allclose(StateOracleCarRacing(env, mean, std).observation_of_state(state),
                               (np.asarray(true_state_features(state)) - np.arange(8)) / np.arange(1, 9), rtol=1e-5)

    out = tmp_path / "run"
    pipeline = _untrained_carracing_run(out)
    result = train_state_oracle(pipeline, "z", generations=2)
    es = pipeline.config.controller.es
    assert result["generations"] == 2 and [c["generation"] for c in result["curve"]] == [es.eval_every]
    assert result["episodes"] == pipeline.config.evaluate.episodes and np.isfinite(result["mean"])
    written = out / f"state_oracle_z_{es.strategy}_g2_s0.json"
    assert json.loads(written.read_text())["mean"] == result["mean"]
    written.unlink()
    script = _carracing_script()  # trains again, from the run's keys: the same result (repeatable)
    assert script.main(["--oracle", str(out), "--oracle-generations", "2"]) == 0
    assert "State oracle (z, CMA_ES, ES seed 0, 2 generations" in capsys.readouterr().out
    assert json.loads(written.read_text())["mean"] == result["mean"]
    other = train_state_oracle(pipeline, "z", generations=2, strategy="SNES", es_seed=1)
    assert other["strategy"] == "SNES" and other["path"].endswith("state_oracle_z_SNES_g2_s1.json")
    with pytest.raises(ConfigError, match="unknown evolution strategy"):
        train_state_oracle(pipeline, "z", generations=2, strategy="CMA")
    with pytest.raises(ConfigError, match="'z' \\(linear\\) or 'z_hidden'"):
        train_state_oracle(pipeline, "z_h")
    assert script.main(["--oracle", str(out), "--oracle-generations", "0"]) == 2
    assert "generations must be >= 1" in capsys.readouterr().err
