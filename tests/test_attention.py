"""Tests for worldmodels_jax.models.attention: known answers from naive numpy, masks, KV cache, PE, seq2seq."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from worldmodels_jax.errors import ConfigError, ShapeError
from worldmodels_jax.models.attention import (
    CausalTransformer,
    EncoderDecoder,
    LearnedPositionalEncoding,
    MultiHeadAttention,
    TransformerEncoder,
    causal_mask,
    greedy_decode,
    chunk_attention_mask,
    init_kv_cache,
    kv_cache_reset,
    kv_cache_step_offsets,
    kv_cache_update,
    kv_cache_write_sequence,
    mask_to_additive,
    scaled_dot_product_attention,
    sequence_positions,
    sinusoidal_encoding,
    sliding_window_causal_mask,
)


def naive_attention(q, k, v, mask=None, bias=None):
    """Loop-over-everything numpy reference; q [B, Tq, H, D], k/v [B, Tk, H, D], mask bool [B, H, Tq, Tk]."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b_, tq, h_, d = q.shape
    tk = k.shape[1]
    out = np.zeros((b_, tq, h_, v.shape[-1]))
    for b in range(b_):
        for h in range(h_):
            for t in range(tq):
                logits = np.array([q[b, t, h] @ k[b, s, h] / math.sqrt(d) for s in range(tk)])
                if bias is not None:
                    logits = logits + bias[b, h, t]
                allowed = np.ones(tk, bool) if mask is None else mask[b, h, t]
                if not allowed.any():
                    continue  # fully masked row: zeros
                e = np.where(allowed, np.exp(logits - logits[allowed].max()), 0.0)
                w = e / e.sum()
                out[b, t, h] = sum(w[s] * v[b, s, h] for s in range(tk))
    return out


def _qkv(key, b=2, tq=5, tk=7, h=3, d=4, dv=6):
    kq, kk, kv = jax.random.split(key, 3)
    return (
        jax.random.normal(kq, (b, tq, h, d)),
        jax.random.normal(kk, (b, tk, h, d)),
        jax.random.normal(kv, (b, tk, h, dv)),
    )


# ------------------------------------------------------------------------------------------------- attention core


def test_sdpa_matches_naive_numpy_without_mask():
    q, k, v = _qkv(jax.random.PRNGKey(0))
    np.testing.assert_allclose(scaled_dot_product_attention(q, k, v), naive_attention(q, k, v), atol=1e-5)


def test_sdpa_boolean_mask_and_bias_match_naive_numpy():
    key_qkv, key_mask, key_bias = jax.random.split(jax.random.PRNGKey(1), 3)
    q, k, v = _qkv(key_qkv)
    mask = np.array(jax.random.bernoulli(key_mask, 0.5, (2, 3, 5, 7)))
    mask[0, 1, 2, :] = False  # one fully masked row must come back as zeros
    bias = np.asarray(jax.random.normal(key_bias, (2, 3, 5, 7)))
    got = scaled_dot_product_attention(q, k, v, mask=jnp.asarray(mask), bias=jnp.asarray(bias))
    np.testing.assert_allclose(got, naive_attention(q, k, v, mask, bias), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(got)[0, 2, 1], 0.0)


def test_additive_mask_equals_boolean_mask():
    q, k, v = _qkv(jax.random.PRNGKey(2), tq=6, tk=6)
    mask = causal_mask(6)
    got_bool = scaled_dot_product_attention(q, k, v, mask=mask)
    got_add = scaled_dot_product_attention(q, k, v, mask=mask_to_additive(mask))
    np.testing.assert_allclose(got_bool, got_add, atol=1e-6)
    np.testing.assert_allclose(got_bool, naive_attention(q, k, v, np.broadcast_to(mask, (2, 3, 6, 6))), atol=1e-5)


def test_attention_weights_are_a_distribution_over_allowed_keys():
    q, k, v = _qkv(jax.random.PRNGKey(3), tq=6, tk=6)
    _, w = scaled_dot_product_attention(q, k, v, mask=causal_mask(6), return_weights=True)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
    upper = np.triu(np.ones((6, 6), bool), k=1)
    assert np.all(np.asarray(w)[..., upper] == 0.0)  # exactly zero, not just small


