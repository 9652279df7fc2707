"""Datasets on disk: shards + manifest + checksums; clear errors for missing or corrupt data."""

import jax
import numpy as np
import pytest

from worldmodels_jax.data import Dataset, check_image_env, make_collect_shard, make_env
from worldmodels_jax.envs.actions import ActionEncoder, action_spec
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
