"""M as a causal transformer: a drop-in replacement for the MDN-RNN (`worldmodels_jax.models.mdnrnn`).

Each step t is one token, the embedding of (z_t, a_t) (and the restart flag when `restart_input`). A stack of
pre-LN causal transformer blocks (`attention.CausalTransformer`) with a sliding window of W tokens per
attention layer, then the MDN-RNN's own `MDNHead`, predicts z_{t+1} (and optionally the reward and done).
Positions enter as a learned per-head bias on the relative offset t - s in [0, W) (`RelativePositionBias`),
so the model is translation invariant and a dream can run for any number of steps.

The interface is the MDN-RNN's:
  - `initial_carry(batch_shape)`: the carry is one fixed-size KV cache per layer (`TransformerCarry`);
  - `step(carry, z_t, a_t, reset_t) -> (carry, MDNOutput, features)`: one imagined step, O(W) per layer,
    `reset_t` empties the cache before the step;
  - `observe(z, a, reset, carry=None) -> (MDNOutput, features, final_carry)` over `[B, T, ...]`, teacher forced;
    it processes the sequence in chunks (a `lax.scan`), each chunk attending to the cache and itself, so it
    costs O(T (W + chunk)) and equals stepping token by token;
  - `feature_size`: the width of `features` (d_model), what the controller sees in place of h.

Each query attends to itself and at most W - 1 earlier tokens of its episode in every layer; stacked layers
see up to num_layers (W - 1) steps back.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from worldmodels_jax.errors import ConfigError, ShapeError
from worldmodels_jax.models.attention import (
    CausalTransformer,
    KVCache,
    RelativePositionBias,
    chunk_attention_mask,
    init_kv_cache,
    kv_cache_reset,
    kv_cache_step_offsets,
)
from worldmodels_jax.models.mdnrnn import MDNHead, MDNOutput


@dataclasses.dataclass(frozen=True)
class TransformerMConfig:
    """Architecture of the transformer M. The first six fields mean what they mean in `MDNRNNConfig`."""

    z_size: int = 32
    """Latent size (set from V by the pipeline)."""
    action_size: int = 3
    """Size of the encoded action (set from the environment by the pipeline)."""
    num_mixtures: int = 5
    """Gaussian components per latent dimension."""
    reward_head: bool = False
    """Predict the reward (MSE loss)."""
    done_head: bool = False
    """Predict the episode end."""
    restart_input: bool = False
    """Feed the restart (episode start) flag as one more input."""
    d_model: int = 128
    """Token width, and the size of the controller's features."""
    num_layers: int = 2
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads (must divide d_model)."""
    ffn_dim: int = 256
    """Hidden width of the position-wise feed-forward network."""
    window: int = 32
    """W: tokens each query attends to per layer (itself and W - 1 before it); the KV cache has W slots."""
    chunk_size: int = 32
    """Tokens per parallel chunk in `observe` (memory O(B H chunk (W + chunk)))."""

    def __post_init__(self):
        for name in ("z_size", "action_size", "num_mixtures", "d_model", "num_layers", "num_heads", "ffn_dim",
                     "window", "chunk_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"transformer_m.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.num_heads:
            raise ConfigError(
                f"transformer_m.d_model={self.d_model} must be divisible by num_heads={self.num_heads}"
            )

    @property
    def input_size(self) -> int:
        return self.z_size + self.action_size + int(self.restart_input)

    @property
    def hidden_size(self) -> int:
        """Feature width, under the MDN-RNN's name for it."""
        return self.d_model

    @classmethod
    def from_mdnrnn_config(cls, mdn_config, **transformer_fields) -> "TransformerMConfig":
        """The transformer M with the same z, action, mixture and head settings as an `MDNRNNConfig`."""
        shared = {f: getattr(mdn_config, f) for f in
                  ("z_size", "action_size", "num_mixtures", "reward_head", "done_head", "restart_input")}
        return cls(**shared, **transformer_fields)


@struct.dataclass
class TransformerCarry:
    """The transformer M's recurrent state: one ring-buffer KV cache per layer, and the last features.

    `h` mirrors `LSTMCarry.h`: the features of the last step (zeros in the initial carry), so code that reads
    the controller's features from `carry.h` works for both memories. Only the caches feed the next step.
    """

    caches: tuple[KVCache, ...]
    h: jax.Array  # [..., d_model]