def test_sdpa_jit_and_vmap_agree_with_eager():
    q, k, v = _qkv(jax.random.PRNGKey(4))
    mask = causal_mask(7)[:5]
    eager = scaled_dot_product_attention(q, k, v, mask=mask)
    jitted = jax.jit(scaled_dot_product_attention)(q, k, v, mask)
    vmapped = jax.vmap(lambda a, b, c: scaled_dot_product_attention(a, b, c, mask=mask))(q, k, v)
    np.testing.assert_allclose(jitted, eager, atol=1e-6)
    np.testing.assert_allclose(vmapped, eager, atol=1e-6)


def test_sdpa_shape_errors_are_clear():
    q, k, v = _qkv(jax.random.PRNGKey(5))
    with pytest.raises(ShapeError, match="share"):
        scaled_dot_product_attention(q[..., :3], k, v)
    with pytest.raises(ShapeError, match=r"\[..., T, H, Dh\]"):
        scaled_dot_product_attention(q[0, 0], k, v)


def test_sliding_window_mask_known_values():
    m = np.asarray(sliding_window_causal_mask(5, 2))
    expected = np.array(
        [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 1]], bool
    )
    np.testing.assert_array_equal(m, expected)
    seg = jnp.array([0, 0, 1, 1, 1])
    m_seg = np.asarray(sliding_window_causal_mask(5, 3, seg))
    expected_seg = np.array(
        [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]], bool
    )
    np.testing.assert_array_equal(m_seg, expected_seg)


# ------------------------------------------------------------------------------------------------- multi-head


def test_multihead_self_and_cross_attention_match_numpy():
    key_x, key_m, key_init = jax.random.split(jax.random.PRNGKey(6), 3)
    x = jax.random.normal(key_x, (2, 5, 8))
    mem = jax.random.normal(key_m, (2, 7, 8))
    mha = MultiHeadAttention(features=8, num_heads=2)
    params = mha.init(key_init, x, mem)
    p = jax.tree.map(np.asarray, params["params"])

    def ref(xq, xkv, mask=None):
        q = np.einsum("btd,dhk->bthk", xq, p["query"]["kernel"]) + p["query"]["bias"]
        k = np.einsum("btd,dhk->bthk", xkv, p["key"]["kernel"]) + p["key"]["bias"]
        v = np.einsum("btd,dhk->bthk", xkv, p["value"]["kernel"]) + p["value"]["bias"]
        o = naive_attention(q, k, v, mask)
        return np.einsum("bthk,hkd->btd", o, p["out"]["kernel"]) + p["out"]["bias"]

    xn, mn = np.asarray(x), np.asarray(mem)
    apply = jax.jit(mha.apply)
    np.testing.assert_allclose(apply(params, x, mem), ref(xn, mn), atol=1e-5)
    cm = causal_mask(5)
    np.testing.assert_allclose(
        apply(params, x, None, cm), ref(xn, xn, np.broadcast_to(np.asarray(cm), (2, 2, 5, 5))), atol=1e-5
    )


def test_multihead_rejects_indivisible_width():
    with pytest.raises(ConfigError, match="divisible"):
        MultiHeadAttention(features=10, num_heads=3).init(jax.random.PRNGKey(0), jnp.zeros((4, 10)))


# ------------------------------------------------------------------------------------------------- positional


@pytest.mark.parametrize("d", [8, 7])
def test_sinusoidal_values_match_formula(d):
    pos = np.arange(13)
    pe = np.asarray(sinusoidal_encoding(jnp.asarray(pos), d))
    assert pe.shape == (13, d)
    for p in pos:
        for i in range(d):
            angle = p / 10000 ** ((i - i % 2) / d)
            expected = math.sin(angle) if i % 2 == 0 else math.cos(angle)
            assert abs(pe[p, i] - expected) < 1e-5, (p, i)


