"""Where CMA-ES's mean starts (`controller.init`): 'lecun_hidden' draws hidden layers and zeroes the output layer,
which changes controllers with a hidden layer only. ('imitate' is tested in test_imitation.py.)"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from worldmodels_jax.configs import ControllerStageConfig, get_preset
from worldmodels_jax.errors import ConfigError
from worldmodels_jax.evolution import ESConfig
from worldmodels_jax.models.controller import Controller, ControllerConfig, hidden_init_controller, init_controller
from worldmodels_jax.models.vae import init_vae
from worldmodels_jax.pipeline import Pipeline


def test_hidden_init_draws_the_hidden_layer_and_zeroes_the_output_layer():
    key = jax.random.PRNGKey(3)
    config = ControllerConfig(mode="z_hidden", z_size=16, feature_size=64, num_outputs=3, hidden_units=40)
    params = hidden_init_controller(key, config)
    drawn = init_controller(key, config)
    np.testing.assert_array_equal(np.asarray(params["hidden"]["kernel"]), np.asarray(drawn["hidden"]["kernel"]))
    kernel = np.asarray(params["hidden"]["kernel"])
    assert kernel.shape == (16, 40) and kernel.std() == pytest.approx(1 / np.sqrt(16), rel=0.15)  # LeCun normal
    assert not np.any(np.asarray(params["hidden"]["bias"]))
    assert not any(np.any(np.asarray(leaf)) for leaf in jax.tree.leaves(params["out"]))
    z = jax.random.normal(jax.random.PRNGKey(4), (5, 16))
    hidden = jnp.tanh(z @ params["hidden"]["kernel"])
    assert float(jnp.abs(hidden).min()) > 0  # each unit already has a direction ...
    outputs = Controller(config).apply({"params": params}, z)
    np.testing.assert_array_equal(np.asarray(outputs), 0.0)  # ... and the controller still outputs zero
    for mode in ("z", "z_h"):  # no hidden layer: all zeros, the 'zeros' start
        linear = ControllerConfig(mode=mode, z_size=16, feature_size=64, num_outputs=3)
        assert not any(np.any(np.asarray(leaf)) for leaf in jax.tree.leaves(hidden_init_controller(key, linear)))


def test_lecun_hidden_start_changes_only_the_controller_with_a_hidden_layer(tmp_path):
    """Two tiny CarRacing runs that differ only in controller.init: z trains to the same digits, z + hidden
    does not; and the option is checked."""
    tiny = get_preset("tiny")
    es = ESConfig(population=4, rollouts=1, generations=2, eval_every=1, eval_episodes=2)
    metrics, kept = {}, {}
    for init in ("zeros", "lecun_hidden"):
        controller = dataclasses.replace(tiny.controller, modes=("z", "z_hidden"), action_mapping="carracing",
                                         z_sample=False, init=init, es=es, max_episode_steps=6)
        config = dataclasses.replace(tiny, env_id="CarRacing-v0", mdn=dataclasses.replace(tiny.mdn, action_size=3),
                                     controller=controller)
        pipeline = Pipeline(config, tmp_path / init, progress=False)
        pipeline.run.checkpointer("vae").save(0, init_vae(jax.random.PRNGKey(0), pipeline.config.vae))
        pipeline.train_controller()
        metrics[init] = {mode: pipeline.run.read_metrics(f"train-controller-{mode}") for mode in ("z", "z_hidden")}
        kept[init] = {mode: pipeline.controller_params(mode) for mode in ("z", "z_hidden")}
    assert metrics["zeros"]["z"] == metrics["lecun_hidden"]["z"]
    for a, b in zip(jax.tree.leaves(kept["zeros"]["z"]), jax.tree.leaves(kept["lecun_hidden"]["z"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # after two generations from a 0.25-std draw, the kept hidden kernel is still far from the zeros run's
    gap = np.asarray(kept["lecun_hidden"]["z_hidden"]["hidden"]["kernel"] - kept["zeros"]["z_hidden"]["hidden"]["kernel"])
    assert np.abs(gap).mean() > 0.1
    with pytest.raises(ConfigError, match="lecun_hidden"):
        ControllerStageConfig(init="lecun")
