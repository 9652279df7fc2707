"""Attention building blocks as pure Flax Linen modules and functions.

Shape conventions (leading batch axes `...` are allowed everywhere and broadcast):
  - a sequence of model vectors is `[..., T, D]`;
  - per-head queries, keys and values are `[..., T, H, Dh]` (time, heads, per-head width);
  - attention logits, weights and masks are `[..., H, Tq, Tk]` (masks may omit axes that broadcast);
  - a KV cache stores keys and values head-major, `[..., H, W, Dh]`, the layout both attention matmuls
    want (no transpose of the whole cache per decoding step).

Masks: a boolean mask is True where a query may attend to a key; a floating mask is added to the logits
(0 to keep, a large negative number to drop). Rows in which a boolean mask allows nothing return zeros.

Contents:
  - `scaled_dot_product_attention`, `causal_mask`, `sliding_window_causal_mask`, `mask_to_additive`;
  - `sinusoidal_encoding`, `LearnedPositionalEncoding`, `RelativePositionBias`;
  - `MultiHeadAttention` (self- and cross-attention, with an incremental `decode_step`);
  - `KVCache` and its pure functions `init_kv_cache`, `kv_cache_update`, `kv_cache_reset`,
    `kv_cache_step_offsets`, and for chunks `sequence_positions`, `chunk_attention_mask`,
    `kv_cache_write_sequence`;
  - `FeedForward`, `TransformerBlock` (pre-LN), `CrossAttentionBlock` (pre-LN decoder block);
  - stacks: `TransformerEncoder`, `CausalTransformer` (decoder-only, with a KV cache), `TransformerDecoder`,
    and `EncoderDecoder` with `greedy_decode`.

See docs/attention.md for the equations.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from worldmodels_jax.errors import ConfigError, ShapeError, check

Array = jax.Array


# ----------------------------------------------------------------------------------------------------------------
# Masks and scaled dot-product attention
# ----------------------------------------------------------------------------------------------------------------


def causal_mask(length: int) -> Array:
    """Boolean `[length, length]` mask, True where key position s <= query position t."""
    check(length >= 1, ConfigError, f"causal_mask: length must be >= 1, got {length}")
    idx = jnp.arange(length)
    return idx[None, :] <= idx[:, None]


def sliding_window_causal_mask(
    length: int, window: int, segment_ids: Array | None = None
) -> Array:
    """Boolean `[..., length, length]` banded causal mask: query t sees keys s with t - window < s <= t.

    Every query sees at most `window` tokens, itself included, which is exactly what a ring-buffer KV cache of
    `window` slots holds. With `segment_ids` (`[..., length]` ints), queries see only keys of their own segment
    (an episode reset starts a new segment).
    """
    check(window >= 1, ConfigError, f"sliding_window_causal_mask: window must be >= 1, got {window}")
    idx = jnp.arange(length)
    offset = idx[:, None] - idx[None, :]
    mask = (offset >= 0) & (offset < window)
    if segment_ids is not None:
        if segment_ids.shape[-1] != length:
            raise ShapeError(
                f"sliding_window_causal_mask: segment_ids must end in length {length}, got {segment_ids.shape}"
            )
        same = segment_ids[..., :, None] == segment_ids[..., None, :]
        mask = mask & same
    return mask


def mask_to_additive(mask: Array, dtype: Any = jnp.float32, neg: float = -1e9) -> Array:
    """Turn a boolean mask into an additive one: 0 where True, `neg` where False."""
    if mask.dtype != jnp.bool_:
        raise ShapeError(f"mask_to_additive: expected a boolean mask, got dtype {mask.dtype}")
    return jnp.where(mask, jnp.zeros((), dtype), jnp.asarray(neg, dtype))


def scaled_dot_product_attention(
    q: Array,
    k: Array,
    v: Array,
    mask: Array | None = None,
    bias: Array | None = None,
    return_weights: bool = False,
) -> Array | tuple[Array, Array]:
    """softmax(q k^T / sqrt(Dh) + bias + mask) v, per head.

    Args:
      q: `[..., Tq, H, Dh]` queries.
      k: `[..., Tk, H, Dh]` keys.
      v: `[..., Tk, H, Dv]` values.
      mask: broadcastable to `[..., H, Tq, Tk]`; boolean (True = attend) or floating (added to the logits).
      bias: optional floating `[..., H, Tq, Tk]`-broadcastable term added to the logits (e.g. relative
        position bias).
      return_weights: also return the attention weights `[..., H, Tq, Tk]`.

    Returns:
      `[..., Tq, H, Dv]`, and the weights when asked. Queries whose boolean mask row is all False get zeros.
    """
    if q.ndim < 3 or k.ndim < 3 or v.ndim < 3:
        raise ShapeError(
            f"attention: q, k, v must be [..., T, H, Dh]; got q{q.shape} k{k.shape} v{v.shape}"
        )
    if q.shape[-2:] != k.shape[-2:]:
        raise ShapeError(f"attention: q and k must share (heads, head_dim); got q{q.shape} k{k.shape}")
    if k.shape[-3:-1] != v.shape[-3:-1]:
        raise ShapeError(f"attention: k and v must share (length, heads); got k{k.shape} v{v.shape}")
    out, weights = _attention_heads_major(
        jnp.swapaxes(q, -3, -2), jnp.swapaxes(k, -3, -2), jnp.swapaxes(v, -3, -2), mask, bias
    )
    out = jnp.swapaxes(out, -3, -2)
    if return_weights:
        return out, weights
    return out


def _attention_heads_major(
    q: Array, k: Array, v: Array, mask: Array | None, bias: Array | None
) -> tuple[Array, Array]:
    """The attention of `scaled_dot_product_attention` on head-major `q [..., H, Tq, Dh]`,
    `k [..., H, Tk, Dh]`, `v [..., H, Tk, Dv]`; returns `(out [..., H, Tq, Dv], weights [..., H, Tq, Tk])`."""
    depth = q.shape[-1]
    logits = jnp.einsum("...hqd,...hkd->...hqk", q, k) / jnp.sqrt(jnp.asarray(depth, q.dtype))
    if bias is not None:
        logits = logits + bias
    valid = None
    if mask is not None:
        if mask.dtype == jnp.bool_:
            valid = jnp.broadcast_to(mask, jnp.broadcast_shapes(mask.shape, logits.shape))
            logits = jnp.where(valid, logits, jnp.finfo(logits.dtype).min)
        else:
            logits = logits + mask
    weights = jax.nn.softmax(logits, axis=-1)
    if valid is not None:
        # exp(min - max) underflows to exactly 0, so masked keys get exactly zero weight and zero gradient;
        # rows with no allowed key would be uniform, so zero them.
        weights = jnp.where(jnp.any(valid, axis=-1, keepdims=True), weights, 0.0)
    return jnp.einsum("...hqk,...hkd->...hqd", weights, v), weights


# ----------------------------------------------------------------------------------------------------------------
# Positional encodings
# ----------------------------------------------------------------------------------------------------------------


def sinusoidal_encoding(positions: Array, features: int, base: float = 10000.0) -> Array:
    """PE(pos, 2i) = sin(pos / base^(2i/d)), PE(pos, 2i+1) = cos(pos / base^(2i/d)); `[..., features]`.

    `positions` is any integer or float array; the result has one extra trailing axis of size `features`.
    """
    check(features >= 1, ConfigError, f"sinusoidal_encoding: features must be >= 1, got {features}")
    i = jnp.arange(features)
    two_i = (i - i % 2).astype(jnp.float32)
    inv_freq = 1.0 / (base ** (two_i / features))
    angle = jnp.asarray(positions, jnp.float32)[..., None] * inv_freq
    return jnp.where(i % 2 == 0, jnp.sin(angle), jnp.cos(angle))


class LearnedPositionalEncoding(nn.Module):
    """A learned table `[max_len, features]` indexed by integer positions (clipped to the table)."""

    max_len: int
    features: int
    init_scale: float = 0.02

    @nn.compact
    def __call__(self, positions: Array) -> Array:
        table = self.param(
            "table", nn.initializers.normal(self.init_scale), (self.max_len, self.features)
        )
        return jnp.take(table, jnp.clip(positions, 0, self.max_len - 1), axis=0)


class RelativePositionBias(nn.Module):
    """A learned additive logit bias per head and per relative offset t - s in [0, window).

    Translation invariant, so the same parameters serve any absolute position; used by the transformer M so a
    dream can run longer than any training sequence. `__call__(offsets [...]) -> [..., H]`.
    """

    num_heads: int
    window: int

    @nn.compact
    def __call__(self, offsets: Array) -> Array:
        table = self.param("table", nn.initializers.zeros, (self.window, self.num_heads))
        return jnp.take(table, jnp.clip(offsets, 0, self.window - 1), axis=0)


# ----------------------------------------------------------------------------------------------------------------
# KV cache
# ----------------------------------------------------------------------------------------------------------------


@struct.dataclass
class KVCache:
    """A fixed-size ring buffer of keys and values for incremental causal decoding.

    Token number `p` (counted from the last reset) is written into slot `p % window`, so the buffer always holds
    the last `window` tokens and each step attends to `window` slots: O(window) per step, static shapes.
    """

    k: Array  # [..., H, W, Dh]  (the contents of empty slots are unspecified; attention never reads them)
    v: Array  # [..., H, W, Dv]
    slot_pos: Array  # [..., W] int32: position of the token held in each slot, -1 if empty
    next_pos: Array  # [...] int32: position of the next token to be written

    @property
    def window(self) -> int:
        return self.k.shape[-2]


def init_kv_cache(
    batch_shape: Sequence[int],
    window: int,
    num_heads: int,
    head_dim: int,
    dtype: Any = jnp.float32,
) -> KVCache:
    """An empty cache of `window` slots."""
    check(window >= 1, ConfigError, f"init_kv_cache: window must be >= 1, got {window}")
    batch_shape = tuple(batch_shape)
    return KVCache(
        k=jnp.zeros(batch_shape + (num_heads, window, head_dim), dtype),
        v=jnp.zeros(batch_shape + (num_heads, window, head_dim), dtype),
        slot_pos=jnp.full(batch_shape + (window,), -1, jnp.int32),
        next_pos=jnp.zeros(batch_shape, jnp.int32),
    )


def kv_cache_update(cache: KVCache, k_t: Array, v_t: Array) -> KVCache:
    """Write one token's key `[..., H, Dh]` and value `[..., H, Dv]` into slot `next_pos % W`."""
    want_k = cache.k.shape[:-2] + cache.k.shape[-1:]
    want_v = cache.v.shape[:-2] + cache.v.shape[-1:]
    if k_t.shape != want_k:
        raise ShapeError(f"kv_cache_update: k_t must be {want_k}, got {k_t.shape}")
    if v_t.shape != want_v:
        raise ShapeError(f"kv_cache_update: v_t must be {want_v}, got {v_t.shape}")
    # A scatter of one row per stream (in place inside a scan), not a select over the whole buffer: the write
    # costs O(H Dh) and only the attention read is O(W).
    batch_shape = cache.next_pos.shape
    n = math.prod(batch_shape)
    rows = jnp.arange(n)
    slot = (cache.next_pos % cache.window).reshape(n)

    def write(buf, val):  # buf [..., H, W, D], val [..., H, D]
        flat = buf.reshape((n,) + buf.shape[-3:])
        return flat.at[rows, :, slot].set(val.reshape((n,) + val.shape[-2:]).astype(buf.dtype)).reshape(buf.shape)

    return KVCache(
        k=write(cache.k, k_t),
        v=write(cache.v, v_t),
        slot_pos=cache.slot_pos.reshape(n, -1).at[rows, slot].set(cache.next_pos.reshape(n)).reshape(
            cache.slot_pos.shape
        ),
        next_pos=cache.next_pos + 1,
    )


