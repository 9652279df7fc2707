"""Configuration of the World Models pipeline: frozen dataclasses and named presets.

Presets are named instances, not files: `cpu-small` (pixel CartPole on a 2-core CPU in minutes),
`tiny` (for tests), and paper-scale ones (`carracing-paper`, `takecover-paper`) for GPUs.
`carracing-cpu-small-e16` is `carracing-cpu-small` as it was from 2026-12-02 to 2026-12-07 (C kept by 16-episode
evaluations), and `carracing-cpu-small-t500` as it was until 2026-12-02 (C trained on 500-step episodes).
`carracing-paper-cpu` is the paper preset's models and settings at `carracing-cpu-small-t500`'s budget.
`carracing-cpu-small-imitate` is `carracing-cpu-small-t500` with C's search started from an imitation of the
scripted driver (`controller.init`). `carracing-cpu-small-paper-c` is `carracing-cpu-small` with the paper's C
inputs and search settings (sampled raw z and h, one σ₀ = 0.1, L2 0.01).
Sizes that follow from the environment and from V (M's z and action sizes, C's input sizes) are
filled in by `resolve`, and the resolved config is what a run directory records.
"""

from __future__ import annotations

import dataclasses
import math

from worldmodels_jax.errors import ConfigError
from worldmodels_jax.evolution import ESConfig
from worldmodels_jax.models.mdnrnn import MDNRNNConfig
from worldmodels_jax.models.memory import MEMORIES, TransformerSettings
from worldmodels_jax.models.vae import VAEConfig
from worldmodels_jax.train.mdn import MDNTrainConfig
from worldmodels_jax.train.vae import VAETrainConfig


COLLECT_POLICIES = ("random", "random_controller", "noisy_scripted")


@dataclasses.dataclass(frozen=True)
class CollectConfig:
    """Random-policy data collection."""

    num_envs: int = 64
    """Parallel environments per shard (one sequence each)."""
    steps: int = 1000
    """Steps recorded per environment per shard; episodes auto-reset inside."""
    num_shards: int = 1
    hold_min: int = 1
    """Each random action is held for a uniform hold_min..hold_max frames (Doom: 1..10)."""
    hold_max: int = 1

    policy: str = "random"
    """'random' (uniform random actions, held hold_min..hold_max frames: the original's Doom recipe),
    'random_controller' (an untrained controller with tiny random weights, a new one per episode: the
    original's CarRacing recipe) or 'noisy_scripted' (CarRacing-v0 only: the scripted driver with steering
    and speed noise, mixed with random held actions). docs/carracing.md, "Data collection"."""
    random_prob: float = 0.3
    """With policy 'noisy_scripted': the chance that a hold segment is a random action instead."""
    policy_noise: float = 0.3
    """With policy 'noisy_scripted': std of the steering noise and of the log speed-target scale."""
    controller_std: float = 0.01
    """With policy 'random_controller': each episode's weights have std U(0, controller_std) (original: 0.01)."""

    def __post_init__(self):
        if min(self.num_envs, self.steps, self.num_shards) < 1:
            raise ConfigError("collect.num_envs, steps and num_shards must be >= 1")
        if not 1 <= self.hold_min <= self.hold_max:
            raise ConfigError(f"collect needs 1 <= hold_min <= hold_max, got {self.hold_min}, {self.hold_max}")
        if self.policy not in COLLECT_POLICIES:
            raise ConfigError(f"collect.policy must be one of {COLLECT_POLICIES}, got {self.policy!r}")
        if not self.controller_std > 0:
            raise ConfigError(f"collect.controller_std must be > 0, got {self.controller_std}")
        if not 0.0 <= self.random_prob <= 1.0 or self.policy_noise < 0:
            raise ConfigError(f"collect needs 0 <= random_prob <= 1 and policy_noise >= 0, got "
                              f"{self.random_prob}, {self.policy_noise}")


