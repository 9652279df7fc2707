"""A faithful numpy port of the original World Models dream loop: one agent, one step at a time.

This is the anchor that `bench_dream.py` measures our batched JAX dream against. It follows the original
code (hardmaru/WorldModelsExperiments, TF 1.8 + numpy, one agent per worker process) as closely as the maths
allows, and is vectorised only the way the original was:

- M's LSTM is TensorFlow's `BasicLSTMCell`: one kernel on the concatenation [x, h] (x = [z, a]), gates in
  the order i, j, f, o, and a forget bias of 1 added to f: c' = c·σ(f + 1) + σ(i)·tanh(j), h' = tanh(c')·σ(o).
- The MDN head is one dense layer to z·K·3 outputs, reshaped per latent dimension into (log π logits, μ, log σ),
  K each (the original's `tf.reshape(output, [-1, KMIX * 3])` + `tf.split(…, 3, 1)`).
- Sampling at temperature τ as the original's dream env did: logits / τ, a softmax per dimension, then a
  Python loop over the latent dimensions that draws a component with `get_pi_idx` (a cumulative sum against
  `np.random.rand()`), picks that component's μ and log σ, and adds `exp(log σ)·N(0, 1)·√τ`.
- The controller is the original linear C on [z, h]: a = tanh([z, h]·W + b), then the CarRacing mapping
  gas = (a₁ + 1)/2, brake = clip(a₂, 0, 1); M then steps on (z, a).

The weights are taken from our Flax parameter trees (`from_flax`), so a test can check that this loop and
`MDNRNN.step` compute the same LSTM state and mixture.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

FORGET_BIAS = 1.0


@dataclasses.dataclass
class NumpyDreamParams:
    kernel: np.ndarray  # [x + h, 4h]: TF BasicLSTMCell's single kernel on [x, h]
    bias: np.ndarray  # [4h]
    head_w: np.ndarray  # [h, z·K·3]
    head_b: np.ndarray  # [z·K·3]
    c_w: np.ndarray  # [z + h, a]: the controller on [z, h]
    c_b: np.ndarray  # [a]
    z_size: int
    num_mixtures: int

    @property
    def hidden_size(self) -> int:
        return self.kernel.shape[1] // 4


def from_flax(mdn_params: dict, controller_params: dict, z_size: int, num_mixtures: int) -> NumpyDreamParams:
    """Converts our MDNRNN and Controller (mode 'z_h') parameter trees into the original's layout."""
    kernel = np.concatenate([np.asarray(mdn_params["w_x"]), np.asarray(mdn_params["w_h"])], axis=0)
    dense = mdn_params["head"]["mdn_dense"]
    return NumpyDreamParams(
        kernel=kernel.astype(np.float32), bias=np.asarray(mdn_params["b"], np.float32),
        head_w=np.asarray(dense["kernel"], np.float32), head_b=np.asarray(dense["bias"], np.float32),
        c_w=np.asarray(controller_params["out"]["kernel"], np.float32),
        c_b=np.asarray(controller_params["out"]["bias"], np.float32),
        z_size=z_size, num_mixtures=num_mixtures,
    )


def random_params(rng: np.random.Generator, z_size: int = 32, action_size: int = 3, hidden: int = 256,
                  num_mixtures: int = 5) -> NumpyDreamParams:
    """Random weights of the CarRacing sizes (for timing only)."""
    x = z_size + action_size
    scale = lambda fan_in: 1.0 / np.sqrt(fan_in)  # noqa: E731
    return NumpyDreamParams(
        kernel=(rng.standard_normal((x + hidden, 4 * hidden)) * scale(x + hidden)).astype(np.float32),
        bias=np.zeros(4 * hidden, np.float32),
        head_w=(rng.standard_normal((hidden, z_size * num_mixtures * 3)) * scale(hidden)).astype(np.float32),
        head_b=np.zeros(z_size * num_mixtures * 3, np.float32),
        c_w=(rng.standard_normal((z_size + hidden, action_size)) * 0.1).astype(np.float32),
        c_b=np.zeros(action_size, np.float32),
        z_size=z_size, num_mixtures=num_mixtures,
    )


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def lstm_step(params: NumpyDreamParams, x: np.ndarray, h: np.ndarray, c: np.ndarray):
    """TF BasicLSTMCell: gates = [x, h]·W + b, split i, j, f, o; forget bias 1."""
    gates = np.concatenate([x, h]) @ params.kernel + params.bias
    i, j, f, o = np.split(gates, 4)
    c = c * sigmoid(f + FORGET_BIAS) + sigmoid(i) * np.tanh(j)
    h = np.tanh(c) * sigmoid(o)
    return h, c