def kv_cache_reset(cache: KVCache, reset: Array) -> KVCache:
    """Empty the cache where `reset` (bool `[...]`) is True.

    Only the slot positions and the counter change (O(W), not O(W H Dh)): stale keys and values stay in the
    buffer but sit in slots marked empty, which attention masks out with exactly zero weight.
    """
    reset = jnp.asarray(reset, jnp.bool_)
    if reset.shape != cache.next_pos.shape:
        raise ShapeError(f"kv_cache_reset: reset must be {cache.next_pos.shape}, got {reset.shape}")
    return KVCache(
        k=cache.k,
        v=cache.v,
        slot_pos=jnp.where(reset[..., None], -1, cache.slot_pos),
        next_pos=jnp.where(reset, 0, cache.next_pos),
    )


def kv_cache_step_offsets(cache: KVCache) -> tuple[Array, Array]:
    """For the token about to be written (position `next_pos`): `(offset [..., W], valid [..., W])` of every
    slot *after* `kv_cache_update`, i.e. `next_pos - slot_pos` (0 for the token itself) and slot occupancy.

    Use it to build a relative-position bias for `MultiHeadAttention.decode_step`.
    """
    written = jax.nn.one_hot(cache.next_pos % cache.window, cache.window, dtype=jnp.bool_)
    slot_pos = jnp.where(written, cache.next_pos[..., None], cache.slot_pos)
    valid = slot_pos >= 0
    return jnp.where(valid, cache.next_pos[..., None] - slot_pos, 0), valid