@dataclasses.dataclass(frozen=True)
class ImitationConfig:
    """Demonstrations and the fit for `ControllerStageConfig.init = "imitate"` (`train/imitation.py`)."""

    num_envs: int = 64
    steps: int = 512
    """Demonstration frames: num_envs x steps (32,768 by default, as many as cpu-small's V and M see)."""
    steer_noise: float = 0.3
    speed_noise: float = 0.3
    """The explorer's noise (`noisy_scripted_driver`); the labels are the noise-free driver's."""
    fit_steps: int = 2000
    learning_rate: float = 3e-3

    def __post_init__(self):
        for name in ("num_envs", "steps", "fit_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"controller.imitation.{name} must be an int >= 1, got {value!r}")
        if not self.learning_rate > 0:
            raise ConfigError(f"controller.imitation.learning_rate must be > 0, got {self.learning_rate}")
        if self.steer_noise < 0 or self.speed_noise < 0:
            raise ConfigError("controller.imitation.steer_noise and speed_noise must be >= 0, got "
                              f"{self.steer_noise}, {self.speed_noise}")


CONTROLLER_INITS = ("zeros", "imitate", "lecun_hidden")


@dataclasses.dataclass(frozen=True)
class ControllerStageConfig:
    """Training C with an evolution strategy, in the real env or inside M's dream."""

    modes: tuple[str, ...] = ("z_h", "z", "z_hidden")
    """Controllers to train: 'z_h' (full world model), 'z' (V only), 'z_hidden' (V only + hidden layer), 'z_c_h'."""
    es: ESConfig = ESConfig()
    hidden_units: int = 40
    use_bias: bool = True
    action_mapping: str = "auto"
    """'auto', 'carracing', 'thirds', 'argmax', 'threshold' or 'box'."""
    where: str = "real"
    """'real' (env frames through V and M) or 'dream' (inside M; needs M's done head)."""
    temperature: float = 1.0
    """Dream temperature τ."""
    z_sample: bool = True
    """In the real env, feed z = μ + σ·ε (the original) rather than μ."""
    normalize_features: bool = False
    """Standardise C's inputs z and h with their mean and std over the training data (the original fed
    them raw; a small V whose latents vary over a tiny range needs this for CMA-ES to find them)."""
    max_episode_steps: int = 0
    """Cap on episode length in rollouts (0: the env's own limit)."""
    chunk_steps: int = 50
    """Env steps per chunk in the early-exit while loop."""
    init: str = "zeros"
    """Where CMA-ES's mean starts: 'zeros'; 'imitate': a controller fitted to the scripted driver's actions
    (`train/imitation.py`; CarRacing-v0 only), the same demonstrations for every mode; or 'lecun_hidden':
    hidden layers drawn by Linen's initializer and the output layer zero (`hidden_init_controller`), which
    is 'zeros' for a controller without a hidden layer (z, z_h)."""
    imitation: ImitationConfig = ImitationConfig()
    sigma_fan_in: int = 0
    """0: every mode starts CMA-ES at es.sigma_init. N > 0: a controller with I inputs starts at
    es.sigma_init * sqrt(N / I), so that with standardised features every mode's initial tanh
    pre-activations have the spread of an N-input controller (see docs/carracing_studies.md, runs I0-I2)."""

    def sigma_init_for(self, input_size: int) -> float:
        """CMA-ES's initial step size for a controller with `input_size` inputs."""
        if not self.sigma_fan_in:
            return self.es.sigma_init
        return self.es.sigma_init * math.sqrt(self.sigma_fan_in / input_size)

    def __post_init__(self):
        from worldmodels_jax.models.controller import ACTION_MAPPINGS, MODES

        if not isinstance(self.sigma_fan_in, int) or self.sigma_fan_in < 0:
            raise ConfigError(f"controller.sigma_fan_in must be an int >= 0 (0: off), got {self.sigma_fan_in!r}")

        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ConfigError(f"controller.modes must be a non-empty subset of {MODES}, got {self.modes}")
        if self.where not in ("real", "dream"):
            raise ConfigError(f"controller.where must be 'real' or 'dream', got {self.where!r}")
        if self.action_mapping not in ACTION_MAPPINGS:
            raise ConfigError(f"controller.action_mapping must be one of {ACTION_MAPPINGS}")
        if self.temperature <= 0:
            raise ConfigError(f"controller.temperature must be > 0, got {self.temperature}")
        if self.init not in CONTROLLER_INITS:
            raise ConfigError(f"controller.init must be one of {CONTROLLER_INITS}, got {self.init!r}")
        if self.init == "imitate" and self.where != "real":
            raise ConfigError("controller.init='imitate' fits C on real frames; it needs controller.where='real'")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    episodes: int = 100
    """Episodes per controller (and for the random policy)."""
    max_episode_steps: int = 0

    def __post_init__(self):
        if self.episodes < 1:
            raise ConfigError(f"evaluate.episodes must be >= 1, got {self.episodes}")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything one World Models run needs."""

    env_id: str = "CartPolePixels-v1"
    preset: str = "custom"
    seed: int = 0
    action_encoding: str = "auto"
    """How actions enter M: 'auto', 'onehot', 'scalar' or 'box'."""
    vae: VAEConfig = VAEConfig()
    mdn: MDNRNNConfig = MDNRNNConfig()
    """M's sizes and heads (shared by both memories; hidden_size is the LSTM's)."""
    memory: str = "lstm"
    """M's memory: 'lstm' (the MDN-RNN) or 'transformer' (a causal transformer with a KV cache)."""
    transformer: TransformerSettings = TransformerSettings()
    collect: CollectConfig = CollectConfig()
    train_vae: VAETrainConfig = VAETrainConfig()
    train_mdn: MDNTrainConfig = MDNTrainConfig()
    controller: ControllerStageConfig = ControllerStageConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    gif_steps: int = 60
    """Length of the dream-vs-real GIF."""

    def __post_init__(self):
        if self.controller.where == "dream" and not self.mdn.done_head:
            raise ConfigError("training in the dream needs M's done head: set mdn.done_head=True")
        if self.memory not in MEMORIES:
            raise ConfigError(f"memory must be one of {MEMORIES}, got {self.memory!r}")
        if self.memory == "transformer" and "z_c_h" in self.controller.modes:
            raise ConfigError("controller mode 'z_c_h' needs the LSTM's cell state; use 'z_h' with memory='transformer'")
        if self.mdn.z_size != self.vae.z_size:
            raise ConfigError(f"mdn.z_size ({self.mdn.z_size}) must equal vae.z_size ({self.vae.z_size})")


