"""Our gymnax environments, registered with `gymnax.register` on import.

Factories import their module lazily, so `gymnax.make("CarRacing-v0")` works as soon as
`worldmodels_jax` is imported, without paying for every environment's import.
"""

from __future__ import annotations

import importlib

import gymnax
from gymnax import registration

# env id -> (module, class name, constructor kwargs)
OUR_ENVS: dict[str, tuple[str, str, dict]] = {
    "CartPolePixels-v1": ("worldmodels_jax.envs.cartpole_pixels", "CartPolePixels", {}),
    "CarRacing-v0": ("worldmodels_jax.envs.carracing", "CarRacing", {"discrete": False}),
    "CarRacingDiscrete-v0": ("worldmodels_jax.envs.carracing", "CarRacing", {"discrete": True}),
    "TakeCover-v0": ("worldmodels_jax.envs.takecover", "TakeCover", {}),
}


def _factory(module: str, cls: str, defaults: dict):
    def make(**kwargs):
        env_cls = getattr(importlib.import_module(module), cls)
        return env_cls(**{**defaults, **kwargs})

    make.__name__ = f"make_{cls}"
    return make


def register_all() -> None:
    """Register every environment of ours that gymnax does not know yet (idempotent)."""
    for env_id, (module, cls, defaults) in OUR_ENVS.items():
        if env_id not in registration._registry:
            gymnax.register(env_id, _factory(module, cls, defaults))


register_all()