def sequence_positions(next_pos: Array, reset_seq: Array) -> tuple[Array, Array, Array]:
    """Positions of a chunk of T tokens that follows a cache whose next position is `next_pos [...]`.

    `reset_seq [..., T]` (bool) marks tokens that start a new episode (position 0, cache cleared before them).
    Returns `(pos [..., T] int32, after_reset [..., T] bool, segment [..., T] int32)`: `after_reset` is True
    for tokens at or after the first reset of the chunk (they cannot see the cache), `segment` counts resets.
    """
    reset_seq = jnp.asarray(reset_seq, jnp.bool_)
    if reset_seq.shape[:-1] != next_pos.shape:
        raise ShapeError(
            f"sequence_positions: reset_seq batch shape {reset_seq.shape[:-1]} != cache batch {next_pos.shape}"
        )
    idx = jnp.arange(reset_seq.shape[-1], dtype=jnp.int32)
    last_reset = jax.lax.cummax(jnp.where(reset_seq, idx, -1), axis=reset_seq.ndim - 1)
    after_reset = last_reset >= 0
    pos = jnp.where(after_reset, idx - last_reset, next_pos[..., None] + idx).astype(jnp.int32)
    return pos, after_reset, jnp.cumsum(reset_seq, axis=-1, dtype=jnp.int32)