def small_vae(z_size: int, widths: tuple[int, int, int, int]) -> VAEConfig:
    return VAEConfig(z_size=z_size, encoder_widths=widths, decoder_widths=(widths[2], widths[1], widths[0]),
                     decoder_dense=4 * widths[3])


PRESETS: dict[str, PipelineConfig] = {
    "cpu-small": PipelineConfig(
        env_id="CartPolePixels-v1",
        preset="cpu-small",
        vae=small_vae(16, (16, 32, 64, 128)),
        mdn=MDNRNNConfig(z_size=16, hidden_size=64, num_mixtures=5),
        collect=CollectConfig(num_envs=64, steps=400, num_shards=1),
        train_vae=VAETrainConfig(epochs=2, batch_size=64, learning_rate=1e-3),
        train_mdn=MDNTrainConfig(steps=1200, batch_size=64, seq_len=64, learning_rate=3e-3, chunk_steps=200),
        # z + hidden is left out to fit 10 minutes; add it with --controller.modes z_h z z_hidden.
        # The early stop at 475 is gymnasium's CartPole-v1 "solved" threshold.
        controller=ControllerStageConfig(
            modes=("z_h", "z"),
            es=ESConfig(population=32, rollouts=2, generations=60, eval_every=5, eval_episodes=32,
                        l2_coef=0.0, sigma_init=0.5, target_score=475.0),
            z_sample=False, normalize_features=True,
        ),
        evaluate=EvaluateConfig(episodes=100),
    ),
    "tiny": PipelineConfig(
        env_id="CartPolePixels-v1",
        preset="tiny",
        vae=small_vae(8, (4, 8, 8, 16)),
        mdn=MDNRNNConfig(z_size=8, hidden_size=16, num_mixtures=2),
        collect=CollectConfig(num_envs=8, steps=40, num_shards=2),
        train_vae=VAETrainConfig(epochs=1, batch_size=32),
        train_mdn=MDNTrainConfig(steps=20, batch_size=8, seq_len=16, chunk_steps=10),
        controller=ControllerStageConfig(
            modes=("z_h", "z"),
            es=ESConfig(population=8, rollouts=2, generations=4, eval_every=2, eval_episodes=4),
            max_episode_steps=60,
        ),
        evaluate=EvaluateConfig(episodes=4, max_episode_steps=60),
        gif_steps=8,
    ),
    "carracing-paper": PipelineConfig(
        env_id="CarRacing-v0",
        preset="carracing-paper",
        vae=VAEConfig(z_size=32),
        mdn=MDNRNNConfig(z_size=32, action_size=3, hidden_size=256, num_mixtures=5),
        # The original's CarRacing data: an untrained controller per rollout (its extract.py), not uniform actions.
        collect=CollectConfig(num_envs=100, steps=1000, num_shards=100, policy="random_controller"),
        train_vae=VAETrainConfig(epochs=10, batch_size=100, learning_rate=1e-4),
        train_mdn=MDNTrainConfig(steps=4000, batch_size=100, seq_len=999, learning_rate=1e-3),
        controller=ControllerStageConfig(
            modes=("z_h", "z", "z_hidden"), action_mapping="carracing",
            es=ESConfig(population=64, rollouts=16, generations=1800, eval_every=25, eval_episodes=1024,
                        sigma_init=0.1, l2_coef=0.01),
        ),
        evaluate=EvaluateConfig(episodes=100),
    ),
    "takecover-cpu-small": PipelineConfig(
        env_id="TakeCover-v0",
        preset="takecover-cpu-small",
        action_encoding="scalar",
        vae=small_vae(32, (16, 32, 64, 128)),
        mdn=MDNRNNConfig(z_size=32, action_size=1, hidden_size=128, num_mixtures=5, done_head=True,
                         restart_input=True),
        collect=CollectConfig(num_envs=64, steps=1000, num_shards=2, hold_min=1, hold_max=10),
        train_vae=VAETrainConfig(epochs=2, batch_size=64, learning_rate=1e-3, max_frames=32000),
        train_mdn=MDNTrainConfig(steps=1000, batch_size=16, seq_len=200, learning_rate=3e-3,
                                 lr_decay=0.999, lr_min=3e-4, done_pos_weight=10.0, chunk_steps=200),
        controller=ControllerStageConfig(
            modes=("z_c_h",), use_bias=False, action_mapping="thirds", where="dream", temperature=1.15,
            es=ESConfig(population=32, rollouts=8, generations=30, eval_every=10, eval_episodes=32,
                        sigma_init=0.1, l2_coef=0.01),
        ),
        evaluate=EvaluateConfig(episodes=100),
    ),
    "carracing-cpu-small": PipelineConfig(
        env_id="CarRacing-v0",
        preset="carracing-cpu-small",
        vae=small_vae(16, (8, 16, 32, 64)),
        mdn=MDNRNNConfig(z_size=16, action_size=3, hidden_size=64, num_mixtures=5),
        collect=CollectConfig(num_envs=64, steps=500, num_shards=1, hold_min=1, hold_max=10,
                              policy="noisy_scripted", random_prob=0.3, policy_noise=0.3),
        train_vae=VAETrainConfig(epochs=3, batch_size=64, learning_rate=1e-3),
        train_mdn=MDNTrainConfig(steps=1000, batch_size=32, seq_len=100, learning_rate=3e-3, chunk_steps=200),
        controller=ControllerStageConfig(
            modes=("z_h", "z", "z_hidden"), action_mapping="carracing",
            # Population 32 (was 16): at least CMA-ES's default 4 + 3 ln n for every controller (z + hidden has
            # 803 parameters: 24). With the same V and M, z + h rose by 194 on average over seeds 0-6, on all
            # seven (docs/carracing_studies.md, "Population 32"), for about 17-20 minutes for the whole experiment on a
            # Zen 4 VM. A Zen 3 VM took 38 min, then 25 min once V's forward-only convs were 1.56x faster
            # (docs/carracing_studies.md, "Seeds 7, 8 and 9").
            # 1 rollout x 120 generations of full 1000-step episodes (was 4 x 60 of 500 steps; the same
            # env steps): C is trained on the episodes it is tested on, and CMA-ES gets twice the updates.
            # Controllers trained on 500 steps drove well to step 500, then braked and drifted off the road
            # (docs/carracing_studies.md, "Full-length training episodes").
            # The kept controller is the best of the ES mean's six evaluations, each over 64 fresh tracks (was
            # 16: a standard error of 24-71, as large as the differences between checkpoints, so the pick
            # favoured a lucky one). Same ES trajectories; on seeds 14-20 the test scores rose by +15.5 (z),
            # +8.7 (z + hidden), +28.3 (z + h), for about 3% more time (docs/carracing.md, "How the kept
            # controller is chosen").
            es=ESConfig(population=32, rollouts=1, generations=120, eval_every=20, eval_episodes=64,
                        l2_coef=0.0, sigma_init=0.5),
            z_sample=False, normalize_features=True, max_episode_steps=0,
            # sigma_init scaled to each controller's fan-in (z + h: 0.5 * sqrt(16 / 80) = 0.224; z and z + hidden
            # keep 0.5): with the same V and M, z + h went 492 -> 615, 393 -> 481, 164 -> 341 on seeds 0-2
            # (docs/carracing_studies.md, runs I0-I2).
            sigma_fan_in=16,
        ),
        evaluate=EvaluateConfig(episodes=100),
    ),
    "takecover-paper": PipelineConfig(
        env_id="TakeCover-v0",
        preset="takecover-paper",
        action_encoding="scalar",
        vae=VAEConfig(z_size=64),
        mdn=MDNRNNConfig(z_size=64, action_size=1, hidden_size=512, num_mixtures=5, done_head=True,
                         restart_input=True),
        collect=CollectConfig(num_envs=100, steps=2100, num_shards=100, hold_min=1, hold_max=10),
        train_vae=VAETrainConfig(epochs=10, batch_size=100, learning_rate=1e-4),
        train_mdn=MDNTrainConfig(steps=4000, batch_size=100, seq_len=500, learning_rate=1e-3,
                                 lr_decay=0.99999, lr_min=1e-5, done_pos_weight=10.0),
        controller=ControllerStageConfig(
            modes=("z_c_h",), use_bias=False, action_mapping="thirds", where="dream", temperature=1.15,
            es=ESConfig(population=64, rollouts=16, generations=200, eval_every=25, eval_episodes=1024,
                        sigma_init=0.1, l2_coef=0.01),
        ),
        evaluate=EvaluateConfig(episodes=100),
    ),
}