class TransformerM(nn.Module):
    """M as a causal transformer. `observe`, `step`, `initial_carry`, `feature_size` as in `MDNRNN`."""

    config: TransformerMConfig = TransformerMConfig()

    def setup(self):
        cfg = self.config
        self.embed = nn.Dense(cfg.d_model, name="embed")
        self.rel_bias = RelativePositionBias(cfg.num_heads, cfg.window, name="rel_bias")
        self.core = CausalTransformer(
            cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.ffn_dim, cfg.window, name="core"
        )
        self.head = MDNHead(cfg.z_size, cfg.num_mixtures, cfg.reward_head, cfg.done_head)

    @property
    def feature_size(self) -> int:
        return self.config.d_model

    def initial_carry(self, batch_shape: tuple[int, ...] = ()) -> TransformerCarry:
        cfg = self.config
        head_dim = cfg.d_model // cfg.num_heads
        return TransformerCarry(
            caches=tuple(
                init_kv_cache(tuple(batch_shape), cfg.window, cfg.num_heads, head_dim)
                for _ in range(cfg.num_layers)
            ),
            h=jnp.zeros((*batch_shape, cfg.d_model), jnp.float32),
        )

    def _inputs(self, z: jax.Array, action: jax.Array, reset: jax.Array) -> jax.Array:
        cfg = self.config
        if z.shape[-1] != cfg.z_size:
            raise ShapeError(f"M expects z [..., {cfg.z_size}], got {tuple(z.shape)}")
        if action.shape[-1] != cfg.action_size:
            raise ShapeError(f"M expects encoded actions [..., {cfg.action_size}], got {tuple(action.shape)}")
        if action.shape[:-1] != z.shape[:-1]:
            raise ShapeError(f"actions {tuple(action.shape)} must match z {tuple(z.shape)} before the last axis")
        if reset.shape != z.shape[:-1]:
            raise ShapeError(f"reset flags {tuple(reset.shape)} must be shaped like z[..., 0] {z.shape[:-1]}")
        parts = [z, action.astype(z.dtype)]
        if cfg.restart_input:
            parts.append(reset.astype(z.dtype)[..., None])
        return jnp.concatenate(parts, axis=-1)

    def _check_carry(self, carry: TransformerCarry, batch_shape: tuple[int, ...]) -> None:
        cfg = self.config
        if len(carry.caches) != cfg.num_layers:
            raise ShapeError(f"carry has {len(carry.caches)} caches, M has {cfg.num_layers} layers")
        if carry.caches[0].next_pos.shape != tuple(batch_shape):
            raise ShapeError(
                f"carry batch shape {carry.caches[0].next_pos.shape} != input batch shape {tuple(batch_shape)}"
            )

    def step(self, carry: TransformerCarry, z: jax.Array, action: jax.Array, reset: jax.Array):
        """One step: (carry, z_t, a_t, reset_t) -> (carry_t+1, prediction of t+1, features_t).

        `reset` marks the first step of an episode: the cache is emptied before the step.
        """
        x = self.embed(self._inputs(z, action, reset))
        self._check_carry(carry, z.shape[:-1])
        caches = tuple(kv_cache_reset(c, reset) for c in carry.caches)
        offsets, _ = kv_cache_step_offsets(caches[0])  # every layer's cache holds the same positions
        bias = jnp.swapaxes(self.rel_bias(offsets), -1, -2)  # [..., H, W]
        features, caches = self.core.decode_step(x, caches, bias=bias)
        return TransformerCarry(caches=caches, h=features), self.head(features), features

    def _observe_chunk(self, carry: TransformerCarry, x: jax.Array, reset: jax.Array):
        _, offsets = chunk_attention_mask(carry.caches[0], reset)  # [B, C, W + C]
        bias = jnp.moveaxis(self.rel_bias(offsets), -1, -3)  # [B, H, C, W + C]
        features, caches = self.core.decode_chunk(x, carry.caches, reset=reset, bias=bias)
        return TransformerCarry(caches=caches, h=features[:, -1]), features

    def observe(
        self, z: jax.Array, action: jax.Array, reset: jax.Array, carry: TransformerCarry | None = None
    ):
        """Teacher forcing over [B, T, ...] sequences -> (MDNOutput [B, T, ...], features [B, T, D], final carry).

        Equal to stepping `step` over the sequence from `carry` (default: empty). Runs as a `lax.scan` over
        chunks of `chunk_size` tokens (the remainder as one last chunk).
        """
        if z.ndim != 3:
            raise ShapeError(f"observe expects z [batch, time, z], got {tuple(z.shape)}")
        batch, t_len = z.shape[:2]
        x = self.embed(self._inputs(z, action, reset))
        carry = self.initial_carry((batch,)) if carry is None else carry
        self._check_carry(carry, (batch,))
        reset = reset.astype(jnp.bool_)
        chunk = min(self.config.chunk_size, t_len)
        n_full, rest = divmod(t_len, chunk)
        outs = []
        if n_full:
            x_chunks = jnp.swapaxes(x[:, : n_full * chunk].reshape(batch, n_full, chunk, -1), 0, 1)
            r_chunks = jnp.swapaxes(reset[:, : n_full * chunk].reshape(batch, n_full, chunk), 0, 1)
            if n_full == 1:
                carry, feats = self._observe_chunk(carry, x_chunks[0], r_chunks[0])
                outs.append(feats)
            else:
                scan = nn.scan(
                    lambda mdl, c, xs: mdl._observe_chunk(c, *xs),
                    variable_broadcast="params",
                    split_rngs={"params": False},
                )
                carry, feats = scan(self, carry, (x_chunks, r_chunks))  # feats [n, B, C, D]
                outs.append(jnp.swapaxes(feats, 0, 1).reshape(batch, n_full * chunk, -1))
        if rest:
            carry, feats = self._observe_chunk(carry, x[:, n_full * chunk:], reset[:, n_full * chunk:])
            outs.append(feats)
        features = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)
        return self.head(features), features, carry

    def __call__(self, z, action, reset):
        return self.observe(z, action, reset)


@functools.partial(jax.jit, static_argnums=1)  # one compiled program, not one per op
def init_transformer_m(key: jax.Array, config: TransformerMConfig) -> dict:
    """Parameters of a `TransformerM(config)` (the `params` collection), like `mdnrnn.init_mdnrnn`."""
    model = TransformerM(config)
    z = jnp.zeros((1, 2, config.z_size))
    a = jnp.zeros((1, 2, config.action_size))
    reset = jnp.zeros((1, 2), bool)
    return model.init({"params": key}, z, a, reset)["params"]


def count_params(params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))