def test_learned_positional_encoding_reads_table_rows():
    lpe = LearnedPositionalEncoding(max_len=6, features=4)
    params = lpe.init(jax.random.PRNGKey(0), jnp.arange(3))
    table = np.asarray(params["params"]["table"])
    np.testing.assert_array_equal(lpe.apply(params, jnp.array([[5, 0], [2, 2]])), table[[[5, 0], [2, 2]]])
    # gradient flows only into the rows that were read
    g = jax.grad(lambda prm: lpe.apply(prm, jnp.array([1, 3])).sum())(params)["params"]["table"]
    np.testing.assert_array_equal(np.asarray(g).any(-1), [False, True, False, True, False, False])


# ------------------------------------------------------------------------------------------------- causality / cache


@pytest.mark.parametrize("window", [8, 3])
def test_causal_gradient_is_exactly_zero_for_future_inputs(window):
    t_len, layers = 8, 2
    model = CausalTransformer(num_layers=layers, features=8, num_heads=2, ffn_dim=16, window=window)
    x = jax.random.normal(jax.random.PRNGKey(7), (t_len, 8))
    params = jax.jit(model.init)(jax.random.PRNGKey(8), x)
    jac = jax.jit(jax.jacrev(lambda xx: model.apply(params, xx)))(x)  # [T, D, T, D]
    influence = np.abs(np.asarray(jac)).sum(axis=(1, 3))  # [t_out, s_in]
    for t in range(t_len):
        for s in range(t_len):
            reachable = s <= t and t - s <= layers * (window - 1)  # receptive field of stacked windows
            if reachable:
                assert influence[t, s] > 0, (t, s)
            else:
                assert influence[t, s] == 0.0, (t, s)  # exactly zero


@pytest.mark.parametrize("window,t_len,layers", [(8, 6, 1), (4, 11, 2)], ids=["no_wrap", "ring_wraps"])
def test_kv_cache_incremental_decoding_equals_full_recomputation(window, t_len, layers):
    model = CausalTransformer(num_layers=layers, features=16, num_heads=4, ffn_dim=32, window=window)
    x = jax.random.normal(jax.random.PRNGKey(9), (3, t_len, 16))
    params = jax.jit(model.init)(jax.random.PRNGKey(10), x)
    full = jax.jit(model.apply)(params, x)

    @jax.jit
    def incremental(params, x):
        def body(caches, x_t):
            y_t, caches = model.apply(params, x_t, caches, method=CausalTransformer.decode_step)
            return caches, y_t

        _, ys = jax.lax.scan(body, model.init_cache((3,)), jnp.moveaxis(x, 1, 0))
        return jnp.moveaxis(ys, 0, 1)

    np.testing.assert_allclose(incremental(params, x), full, atol=2e-5)
    # vmap over the batch gives the same thing as leading batch axes
    single = jax.jit(jax.vmap(lambda xx: model.apply(params, xx)))(x)
    np.testing.assert_allclose(single, full, atol=1e-5)


def test_kv_cache_is_a_ring_buffer_of_fixed_shape():
    cache = init_kv_cache((), window=3, num_heads=1, head_dim=1)
    for p in range(5):
        cache = kv_cache_update(cache, jnp.full((1, 1), float(p)), jnp.full((1, 1), 10.0 + p))
    assert cache.k.shape == (1, 3, 1)  # [H, W, Dh]
    # tokens 3 and 4 overwrote slots 0 and 1; slot 2 still holds token 2
    np.testing.assert_array_equal(np.asarray(cache.slot_pos), [3, 4, 2])
    np.testing.assert_array_equal(np.asarray(cache.k)[0, :, 0], [3.0, 4.0, 2.0])
    np.testing.assert_array_equal(np.asarray(cache.v)[0, :, 0], [13.0, 14.0, 12.0])
    assert int(cache.next_pos) == 5
    reset = kv_cache_reset(cache, jnp.array(True))
    np.testing.assert_array_equal(np.asarray(reset.slot_pos), [-1, -1, -1])
    assert int(reset.next_pos) == 0
    with pytest.raises(ShapeError, match="k_t"):
        kv_cache_update(cache, jnp.zeros((2, 1)), jnp.zeros((1, 1)))


