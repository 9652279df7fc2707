"""Warm-starting C by imitation (`train/imitation.py`, `controller.init = "imitate"`): the demonstrations, the
features C would read in a rollout (against M's teacher-forced `observe`), the fit (recovers a known controller),
the ES starting from it, and the errors."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from worldmodels_jax.configs import ControllerStageConfig, ImitationConfig, get_preset
from worldmodels_jax.data import make_env
from worldmodels_jax.envs.carracing import noisy_scripted_driver, scripted_driver
from worldmodels_jax.errors import ConfigError, ShapeError
from worldmodels_jax.evolution import ESConfig, make_evolution
from worldmodels_jax.models.controller import init_controller
from worldmodels_jax.models.memory import init_memory
from worldmodels_jax.models.vae import ConvVAE, init_vae
from worldmodels_jax.pipeline import Pipeline
from worldmodels_jax.rollouts import WorldModelParams
from worldmodels_jax.train.imitation import collect_demonstrations, controller_features, fit_controller


def _tiny_carracing(tmp_path, **controller):
    tiny = get_preset("tiny")
    config = dataclasses.replace(
        tiny, env_id="CarRacing-v0", mdn=dataclasses.replace(tiny.mdn, action_size=3),
        controller=dataclasses.replace(tiny.controller, action_mapping="carracing", z_sample=False, **controller))
    return Pipeline(config, tmp_path / "run", progress=False)


def _short_episodes(pipeline, steps: int = 5):
    return pipeline.env_params.replace(max_steps_in_episode=steps)


def test_demonstrations_label_each_state_with_the_teacher_and_reset_between_episodes():
    env, params = make_env("CarRacing-v0")
    params = params.replace(max_steps_in_episode=5)

    def noisy(key, state, p):
        return noisy_scripted_driver(key, state, p, 0.3, 0.3)

    collect = jax.jit(lambda k: collect_demonstrations(env, params, scripted_driver, noisy, k, 2, 12))
    demos = collect(jax.random.PRNGKey(0))
    assert demos.obs.shape == (2, 12, 64, 64, 3) and demos.obs.dtype == jnp.uint8
    assert demos.action.shape == demos.label.shape == (2, 12, 3)
    # episodes of 5 steps: first at 0, 5, 10
    np.testing.assert_array_equal(np.asarray(demos.first[0]), np.isin(np.arange(12), [0, 5, 10]))
    # the explorer's noise moves the steering only; gas and brake come from a rescaled speed target
    assert float(jnp.max(jnp.abs(demos.action[..., 0] - demos.label[..., 0]))) > 0.05
    # a noise-free explorer is the teacher: the labels are exactly the actions taken
    same = collect_demonstrations(env, params, scripted_driver, lambda k, s, p: scripted_driver(s, p),
                                  jax.random.PRNGKey(0), 2, 12)
    np.testing.assert_array_equal(np.asarray(same.action), np.asarray(same.label))
    np.testing.assert_array_equal(np.asarray(collect(jax.random.PRNGKey(0)).obs), np.asarray(demos.obs))  # per key
    assert not np.array_equal(np.asarray(collect(jax.random.PRNGKey(1)).action), np.asarray(demos.action))


def test_controller_features_are_what_c_reads_in_a_rollout_matching_m_s_teacher_forced_observe(tmp_path):
    pipeline = _tiny_carracing(tmp_path)
    params = _short_episodes(pipeline)
    agent = pipeline.agent("z_h")
    wm = WorldModelParams(vae=init_vae(jax.random.PRNGKey(1), pipeline.config.vae),
                          memory=init_memory(jax.random.PRNGKey(2), pipeline.memory))
    demos = collect_demonstrations(pipeline.env, params, scripted_driver,
                                   lambda k, s, p: noisy_scripted_driver(k, s, p), jax.random.PRNGKey(3), 2, 12)
    z, h, c = jax.jit(lambda wm, d: controller_features(agent, wm, d))(wm, demos)
    assert z.shape == (2, 12, pipeline.config.vae.z_size) and h.shape == (2, 12, pipeline.memory.feature_size)
    mu, _ = ConvVAE(pipeline.config.vae).apply({"params": wm.vae}, demos.obs, method=ConvVAE.encode)
    np.testing.assert_allclose(np.asarray(z), np.asarray(mu), atol=2e-5)
    # oracle: M teacher-forced over the whole sequence (lstm_sequence), features shifted one step, zero at resets
    _, observed, _ = pipeline.memory.apply({"params": wm.memory}, mu, pipeline.action_encoder(demos.action),
                                           demos.first, method="observe")
    expected = np.concatenate([np.zeros_like(observed[:, :1]), np.asarray(observed[:, :-1])], axis=1)
    expected[np.asarray(demos.first)] = 0.0
    np.testing.assert_allclose(np.asarray(h), expected, atol=2e-5)
    z_only, h_none, _ = controller_features(pipeline.agent("z"), wm, demos)
    assert h_none is None
    np.testing.assert_allclose(np.asarray(z_only), np.asarray(z), atol=1e-6)


def test_fit_controller_recovers_a_known_controller_from_its_own_actions(tmp_path):
    pipeline = _tiny_carracing(tmp_path)
    agent = pipeline.agent("z_h")
    config = agent.controller.config
    k_teacher, k_z, k_h, k_start = jax.random.split(jax.random.PRNGKey(0), 4)
    teacher = jax.tree.map(lambda x: 0.3 * jax.random.normal(k_teacher, x.shape), init_controller(k_teacher, config))
    z = jax.random.normal(k_z, (4, 64, config.z_size))
    h = jax.random.normal(k_h, (4, 64, config.feature_size))
    labels = agent.mapping(agent.controller_outputs(None, teacher, z, h))
    start = init_controller(k_start, config)
    fitted, losses = jax.jit(lambda p: fit_controller(agent, None, p, z, h, None, labels, 1500, 1e-2))(start)
    assert losses.shape == (1500,) and float(losses[-1]) < 1e-3 * float(losses[0])
    for name in ("kernel", "bias"):
        # the brake's output is clipped at 0 (no gradient there), so compare steering and gas exactly
        np.testing.assert_allclose(np.asarray(fitted["out"][name][..., :2]), np.asarray(teacher["out"][name][..., :2]),
                                   atol=0.02)


def test_es_starts_from_the_given_mean_and_rejects_a_misshapen_one():
    template = {"w": jnp.zeros((3, 2)), "b": jnp.zeros((2,))}
    init, _, mean_params = make_evolution(lambda pop, key: jnp.zeros(8), template,
                                          ESConfig(population=8, sigma_init=0.1))
    mean = {"w": jnp.arange(6.0).reshape(3, 2), "b": jnp.array([1.0, -1.0])}
    state = init(jax.random.PRNGKey(0), mean)
    got = mean_params(state)
    np.testing.assert_allclose(np.asarray(got["w"]), np.asarray(mean["w"]))
    np.testing.assert_allclose(np.asarray(got["b"]), np.asarray(mean["b"]))
    np.testing.assert_allclose(np.asarray(mean_params(init(jax.random.PRNGKey(0)))["w"]), 0.0)
    with pytest.raises(ShapeError, match="initial mean"):
        init(jax.random.PRNGKey(0), {"w": jnp.zeros((2, 3)), "b": jnp.zeros((2,))})


def test_controller_stage_starts_the_es_from_the_imitation_fit(tmp_path):
    """init='imitate' end to end on a tiny CarRacing run: the fit improves on its start, CMA-ES's mean at
    generation 0 is the fitted controller (kept in the run directory), and a resumed stage keeps the fit's record."""
    pipeline = _tiny_carracing(
        tmp_path, modes=("z",), init="imitate", normalize_features=False,
        imitation=ImitationConfig(num_envs=2, steps=40, fit_steps=1000, learning_rate=1e-2),
        es=ESConfig(population=4, rollouts=1, generations=1, eval_every=1, eval_episodes=2))
    pipeline.run.checkpointer("vae").save(0, init_vae(jax.random.PRNGKey(0), pipeline.config.vae))
    fitted, record = pipeline.imitation_fit("z")
    assert record["imitation_loss"] < record["imitation_loss_first"] and record["imitation_r2"] > 0.0
    training = pipeline.controller_training("z", pipeline.world_model_params(False))
    state = training.init(jax.random.PRNGKey(0), fitted)
    np.testing.assert_allclose(np.asarray(training.mean_params(state)["out"]["kernel"]),
                               np.asarray(fitted["out"]["kernel"]), atol=1e-6)
    result = pipeline.train_controller()["modes"]["z"]
    assert result["generations"] == 1 and result["imitation_r2"] == pytest.approx(record["imitation_r2"], abs=1e-5)
    kept = pipeline.load_params("imitation-z", fitted)
    np.testing.assert_allclose(np.asarray(kept["out"]["kernel"]), np.asarray(fitted["out"]["kernel"]), atol=1e-6)
    # resumed from the stage's checkpoint (a killed run), the ES is not refitted and the record keeps the fit
    (pipeline.run.path / "stages" / "train-controller-z.json").unlink()
    pipeline.imitation_fit = lambda mode: pytest.fail("a resumed stage refitted the controller")
    resumed = pipeline._train_controller("z")
    assert resumed["imitation_r2"] == pytest.approx(record["imitation_r2"], abs=1e-5)


def test_imitation_settings_are_checked_with_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="controller.init"):
        ControllerStageConfig(init="behaviour_cloning")
    with pytest.raises(ConfigError, match="where='real'"):
        ControllerStageConfig(init="imitate", where="dream")
    for field, bad in (("num_envs", 0), ("fit_steps", 0), ("learning_rate", 0.0), ("steer_noise", -1.0)):
        with pytest.raises(ConfigError, match=field):
            ImitationConfig(**{field: bad})
    tiny = get_preset("tiny")
    with pytest.raises(ConfigError, match="CarRacing-v0 only"):
        Pipeline(dataclasses.replace(tiny, controller=dataclasses.replace(tiny.controller, init="imitate")),
                 tmp_path / "cartpole", progress=False)
    imitate = get_preset("cpu-small-imitate", "CarRacing-v0")
    t500 = get_preset("cpu-small-t500", "CarRacing-v0")  # the budget the imitation study was measured at
    assert imitate.preset == "carracing-cpu-small-imitate" and imitate.controller.init == "imitate"
    assert dataclasses.replace(imitate.controller, init="zeros", es=t500.controller.es) == t500.controller
    assert imitate.controller.es == dataclasses.replace(t500.controller.es, sigma_init=0.2236)
