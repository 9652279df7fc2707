"""DreamEnv obeys the gymnax contract for both memories (LSTM and transformer)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnax.environments import spaces

from worldmodels_jax.envs.actions import ActionEncoder, action_spec
from worldmodels_jax.envs.dream import DreamEnv, DreamParams
from worldmodels_jax.models.mdnrnn import MDNRNNConfig
from worldmodels_jax.models.memory import TransformerSettings, init_memory, make_memory

MDN = MDNRNNConfig(z_size=4, action_size=1, hidden_size=8, num_mixtures=3, done_head=True, restart_input=True)
SMALL_TRANSFORMER = TransformerSettings(d_model=8, num_layers=1, num_heads=2, ffn_dim=16, window=4, chunk_size=4)


def _dream(kind, done_bias, temperature=1.0, max_steps=7):
    memory = make_memory(kind, MDN, SMALL_TRANSFORMER)
    params = init_memory(jax.random.PRNGKey(0), memory)
    params = _set_done_bias(params, done_bias)
    space = spaces.Discrete(3)
    env = DreamEnv(memory, space, ActionEncoder(action_spec(space), "scalar"))
    initial = jax.random.normal(jax.random.PRNGKey(1), (5, 4))
    env_params = DreamParams(memory_params=params, initial_mu=initial, initial_logvar=jnp.full((5, 4), -20.0),
                             temperature=temperature, max_steps_in_episode=max_steps)
    return env, env_params, memory


def _set_done_bias(params, value):
    """Sets the done logit's bias (the last output of the MDN head's dense layer) and zeroes its weights."""
    def fix(path, leaf):
        names = [getattr(p, "key", "") for p in path]
        if "mdn_dense" in names and names[-1] == "bias":
            return leaf.at[-1].set(value)
        if "mdn_dense" in names and names[-1] == "kernel":
            return leaf.at[:, -1].set(0.0)
        return leaf
    return jax.tree_util.tree_map_with_path(fix, params)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_observation_layout_and_reset(kind):
    env, params, memory = _dream(kind, -10.0)
    obs, state = env.reset(jax.random.PRNGKey(2), params)
    extra = 2 if kind == "lstm" else 1
    assert obs.shape == (4 + extra * memory.feature_size,)
    # the episode starts from one of the stored initial latents (logvar -20: no noise)
    assert np.min(np.abs(np.asarray(params.initial_mu) - np.asarray(obs[:4])).sum(-1)) < 1e-3
    assert np.all(np.asarray(obs[4:]) == 0.0)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_done_logit_terminates_and_auto_resets(kind):
    env, params, _ = _dream(kind, +10.0)
    obs, state = env.reset(jax.random.PRNGKey(2), params)
    obs, state, reward, terminated, truncated, info = jax.jit(env.step)(jax.random.PRNGKey(3), state, 1, params)
    assert bool(terminated) and not bool(truncated)
    assert int(state.time) == 0  # auto-reset
    assert float(reward) == 1.0
    assert info["final_observation"].shape == obs.shape


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_truncation_at_the_time_limit(kind):
    env, params, _ = _dream(kind, -10.0, max_steps=5)
    _, state = env.reset(jax.random.PRNGKey(2), params)
    step = jax.jit(env.step)
    for t in range(5):
        _, state, _, terminated, truncated, _ = step(jax.random.PRNGKey(t), state, t % 3, params)
        assert not bool(terminated)
        assert bool(truncated) == (t == 4)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_cold_dream_follows_the_most_likely_component(kind):
    env, params, memory = _dream(kind, -10.0, temperature=1e-8)
    obs, state = env.reset(jax.random.PRNGKey(2), params)
    obs2, state2, *_ = env.step(jax.random.PRNGKey(5), state, 2, params)
    encoded = env.action_encoder(jnp.asarray(2))
    _, output, _ = memory.apply({"params": params.memory_params}, state.carry, state.z, encoded, jnp.asarray(True),
                                method="step")
    best = np.argmax(np.asarray(output.logpi), axis=-1)
    np.testing.assert_allclose(obs2[:4], np.asarray(output.mu)[np.arange(4), best], atol=1e-3)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_vmapped_dream_population(kind):
    env, params, _ = _dream(kind, -10.0)
    keys = jax.random.split(jax.random.PRNGKey(0), 6)
    obs, states = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
    obs, states, reward, *_ = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))(keys, states, jnp.arange(6) % 3, params)
    assert obs.shape[0] == 6 and reward.shape == (6,)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_episodes_read_the_observation_from_the_state_exactly(kind):
    """run_episodes rebuilds the dream's observation from its state (observation_of_state); episodes with and
    without that shortcut, through terminations and auto-resets, give identical returns and lengths, and
    the observation step() returns is observation_of_state of the state it returns."""
    from worldmodels_jax.models.controller import ActionMapping, Controller, ControllerConfig, init_controller
    from worldmodels_jax.rollouts import Agent, WorldModelParams, run_episodes

    env, params, memory = _dream(kind, -10.0)

    def state_dependent_done(path, leaf):  # the done logit depends on h: episodes end at varied times
        names = [getattr(p, "key", "") for p in path]
        if "mdn_dense" in names and names[-1] == "kernel":
            return leaf.at[:, -1].set(jax.random.normal(jax.random.PRNGKey(4), leaf.shape[:1]) * 8.0)
        if "mdn_dense" in names and names[-1] == "bias":
            return leaf.at[-1].set(-1.0)
        return leaf

    params = params.replace(memory_params=jax.tree_util.tree_map_with_path(state_dependent_done, params.memory_params),
                            max_steps_in_episode=9)
    extra = 1 if env.with_cell_state else 0
    config = ControllerConfig(mode="z_c_h" if extra else "z_h", z_size=4, feature_size=memory.feature_size,
                              num_outputs=1)
    agent = Agent(controller=Controller(config), mapping=ActionMapping("thirds", 1), obs_kind="features")
    keys = jax.random.split(jax.random.PRNGKey(7), 6)
    c_params = jax.vmap(lambda k: jax.tree.map(lambda x: x + jax.random.normal(k, x.shape), init_controller(k, config)))(keys)

    class WithoutShortcut(DreamEnv):
        observation_of_state = None

    plain = WithoutShortcut(memory, env.action_space(), env.action_encoder)
    run = jax.jit(run_episodes, static_argnums=(0, 2, 6, 7))
    fast = run(env, params, agent, WorldModelParams(memory=params.memory_params), c_params, keys, 20, 5)
    slow = run(plain, params, agent, WorldModelParams(memory=params.memory_params), c_params, keys, 20, 5)
    np.testing.assert_array_equal(fast.returns, slow.returns)
    np.testing.assert_array_equal(fast.lengths, slow.lengths)
    assert len(set(np.asarray(fast.lengths).tolist())) > 1  # the episodes did not all end alike
    obs, state = env.reset(jax.random.PRNGKey(3), params)
    for t in range(4):
        obs, state, *_ = env.step(jax.random.PRNGKey(10 + t), state, t % 3, params)
        np.testing.assert_array_equal(obs, env.observation_of_state(state))


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_step_without_reset_is_step_before_its_auto_reset(kind):
    """The engine's step for the dream: the same draw as `step`, the stepped state kept at an episode's end."""
    from worldmodels_jax.envs.stepping import step_without_reset

    for done_bias in (-10.0, +10.0):
        env, params, _ = _dream(kind, done_bias)
        _, state = env.reset(jax.random.PRNGKey(2), params)
        step = jax.jit(env.step)
        plain = jax.jit(lambda k, s, a: step_without_reset(env, k, s, a, params))
        for t in range(3):
            key = jax.random.PRNGKey(10 + t)
            obs, nxt, reward, terminated, truncated, info = step(key, state, t % 3, params)
            obs2, nxt2, reward2, terminated2, truncated2 = plain(key, state, t % 3)
            assert (float(reward2), bool(terminated2), bool(truncated2)) == (float(reward), bool(terminated),
                                                                               bool(truncated))
            np.testing.assert_allclose(np.asarray(obs2), np.asarray(info["final_observation"]), rtol=1e-5, atol=1e-6)
            assert int(nxt2.time) == int(state.time) + 1  # never reset
            if not bool(terminated):
                jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                                                                     atol=1e-6), nxt2, nxt)
                state = nxt
            else:
                assert int(nxt.time) == 0
                state = nxt2
