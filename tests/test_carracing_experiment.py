"""The CarRacing experiment: its preset, exploration data, the scripted-driver row, and `wmj evaluate --gymnasium`."""

from __future__ import annotations

import builtins
import dataclasses
import importlib.util
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from worldmodels_jax.cli import main as wmj
from worldmodels_jax.configs import CollectConfig, get_preset
from worldmodels_jax.data import make_collect_shard, make_env
from worldmodels_jax.envs.actions import action_spec
from worldmodels_jax.envs.carracing import noisy_scripted_driver
from worldmodels_jax.errors import ConfigError

HAS_GYM = all(importlib.util.find_spec(m) is not None for m in ("gymnasium", "Box2D", "pygame"))
needs_gym = pytest.mark.skipif(not HAS_GYM, reason="needs gymnasium[box2d] (pip install -e '.[gymnasium]')")


def test_cpu_small_resolves_to_the_carracing_preset():
    config = get_preset("cpu-small", "CarRacing-v0")
    assert config.preset == "carracing-cpu-small" and config.env_id == "CarRacing-v0"
    assert set(config.controller.modes) == {"z", "z_hidden", "z_h"}
    assert config.controller.action_mapping == "carracing"
    # the table is over 100 full-length episodes, whatever the training cap
    assert config.evaluate.episodes == 100 and config.evaluate.max_episode_steps == 0
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


def _untrained_carracing_run(out):
    """A CarRacing-v0 run directory holding an untrained V and a 'z' controller: enough for the CLI path."""
    from worldmodels_jax.models.controller import init_controller
    from worldmodels_jax.models.vae import init_vae
    from worldmodels_jax.pipeline import Pipeline

    tiny = get_preset("tiny")
    config = dataclasses.replace(tiny, env_id="CarRacing-v0",
                                 controller=dataclasses.replace(tiny.controller, modes=("z",), action_mapping="carracing"))
    pipeline = Pipeline(config, out, progress=False)
    pipeline.run.checkpointer("vae").save(0, init_vae(jax.random.PRNGKey(0), pipeline.config.vae))
    pipeline.run.checkpointer("controller-z").save(0, init_controller(jax.random.PRNGKey(1), pipeline.controller_config("z")))
    return pipeline


@needs_gym
def test_wmj_evaluate_gymnasium_runs_a_trained_run_on_carracing_v3(tmp_path, capsys):
    out = tmp_path / "run"
    _untrained_carracing_run(out)
    args = ["evaluate", "--gymnasium", "CarRacing-v3", "--out", str(out), "--episodes", "2", "--max-steps", "15"]
    assert wmj(args) == 0
    assert "CarRacing-v3, 2 tracks" in capsys.readouterr().out
    payload = json.loads((out / "gymnasium_CarRacing-v3.json").read_text())
    result = payload["results"]["z"]
    assert result["episodes"] == 2 and len(result["returns"]) == 2
    assert all(np.isfinite(result["returns"])) and all(r <= 1000 for r in result["returns"])
    assert wmj(args[:-4] + ["--episodes", "1", "--mode", "z_h"]) == 2  # a mode the run did not train
    assert "was not trained" in capsys.readouterr().err


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
    assert summary["pairs"]["z_hidden - z"]["mean"] == pytest.approx(100.0)  # differences 100, 80, 120
    assert summary["order_reproduced"] and summary["means_in_order"] and summary["seeds_in_order"] == 3
    assert "**reproduced**" in summary_markdown(summary)

    # z + hidden below z on seed c, and only 2 standard errors apart on average: not reproduced.
    tables["c"] = _table(z=90, z_hidden=60, z_h=330)  # z_hidden - z: 100, 80, -30
    summary = summarize_seeds(tables)
    pair = summary["pairs"]["z_hidden - z"]
    assert pair["mean"] == pytest.approx(50.0) and pair["wins"] == 2
    assert pair["sign_test_p"] == pytest.approx(4 / 8)  # P(at least 2 of 3)
    assert pair["standard_errors"] < 2 and not summary["order_reproduced"]
    assert summary["seeds_in_order"] == 2 and summary["per_seed_order"]["c"] == "z_h > z > z_hidden"
    assert "**not reproduced**" in summary_markdown(summary)


def test_summary_over_seeds_cli_and_its_errors(tmp_path, capsys):
    script_path = Path(__file__).resolve().parents[1] / "experiments" / "carracing.py"
    spec = importlib.util.spec_from_file_location("carracing_script", script_path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
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