def mdn_head(params: NumpyDreamParams, h: np.ndarray):
    """(logmix, mean, logstd), each [z, K]; logmix normalised (log-softmax) as the original did."""
    k = params.num_mixtures
    out = (h @ params.head_w + params.head_b).reshape(params.z_size, 3 * k)
    logmix, mean, logstd = out[:, :k], out[:, k: 2 * k], out[:, 2 * k:]
    logmix = logmix - logmix.max(axis=1, keepdims=True)
    logmix = logmix - np.log(np.exp(logmix).sum(axis=1, keepdims=True))
    return logmix, mean, logstd


def get_pi_idx(x: float, pdf: np.ndarray) -> int:
    """The original's categorical sample: the first index whose cumulative probability reaches x."""
    accumulate = 0.0
    for i in range(pdf.size):
        accumulate += pdf[i]
        if accumulate >= x:
            return i
    return int(np.random.randint(pdf.size))  # the original's fallback for rounding


def sample_z(logmix: np.ndarray, mean: np.ndarray, logstd: np.ndarray, temperature: float,
             rng: np.random.RandomState) -> np.ndarray:
    """The original's dream sampling: logits / τ, one component per dimension (a Python loop), σ·√τ.

    Kept as the original wrote it, including `logmix2 -= logmix2.max()` over all dimensions at once (not
    per dimension), which underflows rows far below the global max when τ is very small.
    """
    z_size = mean.shape[0]
    logmix2 = np.copy(logmix) / temperature
    logmix2 -= logmix2.max()
    logmix2 = np.exp(logmix2)
    logmix2 /= logmix2.sum(axis=1).reshape(z_size, 1)
    chosen_mean = np.zeros(z_size)
    chosen_logstd = np.zeros(z_size)
    for j in range(z_size):
        idx = get_pi_idx(rng.rand(), logmix2[j])
        chosen_mean[j] = mean[j][idx]
        chosen_logstd[j] = logstd[j][idx]
    rand_gaussian = rng.randn(z_size) * np.sqrt(temperature)
    return chosen_mean + np.exp(chosen_logstd) * rand_gaussian


def controller(params: NumpyDreamParams, z: np.ndarray, h: np.ndarray) -> np.ndarray:
    """The original's linear C on [z, h] with the CarRacing action mapping."""
    a = np.tanh(np.concatenate([z, h]) @ params.c_w + params.c_b)
    a[1] = (a[1] + 1.0) / 2.0
    a[2] = np.clip(a[2], 0.0, 1.0)
    return a


def dream_step(params: NumpyDreamParams, z: np.ndarray, h: np.ndarray, c: np.ndarray, temperature: float,
               rng: np.random.RandomState):
    """One imagined step of one agent: act on [z, h], step M on (z, a), sample the next z."""
    action = controller(params, z, h)
    h, c = lstm_step(params, np.concatenate([z, action]), h, c)
    logmix, mean, logstd = mdn_head(params, h)
    z = sample_z(logmix, mean, logstd, temperature, rng)
    return z, h, c, action


def rollout(params: NumpyDreamParams, steps: int, temperature: float = 1.0, seed: int = 0):
    """One agent's dream of `steps` steps from z = N(0, 1), h = c = 0; returns (z, h, c) at the end."""
    rng = np.random.RandomState(seed)
    z = rng.randn(params.z_size).astype(np.float32)
    h = np.zeros(params.hidden_size, np.float32)
    c = np.zeros(params.hidden_size, np.float32)
    for _ in range(steps):
        z, h, c, _ = dream_step(params, z, h, c, temperature, rng)
    return z, h, c


def steps_per_second(params: NumpyDreamParams, steps: int, repeats: int = 3, temperature: float = 1.0) -> dict:
    """Median steps/s of `rollout` over `repeats` timed runs after a short warm-up."""
    rollout(params, 5, temperature)
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        rollout(params, steps, temperature, seed=r)
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    return {"steps_per_s": steps / median, "steps": steps, "seconds": times}


if __name__ == "__main__":
    result = steps_per_second(random_params(np.random.default_rng(0)), 2000)
    print(f"numpy per-agent dream loop: {result['steps_per_s']:,.0f} steps/s")
