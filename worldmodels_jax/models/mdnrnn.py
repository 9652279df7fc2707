"""M: the MDN-RNN of World Models.

An LSTM cell written once as a single step, lifted over time with `lax.scan` ("observe"), and
stepped one at a time in the dream ("imagine"). A mixture-density head gives, for every latent
dimension, its own K-component Gaussian mixture over z_{t+1}; optional heads predict the reward
and the episode end ("done", the Doom experiment's restart flag).

Parameter counts: 422,368 for (z 32, action 3, LSTM 256, K 5, no extra heads) and 1,678,785 for
the Doom configuration (z 64, action 1 + restart flag, LSTM 512, K 5, done head).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from worldmodels_jax.errors import ConfigError, ShapeError

FORGET_BIAS = 1.0  # TensorFlow's BasicLSTMCell adds 1 to the forget gate, as the original did.


@dataclasses.dataclass(frozen=True)
class MDNRNNConfig:
    """Architecture of M."""

    z_size: int = 32
    """Latent size (set from V by the pipeline)."""
    action_size: int = 3
    """Size of the encoded action (set from the environment by the pipeline)."""
    hidden_size: int = 256
    """LSTM units (256 CarRacing, 512 Doom)."""
    num_mixtures: int = 5
    """Gaussian components per latent dimension."""
    reward_head: bool = False
    """Predict the reward (MSE loss)."""
    done_head: bool = False
    """Predict the episode end (sigmoid cross-entropy with positives up-weighted)."""
    restart_input: bool = False
    """Feed the restart (episode start) flag as one more input, as the Doom model did."""

    def __post_init__(self):
        for name in ("z_size", "action_size", "hidden_size", "num_mixtures"):
            if getattr(self, name) < 1:
                raise ConfigError(f"mdn.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def input_size(self) -> int:
        return self.z_size + self.action_size + int(self.restart_input)


@struct.dataclass
class LSTMCarry:
    h: jax.Array  # [..., hidden]
    c: jax.Array  # [..., hidden]


@struct.dataclass
class MDNOutput:
    """M's prediction of step t+1. Mixture arrays are [..., z_size, K].

    The head emits unnormalised mixture `logits`; `logpi` normalises them on use. Sampling needs no
    normalisation, so the dream skips the log-sum-exp (12% of a dream step on the CPU).
    """

    logits: jax.Array  # log mixture weights up to a constant per latent dimension
    mu: jax.Array
    logsigma: jax.Array
    reward: jax.Array  # [...] (zeros without a reward head)
    done_logit: jax.Array  # [...] (a large negative constant without a done head)

    @property
    def logpi(self) -> jax.Array:
        """Normalised log mixture weights."""
        return jax.nn.log_softmax(self.logits, axis=-1)


def lstm_cell(
    w_h: jax.Array, carry: LSTMCarry, x_projection: jax.Array
) -> LSTMCarry:
    """One LSTM step given the input's projection x·W_x + b (precomputed for whole sequences)."""
    gates = x_projection + carry.h @ w_h
    i, j, f, o = jnp.split(gates, 4, axis=-1)
    c = carry.c * jax.nn.sigmoid(f + FORGET_BIAS) + jax.nn.sigmoid(i) * jnp.tanh(j)
    h = jnp.tanh(c) * jax.nn.sigmoid(o)
    return LSTMCarry(h=h, c=c)


def reset_carry(carry: LSTMCarry, reset: jax.Array) -> LSTMCarry:
    """Zeroes the carry where `reset` (an episode starts at this step); `reset` is [...]."""
    keep = 1.0 - reset.astype(carry.h.dtype)[..., None]
    return LSTMCarry(h=carry.h * keep, c=carry.c * keep)