def paper_settings_at_cpu_budget(paper: PipelineConfig, small: PipelineConfig, name: str) -> PipelineConfig:
    """`paper`'s models, collection policy and controller settings with `small`'s data and training budget.

    A CPU check of the paper preset's settings before GPU hours go into them: V, M and C keep the paper's
    sizes, σ₀, L2, sampled raw z and data recipe; collection, V and M training, the ES's population,
    rollouts, generations and episode cap, and its training-time evaluation come from `small`. Only z + h.
    """
    budget_es = {f: getattr(small.controller.es, f) for f in
                 ("population", "rollouts", "generations", "eval_every", "eval_episodes")}
    collect = dataclasses.replace(paper.collect, num_envs=small.collect.num_envs, steps=small.collect.steps,
                                  num_shards=small.collect.num_shards)
    train_mdn = dataclasses.replace(paper.train_mdn, steps=small.train_mdn.steps, batch_size=small.train_mdn.batch_size,
                                    seq_len=small.train_mdn.seq_len, learning_rate=small.train_mdn.learning_rate)
    controller = dataclasses.replace(paper.controller, modes=("z_h",), max_episode_steps=small.controller.max_episode_steps,
                                     es=dataclasses.replace(paper.controller.es, **budget_es))
    return dataclasses.replace(paper, preset=name, collect=collect, train_vae=small.train_vae, train_mdn=train_mdn,
                               controller=controller)


