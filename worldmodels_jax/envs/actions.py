"""Actions as stored in datasets, as fed to M, and as sampled by random data-collection policies."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from gymnax.environments import spaces

from worldmodels_jax.errors import ConfigError, EnvError

ENCODINGS = ("auto", "onehot", "scalar", "box")


@dataclasses.dataclass(frozen=True)
class ActionSpec:
    """Static facts about an environment's action space that every stage needs."""

    discrete: bool
    num_actions: int  # discrete: number of actions; Box: dimension
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()

    @property
    def raw_shape(self) -> tuple[int, ...]:
        return () if self.discrete else (self.num_actions,)

    @property
    def raw_dtype(self):
        return jnp.int32 if self.discrete else jnp.float32


def action_spec(action_space) -> ActionSpec:
    if isinstance(action_space, spaces.Discrete):
        return ActionSpec(True, int(action_space.n))
    if isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
        dim = int(action_space.shape[0])
        # numpy, not jnp: inside a jit trace jnp ops on the bounds would give tracers that float() rejects
        low = tuple(float(v) for v in np.broadcast_to(np.asarray(action_space.low), (dim,)))
        high = tuple(float(v) for v in np.broadcast_to(np.asarray(action_space.high), (dim,)))
        return ActionSpec(False, dim, low, high)
    raise EnvError(
        f"unsupported action space {action_space!r}: World Models stages need Discrete(n) or a flat Box"
    )


@dataclasses.dataclass(frozen=True)
class ActionEncoder:
    """Turns raw actions into M's input vector.

    'onehot' (discrete, n inputs), 'scalar' (discrete, one input: the action index mapped linearly
    onto [-1, 1], as the Doom model's single action input), 'box' (continuous, as is).
    """

    spec: ActionSpec
    encoding: str = "auto"

    def __post_init__(self):
        if self.encoding not in ENCODINGS:
            raise ConfigError(f"action encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        resolved = self.resolved
        if self.spec.discrete and resolved == "box":
            raise ConfigError("action encoding 'box' needs a continuous action space; use 'onehot' or 'scalar'")
        if not self.spec.discrete and resolved != "box":
            raise ConfigError(f"action encoding {resolved!r} needs a discrete action space; use 'box'")

    @property
    def resolved(self) -> str:
        if self.encoding != "auto":
            return self.encoding
        return "onehot" if self.spec.discrete else "box"

    @property
    def size(self) -> int:
        return {"onehot": self.spec.num_actions, "scalar": 1, "box": self.spec.num_actions}[self.resolved]

    def __call__(self, action: jax.Array) -> jax.Array:
        kind = self.resolved
        if kind == "onehot":
            return jax.nn.one_hot(action, self.spec.num_actions, dtype=jnp.float32)
        if kind == "scalar":
            n = self.spec.num_actions
            return (2.0 * action.astype(jnp.float32) / max(n - 1, 1) - 1.0)[..., None]
        return action.astype(jnp.float32)


def sample_action(key: jax.Array, spec: ActionSpec) -> jax.Array:
    """A uniformly random action (raw form)."""
    if spec.discrete:
        return jax.random.randint(key, (), 0, spec.num_actions, dtype=jnp.int32)
    return jax.random.uniform(key, (spec.num_actions,), minval=jnp.asarray(spec.low), maxval=jnp.asarray(spec.high))