def chunk_attention_mask(cache: KVCache, reset_seq: Array) -> tuple[Array, Array]:
    """Mask and relative offsets for a chunk of T new tokens attending to `[cache slots ; chunk tokens]`.

    Returns `(mask [..., T, W + T] bool, offsets [..., T, W + T] int32)`. Query t sees a key iff the key is at
    most `W - 1` positions back in the same episode (no reset in between), exactly what `W` ring-buffer slots
    hold in incremental decoding, so chunked processing equals token-by-token decoding.
    """
    window = cache.window
    pos, after_reset, segment = sequence_positions(cache.next_pos, reset_seq)
    off_cache = pos[..., :, None] - cache.slot_pos[..., None, :]  # [..., T, W]
    mask_cache = (cache.slot_pos[..., None, :] >= 0) & ~after_reset[..., :, None] & (off_cache < window)
    t_len = reset_seq.shape[-1]
    idx = jnp.arange(t_len)
    off_new = pos[..., :, None] - pos[..., None, :]  # [..., T, T]
    mask_new = (
        (idx[:, None] >= idx[None, :])
        & (segment[..., :, None] == segment[..., None, :])
        & (off_new < window)
    )
    mask = jnp.concatenate([mask_cache, mask_new], axis=-1)
    offsets = jnp.concatenate([off_cache, off_new], axis=-1)
    return mask, jnp.where(mask, offsets, 0).astype(jnp.int32)


def kv_cache_write_sequence(cache: KVCache, k_seq: Array, v_seq: Array, reset_seq: Array) -> KVCache:
    """The cache after writing a chunk of T tokens (time-major keys `[..., T, H, Dh]`, values `[..., T, H, Dv]`),
    with `reset_seq [..., T]` clearing it before flagged tokens. Equal to T calls of `kv_cache_reset` and
    `kv_cache_update`, but one O(W) gather: slot w ends up holding the one position in [P - W, P) congruent to
    w mod W, where P is the final next position.
    """
    for name, seq, buf in (("k_seq", k_seq, cache.k), ("v_seq", v_seq, cache.v)):
        if seq.ndim != buf.ndim or seq.shape[:-3] != buf.shape[:-3] or seq.shape[-2:] != (buf.shape[-3], buf.shape[-1]):
            raise ShapeError(
                f"kv_cache_write_sequence: {name} must be [..., T, H, D] matching a cache [..., H, W, D] = "
                f"{buf.shape}, got {seq.shape}"
            )
    window, t_len = cache.window, k_seq.shape[-3]
    pos, _, _ = sequence_positions(cache.next_pos, reset_seq)
    final_next = pos[..., -1] + 1  # [...]
    last = final_next[..., None] - 1  # [..., 1]
    w = jnp.arange(window)
    slot_pos = last - (last - w) % window  # [..., W]
    t_idx = (t_len - 1) - (last - slot_pos)  # index in the chunk, < 0: an older token still in the cache
    from_chunk = t_idx >= 0
    valid = slot_pos >= 0
    take = jnp.clip(t_idx, 0, t_len - 1)[..., :, None, None]
    k_new = jnp.swapaxes(jnp.take_along_axis(k_seq, take, axis=-3), -3, -2)  # [..., H, W, Dh]
    v_new = jnp.swapaxes(jnp.take_along_axis(v_seq, take, axis=-3), -3, -2)
    sel = (valid & from_chunk)[..., None, :, None]  # empty slots keep whatever they held, as in kv_cache_reset
    return KVCache(
        k=jnp.where(sel, k_new, cache.k).astype(cache.k.dtype),
        v=jnp.where(sel, v_new, cache.v).astype(cache.v.dtype),
        slot_pos=jnp.where(valid, slot_pos, -1).astype(jnp.int32),
        next_pos=final_next.astype(jnp.int32),
    )


# ----------------------------------------------------------------------------------------------------------------
# Multi-head attention
# ----------------------------------------------------------------------------------------------------------------