# `carracing-cpu-small` as it was from 2026-12-02 to 2026-12-07: the kept controller chosen by 16-episode
# evaluations. The 21-seed table in docs/carracing_studies.md ("Full-length training episodes") used it.
PRESETS["carracing-cpu-small-e16"] = dataclasses.replace(
    PRESETS["carracing-cpu-small"], preset="carracing-cpu-small-e16",
    controller=dataclasses.replace(PRESETS["carracing-cpu-small"].controller,
                                   es=dataclasses.replace(PRESETS["carracing-cpu-small"].controller.es,
                                                          eval_episodes=16)))

# `carracing-cpu-small` as it was until 2026-12-02: C trained on 4 rollouts x 60 generations of 500-step episodes
# (the same env steps as since), chosen by 16-episode evaluations. The sixteen-seed tables and the imitation study
# in docs/carracing.md used it; the two presets below were measured with it and keep it.
PRESETS["carracing-cpu-small-t500"] = dataclasses.replace(
    PRESETS["carracing-cpu-small-e16"], preset="carracing-cpu-small-t500",
    controller=dataclasses.replace(PRESETS["carracing-cpu-small-e16"].controller, max_episode_steps=500,
                                   es=dataclasses.replace(PRESETS["carracing-cpu-small-e16"].controller.es,
                                                          rollouts=4, generations=60, eval_every=10)))