def lstm_sequence(
    w_x: jax.Array, w_h: jax.Array, b: jax.Array, carry: LSTMCarry, inputs: jax.Array, reset: jax.Array,
    project_first: bool | None = None,
):
    """`lstm_cell` scanned over time-major inputs [T, B, I] with resets [T, B] → (final carry, hs [T, B, H]).

    Equal to scanning `lstm_cell(w_h, reset_carry(carry, reset_t), inputs_t @ w_x + b)`. The input projection
    is either one [T·B, I] × [I, 4H] matmul before the loop (`project_first`, GPU and TPU: a [T, B, 4H] array in
    fast memory) or part of each step's matmul, [inputs_t, h] @ [w_x; w_h] (the CPU: no [T, B, 4H] array to
    write and read back); None picks by backend. The backward pass is written by hand: the reverse scan
    carries only dh and dc and emits each step's gate gradients, and every BACKWARD_BLOCK steps they go into
    the weights' gradient as ONE [I + H, block·B] × [block·B, 4H] matmul (autodiff would accumulate T small
    matmuls, and store a zero cotangent of the projection).
    """
    if inputs.shape[-1] != w_x.shape[0] or inputs.shape[:2] != reset.shape:
        raise ShapeError(f"lstm_sequence: inputs {tuple(inputs.shape)} must be [T, B, {w_x.shape[0]}] with resets "
                         f"[T, B], got resets {tuple(reset.shape)}")
    if project_first is None:
        project_first = jax.default_backend() != "cpu"
    keep = (1.0 - reset.astype(inputs.dtype))[..., None]
    hs, h, c = _lstm_sequence(bool(project_first), w_x, w_h, b, carry.h, carry.c, inputs, keep)
    return LSTMCarry(h=h, c=c), hs


def _lstm_sequence_forward(project_first, w_x, w_h, b, h0, c0, inputs, keep):
    weights = jnp.concatenate([w_x, w_h], axis=0)
    projected = inputs @ w_x + b if project_first else inputs  # [T, B, 4H] or the raw inputs

    def step(state, step_inputs):
        h, c = state
        x_t, p_t, keep_t = step_inputs
        h_in, c_in = h * keep_t, c * keep_t
        xh = jnp.concatenate([x_t, h_in], axis=-1)  # kept for the weights' gradient either way
        gates = p_t + h_in @ w_h if project_first else xh @ weights + b
        i, j, f, o = jnp.split(gates, 4, axis=-1)
        si, tj, sf, so = jax.nn.sigmoid(i), jnp.tanh(j), jax.nn.sigmoid(f + FORGET_BIAS), jax.nn.sigmoid(o)
        c_new = c_in * sf + si * tj
        h_new = jnp.tanh(c_new) * so
        return (h_new, c_new), (h_new, (xh, c_in, si, tj, sf, so))  # tanh(c_new) is recomputed backward

    (h, c), (hs, residuals) = jax.lax.scan(step, (h0, c0), (inputs, projected, keep))
    return (hs, h, c), residuals


BACKWARD_BLOCK = 16
"""Steps per block of the LSTM's reverse scan: each block's gate gradients ([16, B, 4H], cache-sized) go into the
weights' gradient by one matmul, instead of storing [T, B, 4H] for one matmul at the end (4-5 % faster M step)."""


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _lstm_sequence(project_first, w_x, w_h, b, h0, c0, inputs, keep):
    return _lstm_sequence_forward(project_first, w_x, w_h, b, h0, c0, inputs, keep)[0]


def _lstm_sequence_fwd(project_first, w_x, w_h, b, h0, c0, inputs, keep):
    outputs, residuals = _lstm_sequence_forward(project_first, w_x, w_h, b, h0, c0, inputs, keep)
    return outputs, (w_h, keep, residuals, inputs)