class MultiHeadAttention(nn.Module):
    """Multi-head attention with per-head Q, K, V projections and an output projection.

    `__call__(x_q, x_kv=None, mask=None, bias=None)`: self-attention when `x_kv` is None, cross-attention
    otherwise. `decode_step(x_t, cache, bias=None)` does one causal self-attention step against a `KVCache`.
    """

    features: int  # model width D (output width)
    num_heads: int
    head_dim: int | None = None  # defaults to features // num_heads
    use_bias: bool = True

    def setup(self):
        check(self.num_heads >= 1, ConfigError, f"MultiHeadAttention: num_heads must be >= 1, got {self.num_heads}")
        if self.head_dim is None:
            check(
                self.features % self.num_heads == 0,
                ConfigError,
                f"MultiHeadAttention: features={self.features} must be divisible by num_heads={self.num_heads} "
                "(or give head_dim)",
            )
        hd = self.dh
        self.query = nn.DenseGeneral((self.num_heads, hd), use_bias=self.use_bias, name="query")
        self.key = nn.DenseGeneral((self.num_heads, hd), use_bias=self.use_bias, name="key")
        self.value = nn.DenseGeneral((self.num_heads, hd), use_bias=self.use_bias, name="value")
        self.out = nn.DenseGeneral(self.features, axis=(-2, -1), use_bias=self.use_bias, name="out")

    @property
    def dh(self) -> int:
        return self.head_dim if self.head_dim is not None else self.features // self.num_heads

    def __call__(
        self,
        x_q: Array,
        x_kv: Array | None = None,
        mask: Array | None = None,
        bias: Array | None = None,
    ) -> Array:
        if x_q.ndim < 2:
            raise ShapeError(f"MultiHeadAttention: x_q must be [..., T, D], got {x_q.shape}")
        x_kv = x_q if x_kv is None else x_kv
        if x_kv.ndim < 2:
            raise ShapeError(f"MultiHeadAttention: x_kv must be [..., T, D], got {x_kv.shape}")
        q, k, v = self.query(x_q), self.key(x_kv), self.value(x_kv)
        return self.out(scaled_dot_product_attention(q, k, v, mask=mask, bias=bias))

    def attend_with_prefix(
        self,
        x: Array,
        prefix_k: Array,
        prefix_v: Array,
        mask: Array | None = None,
        bias: Array | None = None,
    ) -> tuple[Array, Array, Array]:
        """Self-attention of a chunk `x [..., T, D]` over `[prefix ; chunk]` keys and values.

        `prefix_k/v [..., H, P, Dh]` are head-major (a KV cache's slots); `mask`/`bias` broadcast to
        `[..., H, T, P + T]`. Returns `(y [..., T, D], k [..., T, H, Dh], v [..., T, H, Dh])`, the chunk's own
        keys and values.
        """
        q, k, v = self.query(x), self.key(x), self.value(x)
        keys = jnp.concatenate([prefix_k, jnp.swapaxes(k, -3, -2)], axis=-2)
        values = jnp.concatenate([prefix_v, jnp.swapaxes(v, -3, -2)], axis=-2)
        y, _ = _attention_heads_major(jnp.swapaxes(q, -3, -2), keys, values, mask, bias)
        return self.out(jnp.swapaxes(y, -3, -2)), k, v

    def decode_step(
        self, x_t: Array, cache: KVCache, bias: Array | None = None
    ) -> tuple[Array, KVCache]:
        """One causal self-attention step: `x_t [..., D]`, cache -> (`y_t [..., D]`, cache with x_t added).

        `bias` (optional) is `[..., H, W]`, aligned with the cache slots after the update.
        """
        if x_t.shape[:-1] != cache.next_pos.shape:
            raise ShapeError(
                f"MultiHeadAttention.decode_step: x_t batch shape {x_t.shape[:-1]} != cache batch shape "
                f"{cache.next_pos.shape}"
            )
        q_t, k_t, v_t = self.query(x_t), self.key(x_t), self.value(x_t)
        cache = kv_cache_update(cache, k_t, v_t)
        valid = cache.slot_pos >= 0  # [..., W]
        y, _ = _attention_heads_major(
            q_t[..., :, None, :],  # [..., H, 1, Dh]
            cache.k,
            cache.v,
            valid[..., None, None, :],
            None if bias is None else bias[..., :, None, :],
        )
        return self.out(y[..., :, 0, :]), cache


# ----------------------------------------------------------------------------------------------------------------
# Pre-LN blocks
# ----------------------------------------------------------------------------------------------------------------


class FeedForward(nn.Module):
    """Position-wise feed-forward network: Dense(hidden) -> GELU -> Dense(features)."""

    features: int
    hidden: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return nn.Dense(self.features, name="fc2")(nn.gelu(nn.Dense(self.hidden, name="fc1")(x)))


