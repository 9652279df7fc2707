"""C: the small controller trained by CMA-ES, and the per-environment action mappings.

Modes (CarRacing sizes in brackets): linear on [z, h] (867), z only (99), z plus a 40-unit tanh
hidden layer (1443), and the Doom experiment's no-bias linear on [z, c, h] (1088).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from gymnax.environments import spaces

from worldmodels_jax.errors import ConfigError, EnvError, ShapeError

MODES = ("z", "z_hidden", "z_h", "z_c_h")
ACTION_MAPPINGS = ("auto", "carracing", "thirds", "argmax", "threshold", "box")


@dataclasses.dataclass(frozen=True)
class ControllerConfig:
    """Architecture of C. Sizes other than `mode`, `hidden_units`, `use_bias` are set by the pipeline."""

    mode: str = "z_h"
    """'z' (V only), 'z_hidden' (V only, one tanh hidden layer), 'z_h' ([z, h]), 'z_c_h' ([z, c, h])."""
    z_size: int = 32
    feature_size: int = 256
    """Size of h (and of c in mode 'z_c_h')."""
    num_outputs: int = 3
    hidden_units: int = 40
    use_bias: bool = True
    """The Doom controller has no bias."""

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"controller mode must be one of {MODES}, got {self.mode!r}")
        for name in ("z_size", "feature_size", "num_outputs", "hidden_units"):
            if getattr(self, name) < 1:
                raise ConfigError(f"controller.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def input_size(self) -> int:
        return {"z": self.z_size, "z_hidden": self.z_size, "z_h": self.z_size + self.feature_size,
                "z_c_h": self.z_size + 2 * self.feature_size}[self.mode]


class Controller(nn.Module):
    """Maps the agent's features to raw outputs in [-1, 1] (tanh); an `ActionMapping` turns them into actions."""

    config: ControllerConfig

    @nn.compact
    def __call__(self, z: jax.Array, h: jax.Array | None = None, c: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        if z.shape[-1] != cfg.z_size:
            raise ShapeError(f"controller expects z [..., {cfg.z_size}], got {tuple(z.shape)}")
        if cfg.mode in ("z", "z_hidden"):
            x = z
        elif cfg.mode == "z_h":
            x = jnp.concatenate([z, h], axis=-1)
        else:
            x = jnp.concatenate([z, c, h], axis=-1)
        if x.shape[-1] != cfg.input_size:
            raise ShapeError(f"controller mode {cfg.mode} expects {cfg.input_size} inputs, got {x.shape[-1]}")
        if cfg.mode == "z_hidden":
            x = jnp.tanh(nn.Dense(cfg.hidden_units, name="hidden")(x))
        return jnp.tanh(nn.Dense(cfg.num_outputs, use_bias=cfg.use_bias, name="out")(x))


@dataclasses.dataclass(frozen=True)
class ActionMapping:
    """How C's tanh outputs become an environment action.

    'carracing': steer = a₀, gas = (a₁ + 1)/2, brake = clip(a₂, 0, 1).
    'thirds': one output split into thirds of [-1, 1] → discrete {0, 1, 2} (Doom: left, stay, right).
    'argmax': one output per discrete action.  'threshold': one output, action 1 iff output > 0 (2 actions).
    'box': outputs scaled from [-1, 1] to the Box bounds.
    """

    kind: str
    num_outputs: int
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()

    def __call__(self, raw: jax.Array) -> jax.Array:
        if self.kind == "carracing":
            return jnp.stack([raw[..., 0], (raw[..., 1] + 1.0) / 2.0, jnp.clip(raw[..., 2], 0.0, 1.0)], -1)
        if self.kind == "thirds":
            return jnp.digitize(raw[..., 0], jnp.array([-1.0 / 3.0, 1.0 / 3.0])).astype(jnp.int32)
        if self.kind == "argmax":
            return jnp.argmax(raw, axis=-1).astype(jnp.int32)
        if self.kind == "threshold":
            return (raw[..., 0] > 0).astype(jnp.int32)
        low, high = jnp.asarray(self.low), jnp.asarray(self.high)
        return low + (raw + 1.0) * 0.5 * (high - low)


def action_mapping_for(action_space, kind: str = "auto") -> ActionMapping:
    """The mapping for an environment's action space ('auto' picks threshold/argmax/box)."""
    if kind not in ACTION_MAPPINGS:
        raise ConfigError(f"action mapping must be one of {ACTION_MAPPINGS}, got {kind!r}")
    if isinstance(action_space, spaces.Discrete):
        n = int(action_space.n)
        if kind == "auto":
            kind = "threshold" if n == 2 else "argmax"
        if kind == "threshold" and n != 2:
            raise ConfigError(f"action mapping 'threshold' needs 2 discrete actions, the env has {n}")
        if kind == "thirds" and n != 3:
            raise ConfigError(f"action mapping 'thirds' needs 3 discrete actions, the env has {n}")
        if kind in ("box", "carracing"):
            raise ConfigError(f"action mapping {kind!r} needs a continuous (Box) action space; the env's is Discrete({n})")
        return ActionMapping(kind, {"threshold": 1, "thirds": 1, "argmax": n}[kind])
    if isinstance(action_space, spaces.Box):
        shape = tuple(action_space.shape)
        if len(shape) != 1:
            raise EnvError(f"only flat Box action spaces are supported, got shape {shape}")
        if kind == "auto":
            kind = "box"
        if kind == "carracing" and shape != (3,):
            raise ConfigError(f"action mapping 'carracing' needs a 3-dim Box, got {shape}")
        if kind not in ("box", "carracing"):
            raise ConfigError(f"action mapping {kind!r} needs a Discrete action space; the env's is a Box")
        low = tuple(float(v) for v in jnp.broadcast_to(jnp.asarray(action_space.low), shape))
        high = tuple(float(v) for v in jnp.broadcast_to(jnp.asarray(action_space.high), shape))
        return ActionMapping(kind, shape[0], low, high)
    raise EnvError(f"unsupported action space {type(action_space).__name__}: need Discrete or a flat Box")


def init_controller(key: jax.Array, config: ControllerConfig) -> dict:
    z = jnp.zeros((config.z_size,))
    h = jnp.zeros((config.feature_size,))
    return Controller(config).init({"params": key}, z, h, h)["params"]


def hidden_init_controller(key: jax.Array, config: ControllerConfig) -> dict:
    """Hidden layers from Linen's initializer (LeCun-normal kernels, zero biases), the output layer zero.

    As an ES's starting mean: the controller's outputs start at zero, as from all zeros, but each hidden unit
    already has a direction. At all zeros, a hidden layer is a saddle, and flipping the signs of a unit's input
    and output weights gives the same controller, so good candidates of opposite signs cancel in the mean.
    Without a hidden layer this is all zeros."""
    params = init_controller(key, config)
    return {name: jax.tree.map(jnp.zeros_like, layer) if name == "out" else layer for name, layer in params.items()}