def _lstm_sequence_bwd(project_first, saved, cotangents):
    w_h, keep, residuals, inputs = saved
    d_hs, d_h, d_c = cotangents
    w_h_transposed = w_h.T

    def step(state, step_inputs):
        dh_next, dc_next = state
        d_out, keep_t, (_, c_in, si, tj, sf, so) = step_inputs
        tc = jnp.tanh(c_in * sf + si * tj)
        dh = d_out + dh_next
        dc = dc_next + dh * so * (1.0 - tc * tc)
        d_gates = jnp.concatenate([
            dc * tj * si * (1.0 - si),  # i
            dc * si * (1.0 - tj * tj),  # j
            dc * c_in * sf * (1.0 - sf),  # f
            dh * tc * so * (1.0 - so),  # o
        ], axis=-1)
        return ((d_gates @ w_h_transposed) * keep_t, dc * sf * keep_t), d_gates

    def block(state, block_inputs):
        """Reverse scan over a block of steps; its gate gradients go straight into the weights' gradient."""
        dh, dc, d_weights, d_bias = state
        (dh, dc), d_gates = jax.lax.scan(step, (dh, dc), block_inputs, reverse=True)
        d_weights = d_weights + jnp.einsum("tbk,tbg->kg", block_inputs[2][0], d_gates)  # [x, h_in]: [I + H, 4H]
        return (dh, dc, d_weights, d_bias + jnp.sum(d_gates, axis=(0, 1))), None

    steps = keep.shape[0]
    size = min(BACKWARD_BLOCK, steps)
    head = steps % size  # the first `head` steps form a shorter block, done last (the scan runs backwards)
    xs = (d_hs, keep, residuals)
    blocked = jax.tree.map(lambda x: x[head:].reshape(steps // size, size, *x.shape[1:]), xs)
    state = (d_h, d_c, jnp.zeros((residuals[0].shape[-1], w_h.shape[1]), w_h.dtype), jnp.zeros(w_h.shape[1], w_h.dtype))
    state, _ = jax.lax.scan(block, state, blocked, reverse=True)
    if head:
        state, _ = block(state, jax.tree.map(lambda x: x[:head], xs))
    dh0, dc0, d_weights, d_bias = state
    num_inputs = inputs.shape[-1]
    # The inputs are data (z and actions), never differentiated: their cotangent is zero.
    return (d_weights[:num_inputs], d_weights[num_inputs:], d_bias, dh0, dc0,
            jnp.zeros_like(inputs), jnp.zeros_like(keep))


_lstm_sequence.defvjp(_lstm_sequence_fwd, _lstm_sequence_bwd)


class MDNHead(nn.Module):
    """Dense layer from the memory's features to the mixture (and optional reward and done)."""

    z_size: int
    num_mixtures: int
    reward_head: bool = False
    done_head: bool = False

    @nn.compact
    def __call__(self, features: jax.Array) -> MDNOutput:
        z, k = self.z_size, self.num_mixtures
        extra = int(self.reward_head) + int(self.done_head)
        out = nn.Dense(z * k * 3 + extra, name="mdn_dense")(features)
        mixture = out[..., : z * k * 3].reshape((*features.shape[:-1], z, 3, k))
        # lax.split, not three strided slices: the transpose of a slice pads it to full size, so the gradient
        # would be assembled from three full-size pads; split's transpose is one concatenate.
        logits, mu, logsigma = (part[..., 0, :] for part in jax.lax.split(mixture, (1, 1, 1), axis=-2))
        zeros = jnp.zeros(features.shape[:-1], features.dtype)
        column = z * k * 3
        reward = out[..., column] if self.reward_head else zeros
        column += int(self.reward_head)
        done_logit = out[..., column] if self.done_head else zeros - 1e4
        return MDNOutput(logits=logits, mu=mu, logsigma=logsigma, reward=reward, done_logit=done_logit)


class MDNRNN(nn.Module):
    """M. `observe` (teacher forcing over sequences), `step` (one imagined step), `initial_carry`.

    `features` (what the controller sees in place of h) is the LSTM's h.
    """

    config: MDNRNNConfig = MDNRNNConfig()

    def setup(self):
        cfg = self.config
        hidden = cfg.hidden_size
        init = nn.initializers.lecun_normal()
        self.w_x = self.param("w_x", init, (cfg.input_size, 4 * hidden))
        self.w_h = self.param("w_h", nn.initializers.orthogonal(), (hidden, 4 * hidden))
        self.b = self.param("b", nn.initializers.zeros, (4 * hidden,))
        self.head = MDNHead(cfg.z_size, cfg.num_mixtures, cfg.reward_head, cfg.done_head)

    @property
    def feature_size(self) -> int:
        return self.config.hidden_size

    def initial_carry(self, batch_shape: tuple[int, ...] = ()) -> LSTMCarry:
        zeros = jnp.zeros((*batch_shape, self.config.hidden_size), jnp.float32)
        return LSTMCarry(h=zeros, c=zeros)

    def _inputs(self, z: jax.Array, action: jax.Array, reset: jax.Array) -> jax.Array:
        cfg = self.config
        if z.shape[-1] != cfg.z_size:
            raise ShapeError(f"M expects z [..., {cfg.z_size}], got {tuple(z.shape)}")
        if action.shape[-1] != cfg.action_size:
            raise ShapeError(
                f"M expects encoded actions [..., {cfg.action_size}], got {tuple(action.shape)}"
            )
        if reset.shape != z.shape[:-1]:
            raise ShapeError(f"reset flags {tuple(reset.shape)} must be shaped like z[..., 0] {z.shape[:-1]}")
        parts = [z, action.astype(z.dtype)]
        if cfg.restart_input:
            parts.append(reset.astype(z.dtype)[..., None])
        return jnp.concatenate(parts, axis=-1)

    def step(self, carry: LSTMCarry, z: jax.Array, action: jax.Array, reset: jax.Array):
        """One step: (carry, z_t, a_t, reset_t) → (carry_t+1, prediction of t+1, features h_t+1).

        `reset` marks the first step of an episode: the carry is zeroed before the step.
        """
        x_projection = self._inputs(z, action, reset) @ self.w_x + self.b
        carry = lstm_cell(self.w_h, reset_carry(carry, reset), x_projection)
        return carry, self.head(carry.h), carry.h

    def observe(self, z: jax.Array, action: jax.Array, reset: jax.Array, carry: LSTMCarry | None = None):
        """Teacher forcing over [B, T, ...] sequences → (MDNOutput [B, T, ...], features [B, T, H], final carry).

        `lstm_sequence` does one [z, a, h] @ [W_x; W_h] matmul per step, and its backward pass leaves the
        weights' gradient to one matmul per block of steps.
        """
        final_carry, hs = self._time_major_states(z, action, reset, carry, "observe")
        hs = jnp.swapaxes(hs, 0, 1)
        return self.head(hs), hs, final_carry

    def _time_major_states(self, z, action, reset, carry, caller: str):
        """The LSTM over [B, T, ...] sequences: (final carry, hs [T, B, H]), time-major for the caller."""
        if z.ndim != 3:
            raise ShapeError(f"{caller} expects z [batch, time, z], got {tuple(z.shape)}")
        carry = self.initial_carry((z.shape[0],)) if carry is None else carry
        # Time-major for the scan: swapping the 35-wide inputs is cheaper than any 4H- or H-wide array.
        inputs = jnp.swapaxes(self._inputs(z, action, reset), 0, 1)
        return lstm_sequence(self.w_x, self.w_h, self.b, carry, inputs, jnp.swapaxes(reset, 0, 1))

    def observe_nll(
        self, z: jax.Array, action: jax.Array, reset: jax.Array, z_next: jax.Array, mask: jax.Array | None = None,
        carry: LSTMCarry | None = None,
    ):
        """Teacher-forcing loss for training: (mdn_nll(observe(...) mixture, z_next, mask), reward [B, T], done_logit [B, T]).

        The same numbers as `observe` followed by `mdn_nll`, but the mixture head and its loss run time-major
        through `fused_mixture_nll`, which never stores the [B, T, z, 3K] head output and computes its gradient
        in cache-sized chunks of steps. The reward and done heads' outputs (zeros and -1e4 without those
        heads) come back batch-major like `observe`'s.
        """
        if z_next.shape != z.shape:
            raise ShapeError(f"observe_nll needs z_next shaped like z {tuple(z.shape)}, got {tuple(z_next.shape)}")
        cfg = self.config
        _, hs = self._time_major_states(z, action, reset, carry, "observe_nll")  # [T, B, H]
        head = self.variables["params"]["head"]["mdn_dense"]
        columns = cfg.z_size * cfg.num_mixtures * 3
        weights = jnp.ones(hs.shape[:2], hs.dtype) if mask is None else jnp.swapaxes(mask, 0, 1).astype(hs.dtype)
        weights = weights / jnp.maximum(jnp.sum(weights), 1.0)
        nll = fused_mixture_nll(
            hs.reshape(-1, hs.shape[-1]), head["kernel"][:, :columns], head["bias"][:columns],
            jnp.swapaxes(z_next, 0, 1).reshape(-1, cfg.z_size), weights.reshape(-1), cfg.num_mixtures,
        )
        extra = hs @ head["kernel"][:, columns:] + head["bias"][columns:]  # [T, B, reward?, done?]
        zeros = jnp.zeros(z.shape[:2], z.dtype)
        reward = jnp.swapaxes(extra[..., 0], 0, 1) if cfg.reward_head else zeros
        done_logit = jnp.swapaxes(extra[..., int(cfg.reward_head)], 0, 1) if cfg.done_head else zeros - 1e4
        return nll, reward, done_logit

    def __call__(self, z, action, reset):
        return self.observe(z, action, reset)


LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def mdn_log_prob(output: MDNOutput, z_next: jax.Array) -> jax.Array:
    """log p(z_next) per latent dimension under the mixture: [..., z] (stable logsumexp)."""
    x = z_next[..., None]
    log_normal = -0.5 * jnp.square((x - output.mu) * jnp.exp(-output.logsigma)) - output.logsigma - LOG_SQRT_2PI
    return jax.scipy.special.logsumexp(output.logpi + log_normal, axis=-1)


def mdn_nll(output: MDNOutput, z_next: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean negative log-likelihood per latent dimension (the original's loss), over unmasked steps."""
    nll = -jnp.mean(mdn_log_prob(output, z_next), axis=-1)  # [...]
    if mask is None:
        return jnp.mean(nll)
    mask = mask.astype(nll.dtype)
    return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)


FUSED_CHUNK_ROWS = 1024
"""Rows (steps x sequences) per chunk of `fused_mixture_nll`: its [rows, z, 3K] temporaries stay in the CPU's
cache (10 to 50 chunks of a 100 x 200 batch measured alike on the 2-core CPU)."""


def _mixture_nll_rows(features, kernel, bias, z_next, row_weights, num_mixtures, with_gradient):
    """Σ_n row_weights_n · mean_z(-log p(z_next_n)) over a block of rows and, if asked, d/d(head output).

    `kernel` and `bias` are in the component-major column order (3, K, z) of `_component_major`: every
    reduction over the K components is then an elementwise op over K rows of z contiguous numbers, which
    vectorises (in the head's own (z, 3, K) order it runs along a minor axis of length K = 5).
    """
    z_size = z_next.shape[-1]
    out = (features @ kernel + bias).reshape(features.shape[0], 3, num_mixtures, z_size)
    logits, mu, logsigma = (part[:, 0] for part in jax.lax.split(out, (1, 1, 1), axis=1))  # [rows, K, z]
    # Stable softmax and log-sum-exp written out, so that each exponential is taken once and reused.
    shifted = logits - jnp.max(logits, axis=1, keepdims=True)
    weights = jnp.exp(shifted)
    weights_sum = jnp.sum(weights, axis=1, keepdims=True)
    inv_sigma = jnp.exp(-logsigma)
    u = (z_next[:, None, :] - mu) * inv_sigma
    joint = shifted - jnp.log(weights_sum) - 0.5 * u * u - logsigma  # log π_k + log N(z | μ_k, σ_k) + log √2π
    joint_max = jnp.max(joint, axis=1, keepdims=True)
    joint_exp = jnp.exp(joint - joint_max)
    joint_sum = jnp.sum(joint_exp, axis=1, keepdims=True)
    log_prob = joint_max + jnp.log(joint_sum) - LOG_SQRT_2PI  # [rows, 1, z]
    scale = (row_weights / z_size)[:, None, None]
    nll = -jnp.sum(log_prob * scale)
    if not with_gradient:
        return nll, None
    r = joint_exp * (scale / joint_sum)  # responsibilities, weighted
    # d(-log p)/d logits = π - r, d/dμ = -r·u/σ, d/d log σ = r·(1 - u²)
    d_out = jnp.stack([weights * (scale / weights_sum) - r, -r * u * inv_sigma, r * (1.0 - u * u)], axis=1)
    return nll, d_out.reshape(out.shape[0], -1)


def _component_major(columns: jax.Array, z_size: int, num_mixtures: int) -> jax.Array:
    """The head's mixture columns (last axis) from MDNHead's (z, 3, K) order to (3, K, z)."""
    lead = columns.shape[:-1]
    return columns.reshape(*lead, z_size, 3, num_mixtures).swapaxes(-3, -1).swapaxes(-3, -2).reshape(*lead, -1)


def _head_major(columns: jax.Array, z_size: int, num_mixtures: int) -> jax.Array:
    """The inverse of `_component_major`: (3, K, z) back to (z, 3, K)."""
    lead = columns.shape[:-1]
    return columns.reshape(*lead, 3, num_mixtures, z_size).swapaxes(-3, -2).swapaxes(-3, -1).reshape(*lead, -1)


def _row_chunks(row_weights, *arrays):
    """Pads rows to a multiple of the chunk size (padded rows weigh 0) and splits them [chunks, rows, ...].

    Chunks are for the CPU's caches; on GPU and TPU all rows form one chunk (one large matmul each way).
    """
    rows = row_weights.shape[0]
    chunk = min(FUSED_CHUNK_ROWS, rows) if jax.default_backend() == "cpu" else rows
    padded = -(-rows // chunk) * chunk
    pad = lambda x: jnp.pad(x, [(0, padded - rows)] + [(0, 0)] * (x.ndim - 1))  # noqa: E731
    return [pad(x).reshape(padded // chunk, chunk, *x.shape[1:]) for x in (row_weights, *arrays)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def fused_mixture_nll(features, kernel, bias, z_next, row_weights, num_mixtures):
    """Σ_n row_weights_n · mean over z of -log p(z_next_n), p the mixture that `MDNHead` gives for features_n.

    features [N, H], kernel [H, z·3·K] and bias [z·3·K] (the head's mixture columns), z_next [N, z],
    row_weights [N] (1/N each for `mdn_nll`'s mean; masked rows 0). The gradient is worked out in the forward
    pass, chunk by chunk of FUSED_CHUNK_ROWS rows: the head's output and the loss's temporaries never exist
    at full size, and the backward pass only scales. z_next and row_weights are data (zero cotangents).
    """
    chunks, kernel, bias = _fused_inputs(features, kernel, bias, z_next, row_weights, num_mixtures)

    def chunk_nll(total, rows):
        w, f, t = rows
        return total + _mixture_nll_rows(f, kernel, bias, t, w, num_mixtures, False)[0], None

    return jax.lax.scan(chunk_nll, jnp.zeros((), features.dtype), chunks)[0]


def _fused_inputs(features, kernel, bias, z_next, row_weights, num_mixtures):
    """Row chunks (weights, features, targets) and the head's columns in component-major order."""
    z_size = z_next.shape[-1]
    return (_row_chunks(row_weights, features, z_next),
            *(_component_major(x, z_size, num_mixtures) for x in (kernel, bias)))


def _fused_mixture_nll_fwd(features, kernel, bias, z_next, row_weights, num_mixtures):
    chunks, kernel, bias = _fused_inputs(features, kernel, bias, z_next, row_weights, num_mixtures)
    z_size = z_next.shape[-1]

    def chunk(total, rows):
        w, f, t = rows
        nll, d_out = _mixture_nll_rows(f, kernel, bias, t, w, num_mixtures, True)
        nll_sum, d_kernel, d_bias = total
        return (nll_sum + nll, d_kernel + f.T @ d_out, d_bias + jnp.sum(d_out, axis=0)), d_out @ kernel.T

    zeros = (jnp.zeros((), features.dtype), jnp.zeros_like(kernel), jnp.zeros_like(bias))
    (nll, d_kernel, d_bias), d_features = jax.lax.scan(chunk, zeros, chunks)
    d_features = d_features.reshape(-1, features.shape[-1])[: features.shape[0]]
    d_kernel, d_bias = (_head_major(x, z_size, num_mixtures) for x in (d_kernel, d_bias))
    return nll, (d_features, d_kernel, d_bias, z_next, row_weights)


def _fused_mixture_nll_bwd(num_mixtures, saved, g):
    d_features, d_kernel, d_bias, z_next, row_weights = saved
    return g * d_features, g * d_kernel, g * d_bias, jnp.zeros_like(z_next), jnp.zeros_like(row_weights)


fused_mixture_nll.defvjp(_fused_mixture_nll_fwd, _fused_mixture_nll_bwd)


def done_loss(done_logit: jax.Array, done: jax.Array, pos_weight: float, mask: jax.Array | None = None):
    """Sigmoid cross-entropy on the done flag with positive examples weighted by `pos_weight`."""
    done = done.astype(done_logit.dtype)
    per_step = -(pos_weight * done * jax.nn.log_sigmoid(done_logit) + (1 - done) * jax.nn.log_sigmoid(-done_logit))
    if mask is None:
        return jnp.mean(per_step)
    mask = mask.astype(per_step.dtype)
    return jnp.sum(per_step * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def normal_from_uniform(uniform: jax.Array) -> jax.Array:
    """Standard normals from uniforms in [0, 1) by the inverse CDF, as `jax.random.normal` does internally.

    Lets one random draw serve several purposes (every threefry call is a loop of its own on the CPU).
    """
    lowest = jnp.nextafter(jnp.asarray(-1.0, uniform.dtype), jnp.asarray(0.0, uniform.dtype))
    return jnp.sqrt(jnp.asarray(2.0, uniform.dtype)) * jax.lax.erf_inv(jnp.maximum(2.0 * uniform - 1.0, lowest))


def mdn_sample(key: jax.Array, output: MDNOutput, temperature: float | jax.Array) -> jax.Array:
    """Samples z_{t+1} at temperature τ exactly as the original: logits/τ, σ·√τ, a component per dimension.

    The component is drawn by inverse CDF from one uniform per dimension, as the original's `get_pi_idx`
    did (Gumbel-max would need K draws and two logs each, 3× slower in the dream). As τ → 0 this returns
    the mean of the most likely component.
    """
    uniform = jax.random.uniform(key, (2, *output.mu.shape[:-1]), output.mu.dtype)  # one draw: choice and noise
    return mdn_sample_from_uniform(uniform, output, temperature)


def mdn_sample_from_uniform(uniform: jax.Array, output: MDNOutput, temperature: float | jax.Array) -> jax.Array:
    """`mdn_sample` given its uniforms in [0, 1): [2, ...batch, z] (component choice, then noise)."""
    if uniform.shape != (2, *output.mu.shape[:-1]):
        raise ShapeError(f"mdn_sample_from_uniform needs uniforms {(2, *output.mu.shape[:-1])}, got {uniform.shape}")
    tau = jnp.asarray(temperature, output.mu.dtype)
    scaled = output.logits / jnp.maximum(tau, 1e-6)
    weights = jnp.exp(scaled - jnp.max(scaled, axis=-1, keepdims=True))  # the best component has weight 1
    cumulative = [weights[..., 0]]
    for k in range(1, weights.shape[-1]):
        cumulative.append(cumulative[-1] + weights[..., k])
    target = uniform[0] * cumulative[-1]
    mu, logsigma = output.mu[..., 0], output.logsigma[..., 0]
    for k in range(1, weights.shape[-1]):  # unrolled K-way choice (no cumsum, no gather): past k-1 while beyond its mass
        past = target >= cumulative[k - 1]
        mu = jnp.where(past, output.mu[..., k], mu)
        logsigma = jnp.where(past, output.logsigma[..., k], logsigma)
    return mu + jnp.exp(logsigma) * normal_from_uniform(uniform[1]) * jnp.sqrt(tau)


@functools.partial(jax.jit, static_argnums=1)  # one compiled program, not one per op
def init_mdnrnn(key: jax.Array, config: MDNRNNConfig) -> dict:
    model = MDNRNN(config)
    z = jnp.zeros((1, 2, config.z_size))
    a = jnp.zeros((1, 2, config.action_size))
    reset = jnp.zeros((1, 2), bool)
    return model.init({"params": key}, z, a, reset)["params"]
