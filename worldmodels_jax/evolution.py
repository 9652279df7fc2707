"""The evolution engine: any evosax strategy over any parameter pytree, generations in compiled chunks.

`make_evolution(fitness_fn, template, config)` returns pure functions:
    init(key) -> EvoState
    run_chunk(state, generations, *fitness_args) -> (state, metrics stacked over the chunk's generations)
    mean_params(state) -> the distribution mean as a parameter pytree
`fitness_fn(population, key, *fitness_args) -> returns [P]` is maximised; evosax minimises, so `tell` gets
−fitness. Non-finite fitness is counted as the worst value and reported in the metrics. `fitness_args` are
arguments of the compiled chunk (for example V's and M's parameters): arrays the fitness closed over instead would
be embedded in the program as constants, which ties it to those values (no compilation cache serves other ones).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from evosax.algorithms import algorithms as EVOSAX_ALGORITHMS
from flax import struct

from worldmodels_jax.errors import ConfigError, ShapeError

WORST_FITNESS = -1e30

EVEN_POPULATION = frozenset({"ARS", "ASEBO", "CR_FM_NES", "GuidedES", "NoiseReuseES", "Open_ES", "PGPE", "PersistentES"})
"""Strategies that sample antithetic (mirrored) pairs, or otherwise need an even population."""


@dataclasses.dataclass(frozen=True)
class ESConfig:
    """Evolution strategy settings (defaults: the paper's CarRacing controller)."""

    strategy: str = "CMA_ES"
    """Any evosax algorithm by name: CMA_ES, Sep_CMA_ES, Open_ES, SNES, PGPE, SimpleES, ..."""
    population: int = 64
    sigma_init: float = 0.1
    """Initial standard deviation σ₀."""
    generations: int = 1800
    rollouts: int = 16
    """Episodes per candidate; fitness is their mean return."""
    l2_coef: float = 0.01
    """Fitness penalty l2_coef · mean(θ²) (0 disables)."""
    eval_every: int = 25
    """Evaluate the distribution mean every this many generations (one compiled chunk)."""
    eval_episodes: int = 1024
    target_score: float | None = None
    """Stop early once the mean's evaluation reaches this score."""
    common_random_numbers: bool = True
    """All candidates of a generation share the same episode seeds."""
    open_es_lr: float = 0.05
    """Learning rate of the optimizer for gradient-style strategies (Open_ES, PGPE use it)."""
    antithetic: bool = True
    """Mirrored pairs (θ+ε, θ−ε) where the strategy offers the choice (Open_ES, SV_Open_ES); ARS, PGPE,
    GuidedES, ... always sample pairs."""

    def __post_init__(self):
        if self.strategy not in EVOSAX_ALGORITHMS:
            raise ConfigError(
                f"unknown evolution strategy {self.strategy!r}; evosax has: {', '.join(sorted(EVOSAX_ALGORITHMS))}"
            )
        if self.population < 2:
            raise ConfigError(f"population must be >= 2, got {self.population}")
        if self.strategy in EVEN_POPULATION and self.population % 2:
            raise ConfigError(f"{self.strategy} uses antithetic pairs: population must be even, got {self.population}")
        if self.sigma_init <= 0:
            raise ConfigError(f"sigma_init must be > 0, got {self.sigma_init}")
        for name in ("generations", "rollouts", "eval_every", "eval_episodes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.l2_coef < 0:
            raise ConfigError(f"l2_coef must be >= 0, got {self.l2_coef}")


def make_strategy(config: ESConfig, template):
    """The evosax strategy object and its params, with σ₀ applied."""
    cls = EVOSAX_ALGORITHMS[config.strategy]
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {}
    if "use_antithetic_sampling" in accepted:
        kwargs["use_antithetic_sampling"] = config.antithetic
    if config.strategy == "Open_ES":
        kwargs.update(optimizer=optax.adam(config.open_es_lr), std_schedule=optax.constant_schedule(config.sigma_init))
    try:
        strategy = cls(config.population, template, **kwargs)
    except (TypeError, AssertionError) as err:
        raise ConfigError(f"evolution strategy {config.strategy!r} cannot be built with population "
                          f"{config.population} and defaults ({err}); choose another strategy") from err
    params = strategy.default_params
    if "std_init" in getattr(params, "__dataclass_fields__", {}):
        params = params.replace(std_init=jnp.asarray(config.sigma_init, jnp.float32))
    return strategy, params


@struct.dataclass
class EvoState:
    es_state: Any
    key: jax.Array
    generation: jax.Array


def strong_types(tree):
    """The same arrays without JAX's weak types.

    evosax's `init` leaves some fields weakly typed (`jnp.full(..., jnp.inf)`) and `tell` returns them strongly
    typed, or the other way round (Open_ES's std). A jitted generation loop fed the init state and then its own
    output would compile twice (the second time on the second call, inside whatever the caller is timing). Call
    this on every initial ES state and on the state a jitted loop returns.
    """
    def strong(x):
        dtype = jnp.result_type(x)
        return x if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) else jnp.asarray(x, dtype)

    return jax.tree.map(strong, tree)


def mean_sq(tree) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    total = sum(jnp.sum(jnp.square(x), axis=tuple(range(1, x.ndim))) for x in leaves)
    count = sum(x[0].size for x in leaves)
    return total / count


def make_evolution(fitness_fn: Callable, template, config: ESConfig, x0=None):
    """See the module docstring. `template` is a parameter pytree (its values are the mean x0 unless given)."""
    strategy, es_params = make_strategy(config, template)
    x0 = jax.tree.map(jnp.zeros_like, template) if x0 is None else x0

    def init(key: jax.Array, mean=None) -> EvoState:
        """The ES state at generation 0, its search distribution centred on `mean` (default x0)."""
        key_init, key_run = jax.random.split(key)
        if mean is not None and (jax.tree.structure(mean) != jax.tree.structure(x0) or any(
                jnp.shape(m) != jnp.shape(t) for m, t in zip(jax.tree.leaves(mean), jax.tree.leaves(x0)))):
            raise ShapeError(f"the ES's initial mean must be shaped like the parameter template "
                             f"{jax.tree.map(jnp.shape, x0)}, got {jax.tree.map(jnp.shape, mean)}")
        start = x0 if mean is None else jax.tree.map(lambda m, t: jnp.asarray(m, t.dtype), mean, x0)
        return strong_types(EvoState(strategy.init(key_init, start, es_params), key_run, jnp.zeros((), jnp.int32)))

    def generation(state: EvoState, fitness_args):
        key, key_ask, key_fit, key_tell = jax.random.split(state.key, 4)
        population, es_state = strategy.ask(key_ask, state.es_state, es_params)
        returns = fitness_fn(population, key_fit, *fitness_args)
        fitness = returns - config.l2_coef * mean_sq(population)
        finite = jnp.isfinite(fitness)
        fitness = jnp.where(finite, fitness, WORST_FITNESS)
        es_state, _ = strategy.tell(key_tell, population, -fitness, es_state, es_params)
        metrics = {
            "generation": state.generation + 1,
            "return_mean": jnp.mean(jnp.where(finite, returns, jnp.nan)),
            "return_max": jnp.max(jnp.where(finite, returns, -jnp.inf)),
            "return_min": jnp.min(jnp.where(finite, returns, jnp.inf)),
            "fitness_best": jnp.max(fitness),
            "non_finite": jnp.sum(~finite),
        }
        return EvoState(es_state, key, state.generation + 1), metrics

    def run_chunk(state: EvoState, generations: int, *fitness_args):
        state, metrics = jax.lax.scan(lambda s, _: generation(s, fitness_args), state, None, length=generations)
        return strong_types(state), metrics  # some strategies' tell returns weak types (Open_ES's std)

    def mean_params(state: EvoState):
        return strategy.get_mean(state.es_state)

    return init, jax.jit(run_chunk, static_argnums=1), mean_params


def es_state_is_finite(state: EvoState) -> bool:
    """True if every floating leaf of the ES state is finite (checked on the host between chunks)."""
    leaves = [np.asarray(x) for x in jax.device_get(jax.tree.leaves(state.es_state))]  # on the host: no compiles
    # best_fitness starts at +inf in evosax; it is not part of the search distribution.
    return all(bool(np.all(np.isfinite(x) | np.isposinf(x))) for x in leaves if np.issubdtype(x.dtype, np.floating))
