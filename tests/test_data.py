"""Datasets on disk: shards + manifest + checksums; clear errors for missing or corrupt data."""

import jax
import numpy as np
import pytest

from worldmodels_jax.data import Dataset, check_image_env, make_collect_shard, make_env, random_controller_policy
from worldmodels_jax.envs.actions import ActionEncoder, action_spec
from worldmodels_jax.models.controller import ActionMapping
from worldmodels_jax.errors import ConfigError, DatasetError, EnvError


@pytest.fixture(scope="module")
def shard():
    env, params = make_env("CartPolePixels-v1")
    collect = make_collect_shard(env, params, action_spec(env.action_space(params)), num_envs=4, steps=30)
    return jax.device_get(collect(jax.random.PRNGKey(0)))


def test_collected_sequences_are_consistent(shard):
    assert shard["obs"].shape == (4, 30, 64, 64, 3) and shard["obs"].dtype == np.uint8
    assert shard["first"][:, 0].all()
    ended = shard["terminated"] | shard["truncated"]
    # an episode starts exactly after every end
    np.testing.assert_array_equal(shard["first"][:, 1:], ended[:, :-1])
    # CartPole pays 1 per step
    np.testing.assert_array_equal(shard["reward"], 1.0)


def test_action_hold_keeps_actions_for_at_least_min_frames():
    env, params = make_env("CartPole-v1")
    spec = action_spec(env.action_space(params))
    arrays = jax.device_get(make_collect_shard(env, params, spec, 2, 200, hold_min=5, hold_max=5)(jax.random.PRNGKey(1)))
    actions, first = arrays["action"][0], arrays["first"][0]
    changes = [t for t in range(1, 200) if actions[t] != actions[t - 1] and not first[t]]
    starts = np.maximum.accumulate(np.where(first, np.arange(200), 0))
    assert changes and all((t - starts[t]) % 5 == 0 for t in changes)
    with pytest.raises(ConfigError, match="hold"):
        make_collect_shard(env, params, spec, 2, 10, hold_min=3, hold_max=2)


def test_collection_policy_gets_one_episode_key_per_episode():
    env, params = make_env("Pendulum-v1")
    params = params.replace(max_steps_in_episode=7)
    spec = action_spec(env.action_space(params))

    def episode_constant(key, episode_key, env_state, env_params):
        return jax.random.uniform(episode_key, (1,), minval=-2.0, maxval=2.0)

    arrays = jax.device_get(make_collect_shard(env, params, spec, 2, 20, policy=episode_constant, random_prob=0.0)(
        jax.random.PRNGKey(0)))
    actions, first = arrays["action"][..., 0], arrays["first"]
    assert first.sum() == 2 * 3  # episodes start at steps 0, 7 and 14
    for row, starts in zip(actions, first):
        episode = np.cumsum(starts)
        per_episode = [np.unique(row[episode == e]) for e in (1, 2, 3)]
        assert all(values.size == 1 for values in per_episode)  # one action for a whole episode
        assert len({float(v[0]) for v in per_episode}) == 3  # and a fresh one after each reset
    assert actions[0, 0] != actions[1, 0]


def test_random_controller_policy_matches_the_original_recipe_statistics():
    """Weights and bias ~ N(0, s²), s ~ U(0, 0.01), fed N(0, 1) features: the steering pre-activation has
    E[u²] = E[s²] (n + 1) = (0.01² / 3) (n + 1); gas is 0.5 on average; the brake is on half the time."""
    inputs, samples = 32, 20000
    policy = random_controller_policy(ActionMapping("carracing", 3), inputs)
    step_keys, episode_keys = jax.random.split(jax.random.PRNGKey(0), (2, samples))
    actions = np.asarray(jax.vmap(lambda k, e: policy(k, e, None, None))(step_keys, episode_keys))
    steer, gas, brake = actions.T
    rms = np.sqrt(np.mean(np.arctanh(steer) ** 2))
    np.testing.assert_allclose(rms, np.sqrt(0.01**2 / 3 * (inputs + 1)), rtol=0.05)
    assert abs(gas.mean() - 0.5) < 0.002 and np.all(np.abs(gas - 0.5) < 0.15)
    assert 0.47 < np.mean(brake > 0) < 0.53 and brake.max() < 0.3 and brake.min() == 0.0
    # one controller per episode: an episode's mean steering is its bias s·b, std sqrt(0.01² / 3) = 0.0058 across
    # episodes (0.0066 with the step noise); a controller drawn afresh every step would give 0.033 / sqrt(100)
    per_episode = jax.vmap(lambda e, ks: jax.vmap(lambda k: policy(k, e, None, None))(ks))
    steer_means = np.asarray(per_episode(episode_keys[:200], step_keys[:20000].reshape(200, 100, -1)))[..., 0].mean(1)
    assert 0.0050 < steer_means.std() < 0.0085
    with pytest.raises(ConfigError, match="inputs"):
        random_controller_policy(ActionMapping("carracing", 3), 0)


def test_dataset_roundtrip_and_manifest(tmp_path, shard):
    dataset = Dataset.create(tmp_path / "d", {"env": "x"}, num_shards=2)
    dataset.write_shard(0, shard)
    assert not dataset.complete
    with pytest.raises(DatasetError, match="incomplete"):
        Dataset.open(tmp_path / "d", require_complete=True)
    dataset.write_shard(1, shard)
    reopened = Dataset.open(tmp_path / "d", require_complete=True)
    assert reopened.num_frames == 2 * 4 * 30
    assert reopened.manifest["fields"]["obs"] == {"shape_per_step": [64, 64, 3], "dtype": "uint8"}
    np.testing.assert_array_equal(reopened.load_shard(1)["obs"], shard["obs"])
    assert reopened.load_all(("reward",))["reward"].shape == (8, 30)


def test_missing_and_corrupt_shards_are_clear_errors(tmp_path, shard):
    dataset = Dataset.create(tmp_path / "d", {}, num_shards=1)
    dataset.write_shard(0, shard)
    file = tmp_path / "d" / "shard_00000.npz"
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="corrupt"):
        Dataset.open(tmp_path / "d")
    file.unlink()
    with pytest.raises(DatasetError, match="missing"):
        Dataset.open(tmp_path / "d")
    with pytest.raises(DatasetError, match="collect"):
        Dataset.open(tmp_path / "nowhere")


def test_dataset_with_other_settings_is_refused(tmp_path):
    Dataset.create(tmp_path / "d", {"a": 1}, 1)
    with pytest.raises(DatasetError, match="different settings"):
        Dataset.create(tmp_path / "d", {"a": 2}, 1)


def test_non_image_env_is_rejected_for_v():
    env, params = make_env("CartPole-v1")
    with pytest.raises(EnvError, match="64×64×3"):
        check_image_env(env, params)
    with pytest.raises(EnvError, match="unknown env"):
        make_env("NoSuchEnv-v9")


def test_action_encoders():
    from gymnax.environments import spaces
    import jax.numpy as jnp

    onehot = ActionEncoder(action_spec(spaces.Discrete(3)))
    np.testing.assert_array_equal(onehot(jnp.array([2, 0])), [[0, 0, 1], [1, 0, 0]])
    scalar = ActionEncoder(action_spec(spaces.Discrete(3)), "scalar")
    np.testing.assert_allclose(scalar(jnp.array([0, 1, 2])), [[-1.0], [0.0], [1.0]])
    assert scalar.size == 1 and onehot.size == 3
    with pytest.raises(ConfigError, match="continuous"):
        ActionEncoder(action_spec(spaces.Discrete(3)), "box")