# docs/carracing.md, "carracing-paper-cpu": on a 2-core Zen 3 VM, 84 minutes on one CPU device (seed 1), 43 on two
# (seed 0; `--cpu-devices auto` picks two).
PRESETS["carracing-paper-cpu"] = paper_settings_at_cpu_budget(PRESETS["carracing-paper"],
                                                              PRESETS["carracing-cpu-small-t500"], "carracing-paper-cpu")


# `carracing-cpu-small-t500` with C's search started from an imitation of the scripted driver (`train/imitation.py`)
# instead of zeros. σ₀ 0.224 with the same fan-in rule: z and z + hidden 0.224, z + h 0.1, about as far from
# the fitted controller as its own outputs vary (docs/carracing_studies.md, "Warm start by imitation").
PRESETS["carracing-cpu-small-imitate"] = dataclasses.replace(
    PRESETS["carracing-cpu-small-t500"], preset="carracing-cpu-small-imitate",
    controller=dataclasses.replace(PRESETS["carracing-cpu-small-t500"].controller, init="imitate",
                                   es=dataclasses.replace(PRESETS["carracing-cpu-small-t500"].controller.es,
                                                          sigma_init=0.2236)))


def with_paper_controller_inputs(small: PipelineConfig, paper: PipelineConfig, name: str) -> PipelineConfig:
    """`small` with C's inputs and search set as in `paper`: sampled, raw (not standardised) z and h, one σ₀ for
    every controller (no fan-in rule) and the paper's L2 penalty. Models, data and ES budget stay `small`'s."""
    controller = dataclasses.replace(
        small.controller, z_sample=paper.controller.z_sample, normalize_features=paper.controller.normalize_features,
        sigma_fan_in=paper.controller.sigma_fan_in,
        es=dataclasses.replace(small.controller.es, sigma_init=paper.controller.es.sigma_init,
                               l2_coef=paper.controller.es.l2_coef))
    return dataclasses.replace(small, preset=name, controller=controller)


# `carracing-cpu-small` with the paper's C inputs and search settings: does the paper's C change the V-only order at
# the CPU budget? docs/carracing_studies.md, "The paper's C settings at cpu-small", compares it with the preset seed by seed.
PRESETS["carracing-cpu-small-paper-c"] = with_paper_controller_inputs(
    PRESETS["carracing-cpu-small"], PRESETS["carracing-paper"], "carracing-cpu-small-paper-c")


ENV_FAMILIES: dict[str, str] = {"CarRacing-v0": "carracing", "CarRacingDiscrete-v0": "carracing",
                                "TakeCover-v0": "takecover"}
"""Envs whose presets are named `<family>-<name>`: `--env CarRacing-v0 --preset cpu-small` is `carracing-cpu-small`."""


def get_preset(name: str, env_id: str | None = None) -> PipelineConfig:
    """The preset `name`; with an env whose family has its own `<family>-<name>` preset, that one."""
    family = ENV_FAMILIES.get(env_id or "")
    if family is not None and f"{family}-{name}" in PRESETS:
        name = f"{family}-{name}"
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    return preset if env_id is None else dataclasses.replace(preset, env_id=env_id)


def resolve(config: PipelineConfig, env, env_params) -> PipelineConfig:
    """Fills in the sizes that follow from the env and V (M's z/action sizes)."""
    from worldmodels_jax.envs.actions import ActionEncoder, action_spec

    encoder = ActionEncoder(action_spec(env.action_space(env_params)), config.action_encoding)
    mdn = dataclasses.replace(config.mdn, z_size=config.vae.z_size, action_size=encoder.size)
    return dataclasses.replace(config, mdn=mdn)