class TransformerBlock(nn.Module):
    """Pre-LN self-attention block: x + MHA(LN(x)), then x + FFN(LN(x)).

    Encoder block with a padding (or no) mask; causal block with a causal mask. `decode_step` runs it for one
    token against a `KVCache` (causal use).
    """

    features: int
    num_heads: int
    ffn_dim: int

    def setup(self):
        self.ln_attn = nn.LayerNorm(name="ln_attn")
        self.attn = MultiHeadAttention(self.features, self.num_heads, name="attn")
        self.ln_ffn = nn.LayerNorm(name="ln_ffn")
        self.ffn = FeedForward(self.features, self.ffn_dim, name="ffn")

    def __call__(self, x: Array, mask: Array | None = None, bias: Array | None = None) -> Array:
        x = x + self.attn(self.ln_attn(x), mask=mask, bias=bias)
        return x + self.ffn(self.ln_ffn(x))

    def call_with_prefix(
        self, x: Array, prefix_k: Array, prefix_v: Array, mask: Array, bias: Array | None = None
    ) -> tuple[Array, Array, Array]:
        a, k, v = self.attn.attend_with_prefix(self.ln_attn(x), prefix_k, prefix_v, mask=mask, bias=bias)
        x = x + a
        return x + self.ffn(self.ln_ffn(x)), k, v

    def decode_step(
        self, x_t: Array, cache: KVCache, bias: Array | None = None
    ) -> tuple[Array, KVCache]:
        a, cache = self.attn.decode_step(self.ln_attn(x_t), cache, bias=bias)
        x_t = x_t + a
        return x_t + self.ffn(self.ln_ffn(x_t)), cache


class CrossAttentionBlock(nn.Module):
    """Pre-LN decoder block: causal self-attention, cross-attention to `memory`, FFN, each with a residual."""

    features: int
    num_heads: int
    ffn_dim: int

    def setup(self):
        self.ln_self = nn.LayerNorm(name="ln_self")
        self.self_attn = MultiHeadAttention(self.features, self.num_heads, name="self_attn")
        self.ln_cross = nn.LayerNorm(name="ln_cross")
        self.cross_attn = MultiHeadAttention(self.features, self.num_heads, name="cross_attn")
        self.ln_ffn = nn.LayerNorm(name="ln_ffn")
        self.ffn = FeedForward(self.features, self.ffn_dim, name="ffn")

    def __call__(
        self,
        y: Array,
        memory: Array,
        self_mask: Array | None = None,
        cross_mask: Array | None = None,
    ) -> Array:
        y = y + self.self_attn(self.ln_self(y), mask=self_mask)
        y = y + self.cross_attn(self.ln_cross(y), memory, mask=cross_mask)
        return y + self.ffn(self.ln_ffn(y))

    def decode_step(
        self, y_t: Array, cache: KVCache, memory: Array, cross_mask: Array | None = None
    ) -> tuple[Array, KVCache]:
        """`y_t [..., D]`; `memory [..., S, D]`; `cross_mask` broadcastable to `[..., H, 1, S]`."""
        a, cache = self.self_attn.decode_step(self.ln_self(y_t), cache)
        y_t = y_t + a
        y_t = y_t + self.cross_attn(self.ln_cross(y_t)[..., None, :], memory, mask=cross_mask)[..., 0, :]
        return y_t + self.ffn(self.ln_ffn(y_t)), cache


# ----------------------------------------------------------------------------------------------------------------
# Stacks
# ----------------------------------------------------------------------------------------------------------------


class TransformerEncoder(nn.Module):
    """`num_layers` pre-LN self-attention blocks and a final LayerNorm; `__call__(x [..., T, D], mask)`."""

    num_layers: int
    features: int
    num_heads: int
    ffn_dim: int

    def setup(self):
        self.blocks = [
            TransformerBlock(self.features, self.num_heads, self.ffn_dim, name=f"block_{i}")
            for i in range(self.num_layers)
        ]
        self.ln_final = nn.LayerNorm(name="ln_final")

    def __call__(self, x: Array, mask: Array | None = None, bias: Array | None = None) -> Array:
        for block in self.blocks:
            x = block(x, mask=mask, bias=bias)
        return self.ln_final(x)


