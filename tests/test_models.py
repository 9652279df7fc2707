"""V, M and C: exact parameter counts, losses against numpy/scipy, sampling statistics, scan vs loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from worldmodels_jax.errors import ConfigError, ShapeError
from worldmodels_jax.models.controller import (ActionMapping, Controller, ControllerConfig, action_mapping_for,
                                               init_controller)
from worldmodels_jax.models import mdnrnn as mdnrnn_module
from worldmodels_jax.models.mdnrnn import (MDNRNN, LSTMCarry, MDNOutput, MDNRNNConfig, done_loss, init_mdnrnn,
                                           mdn_log_prob, mdn_nll, mdn_sample)
from worldmodels_jax.models.vae import (ConvVAE, VAEConfig, for_inference, init_vae, kl_divergence, param_count,
                                        vae_loss)


# ----------------------------------------------------------------------------- parameter counts
@pytest.mark.parametrize("z, expected", [(32, 4_348_547), (64, 4_446_915)])
def test_vae_param_count_matches_paper(z, expected):
    params = jax.eval_shape(lambda: init_vae(jax.random.PRNGKey(0), VAEConfig(z_size=z)))
    assert param_count(params) == expected


def test_mdnrnn_param_counts_match_paper():
    carracing = MDNRNNConfig(z_size=32, action_size=3, hidden_size=256, num_mixtures=5)
    doom = MDNRNNConfig(z_size=64, action_size=1, hidden_size=512, num_mixtures=5, done_head=True, restart_input=True)
    count = lambda c: param_count(jax.eval_shape(lambda: init_mdnrnn(jax.random.PRNGKey(0), c)))  # noqa: E731
    assert count(carracing) == 422_368
    assert count(doom) == 1_678_785


@pytest.mark.parametrize("mode, z, h, outputs, bias, expected", [
    ("z_h", 32, 256, 3, True, 867), ("z", 32, 256, 3, True, 99), ("z_hidden", 32, 256, 3, True, 1443),
    ("z_c_h", 64, 512, 1, False, 1088),
])
def test_controller_param_counts_match_paper(mode, z, h, outputs, bias, expected):
    cfg = ControllerConfig(mode=mode, z_size=z, feature_size=h, num_outputs=outputs, use_bias=bias)
    assert param_count(init_controller(jax.random.PRNGKey(0), cfg)) == expected


# ----------------------------------------------------------------------------- V
SMALL_VAE = VAEConfig(z_size=4, encoder_widths=(4, 4, 8, 8), decoder_widths=(8, 4, 4), decoder_dense=32)


def test_vae_config_takes_widths_as_lists_and_init_vae_accepts_it(key):
    """init_vae is jitted with the config static, so the config must hash: lists become tuples."""
    config = VAEConfig(z_size=4, encoder_widths=[4, 8, 8, 8], decoder_widths=[8, 8, 4], decoder_dense=16)
    assert config.encoder_widths == (4, 8, 8, 8) and config.decoder_widths == (8, 8, 4)
    as_tuples = VAEConfig(z_size=4, encoder_widths=(4, 8, 8, 8), decoder_widths=(8, 8, 4), decoder_dense=16)
    assert config == as_tuples and hash(config) == hash(as_tuples)
    params = init_vae(key, config)
    assert param_count(params) == param_count(init_vae(key, as_tuples))


def test_vae_shapes_and_range(key):
    params = init_vae(key, SMALL_VAE)
    model = ConvVAE(SMALL_VAE)
    apply = jax.jit(model.apply, static_argnames="method")  # one compile, not one per op (eager: ~5x slower here)
    images = jax.random.randint(key, (5, 64, 64, 3), 0, 256).astype(jnp.uint8)
    recon, mu, logvar, z = apply({"params": params}, images, key)
    assert recon.shape == (5, 64, 64, 3) and mu.shape == logvar.shape == z.shape == (5, 4)
    assert float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0
    # encode/decode keep arbitrary leading batch dims
    mu2, _ = apply({"params": params}, images.reshape(1, 5, 64, 64, 3), method=ConvVAE.encode)
    np.testing.assert_allclose(mu2[0], mu, rtol=1e-5, atol=1e-6)


def test_inference_vae_uses_forward_convs_with_the_same_parameters_and_outputs(key):
    params = init_vae(key, SMALL_VAE)
    training = ConvVAE(SMALL_VAE)
    inference = for_inference(training)
    assert inference.config.conv_impl == "forward" and inference.config.encoder_widths == SMALL_VAE.encoder_widths
    assert for_inference(ConvVAE(VAEConfig(conv_impl="fast"))).config.conv_impl == "fast"  # explicit choice kept
    images = jax.random.randint(key, (3, 64, 64, 3), 0, 256).astype(jnp.uint8)
    for method in (ConvVAE.encode,):
        expected = jax.jit(training.apply, static_argnames="method")({"params": params}, images, method=method)
        got = jax.jit(inference.apply, static_argnames="method")({"params": params}, images, method=method)
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got[1], expected[1], rtol=1e-4, atol=1e-5)


def test_kl_matches_numpy_reference():
    rng = np.random.default_rng(0)
    mu, logvar = rng.normal(size=(7, 6)), rng.normal(size=(7, 6))
    # KL(N(mu, s^2) || N(0,1)) = 0.5 (s^2 + mu^2 - 1 - log s^2), computed per dim from the closed form
    sigma2 = np.exp(logvar)
    expected = 0.5 * np.sum(sigma2 + mu**2 - 1.0 - np.log(sigma2), axis=-1)
    np.testing.assert_allclose(kl_divergence(jnp.asarray(mu), jnp.asarray(logvar)), expected, rtol=1e-5)


def test_vae_loss_applies_kl_floor_per_example():
    images = jnp.full((2, 64, 64, 3), 0.5)
    recon = jnp.full((2, 64, 64, 3), 0.25)
    mu = jnp.array([[0.0] * 4, [10.0] * 4])  # KL 0 (floored to 2) and 200
    logvar = jnp.zeros((2, 4))
    loss, metrics = vae_loss(images, recon, mu, logvar, kl_tolerance=0.5)
    assert metrics["reconstruction_loss"] == pytest.approx(64 * 64 * 3 * 0.0625)
    assert metrics["kl_floored"] == pytest.approx((2.0 + 200.0) / 2)
    assert loss == pytest.approx(64 * 64 * 3 * 0.0625 + 101.0)


def test_vae_rejects_non_image_input(key):
    params = init_vae(key, SMALL_VAE)
    with pytest.raises(ShapeError, match="64, 64, 3"):
        ConvVAE(SMALL_VAE).apply({"params": params}, jnp.zeros((2, 4)), method=ConvVAE.encode)


def test_invalid_vae_config_is_a_clear_error():
    with pytest.raises(ConfigError, match="z_size"):
        VAEConfig(z_size=0)
    with pytest.raises(ConfigError, match="encoder_widths"):
        VAEConfig(encoder_widths=(32, 64))


# ----------------------------------------------------------------------------- M
def _random_output(rng, shape, z, k):
    logits = rng.normal(size=(*shape, z, k))
    logpi = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return MDNOutput(logits=jnp.asarray(logpi, jnp.float32), mu=jnp.asarray(rng.normal(size=(*shape, z, k)), jnp.float32),
                     logsigma=jnp.asarray(rng.normal(size=(*shape, z, k)) * 0.5, jnp.float32),
                     reward=jnp.zeros(shape), done_logit=jnp.zeros(shape))


def test_mdn_log_prob_matches_scipy_mixture():
    rng = np.random.default_rng(1)
    out = _random_output(rng, (3,), 4, 5)
    x = rng.normal(size=(3, 4))
    ours = np.asarray(mdn_log_prob(out, jnp.asarray(x, jnp.float32)))
    pi, mu, sigma = np.exp(np.asarray(out.logpi)), np.asarray(out.mu), np.exp(np.asarray(out.logsigma))
    expected = np.log(np.sum(pi * stats.norm.pdf(x[..., None], mu, sigma), axis=-1))
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)
    assert float(mdn_nll(out, jnp.asarray(x, jnp.float32))) == pytest.approx(-expected.mean(), rel=1e-4)


def test_mdn_nll_is_stable_far_from_every_component():
    out = MDNOutput(logits=jnp.log(jnp.full((1, 1, 2), 0.5)), mu=jnp.zeros((1, 1, 2)), logsigma=jnp.full((1, 1, 2), -3.0),
                    reward=jnp.zeros(1), done_logit=jnp.zeros(1))
    nll = mdn_nll(out, jnp.full((1, 1), 50.0))
    assert np.isfinite(float(nll)) and float(nll) > 1e4


def test_mdn_nll_mask_ignores_masked_steps():
    rng = np.random.default_rng(2)
    out = _random_output(rng, (4,), 3, 2)
    x = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
    mask = jnp.array([True, False, True, False])
    sub = jax.tree.map(lambda a: a[jnp.array([0, 2])], out)
    assert float(mdn_nll(out, x, mask)) == pytest.approx(float(mdn_nll(sub, x[jnp.array([0, 2])])), rel=1e-6)


def test_done_loss_weights_positives():
    logit = jnp.array([0.0, 0.0])
    assert float(done_loss(logit, jnp.array([1.0, 0.0]), pos_weight=10.0)) == pytest.approx((10 + 1) * np.log(2) / 2)


def test_temperature_sampling_statistics():
    # one latent dim, two components: weights 0.8/0.2, means -2/+3, sigmas 0.5/1.0
    logpi = jnp.log(jnp.array([[0.8, 0.2]]))
    out = MDNOutput(logits=logpi, mu=jnp.array([[-2.0, 3.0]]), logsigma=jnp.log(jnp.array([[0.5, 1.0]])),
                    reward=jnp.zeros(()), done_logit=jnp.zeros(()))
    keys = jax.random.split(jax.random.PRNGKey(3), 40_000)
    for tau in (1.0, 0.5, 2.0):
        samples = np.asarray(jax.vmap(lambda k: mdn_sample(k, out, tau))(keys))[:, 0]
        w = np.array([0.8, 0.2]) ** (1 / tau)
        w = w / w.sum()
        expected_mean = w @ np.array([-2.0, 3.0])
        expected_var = w @ (np.array([0.25, 1.0]) * tau + np.array([4.0, 9.0])) - expected_mean**2
        assert samples.mean() == pytest.approx(expected_mean, abs=0.05)
        assert samples.var() == pytest.approx(expected_var, rel=0.05)
        above = w[0] * stats.norm.sf(0.5, -2.0, 0.5 * np.sqrt(tau)) + w[1] * stats.norm.sf(0.5, 3.0, np.sqrt(tau))
        assert np.mean(samples > 0.5) == pytest.approx(above, abs=0.01)


def test_component_choice_matches_mixture_weights_chi_square():
    """Inverse-CDF component choice: frequencies match softmax(logπ/τ) (χ² vs scipy); a weight-0 component is never drawn."""
    weights = np.array([0.45, 0.0, 0.25, 0.2, 0.1])
    with np.errstate(divide="ignore"):
        logpi = jnp.asarray(np.log(weights)[None], jnp.float32)
    out = MDNOutput(logits=logpi, mu=jnp.arange(5.0)[None] * 10.0, logsigma=jnp.full((1, 5), -8.0),
                    reward=jnp.zeros(()), done_logit=jnp.zeros(()))
    keys = jax.random.split(jax.random.PRNGKey(5), 20_000)
    for tau in (1.0, 0.7):
        samples = np.asarray(jax.jit(jax.vmap(lambda k: mdn_sample(k, out, tau)))(keys))[:, 0]
        component = np.rint(samples / 10.0).astype(int)
        counts = np.bincount(component, minlength=5)
        assert counts[1] == 0
        expected = np.where(weights > 0, weights, 0.0) ** (1 / tau)
        expected = expected / expected.sum() * len(keys)
        keep = expected > 0
        assert stats.chisquare(counts[keep], expected[keep]).pvalue > 1e-3


def test_temperature_to_zero_gives_most_likely_components_mean():
    rng = np.random.default_rng(4)
    out = _random_output(rng, (), 6, 5)
    z = mdn_sample(jax.random.PRNGKey(0), out, 1e-8)
    best = np.argmax(np.asarray(out.logpi), axis=-1)
    np.testing.assert_allclose(z, np.asarray(out.mu)[np.arange(6), best], atol=1e-3)


def _python_lstm_loop(model, params, z, a, reset):
    carry = model.apply({"params": params}, (z.shape[0],), method=MDNRNN.initial_carry)
    hs, mus = [], []
    for t in range(z.shape[1]):
        carry, out, h = model.apply({"params": params}, carry, z[:, t], a[:, t], reset[:, t], method=MDNRNN.step)
        hs.append(h)
        mus.append(out.mu)
    return jnp.stack(hs, 1), jnp.stack(mus, 1)


@pytest.mark.parametrize("restart_input", [False, True])
def test_lstm_scan_matches_python_loop_with_resets(key, restart_input):
    cfg = MDNRNNConfig(z_size=3, action_size=2, hidden_size=8, num_mixtures=2, done_head=True, restart_input=restart_input)
    model = MDNRNN(cfg)
    params = init_mdnrnn(key, cfg)
    k1, k2 = jax.random.split(key)
    z = jax.random.normal(k1, (2, 9, 3))
    a = jax.random.normal(k2, (2, 9, 2))
    reset = jnp.zeros((2, 9), bool).at[:, 0].set(True).at[0, 4].set(True)
    out, hs, _ = model.apply({"params": params}, z, a, reset, method=MDNRNN.observe)
    loop_hs, loop_mu = _python_lstm_loop(model, params, z, a, reset)
    np.testing.assert_allclose(hs, loop_hs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.mu, loop_mu, rtol=1e-5, atol=1e-6)
    # the reset at t=4 makes sequence 0 from t=4 on independent of its first 4 steps
    z_changed = z.at[0, :4].set(5.0)
    _, hs_changed, _ = model.apply({"params": params}, z_changed, a, reset, method=MDNRNN.observe)
    np.testing.assert_allclose(hs_changed[0, 4:], hs[0, 4:], rtol=1e-5, atol=1e-6)
    assert not np.allclose(hs_changed[0, :4], hs[0, :4])


@pytest.mark.parametrize("block", [4, 9, 16])
def test_lstm_sequence_gradients_equal_autodiff_of_the_step_loop(key, monkeypatch, block):
    """observe's hand-written LSTM backward pass: every parameter's and the initial carry's gradient equals
    autodiff through a Python loop of `step`, with resets mid-sequence and a non-zero initial carry; for 9 steps
    in blocks of 4 (a short first block), 9 and 16 (one block)."""
    monkeypatch.setattr(mdnrnn_module, "BACKWARD_BLOCK", block)
    cfg = MDNRNNConfig(z_size=3, action_size=2, hidden_size=8, num_mixtures=2, restart_input=True)
    model = MDNRNN(cfg)
    params = init_mdnrnn(key, cfg)
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    z, a = jax.random.normal(k1, (2, 9, 3)), jax.random.normal(k2, (2, 9, 2))
    z_next = jax.random.normal(k5, (2, 9, 3))
    reset = jnp.zeros((2, 9), bool).at[0, 4].set(True).at[1, 7].set(True)
    carry0 = LSTMCarry(h=jax.random.normal(k3, (2, 8)), c=jax.random.normal(k4, (2, 8)))

    def scanned(params, carry0):
        out, hs, final = model.apply({"params": params}, z, a, reset, carry0, method=MDNRNN.observe)
        return mdn_nll(out, z_next) + jnp.sum(hs ** 2) * 0.1 + jnp.sum(final.c) * 0.3

    def looped(params, carry):
        hs, outs = [], []
        for t in range(z.shape[1]):
            carry, out, h = model.apply({"params": params}, carry, z[:, t], a[:, t], reset[:, t], method=MDNRNN.step)
            hs.append(h)
            outs.append(out)
        out = jax.tree.map(lambda *x: jnp.stack(x, 1), *outs)
        return mdn_nll(out, z_next) + jnp.sum(jnp.stack(hs, 1) ** 2) * 0.1 + jnp.sum(carry.c) * 0.3

    value, grads = jax.jit(jax.value_and_grad(scanned, argnums=(0, 1)))(params, carry0)
    ref_value, ref_grads = jax.value_and_grad(looped, argnums=(0, 1))(params, carry0)
    assert float(value) == pytest.approx(float(ref_value), rel=1e-5)
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5, err_msg=jax.tree_util.keystr(path))
    # the initial carry's gradient reaches sequence 0 only before its reset: not zero, and finite everywhere
    assert np.all(np.isfinite(np.asarray(grads[1].h))) and np.abs(np.asarray(grads[1].h)).sum() > 0


def test_lstm_sequence_projection_first_or_per_step_agree(key):
    """The GPU/TPU formulation (inputs projected before the loop) and the CPU one (projected in each step's
    matmul) give the same states and the same gradients; the CPU one is checked against a Python loop above."""
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    w_x, w_h = jax.random.normal(k1, (5, 24)) * 0.4, jax.random.normal(k2, (6, 24)) * 0.4
    b = jax.random.normal(k3, (24,)) * 0.1
    inputs = jax.random.normal(k4, (9, 2, 5))
    reset = jnp.zeros((9, 2), bool).at[0].set(True).at[4, 1].set(True)
    weights = jax.random.normal(k5, (9, 2, 6))

    def loss(params, project_first):
        carry, hs = mdnrnn_module.lstm_sequence(*params, LSTMCarry(jnp.zeros((2, 6)), jnp.zeros((2, 6))), inputs,
                                                reset, project_first=project_first)
        return jnp.sum(hs * weights) + jnp.sum(carry.c)

    (v_step, g_step), (v_first, g_first) = (jax.jit(jax.value_and_grad(loss), static_argnums=1)((w_x, w_h, b), p)
                                            for p in (False, True))
    assert float(v_first) == pytest.approx(float(v_step), rel=1e-5)
    for a, b_ in zip(g_first, g_step):
        np.testing.assert_allclose(a, b_, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("chunk_rows", [7, 1024])
@pytest.mark.parametrize("heads", [(False, False), (True, True)])
def test_observe_nll_equals_observe_then_mdn_nll(key, monkeypatch, chunk_rows, heads):
    """The fused training loss: same NLL, reward and done outputs, and same gradients for every parameter as
    observe + mdn_nll, with a mask, resets, and row chunks that do (7) and do not (1024) need padding."""
    monkeypatch.setattr(mdnrnn_module, "FUSED_CHUNK_ROWS", chunk_rows)
    cfg = MDNRNNConfig(z_size=3, action_size=2, hidden_size=8, num_mixtures=4, reward_head=heads[0],
                       done_head=heads[1])
    model = MDNRNN(cfg)
    params = init_mdnrnn(key, cfg)
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(p.size), p.shape), params)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    z, a, z_next = jax.random.normal(k1, (3, 9, 3)), jax.random.normal(k2, (3, 9, 2)), jax.random.normal(k3, (3, 9, 3))
    reset = jnp.zeros((3, 9), bool).at[:, 0].set(True).at[1, 5].set(True)
    mask = jax.random.bernoulli(k4, 0.7, (3, 9))

    def reference(params):
        out, _, _ = model.apply({"params": params}, z, a, reset, method=MDNRNN.observe)
        return mdn_nll(out, z_next, mask) + jnp.sum(out.reward * 0.2) + jnp.sum(jnp.tanh(out.done_logit) * 0.1)

    def fused(params):
        nll, reward, done_logit = model.apply({"params": params}, z, a, reset, z_next, mask, method=MDNRNN.observe_nll)
        return nll + jnp.sum(reward * 0.2) + jnp.sum(jnp.tanh(done_logit) * 0.1)

    ref_value, ref_grads = jax.jit(jax.value_and_grad(reference))(params)
    value, grads = jax.jit(jax.value_and_grad(fused))(params)
    assert float(value) == pytest.approx(float(ref_value), rel=1e-5)
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    # Without a gradient (evaluation) the primal path gives the same value; no mask is mdn_nll's plain mean.
    out, _, _ = model.apply({"params": params}, z, a, reset, method=MDNRNN.observe)
    plain = model.apply({"params": params}, z, a, reset, z_next, method=MDNRNN.observe_nll)[0]
    assert float(plain) == pytest.approx(float(mdn_nll(out, z_next)), rel=1e-5)


def test_observe_nll_rejects_mismatched_targets(key):
    cfg = MDNRNNConfig(z_size=3, action_size=2, hidden_size=8, num_mixtures=2)
    params = init_mdnrnn(key, cfg)
    with pytest.raises(ShapeError, match="z_next"):
        MDNRNN(cfg).apply({"params": params}, jnp.zeros((2, 5, 3)), jnp.zeros((2, 5, 2)), jnp.zeros((2, 5), bool),
                          jnp.zeros((2, 4, 3)), method=MDNRNN.observe_nll)


def test_lstm_cell_matches_numpy_reference(key):
    cfg = MDNRNNConfig(z_size=2, action_size=1, hidden_size=3, num_mixtures=1)
    params = init_mdnrnn(key, cfg)
    x = np.array([[0.3, -0.2, 0.5]], np.float32)
    h0, c0 = np.array([[0.1, 0.2, -0.1]], np.float32), np.array([[0.0, 0.5, -0.5]], np.float32)
    carry, _, h = MDNRNN(cfg).apply({"params": params}, LSTMCarry(jnp.asarray(h0), jnp.asarray(c0)),
                                    jnp.asarray(x[:, :2]), jnp.asarray(x[:, 2:]), jnp.array([False]), method=MDNRNN.step)
    gates = x @ np.asarray(params["w_x"]) + h0 @ np.asarray(params["w_h"]) + np.asarray(params["b"])
    i, j, f, o = np.split(gates, 4, axis=-1)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    c = c0 * sig(f + 1.0) + sig(i) * np.tanh(j)
    np.testing.assert_allclose(carry.c, c, rtol=1e-5)
    np.testing.assert_allclose(h, np.tanh(c) * sig(o), rtol=1e-5)


def test_mdnrnn_jit_and_vmap_agree(key):
    cfg = MDNRNNConfig(z_size=3, action_size=2, hidden_size=8, num_mixtures=2)
    model = MDNRNN(cfg)
    params = init_mdnrnn(key, cfg)
    z = jax.random.normal(key, (4, 5, 3))
    a = jnp.ones((4, 5, 2))
    reset = jnp.zeros((4, 5), bool)
    observe = lambda p, z, a, r: model.apply({"params": p}, z, a, r, method=MDNRNN.observe)[1]  # noqa: E731
    eager = observe(params, z, a, reset)
    jitted = jax.jit(observe)(params, z, a, reset)
    vmapped = jax.vmap(lambda z1, a1, r1: observe(params, z1[None], a1[None], r1[None])[0])(z, a, reset)
    np.testing.assert_allclose(eager, jitted, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(eager, vmapped, rtol=1e-5, atol=1e-6)


def test_mdnrnn_rejects_wrong_shapes(key):
    cfg = MDNRNNConfig(z_size=3, action_size=2, hidden_size=8, num_mixtures=2)
    params = init_mdnrnn(key, cfg)
    with pytest.raises(ShapeError, match="encoded actions"):
        MDNRNN(cfg).apply({"params": params}, jnp.zeros((1, 4, 3)), jnp.zeros((1, 4, 5)), jnp.zeros((1, 4), bool),
                          method=MDNRNN.observe)


def test_mdn_gradients_match_finite_differences(key):
    cfg = MDNRNNConfig(z_size=2, action_size=1, hidden_size=4, num_mixtures=2)
    model = MDNRNN(cfg)
    params = jax.tree.map(lambda x: x.astype(jnp.float64) if False else x, init_mdnrnn(key, cfg))
    z = jax.random.normal(key, (2, 4, 2))
    a = jnp.ones((2, 4, 1))
    reset = jnp.zeros((2, 4), bool)

    def loss(w_x):
        p = {**params, "w_x": w_x}
        out, _, _ = model.apply({"params": p}, z[:, :-1], a[:, :-1], reset[:, :-1], method=MDNRNN.observe)
        return mdn_nll(out, z[:, 1:])

    grad = jax.grad(loss)(params["w_x"])
    eps = 1e-2
    for index in [(0, 0), (1, 3), (2, 10)]:
        bump = jnp.zeros_like(params["w_x"]).at[index].set(eps)
        numeric = (loss(params["w_x"] + bump) - loss(params["w_x"] - bump)) / (2 * eps)
        assert float(grad[index]) == pytest.approx(float(numeric), rel=2e-2, abs=1e-4)


# ----------------------------------------------------------------------------- C
def test_action_mappings():
    from gymnax.environments import spaces

    raw = jnp.array([[0.5, -1.0, 0.7], [-0.2, 1.0, -0.3]])
    carracing = action_mapping_for(spaces.Box(jnp.array([-1.0, 0, 0]), jnp.array([1.0, 1, 1]), (3,)), "carracing")
    np.testing.assert_allclose(carracing(raw), [[0.5, 0.0, 0.7], [-0.2, 1.0, 0.0]])
    thirds = action_mapping_for(spaces.Discrete(3), "thirds")
    np.testing.assert_array_equal(thirds(jnp.array([[-0.9], [0.0], [0.5]])), [0, 1, 2])
    assert action_mapping_for(spaces.Discrete(2)).kind == "threshold"
    np.testing.assert_array_equal(action_mapping_for(spaces.Discrete(2))(jnp.array([[0.1], [-0.1]])), [1, 0])
    assert action_mapping_for(spaces.Discrete(5)).kind == "argmax"
    box = ActionMapping("box", 2, (-2.0, 0.0), (2.0, 1.0))
    np.testing.assert_allclose(box(jnp.array([1.0, -1.0])), [2.0, 0.0])
    with pytest.raises(ConfigError, match="thirds"):
        action_mapping_for(spaces.Discrete(2), "thirds")


def test_controller_modes_use_the_right_inputs(key):
    cfg = ControllerConfig(mode="z", z_size=3, feature_size=5, num_outputs=2)
    params = init_controller(key, cfg)
    out = Controller(cfg).apply({"params": params}, jnp.ones(3), jnp.ones(5) * 100)
    out2 = Controller(cfg).apply({"params": params}, jnp.ones(3), jnp.zeros(5))
    np.testing.assert_allclose(out, out2)  # z-only ignores h
    cfg_h = ControllerConfig(mode="z_h", z_size=3, feature_size=5, num_outputs=2)
    params_h = init_controller(key, cfg_h)
    a = Controller(cfg_h).apply({"params": params_h}, jnp.ones(3), jnp.ones(5))
    b = Controller(cfg_h).apply({"params": params_h}, jnp.ones(3), jnp.zeros(5))
    assert not np.allclose(a, b)
    with pytest.raises(ConfigError, match="mode"):
        ControllerConfig(mode="bogus")
