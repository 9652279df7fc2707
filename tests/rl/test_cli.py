"""`wmj rl ...`: the run directory it writes, and clear errors on bad input."""

import json

import numpy as np
import pytest

from worldmodels_jax.checkpoint import Checkpointer
from worldmodels_jax.errors import ConfigError, EnvError
from worldmodels_jax.rl.cli import main, parse


def test_q_learning_run_directory(tmp_path):
    out = tmp_path / "q"
    assert main(["q-learning", "--preset", "tiny", "--out", str(out), "--seeds", "2",
                 "--config.total-steps", "8000", "--config.num-evals", "2", "--config.eval-episodes", "20"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["algorithm"] == "q-learning" and config["seeds"] == 2
    assert config["config"]["total_steps"] == 8000
    records = [json.loads(line) for line in (out / "metrics" / "q-learning.jsonl").read_text().splitlines()]
    curve = [r for r in records if "summary" not in r]
    assert len(curve) == 2 * 2 and {r["seed"] for r in curve} == {0, 1}
    assert [r["env_steps"] for r in curve if r["seed"] == 0] == [4000, 8000]
    summary = records[-1]
    assert summary["dp_optimal_success_exact"] == pytest.approx(0.7402, abs=1e-3)
    assert (out / "q-learning_curve.png").stat().st_size > 1000
    assert (out / "stages" / "q-learning.json").exists()
    step, tree = Checkpointer(out / "checkpoints" / "q-learning").restore({"q": np.zeros((2, 16, 4), np.float32)})
    assert step == 8000 and tree["q"].shape == (2, 16, 4) and np.abs(tree["q"]).sum() > 0


def test_parse_presets_and_overrides():
    name, command = parse(["dqn", "--preset", "tiny", "--seeds", "3", "--config.double-dqn",
                           "--config.hidden", "32", "32"])
    assert name == "dqn" and command.seeds == 3 and command.config.double_dqn
    assert command.config.hidden == (32, 32) and command.config.total_steps == 20_000
    name, command = parse(["sarsa", "--env", "FrozenLake-misc"])
    assert command.config.algorithm == "sarsa"


def test_bad_input_errors(tmp_path):
    with pytest.raises(EnvError, match="no tabular"):
        main(["dp", "--env", "CartPole-v1", "--out", str(tmp_path / "a")])
    with pytest.raises(EnvError, match="Discrete"):
        main(["dqn", "--env", "Pendulum-v1", "--out", str(tmp_path / "b")])
    with pytest.raises(ConfigError, match="preset"):
        parse(["dqn", "--preset", "nope"])
    with pytest.raises(ConfigError, match="unknown rl command"):
        parse(["ppo"])
    with pytest.raises(ConfigError, match="cannot run"):
        parse(["sarsa", "--config.algorithm", "q-learning"])