def test_kv_cache_step_offsets_known_values():
    cache = init_kv_cache((), window=3, num_heads=1, head_dim=1)
    for p in range(4):  # slots now hold positions [3, 1, 2]
        cache = kv_cache_update(cache, jnp.zeros((1, 1)), jnp.zeros((1, 1)))
    offsets, valid = kv_cache_step_offsets(cache)  # token 4 will overwrite slot 1 (position 1)
    np.testing.assert_array_equal(np.asarray(offsets), [1, 0, 2])
    assert np.asarray(valid).all()
    offsets, valid = kv_cache_step_offsets(init_kv_cache((), 3, 1, 1))
    np.testing.assert_array_equal(np.asarray(valid), [True, False, False])
    np.testing.assert_array_equal(np.asarray(offsets), [0, 0, 0])


def test_sequence_positions_known_values():
    pos, after, seg = sequence_positions(jnp.array(5), jnp.array([False, False, True, False, True, False]))
    np.testing.assert_array_equal(np.asarray(pos), [5, 6, 0, 1, 0, 1])
    np.testing.assert_array_equal(np.asarray(after), [False, False, True, True, True, True])
    np.testing.assert_array_equal(np.asarray(seg), [0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize("seed", range(4))
def test_chunk_write_and_mask_equal_token_by_token_updates(seed):
    """kv_cache_write_sequence == a loop of kv_cache_reset + kv_cache_update; chunk_attention_mask marks exactly
    the slots/tokens that per-token decoding can see (window 3, random prefix, random resets)."""
    rng = np.random.default_rng(seed)
    window, t_len = 3, 7
    cache = init_kv_cache((2,), window, 1, 1)
    for p in range(int(rng.integers(0, 6))):  # a prefix of random length
        cache = kv_cache_update(cache, jnp.full((2, 1, 1), -1.0 - p), jnp.full((2, 1, 1), -1.0 - p))
    reset = jnp.asarray(rng.random((2, t_len)) < 0.25)
    k_seq = jnp.asarray(rng.normal(size=(2, t_len, 1, 1)), jnp.float32)
    got = kv_cache_write_sequence(cache, k_seq, 2 * k_seq, reset)
    mask, offsets = chunk_attention_mask(cache, reset)
    ref = cache
    for t in range(t_len):
        ref = kv_cache_update(kv_cache_reset(ref, reset[:, t]), k_seq[:, t], 2 * k_seq[:, t])
        # what decoding token t can see: filled slots of `ref`; compare with the mask over [cache; chunk]
        for b in range(2):
            seen = {float(ref.k[b, 0, w, 0]) for w in range(window) if ref.slot_pos[b, w] >= 0}
            keys = np.concatenate([np.asarray(cache.k[b, 0, :, 0]), np.asarray(k_seq[b, :, 0, 0])])
            assert set(keys[np.asarray(mask[b, t])].tolist()) == seen, (b, t)
            offs = {float(ref.k[b, 0, w, 0]): int(ref.next_pos[b] - 1 - ref.slot_pos[b, w])
                    for w in range(window) if ref.slot_pos[b, w] >= 0}
            for key_value, offset in zip(keys[np.asarray(mask[b, t])], np.asarray(offsets[b, t])[np.asarray(mask[b, t])]):
                assert offs[float(key_value)] == offset
    np.testing.assert_array_equal(got.slot_pos, ref.slot_pos)
    np.testing.assert_array_equal(got.next_pos, ref.next_pos)
    filled = np.asarray(ref.slot_pos >= 0)  # what empty slots hold is unspecified (masked with zero weight)
    np.testing.assert_array_equal(np.asarray(got.k)[:, 0][filled], np.asarray(ref.k)[:, 0][filled])
    np.testing.assert_array_equal(np.asarray(got.v)[:, 0][filled], np.asarray(ref.v)[:, 0][filled])


def test_encoder_padding_mask_hides_padding_tokens():
    pad = 0
    model = EncoderDecoder(6, 6, max_len=6, features=16, num_heads=2, num_encoder_layers=2, num_decoder_layers=1,
                           src_pad_id=pad)
    src_a = jnp.array([[3, 4, 5, pad, pad, pad]])
    src_b = jnp.array([[3, 4, 5, pad, pad, pad]])
    params = jax.jit(model.init)(jax.random.PRNGKey(11), src_a, src_a)
    encode = jax.jit(lambda prm, s: model.apply(prm, s, method=EncoderDecoder.encode))
    mem_a = encode(params, src_a)
    # memory at real tokens must not depend on what sits at padded positions: perturb padding embeddings
    p2 = jax.tree.map(lambda a: a, params)
    p2["params"]["src_embed"]["embedding"] = params["params"]["src_embed"]["embedding"].at[pad].set(5.0)
    mem_b = encode(p2, src_b)
    np.testing.assert_allclose(mem_a[:, :3], mem_b[:, :3], atol=1e-5)
    assert not np.allclose(mem_a[:, 3:], mem_b[:, 3:])


def test_encoder_stack_is_permutation_equivariant_without_positions():
    enc = TransformerEncoder(num_layers=2, features=8, num_heads=2, ffn_dim=16)
    x = jax.random.normal(jax.random.PRNGKey(12), (5, 8))
    params = enc.init(jax.random.PRNGKey(13), x)
    perm = np.array([3, 0, 4, 1, 2])
    apply = jax.jit(enc.apply)
    np.testing.assert_allclose(apply(params, x[perm]), apply(params, x)[perm], atol=1e-5)


def test_greedy_decode_with_cache_matches_teacher_forced_argmax():
    """Cached incremental decoding (learned positions) agrees with one teacher-forced pass on its own output."""
    pos_encoding = "learned"  # the sinusoidal path is decoded greedily in the learning test
    model = EncoderDecoder(7, 8, max_len=6, features=16, num_heads=2, num_encoder_layers=1,
                           num_decoder_layers=2, ffn_dim=32, pos_encoding=pos_encoding)
    src = jax.random.randint(jax.random.PRNGKey(14), (4, 6), 0, 7)
    params = jax.jit(model.init)(jax.random.PRNGKey(15), src, src)
    out = jax.jit(lambda p, s: greedy_decode(model, p, s, bos_id=7, length=6))(params, src)
    tgt_in = jnp.concatenate([jnp.full((4, 1), 7), out[:, :-1]], axis=1)
    logits = jax.jit(model.apply)(params, src, tgt_in)
    np.testing.assert_array_equal(jnp.argmax(logits, -1), out)


# ------------------------------------------------------------------------------------------------- learning


@pytest.mark.slow
def test_encoder_decoder_learns_to_reverse_digit_sequences():
    """Reverse 8 random digits: >= 99% greedy-decoded token accuracy on 1000 held-out sequences."""
    length, vocab, bos = 8, 10, 10
    model = EncoderDecoder(vocab, vocab + 1, length, features=32, num_heads=4, num_encoder_layers=1,
                           num_decoder_layers=1, ffn_dim=64)
    opt = optax.adam(3e-3)

    def batch(key, n):
        src = jax.random.randint(key, (n, length), 0, vocab)
        tgt = src[:, ::-1]
        return src, jnp.concatenate([jnp.full((n, 1), bos), tgt[:, :-1]], axis=1), tgt

    def loss_fn(params, key):
        src, tgt_in, tgt = batch(key, 64)
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(params, src, tgt_in), tgt).mean()

    @jax.jit
    def train(key):
        key_init, key_loop = jax.random.split(key)
        src, tgt_in, _ = batch(key_init, 2)
        params = model.init(key_init, src, tgt_in)

        def body(carry, key_t):
            params_t, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params_t, key_t)
            updates, opt_state = opt.update(grads, opt_state, params_t)
            return (optax.apply_updates(params_t, updates), opt_state), loss

        (params, _), losses = jax.lax.scan(body, (params, opt.init(params)), jax.random.split(key_loop, 200))
        return params, losses

    key_train, key_test = jax.random.split(jax.random.PRNGKey(16))
    params, losses = train(key_train)
    src, _, tgt = batch(key_test, 1000)
    pred = jax.jit(lambda p, s: greedy_decode(model, p, s, bos, length))(params, src)
    acc = float((pred == tgt).mean())
    assert losses[-1] < 0.1 * losses[0]
    assert acc >= 0.99, acc
    # the first output token follows only BOS, so it can only be right by reading the source via cross-attention
    assert float((pred[:, 0] == tgt[:, 0]).mean()) >= 0.99
