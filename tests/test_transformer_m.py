"""Tests for the transformer M: step (KV cache) == observe (chunked), resets, causality, the MDN-RNN interface."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from worldmodels_jax.errors import ConfigError, ShapeError
from worldmodels_jax.models.mdnrnn import MDNOutput, MDNRNNConfig, mdn_nll, mdn_sample
from worldmodels_jax.models.transformer_m import (
    TransformerCarry,
    TransformerM,
    TransformerMConfig,
    count_params,
    init_transformer_m,
)

Z, A = 4, 2


def _config(**kw):
    base = dict(z_size=Z, action_size=A, d_model=16, num_layers=2, num_heads=2, ffn_dim=32, window=4,
                chunk_size=3, reward_head=True, done_head=True)
    base.update(kw)
    return TransformerMConfig(**base)


def _params(cfg, seed=0):
    key_init, key_bias = jax.random.split(jax.random.PRNGKey(seed))
    params = {"params": jax.jit(init_transformer_m, static_argnums=1)(key_init, cfg)}
    # the relative bias starts at zero; make it non-trivial so the tests see positions being used
    table = params["params"]["rel_bias"]["table"]
    params["params"]["rel_bias"]["table"] = jax.random.normal(key_bias, table.shape)
    return params


def _data(b, t, seed=1):
    """Inputs from numpy: a jax.random draw compiles once per shape (~0.4 s each on a 2-core CPU)."""
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.standard_normal((b, t, Z), dtype=np.float32)),
            jnp.asarray(rng.standard_normal((b, t, A), dtype=np.float32)))


def _step_scan(model, params, carry, z, a, reset):
    """Run `step` over [B, T] with lax.scan; returns (final carry, MDNOutput [B, T], features [B, T, D])."""

    def body(carry_t, xs):
        z_t, a_t, reset_t = xs
        carry_tp1, out_t, feat_t = model.apply(params, carry_t, z_t, a_t, reset_t, method=TransformerM.step)
        return carry_tp1, (out_t, feat_t)

    xs = (jnp.swapaxes(z, 0, 1), jnp.swapaxes(a, 0, 1), jnp.swapaxes(reset, 0, 1))
    carry, (out, feats) = jax.lax.scan(body, carry, xs)
    return carry, jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), out), jnp.swapaxes(feats, 0, 1)


def _assert_tree_close(a, b, atol=3e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol)


def _assert_carry_close(a, b, atol=3e-5):
    """Same positions in every slot, same keys/values in filled slots (empty slots' contents are unspecified)."""
    np.testing.assert_allclose(a.h, b.h, atol=atol)
    for ca, cb in zip(a.caches, b.caches, strict=True):
        np.testing.assert_array_equal(ca.slot_pos, cb.slot_pos)
        np.testing.assert_array_equal(ca.next_pos, cb.next_pos)
        filled = np.asarray(ca.slot_pos >= 0)
        k_a, k_b, v_a, v_b = (np.swapaxes(np.asarray(x), -3, -2) for x in (ca.k, cb.k, ca.v, cb.v))  # [.., W, H, D]
        np.testing.assert_allclose(k_a[filled], k_b[filled], atol=atol)
        np.testing.assert_allclose(v_a[filled], v_b[filled], atol=atol)


@pytest.fixture(scope="module")
def setup():
    cfg = _config()
    return cfg, TransformerM(cfg), _params(cfg)


def test_step_with_kv_cache_equals_observe(setup):
    """T = 11 > W = 4, chunks of 3 (a scan of 3 chunks and a remainder of 2); stream 0 has no reset after the
    start, stream 1 has one in the middle."""
    cfg, model, params = setup
    t_len = 11
    z, a = _data(2, t_len)
    reset = jnp.zeros((2, t_len), bool).at[:, 0].set(True).at[1, 6].set(True)
    out_obs, feat_obs, carry_obs = jax.jit(model.apply)(params, z, a, reset)
    carry0 = model.initial_carry((2,))
    carry_step, out_step, feat_step = jax.jit(
        lambda p, c, *xs: _step_scan(model, p, c, *xs)
    )(params, carry0, z, a, reset)
    assert feat_obs.shape == (2, t_len, cfg.d_model) and out_obs.mu.shape == (2, t_len, Z, cfg.num_mixtures)
    np.testing.assert_allclose(feat_step, feat_obs, atol=3e-5)
    _assert_tree_close(out_step, out_obs)
    _assert_carry_close(carry_step, carry_obs)  # the final KV caches agree too, slot for slot
    np.testing.assert_array_equal(carry_obs.h, feat_obs[:, -1])  # carry.h is the last features, as in LSTMCarry


def test_observe_continues_from_a_carry(setup):
    cfg, model, params = setup
    z, a = _data(2, 10)
    reset = jnp.zeros((2, 10), bool).at[:, 0].set(True).at[0, 7].set(True)
    apply = jax.jit(model.apply)
    _, feat_full, carry_full = apply(params, z, a, reset)
    _, feat_1, carry_1 = apply(params, z[:, :5], a[:, :5], reset[:, :5])
    _, feat_2, carry_2 = jax.jit(lambda p, *xs: model.apply(p, *xs, method=TransformerM.observe))(
        params, z[:, 5:], a[:, 5:], reset[:, 5:], carry_1
    )
    np.testing.assert_allclose(jnp.concatenate([feat_1, feat_2], axis=1), feat_full, atol=3e-5)
    _assert_carry_close(carry_2, carry_full)
    assert int(carry_full.caches[0].slot_pos[0, 3]) == -1  # stream 0 restarted at step 7: one slot empty


def test_gradients_respect_causality_window_and_resets(setup):
    """d features_t / d z_s is exactly zero for s > t, for s before a reset at or before t, and beyond the
    receptive field num_layers * (W - 1) = 6; it is nonzero everywhere else."""
    cfg, model, params = setup
    t_len, reset_at = 12, 8
    z, a = _data(1, t_len)
    reset = jnp.zeros((1, t_len), bool).at[0, 0].set(True).at[0, reset_at].set(True)
    jac = jax.jit(jax.jacrev(lambda zz: model.apply(params, zz, a, reset)[1]))(z)  # [1, T, D, 1, T, Z]
    influence = np.abs(np.asarray(jac))[0, :, :, 0].sum(axis=(1, 3))  # [t, s]
    for t in range(t_len):
        for s in range(t_len):
            same_episode = (s >= reset_at) == (t >= reset_at)
            reachable = s <= t and t - s <= cfg.num_layers * (cfg.window - 1) and same_episode
            assert (influence[t, s] > 0) == reachable, (t, s, influence[t, s])
            if not reachable:
                assert influence[t, s] == 0.0


def test_reset_in_step_equals_starting_from_the_initial_carry(setup):
    cfg, model, params = setup
    z, a = _data(3, 6)
    carry, _, _ = jax.jit(lambda p, c, *xs: _step_scan(model, p, c, *xs))(
        params, model.initial_carry((3,)), z, a, jnp.zeros((3, 6), bool)
    )
    step = jax.jit(lambda p, c, *xs: model.apply(p, c, *xs, method=TransformerM.step))
    z_t, a_t = z[:, 0] + 1.0, a[:, 0]
    fresh = step(params, model.initial_carry((3,)), z_t, a_t, jnp.ones((3,), bool))
    after_reset = step(params, carry, z_t, a_t, jnp.ones((3,), bool))
    no_reset = step(params, carry, z_t, a_t, jnp.zeros((3,), bool))
    np.testing.assert_array_equal(after_reset[2], fresh[2])  # features: bit for bit
    _assert_tree_close(after_reset[1], fresh[1], atol=0.0)  # MDN output
    for c_reset, c_fresh in zip(after_reset[0].caches, fresh[0].caches):
        np.testing.assert_array_equal(c_reset.slot_pos, c_fresh.slot_pos)
        np.testing.assert_array_equal(c_reset.next_pos, c_fresh.next_pos)
        np.testing.assert_array_equal(c_reset.k[:, :, 0], c_fresh.k[:, :, 0])  # the one filled slot
    assert not np.allclose(no_reset[2], fresh[2], atol=1e-3)  # without the reset the history matters


def test_step_is_batch_agnostic_under_vmap_and_jit(setup):
    cfg, model, params = setup
    z, a = _data(3, 5)
    reset = jnp.zeros((3, 5), bool)
    carry_b, _, feat_b = jax.jit(lambda p, c, *xs: _step_scan(model, p, c, *xs))(
        params, model.initial_carry((3,)), z, a, reset
    )
    # one stream per vmapped call, with an unbatched carry
    single = jax.jit(jax.vmap(
        lambda zz, aa, rr: _step_scan(model, params, model.initial_carry((1,)), zz[None], aa[None], rr[None])[2][0]
    ))(z, a, reset)
    np.testing.assert_allclose(single, feat_b, atol=1e-5)
    _, out0, f0 = jax.jit(lambda p, c, *xs: model.apply(p, c, *xs, method=TransformerM.step))(
        params, model.initial_carry(()), z[0, 0], a[0, 0], jnp.array(True))
    assert f0.shape == (cfg.d_model,) and out0.mu.shape == (Z, cfg.num_mixtures) and out0.reward.shape == ()
    assert carry_b.caches[0].k.shape == (3, cfg.num_heads, cfg.window, cfg.d_model // cfg.num_heads)


def test_long_dream_keeps_fixed_shapes_and_stays_finite(setup):
    """A dream 10x longer than the window, sampling its own z with mdnrnn.mdn_sample."""
    cfg, model, params = setup
    steps = 40

    @jax.jit
    def dream(params, key):
        key_z0, key_loop = jax.random.split(key)
        z0 = jax.random.normal(key_z0, (2, Z))

        def body(state, key_t):
            carry, z_t, first = state
            carry, out, feat = model.apply(params, carry, z_t, jnp.zeros((2, A)), first, method=TransformerM.step)
            z_tp1 = mdn_sample(key_t, out, 1.0)
            return (carry, z_tp1, jnp.zeros((2,), bool)), feat

        state0 = (model.initial_carry((2,)), z0, jnp.ones((2,), bool))
        (carry, _, _), feats = jax.lax.scan(body, state0, jax.random.split(key_loop, steps))
        return carry, feats

    carry, feats = dream(params, jax.random.PRNGKey(3))
    assert feats.shape == (steps, 2, cfg.d_model)
    assert np.isfinite(np.asarray(feats)).all()
    assert carry.caches[0].k.shape == (2, cfg.num_heads, 4, cfg.d_model // cfg.num_heads)
    np.testing.assert_array_equal(np.asarray(carry.caches[0].slot_pos), [[36, 37, 38, 39]] * 2)
    np.testing.assert_array_equal(np.asarray(carry.caches[0].next_pos), [steps, steps])


def test_mdn_output_is_the_mdnrnn_head():
    cfg = _config(reward_head=False, done_head=False, num_layers=1)
    model = TransformerM(cfg)
    params = _params(cfg)
    z, a = _data(2, 5)
    carry, out, feats = jax.jit(lambda p, c, *xs: model.apply(p, c, *xs, method=TransformerM.step))(
        params, model.initial_carry((2,)), z[:, 0], a[:, 0], jnp.ones((2,), bool))
    assert isinstance(out, MDNOutput) and isinstance(carry, TransformerCarry)
    assert out.mu.shape == out.logsigma.shape == out.logpi.shape == (2, Z, cfg.num_mixtures)
    np.testing.assert_allclose(jax.scipy.special.logsumexp(out.logpi, axis=-1), 0.0, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out.reward), 0.0)  # no reward head: zeros, as in MDNRNN
    assert float(out.done_logit.max()) < -1e3
    assert set(params["params"]["head"]) == {"mdn_dense"}  # mdnrnn.MDNHead's parameters
    assert np.isfinite(float(mdn_nll(out, z[:, 1])))


def test_parameter_count_matches_formula():
    cfg = _config(z_size=32, action_size=3, d_model=64, num_layers=3, num_heads=4, ffn_dim=128, window=16,
                  num_mixtures=5, reward_head=True, done_head=False)
    d, f = cfg.d_model, cfg.ffn_dim
    block = 2 * 2 * d + 4 * (d * d + d) + (d * f + f) + (f * d + d)
    head_out = cfg.z_size * cfg.num_mixtures * 3 + 1
    expected = ((cfg.z_size + cfg.action_size) * d + d) + cfg.window * cfg.num_heads + cfg.num_layers * block \
        + 2 * d + (d * head_out + head_out)
    shapes = jax.eval_shape(lambda k: init_transformer_m(k, cfg), jax.random.PRNGKey(0))
    assert count_params(shapes) == expected == 134_177


def test_config_and_shape_errors(setup):
    with pytest.raises(ConfigError, match="divisible"):
        TransformerMConfig(d_model=10, num_heads=3)
    with pytest.raises(ConfigError, match="window"):
        TransformerMConfig(window=0)
    cfg, model, params = setup
    z, a = _data(2, 5)
    reset = jnp.zeros((2, 5), bool)
    with pytest.raises(ShapeError, match="z"):
        model.apply(params, z[..., :3], a, reset)
    with pytest.raises(ShapeError, match="actions"):
        model.apply(params, z, a[..., :1], reset)
    with pytest.raises(ShapeError, match="batch, time"):
        model.apply(params, z[0], a[0], reset[0])
    with pytest.raises(ShapeError, match="carry batch"):
        model.apply(params, model.initial_carry((3,)), z[:, 0], a[:, 0], reset[:, 0], method=TransformerM.step)


def test_config_from_mdnrnn_config_shares_the_interface_fields():
    mdn_cfg = MDNRNNConfig(z_size=7, action_size=2, hidden_size=64, num_mixtures=3, done_head=True,
                           restart_input=True)
    cfg = TransformerMConfig.from_mdnrnn_config(mdn_cfg, d_model=32, window=8)
    assert (cfg.z_size, cfg.action_size, cfg.num_mixtures, cfg.done_head, cfg.restart_input) == (7, 2, 3, True, True)
    assert cfg.input_size == mdn_cfg.input_size and cfg.hidden_size == 32
    assert TransformerM(cfg).feature_size == 32


@pytest.mark.slow
def test_transformer_m_learns_a_two_step_memory_task():
    """z_{t+1} = z_{t-1} for iid z: unpredictable from z_t alone (NLL 1.42/dim for a N(0,1) guess), exact with
    attention to the previous token; teacher-forced training must reach a much lower NLL than the marginal."""
    cfg = _config(window=4, num_layers=1, d_model=32, ffn_dim=64, reward_head=False, done_head=False,
                  chunk_size=16)
    model = TransformerM(cfg)
    opt = optax.adam(3e-3)

    def batch(key):
        z = jax.random.normal(key, (32, 16, Z))
        z_next = jnp.concatenate([z[:, :1], z[:, :-1]], axis=1)  # target at t is z_{t-1} (t = 0 masked out)
        return z, z_next, jnp.zeros((32, 16), bool).at[:, 0].set(True)

    def loss_fn(params, key):
        z, z_next, reset = batch(key)
        out, _, _ = model.apply({"params": params}, z, jnp.zeros((32, 16, A)), reset)
        return mdn_nll(out, z_next, mask=jnp.arange(16)[None, :] >= 1)

    @jax.jit
    def train(key):
        key_init, key_loop = jax.random.split(key)
        params = init_transformer_m(key_init, cfg)

        def body(carry, key_t):
            params_t, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params_t, key_t)
            updates, opt_state = opt.update(grads, opt_state, params_t)
            return (optax.apply_updates(params_t, updates), opt_state), loss

        (params, _), losses = jax.lax.scan(body, (params, opt.init(params)), jax.random.split(key_loop, 300))
        return params, losses

    key_train, key_test = jax.random.split(jax.random.PRNGKey(5))
    params, losses = train(key_train)
    test_nll = float(jax.jit(loss_fn)(params, key_test))
    assert test_nll < 0.0, (test_nll, losses[::50])
