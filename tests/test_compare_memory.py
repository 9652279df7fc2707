"""The LSTM-vs-transformer comparison's parts: equal budgets, one held-out set, shared V, the dream timing, the table."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from worldmodels_jax.compare_memory import (
    MemoryComparisonConfig,
    SharedMPipeline,
    SharedVPipeline,
    arm_configs,
    held_out_nll,
    held_out_split,
    make_dream_rollout,
    markdown_table,
)
from worldmodels_jax.configs import get_preset
from worldmodels_jax.envs.actions import ActionEncoder, action_spec
from worldmodels_jax.envs.dream import DreamEnv, DreamParams
from worldmodels_jax.errors import ConfigError
from worldmodels_jax.models.mdnrnn import MDNRNNConfig
from worldmodels_jax.models.memory import MEMORIES, TransformerSettings, init_memory, make_memory
from worldmodels_jax.pipeline import Pipeline
from worldmodels_jax.train.mdn import SequenceData

Z, N, T = 4, 10, 24
MDN = MDNRNNConfig(z_size=Z, action_size=2, hidden_size=8, num_mixtures=2)
SMALL_TRANSFORMER = TransformerSettings(d_model=8, num_layers=1, num_heads=2, ffn_dim=8, window=4, chunk_size=4)


def _data(seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    first = jnp.zeros((N, T), bool).at[:, 0].set(True).at[:, 13].set(True)
    terminated = jnp.zeros((N, T), bool).at[:, 12].set(True)
    return SequenceData(mu=jax.random.normal(k[0], (N, T, Z)), logvar=jnp.full((N, T, Z), -2.0),
                        action=jax.nn.one_hot(jax.random.randint(k[1], (N, T), 0, 2), 2),
                        reward=jnp.ones((N, T)), terminated=terminated, truncated=jnp.zeros((N, T), bool),
                        first=first)


@dataclasses.dataclass
class _StubArm:
    memory: object
    data: SequenceData

    def sequence_data(self):
        return self.data

    def memory_params(self):
        return jax.jit(init_memory, static_argnums=1)(jax.random.PRNGKey(1), self.memory)


def test_arms_differ_only_in_memory_and_share_v_and_budgets():
    shared, arms = arm_configs(MemoryComparisonConfig())
    assert set(arms) == set(MEMORIES)
    assert dataclasses.replace(arms["lstm"], memory="transformer") == arms["transformer"]
    for arm in arms.values():
        assert (arm.vae, arm.collect, arm.train_vae, arm.train_mdn, arm.seed) == \
               (shared.vae, shared.collect, shared.train_vae, shared.train_mdn, shared.seed)
        assert arm.controller.modes == ("z_h",) and arm.controller.where == "real"
        assert arm.controller.es.target_score is None  # no early stop: the same ES budget for both


def test_a_dream_trained_preset_gets_a_dream_arm_per_memory_with_the_preset_s_dream_settings():
    config = MemoryComparisonConfig(preset="cpu-small", env_id="TakeCover-v0")
    base, arms = arm_configs(config)
    assert base.preset == "takecover-cpu-small" and base.controller.where == "dream"
    assert set(arms) == set(MEMORIES) | {f"{m}-dream" for m in MEMORIES}
    for memory in MEMORIES:
        real, dream = arms[memory], arms[f"{memory}-dream"]
        # the dream arm differs from its memory run only in the controller stage
        assert dataclasses.replace(dream, controller=real.controller) == real
        assert dream.controller.where == "dream" and dream.controller.modes == ("z_h",)
        assert dream.controller.temperature == base.controller.temperature
        assert dream.controller.es == base.controller.es
        # real-env training: TakeCover's cap is long enough to tell a dodger from a random policy
        assert real.controller.where == "real" and real.controller.max_episode_steps == 1000
    assert arms["lstm-dream"].controller == arms["transformer-dream"].controller
    # an explicit cap wins; CartPole keeps its 200
    assert arm_configs(dataclasses.replace(config, train_max_episode_steps=50))[1]["lstm"].controller.max_episode_steps == 50
    assert arm_configs(MemoryComparisonConfig())[1]["lstm"].controller.max_episode_steps == 200


def test_another_seed_changes_the_arms_but_not_the_shared_data_or_v():
    shared0, arms0 = arm_configs(MemoryComparisonConfig())
    shared1, arms1 = arm_configs(MemoryComparisonConfig(seed=1))
    assert shared0 == shared1
    assert {a.seed for a in arms1.values()} == {1}
    assert dataclasses.replace(arms1["lstm"], seed=0) == arms0["lstm"]


def test_default_transformer_gives_the_controller_the_lstm_s_feature_size():
    shared, arms = arm_configs(MemoryComparisonConfig())
    mdn = dataclasses.replace(shared.mdn, action_size=2)
    lstm, transformer = (make_memory(m, mdn, arms[m].transformer) for m in ("lstm", "transformer"))
    assert lstm.feature_size == transformer.feature_size
    def count(module):
        shapes = jax.eval_shape(lambda k: init_memory(k, module), jax.random.PRNGKey(0))
        return sum(np.prod(x.shape) for x in jax.tree.leaves(shapes))

    assert 0.8 < count(transformer) / count(lstm) < 1.25


def test_both_memories_are_scored_on_the_same_held_out_sequences():
    data = _data()
    n = held_out_split(N)
    assert n == 1
    # the training part changes, the held-out part does not: the score must not move
    other = jax.tree.map(lambda a, b: a.at[n:].set(b[n:]), data, _data(seed=5))
    results = {}
    for memory in MEMORIES:
        module = make_memory(memory, MDN, SMALL_TRANSFORMER)
        first = held_out_nll(_StubArm(module, data))
        again = held_out_nll(_StubArm(module, other))
        assert np.isfinite(first["nll_per_dim"])
        assert first["nll_per_dim"] == pytest.approx(again["nll_per_dim"], rel=1e-6)
        assert first["nll_per_step"] == pytest.approx(first["nll_per_dim"] * Z)
        results[memory] = first
    # T - 1 transitions per sequence, minus the one that crosses the episode end at step 12
    assert {r["transitions"] for r in results.values()} == {T - 2}
    assert {r["sequences"] for r in results.values()} == {1}


@pytest.mark.parametrize("memory", MEMORIES)
def test_dream_rollout_runs_every_step_and_is_deterministic(memory):
    from gymnax.environments import spaces

    space = spaces.Discrete(2)
    spec = action_spec(space)
    module = make_memory(memory, MDN, SMALL_TRANSFORMER)
    env = DreamEnv(module, space, ActionEncoder(spec, "onehot"))
    params = DreamParams(memory_params=jax.jit(init_memory, static_argnums=1)(jax.random.PRNGKey(0), module), initial_mu=jnp.zeros((3, Z)),
                         initial_logvar=jnp.zeros((3, Z)), max_steps_in_episode=7)
    rollout = jax.jit(make_dream_rollout(env, params, spec, population=3, steps=10))
    total, z = rollout(jax.random.PRNGKey(2))
    assert float(total) == 3 * 10  # reward 1 for every step of every member, across the auto-reset at 7
    assert z.shape == (3, Z) and np.isfinite(np.asarray(z)).all()
    np.testing.assert_array_equal(z, rollout(jax.random.PRNGKey(2))[1])


def test_arm_reads_the_shared_run_and_refuses_a_different_v(tmp_path):
    tiny = get_preset("tiny")
    shared = Pipeline(tiny, tmp_path / "shared", progress=False)
    arm = SharedVPipeline(dataclasses.replace(tiny, memory="transformer"), tmp_path / "arm", shared, progress=False)
    assert arm.data_dir == shared.data_dir and arm.encoded_dir == shared.encoded_dir
    with pytest.raises(ConfigError, match="shared run"):
        arm.collect()
    other_v = dataclasses.replace(tiny.vae, z_size=tiny.vae.z_size + 1)
    with pytest.raises(ConfigError, match="V settings"):
        SharedVPipeline(dataclasses.replace(tiny, vae=other_v, mdn=dataclasses.replace(tiny.mdn, z_size=other_v.z_size)),
                        tmp_path / "arm2", shared, progress=False)


def test_dream_arm_reads_m_from_its_memory_run_and_refuses_other_m_settings(tmp_path):
    tiny = get_preset("tiny")
    tiny = dataclasses.replace(tiny, mdn=dataclasses.replace(tiny.mdn, done_head=True))  # the dream needs done
    shared = Pipeline(tiny, tmp_path / "shared", progress=False)
    memory_run = SharedVPipeline(tiny, tmp_path / "lstm", shared, progress=False)
    params = init_memory(jax.random.PRNGKey(0), memory_run.memory)
    assert jax.tree.structure(memory_run.memory_params_template()) == jax.tree.structure(params)  # shapes only
    memory_run.run.checkpointer("mdn").save(0, jax.tree.map(lambda x: x + 1.5, params))
    dream_config = dataclasses.replace(tiny, controller=dataclasses.replace(tiny.controller, where="dream"))
    dream_arm = SharedMPipeline(dream_config, tmp_path / "lstm-dream", shared, memory_run, progress=False)
    restored = dream_arm.memory_params()
    assert jax.tree.structure(restored) == jax.tree.structure(params)
    for got, initial in zip(jax.tree.leaves(restored), jax.tree.leaves(params)):
        np.testing.assert_array_equal(got, initial + 1.5)
    assert dream_arm.encoded_dir == shared.encoded_dir
    with pytest.raises(ConfigError, match="memory run"):
        dream_arm.train_mdn()
    with pytest.raises(ConfigError, match="M settings"):
        SharedMPipeline(dataclasses.replace(dream_config, memory="transformer"), tmp_path / "t-dream", shared,
                        memory_run, progress=False)


def test_table_has_a_column_per_memory_and_every_row():
    row = {"memory_params": 100, "controller_params": 10, "feature_size": 8, "train_steps": 5, "batch_shape": [2, 3],
           "train_mdn_s": 1.0, "train_nll_per_dim": 0.5,
           "train_speed": {"per_s": 10.0, "best_per_s": 11.0, "compile_s": 1.0},
           "held_out": {"nll_per_dim": 0.25, "nll_per_step": 1.0, "z_size": 4, "sequences": 1, "transitions": 9},
           "dream": {"per_s": 1e4, "best_per_s": 1.1e4, "compile_s": 1.0},
           "controller": {"generations": 2, "best_eval": 9.0, "seconds": 3.0},
           "score": {"mean": 9.0, "std": 1.0, "episodes": 100}, "random_score": {"mean": 2.0, "std": 1.0, "episodes": 100},
           "evaluate_s": 1.0}
    result = {"env_id": "CartPolePixels-v1", "preset": "tiny", "settings": dataclasses.asdict(MemoryComparisonConfig()),
              "shared_stage_seconds": {"collect": 1.0}, "rows": {"lstm": row, "transformer": row},
              "wall_s_this_call": 3.0, "speeds_s": 1.0, "stage_seconds_total": 9.0, "loadavg_start": [1.0], "loadavg_end": [1.0], "loadavg_speeds": [1.0],
              "devices": ["cpu:0"]}
    table = markdown_table(result)
    assert "| | lstm | transformer |" in table
    assert "dream-trained" not in table
    dream_row = {"best_dream_eval": 500.0, "generations": 2, "seconds": 4.0, "evaluate_s": 1.0,
                 "score": {"mean": 321.0, "std": 12.0, "episodes": 100}, "real_eval_curve": []}
    dream_result = dict(result, rows={m: dict(row, dream_controller=dream_row) for m in ("lstm", "transformer")},
                        dream_controller_settings={"temperature": 1.15,
                                                   "es": {"population": 4, "rollouts": 2, "generations": 2}},
                        train_max_episode_steps=1000)
    dream_table = markdown_table(dream_result)
    assert "| **dream-trained** z_h C: real-env score (mean ± std, 100 ep.) | 321.0 ± 12.0 | 321.0 ± 12.0 |" in dream_table
    assert "capped at 1000 steps" in dream_table and "temperature 1.15" in dream_table
    for label in ("M parameters", "held-out next-z NLL per step", "dream steps/s", "dream compile",
                  "real-env score, z_h C (mean ± std, 100 ep.)", "M training wall time", "C parameters"):
        rows = [line for line in table.splitlines() if line.startswith(f"| {label}")]
        assert len(rows) == 1 and rows[0].count("|") == 4, label