class CausalTransformer(nn.Module):
    """Decoder-only stack of causal pre-LN blocks with a sliding window of `window` tokens.

    `__call__(x [..., T, D], mask=None, bias=None)`: full recomputation; by default the banded causal mask of
      `window`, so each position sees itself and at most `window - 1` earlier tokens.
    `init_cache(batch_shape)`: one empty `KVCache` per layer (a tuple).
    `decode_step(x_t [..., D], caches, bias=None)`: one token, O(window) per layer; equals `__call__` at that
      position.
    `decode_chunk(x [..., T, D], caches, reset=None, bias=None)`: T tokens after a cache, in parallel.
    """

    num_layers: int
    features: int
    num_heads: int
    ffn_dim: int
    window: int

    def setup(self):
        check(self.window >= 1, ConfigError, f"CausalTransformer: window must be >= 1, got {self.window}")
        self.blocks = [
            TransformerBlock(self.features, self.num_heads, self.ffn_dim, name=f"block_{i}")
            for i in range(self.num_layers)
        ]
        self.ln_final = nn.LayerNorm(name="ln_final")

    def __call__(self, x: Array, mask: Array | None = None, bias: Array | None = None) -> Array:
        if x.ndim < 2 or x.shape[-1] != self.features:
            raise ShapeError(f"CausalTransformer: x must be [..., T, {self.features}], got {x.shape}")
        if mask is None:
            mask = sliding_window_causal_mask(x.shape[-2], self.window)
        for block in self.blocks:
            x = block(x, mask=mask, bias=bias)
        return self.ln_final(x)

    def init_cache(self, batch_shape: Sequence[int], dtype: Any = jnp.float32) -> tuple[KVCache, ...]:
        check(
            self.features % self.num_heads == 0,
            ConfigError,
            f"CausalTransformer: features={self.features} must be divisible by num_heads={self.num_heads}",
        )
        return tuple(
            init_kv_cache(batch_shape, self.window, self.num_heads, self.features // self.num_heads, dtype)
            for _ in range(self.num_layers)
        )

    def decode_step(
        self, x_t: Array, caches: tuple[KVCache, ...], bias: Array | None = None
    ) -> tuple[Array, tuple[KVCache, ...]]:
        if x_t.shape[-1] != self.features:
            raise ShapeError(f"CausalTransformer.decode_step: x_t must be [..., {self.features}], got {x_t.shape}")
        if len(caches) != self.num_layers:
            raise ShapeError(f"CausalTransformer.decode_step: expected {self.num_layers} caches, got {len(caches)}")
        new_caches = []
        for block, cache in zip(self.blocks, caches):
            x_t, cache = block.decode_step(x_t, cache, bias=bias)
            new_caches.append(cache)
        return self.ln_final(x_t), tuple(new_caches)

    def decode_chunk(
        self,
        x: Array,
        caches: tuple[KVCache, ...],
        reset: Array | None = None,
        bias: Array | None = None,
    ) -> tuple[Array, tuple[KVCache, ...]]:
        """A chunk of T tokens `x [..., T, D]` after `caches` -> (`y [..., T, D]`, caches after the chunk).

        Equals T calls of `decode_step` (with `kv_cache_reset` where `reset [..., T]` is True) in one parallel
        pass of O(T (W + T)) attention. `bias` (optional) broadcasts to `[..., H, T, W + T]`; build it from the
        offsets of `chunk_attention_mask(caches[0], reset)`.
        """
        if x.ndim < 2 or x.shape[-1] != self.features:
            raise ShapeError(f"CausalTransformer.decode_chunk: x must be [..., T, {self.features}], got {x.shape}")
        if len(caches) != self.num_layers:
            raise ShapeError(f"CausalTransformer.decode_chunk: expected {self.num_layers} caches, got {len(caches)}")
        if reset is None:
            reset = jnp.zeros(x.shape[:-1], jnp.bool_)
        mask, _ = chunk_attention_mask(caches[0], reset)
        mask = mask[..., None, :, :]
        new_caches = []
        for block, cache in zip(self.blocks, caches):
            x, k, v = block.call_with_prefix(x, cache.k, cache.v, mask, bias)
            new_caches.append(kv_cache_write_sequence(cache, k, v, reset))
        return self.ln_final(x), tuple(new_caches)


class TransformerDecoder(nn.Module):
    """Stack of pre-LN decoder blocks (causal self-attention + cross-attention) and a final LayerNorm."""

    num_layers: int
    features: int
    num_heads: int
    ffn_dim: int

    def setup(self):
        self.blocks = [
            CrossAttentionBlock(self.features, self.num_heads, self.ffn_dim, name=f"block_{i}")
            for i in range(self.num_layers)
        ]
        self.ln_final = nn.LayerNorm(name="ln_final")

    def __call__(
        self, y: Array, memory: Array, cross_mask: Array | None = None
    ) -> Array:
        self_mask = causal_mask(y.shape[-2])
        for block in self.blocks:
            y = block(y, memory, self_mask=self_mask, cross_mask=cross_mask)
        return self.ln_final(y)

    def decode_step(
        self,
        y_t: Array,
        caches: tuple[KVCache, ...],
        memory: Array,
        cross_mask: Array | None = None,
    ) -> tuple[Array, tuple[KVCache, ...]]:
        new_caches = []
        for block, cache in zip(self.blocks, caches):
            y_t, cache = block.decode_step(y_t, cache, memory, cross_mask=cross_mask)
            new_caches.append(cache)
        return self.ln_final(y_t), tuple(new_caches)


class EncoderDecoder(nn.Module):
    """Token-to-token encoder–decoder transformer (pre-LN), for sequence-to-sequence tasks.

    `__call__(src [..., S], tgt_in [..., T]) -> logits [..., T, tgt_vocab]` (teacher forcing; `tgt_in` is the
    target shifted right behind a BOS token). `encode`, `decode_step` and `init_cache` serve `greedy_decode`.
    Token ids must lie in [0, vocab); `src_pad_id` (optional) marks source padding that is masked out.
    """

    src_vocab: int
    tgt_vocab: int
    max_len: int
    features: int = 64
    num_heads: int = 4
    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    ffn_dim: int = 128
    pos_encoding: str = "sinusoidal"  # "sinusoidal" | "learned"
    src_pad_id: int | None = None

    def setup(self):
        check(
            self.pos_encoding in ("sinusoidal", "learned"),
            ConfigError,
            f"EncoderDecoder: pos_encoding must be 'sinusoidal' or 'learned', got {self.pos_encoding!r}",
        )
        self.src_embed = nn.Embed(self.src_vocab, self.features, name="src_embed")
        self.tgt_embed = nn.Embed(self.tgt_vocab, self.features, name="tgt_embed")
        if self.pos_encoding == "learned":
            self.src_pos = LearnedPositionalEncoding(self.max_len, self.features, name="src_pos")
            self.tgt_pos = LearnedPositionalEncoding(self.max_len, self.features, name="tgt_pos")
        self.encoder = TransformerEncoder(
            self.num_encoder_layers, self.features, self.num_heads, self.ffn_dim, name="encoder"
        )
        self.decoder = TransformerDecoder(
            self.num_decoder_layers, self.features, self.num_heads, self.ffn_dim, name="decoder"
        )
        self.head = nn.Dense(self.tgt_vocab, name="head")

    def _pos(self, which: str, positions: Array) -> Array:
        if self.pos_encoding == "sinusoidal":
            return sinusoidal_encoding(positions, self.features)
        return (self.src_pos if which == "src" else self.tgt_pos)(positions)

    def _check_tokens(self, name: str, tokens: Array) -> None:
        if tokens.ndim < 1 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ShapeError(f"EncoderDecoder: {name} must be integer tokens [..., T], got {tokens.dtype}{tokens.shape}")
        if tokens.shape[-1] > self.max_len:
            raise ShapeError(f"EncoderDecoder: {name} length {tokens.shape[-1]} exceeds max_len={self.max_len}")

    def cross_mask(self, src: Array) -> Array | None:
        """`[..., 1, 1, S]` boolean mask hiding source padding, or None."""
        if self.src_pad_id is None:
            return None
        return (src != self.src_pad_id)[..., None, None, :]

    def encode(self, src: Array) -> Array:
        self._check_tokens("src", src)
        x = self.src_embed(src) * math.sqrt(self.features) + self._pos("src", jnp.arange(src.shape[-1]))
        return self.encoder(x, mask=self.cross_mask(src))

    def decode(self, tgt_in: Array, memory: Array, src: Array) -> Array:
        self._check_tokens("tgt_in", tgt_in)
        y = self.tgt_embed(tgt_in) * math.sqrt(self.features) + self._pos("tgt", jnp.arange(tgt_in.shape[-1]))
        return self.head(self.decoder(y, memory, cross_mask=self.cross_mask(src)))

    def __call__(self, src: Array, tgt_in: Array) -> Array:
        return self.decode(tgt_in, self.encode(src), src)

    def init_cache(self, batch_shape: Sequence[int]) -> tuple[KVCache, ...]:
        return tuple(
            init_kv_cache(batch_shape, self.max_len, self.num_heads, self.features // self.num_heads)
            for _ in range(self.num_decoder_layers)
        )

    def decode_step(
        self, tok_t: Array, caches: tuple[KVCache, ...], memory: Array, src: Array
    ) -> tuple[Array, tuple[KVCache, ...]]:
        """One decoder token `tok_t [...]` at position `caches[0].next_pos` -> (logits `[..., V]`, caches)."""
        y_t = self.tgt_embed(tok_t) * math.sqrt(self.features) + self._pos("tgt", caches[0].next_pos)
        y_t, caches = self.decoder.decode_step(y_t, caches, memory, cross_mask=self.cross_mask(src))
        return self.head(y_t), caches


def greedy_decode(model: EncoderDecoder, params: Any, src: Array, bos_id: int, length: int) -> Array:
    """Greedy autoregressive decoding of `length` tokens with the decoder KV cache; `src [..., S] -> [..., length]`.

    One `lax.scan` over output positions; each step costs O(length) attention, not O(length^2).
    """
    check(1 <= length <= model.max_len, ConfigError, f"greedy_decode: length must be in [1, {model.max_len}]")
    memory = model.apply(params, src, method=EncoderDecoder.encode)
    caches = model.init_cache(src.shape[:-1])
    tok0 = jnp.full(src.shape[:-1], bos_id, jnp.int32)

    def body(carry, _):
        tok_t, caches_t = carry
        logits, caches_tp1 = model.apply(params, tok_t, caches_t, memory, src, method=EncoderDecoder.decode_step)
        tok_tp1 = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return (tok_tp1, caches_tp1), tok_tp1

    _, toks = jax.lax.scan(body, (tok0, caches), None, length=length)
    return jnp.moveaxis(toks, 0, -1)
