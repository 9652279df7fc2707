"""The World Models pipeline: collect → train-vae → encode → train-mdn → train-controller → evaluate → report.

Every stage is jitted, shows a progress bar, writes into the run directory (config, metrics JSONL,
orbax checkpoints), and resumes where it stopped: finished stages are skipped, unfinished ones
continue from their last checkpoint (or last complete shard).

Episodes with V, M and C in the loop (the controller stage, its evaluations and the evaluate stage) are split
over every device (`Pipeline.mesh`): several GPUs, or on a CPU host the simulated CPU devices that
`--cpu-devices` asks for. The device count changes no setting and no key, so a run can resume on another count.
"""

from __future__ import annotations

import dataclasses
import json
import time
import zlib
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from worldmodels_jax.configs import PipelineConfig, resolve
from worldmodels_jax.data import Dataset, check_image_env, make_collect_shard, make_env, random_controller_policy
from worldmodels_jax.envs.actions import ActionEncoder, action_spec
from worldmodels_jax.envs.dream import DreamEnv, DreamParams
from worldmodels_jax.errors import CheckpointError, ConfigError, NonFiniteError
from worldmodels_jax.evolution import es_state_is_finite, make_evolution
from worldmodels_jax.evolve import make_mesh
from worldmodels_jax.models.controller import (Controller, ControllerConfig, action_mapping_for, hidden_init_controller,
                                                init_controller)
from worldmodels_jax.models.memory import init_memory, make_memory
from worldmodels_jax.models.vae import ConvVAE, for_inference, init_vae, param_count, param_shapes
from worldmodels_jax.rollouts import (Agent, EpisodeStats, WorldModelParams, evaluate_params, population_returns,
                                      random_policy_returns, summarize_returns)
from worldmodels_jax.rundir import RunDir, to_jsonable
from worldmodels_jax.train.mdn import SequenceData, make_evaluate_nll, make_mdn_trainer
from worldmodels_jax.train.vae import make_vae_trainer

STAGES = ("collect", "train-vae", "encode", "train-mdn", "train-controller", "evaluate", "report")


def stable_tag(name: str) -> int:
    """A per-name integer that is the same in every process (Python's `hash` of a str is salted per run)."""
    return zlib.crc32(name.encode()) % 100_003


CPU_DEVICES_MIN_ENCODER_FLOPS = 5_000_000
"""`cpu_devices_for` simulates one CPU device per core when encoding a frame costs at least this
(`VAEConfig.encoder_flops`). Measured on the 2-core Zen 3 VM, one z + h generation of 32 x 4 CarRacing episodes
with V and M in the loop, two devices against one, interleaved in one process (benchmarks/bench_carracing_env.py,
2026-12-01): V of 2.4 MFLOP (`carracing-cpu-small`) 1.08x, 8.1 MFLOP (half the paper's widths) 1.31x, 29.6 MFLOP
(the paper's V) 2.33x; 64 CartPolePixels episodes with `cpu-small`'s V (8.1 MFLOP) 1.4x. A small V already keeps
both cores busy on one device (1.9 CPU-s per s); a large one does not (1.2), and its batch of 128 frames is
slower per frame than 64. V and M training, which run on one device, were unchanged within noise
(docs/carracing.md, "Sharding the controller stage")."""


MIN_EPISODES_PER_CPU_DEVICE = 16
"""A guard for many-core hosts, not a measured optimum: the smallest share measured was 32 episodes per device
(population 16 x 4 rollouts on two devices, 1.5x one device at the paper's V)."""


def cpu_devices_for(config: PipelineConfig, cores: int | None = None) -> int:
    """How many CPU devices a run of `config` should simulate on a CPU host: one per core when V's encoder costs
    at least CPU_DEVICES_MIN_ENCODER_FLOPS per frame and C trains with V in the loop, else 1 (a controller trained
    in M's dream steps M alone, too little work per episode to split on a CPU). Each device keeps at least
    MIN_EPISODES_PER_CPU_DEVICE of a generation's episodes."""
    import os

    cores = (os.cpu_count() or 1) if cores is None else cores
    large_v = config.vae.encoder_flops >= CPU_DEVICES_MIN_ENCODER_FLOPS
    if not large_v or config.controller.where == "dream":
        return 1
    es = config.controller.es
    return max(1, min(cores, es.population * es.rollouts // MIN_EPISODES_PER_CPU_DEVICE))


def _config_from_json(payload: dict) -> PipelineConfig:
    """Rebuilds a PipelineConfig from its JSON form."""
    from worldmodels_jax import configs as c
    from worldmodels_jax.evolution import ESConfig
    from worldmodels_jax.models.mdnrnn import MDNRNNConfig
    from worldmodels_jax.models.vae import VAEConfig
    from worldmodels_jax.train.mdn import MDNTrainConfig
    from worldmodels_jax.train.vae import VAETrainConfig

    def build(cls, data):
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in data:
                value = data[f.name]
                kwargs[f.name] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)

    p = dict(payload)
    controller = dict(p["controller"])
    controller["es"] = build(ESConfig, controller["es"])
    if "imitation" in controller:
        controller["imitation"] = build(c.ImitationConfig, controller["imitation"])
    from worldmodels_jax.models.memory import TransformerSettings

    return build(c.PipelineConfig, {
        **p,
        "transformer": build(TransformerSettings, p.get("transformer", {})),
        "vae": build(VAEConfig, p["vae"]), "mdn": build(MDNRNNConfig, p["mdn"]),
        "collect": build(c.CollectConfig, p["collect"]), "train_vae": build(VAETrainConfig, p["train_vae"]),
        "train_mdn": build(MDNTrainConfig, p["train_mdn"]),
        "controller": build(c.ControllerStageConfig, controller),
        "evaluate": build(c.EvaluateConfig, p["evaluate"]),
    })


def config_differences(stored: dict, config: PipelineConfig) -> list[str]:
    """Where a run directory's stored config.json and `config` differ, as 'path: stored -> new' lines. A field
    that the stored file lacks (added to the code since the run started) counts as its default, so older runs
    resume and evaluate as long as the new field keeps its default."""
    current = json.loads(json.dumps(to_jsonable(config)))
    completed = json.loads(json.dumps(to_jsonable(_config_from_json(stored))))
    differences = []

    def walk(stored, completed, new, path):
        if isinstance(new, dict) and isinstance(completed, dict):
            stored = stored if isinstance(stored, dict) else {}
            for key in sorted(set(new) | set(stored)):
                here = f"{path}.{key}" if path else key
                if key not in new:
                    differences.append(f"{here}: {stored[key]!r} -> (no such field)")
                else:
                    walk(stored.get(key), completed.get(key), new[key], here)
        elif completed != new:
            differences.append(f"{path}: {completed!r} -> {new!r}")

    walk(stored, completed, current, "")
    return differences


def load_config(out: str | Path) -> PipelineConfig:
    path = Path(out) / "config.json"
    if not path.exists():
        raise ConfigError(f"{out} has no config.json; start the run with `wmj run --out {out} ...` "
                          "or give --preset/--env to a stage")
    return _config_from_json(json.loads(path.read_text()))


class Pipeline:
    """One run directory and the stages that fill it."""

    def __init__(self, config: PipelineConfig, out: str | Path, progress: bool = True, devices: int | None = None):
        """`devices`: how many of `jax.devices()` run episodes (default: all; see the module docstring)."""
        self.env, self.env_params = make_env(config.env_id)
        check_image_env(self.env, self.env_params)
        self.config = resolve(config, self.env, self.env_params)
        self.run = RunDir(out)
        self.progress = progress
        config_path = self.run.path / "config.json"
        if config_path.exists():
            differences = config_differences(json.loads(config_path.read_text()), self.config)
            if differences:
                raise ConfigError(
                    f"{out} holds a run with a different configuration (see {config_path}): "
                    f"{'; '.join(differences[:5])}{' ...' if len(differences) > 5 else ''}. Resume it with "
                    f"the same settings, or pass a new --out directory."
                )
        if self.config.controller.init == "imitate":
            from worldmodels_jax.envs.carracing import CarRacing

            if not isinstance(self.env, CarRacing) or self.env.discrete:
                raise ConfigError(f"controller.init='imitate' imitates the CarRacing scripted driver (CarRacing-v0 "
                                  f"only); {self.config.env_id} needs controller.init='zeros'")
        self.run.save_config(self.config)
        self.spec = action_spec(self.env.action_space(self.env_params))
        self.action_encoder = ActionEncoder(self.spec, self.config.action_encoding)
        self.vae = ConvVAE(self.config.vae)
        self.memory = make_memory(self.config.memory, self.config.mdn, self.config.transformer)
        self.root_key = jax.random.PRNGKey(self.config.seed)
        self.mesh = make_mesh(devices)

    # ------------------------------------------------------------------ helpers
    def key(self, stage: str) -> jax.Array:
        return jax.random.fold_in(self.root_key, STAGES.index(stage) if stage in STAGES else stable_tag(stage))

    def _bar(self, total: int, desc: str, initial: int = 0):
        return tqdm(total=total, initial=initial, desc=desc, disable=not self.progress, leave=False,
                    dynamic_ncols=True)

    @property
    def data_dir(self) -> Path:
        return self.run.path / "data"

    @property
    def encoded_dir(self) -> Path:
        return self.run.path / "encoded"

    def _max_steps(self, override: int) -> int:
        return int(override or self.env_params.max_steps_in_episode)

    def load_params(self, name: str, template):
        restored = self.run.checkpointer(name).restore(template)
        if restored is None:
            raise CheckpointError(f"no trained {name} in {self.run.path / 'checkpoints' / name}; "
                                  f"run the stage that trains it first")
        return restored[1]

    def vae_params(self):
        return self.load_params("vae", param_shapes(init_vae, self.config.vae))

    def memory_params_template(self):
        """M's parameter tree as shapes and dtypes (a restore target)."""
        return param_shapes(init_memory, self.memory)

    def memory_params(self):
        return self.load_params("mdn", self.memory_params_template())

    def world_model_params(self, needs_memory: bool) -> WorldModelParams:
        """V (and M) parameters for an agent, with feature statistics if the config asks for them; on every
        device of `mesh`."""
        vae = self.vae_params()
        memory = self.memory_params() if needs_memory or self.config.controller.normalize_features else None
        stats = self.feature_stats(memory) if self.config.controller.normalize_features else None
        return self.replicated(WorldModelParams(vae=vae, memory=memory if needs_memory else None, feature_stats=stats))

    def replicated(self, tree):
        """`tree` copied to every device of `mesh` (unchanged on one device)."""
        return tree if self.mesh.size == 1 else jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))

    def feature_stats(self, memory_params) -> dict:
        """Mean and std of μ over the encoded data, and of M's features h when run over it."""
        data = self.sequence_data()
        sample = jax.tree.map(lambda x: x[:64], data)
        _, features, _ = jax.jit(lambda p, d: self.memory.apply(
            {"params": p}, d.mu, d.action, d.first.at[:, 0].set(True), method="observe"))(memory_params, sample)
        floor = 1e-6
        return {"z_mean": jnp.mean(data.mu, axis=(0, 1)), "z_std": jnp.std(data.mu, axis=(0, 1)) + floor,
                "h_mean": jnp.mean(features, axis=(0, 1)), "h_std": jnp.std(features, axis=(0, 1)) + floor}

    def action_mapping(self):
        """C's map from tanh outputs to env actions (controller.action_mapping for this env's action space)."""
        return action_mapping_for(self.env.action_space(self.env_params), self.config.controller.action_mapping)

    def controller_config(self, mode: str) -> ControllerConfig:
        mapping = self.action_mapping()
        return ControllerConfig(mode=mode, z_size=self.config.vae.z_size, feature_size=self.memory.feature_size,
                                num_outputs=mapping.num_outputs, hidden_units=self.config.controller.hidden_units,
                                use_bias=self.config.controller.use_bias)

    def agent(self, mode: str, obs_kind: str = "pixels") -> Agent:
        mapping = self.action_mapping()
        return Agent(controller=Controller(self.controller_config(mode)), mapping=mapping, vae=self.vae,
                     memory=self.memory, action_encoder=self.action_encoder, obs_kind=obs_kind,
                     z_sample=self.config.controller.z_sample)

    def _timed(self, stage: str, fn):
        done = self.run.stage_done(stage)
        if done is not None:
            return done
        start = time.perf_counter()
        record = fn() or {}
        record["seconds"] = time.perf_counter() - start
        self.run.mark_done(stage, record)
        return record

    # ------------------------------------------------------------------ stages
    def collect(self):
        return self._timed("collect", self._collect)

    def collect_shard_function(self, steps: int | None = None):
        """`(collect(key) -> arrays [num_envs, steps, ...], meta)`: one shard of the collect stage's rollouts
        (`steps` per env, default the config's)."""
        cfg = self.config.collect
        steps = cfg.steps if steps is None else steps
        meta = {"env_id": self.config.env_id, "num_envs": cfg.num_envs, "steps": steps,
                "hold": [cfg.hold_min, cfg.hold_max], "seed": self.config.seed}
        policy, random_prob = None, 1.0
        if cfg.policy == "noisy_scripted":
            policy, random_prob = self._noisy_scripted_policy(cfg), cfg.random_prob
            meta.update(policy=cfg.policy, random_prob=cfg.random_prob, policy_noise=cfg.policy_noise)
        elif cfg.policy == "random_controller":
            policy = random_controller_policy(self.action_mapping(), self.config.vae.z_size, cfg.controller_std)
            random_prob = 0.0
            meta.update(policy=cfg.policy, controller_std=cfg.controller_std)
        collect_fn = make_collect_shard(self.env, self.env_params, self.spec, cfg.num_envs, steps,
                                        cfg.hold_min, cfg.hold_max, policy, random_prob)
        return collect_fn, meta

    def _collect(self):
        cfg = self.config.collect
        collect_fn, meta = self.collect_shard_function()
        dataset = Dataset.create(self.data_dir, meta, cfg.num_shards)
        key = self.key("collect")
        with self._bar(cfg.num_shards, "collect") as bar:
            for index in range(cfg.num_shards):
                if not dataset.has_valid_shard(index):
                    arrays = jax.device_get(collect_fn(jax.random.fold_in(key, index)))
                    dataset.write_shard(index, arrays)
                bar.update(1)
        return {"frames": dataset.num_frames, "shards": cfg.num_shards,
                "episodes_started": sum(s["episodes_started"] for s in dataset.manifest["shards"])}

    def _noisy_scripted_policy(self, cfg):
        """collect.policy 'noisy_scripted': the CarRacing scripted driver with noise (CarRacing-v0 only)."""
        from worldmodels_jax.envs.carracing import CarRacing, noisy_scripted_driver

        if not isinstance(self.env, CarRacing) or self.env.discrete:
            raise ConfigError(f"collect.policy {cfg.policy!r} drives CarRacing-v0 only; {self.config.env_id} "
                              "needs collect.policy='random' or 'random_controller'")

        def policy(key, episode_key, env_state, env_params):
            del episode_key
            return noisy_scripted_driver(key, env_state, env_params, cfg.policy_noise, cfg.policy_noise)

        return policy

    def train_vae(self):
        return self._timed("train-vae", self._train_vae)

    def _train_vae(self):
        cfg = self.config.train_vae
        dataset = Dataset.open(self.data_dir, require_complete=True)
        init, train_epoch = make_vae_trainer(self.config.vae, cfg)
        key = self.key("train-vae")
        template = init(jax.random.fold_in(key, -1 % 2**31))
        checkpointer = self.run.checkpointer("train-vae")
        restored = checkpointer.restore({"state": template, "epoch": np.int32(0)})
        state, start_epoch = (template, 0) if restored is None else (restored[1]["state"], int(restored[1]["epoch"]))
        if start_epoch == 0:
            self.run.reset_metrics("train-vae")
        shards = dataset.shard_indices
        with self._bar(cfg.epochs * len(shards), "train-vae", start_epoch * len(shards)) as bar:
            for epoch in range(start_epoch, cfg.epochs):
                for index in shards:
                    frames = dataset.load_shard(index, ("obs",))["obs"].reshape((-1, 64, 64, 3))
                    if cfg.max_frames:
                        frames = frames[: cfg.max_frames]
                    state, metrics = train_epoch(state, jnp.asarray(frames), jax.random.fold_in(key, epoch * 100_003 + index))
                    means = {k: float(np.mean(v)) for k, v in jax.device_get(metrics).items()}
                    if not np.isfinite(means["loss"]):
                        raise NonFiniteError(f"V's loss became {means['loss']} in epoch {epoch}; the last good "
                                             f"checkpoint is kept in {checkpointer.directory}. Lower the learning rate.")
                    self.run.log_metrics("train-vae", {"epoch": epoch, "shard": index, "step": int(state.step), **means})
                    bar.set_postfix(loss=f"{means['loss']:.1f}")
                    bar.update(1)
                checkpointer.save(epoch + 1, {"state": state, "epoch": np.int32(epoch + 1)})
        self.run.checkpointer("vae").save(0, state.params)
        self._reconstruction_grid(state.params, dataset)
        return {"final_loss": means["loss"], "final_reconstruction_loss": means["reconstruction_loss"],
                "param_count": param_count(state.params)}

    def _reconstruction_grid(self, params, dataset: Dataset, count: int = 8):
        import imageio.v3 as iio

        frames = dataset.load_shard(dataset.shard_indices[0], ("obs",))["obs"].reshape((-1, 64, 64, 3))
        picks = frames[np.linspace(0, len(frames) - 1, count).astype(int)]

        @jax.jit  # one program: op by op, V's layers compiled ~180 small programs (~10 s on a 2-core CPU)
        def reconstruct(params, frames):
            mu, _ = self.vae.apply({"params": params}, frames, method=ConvVAE.encode)
            return self.vae.apply({"params": params}, mu, method=ConvVAE.decode)

        recon = (np.asarray(reconstruct(params, jnp.asarray(picks))) * 255).astype(np.uint8)
        grid = np.concatenate([np.concatenate(list(picks), 1), np.concatenate(list(recon), 1)], 0)
        grid = np.kron(grid, np.ones((3, 3, 1), np.uint8))
        iio.imwrite(self.run.path / "reconstructions.png", grid)

    def encode(self):
        return self._timed("encode", self._encode)

    def _encode(self):
        dataset = Dataset.open(self.data_dir, require_complete=True)
        params = self.vae_params()
        encoded = Dataset.create(self.encoded_dir, {"source": str(self.data_dir), "z_size": self.config.vae.z_size},
                                 dataset.manifest["num_shards"])

        encode_frames = jax.jit(make_frame_encoder(self.vae))  # V's parameters an argument, not constants

        with self._bar(len(dataset.shard_indices), "encode") as bar:
            for index in dataset.shard_indices:
                if not encoded.has_valid_shard(index):
                    arrays = dataset.load_shard(index)
                    obs = arrays.pop("obs")
                    envs, steps = obs.shape[:2]
                    flat = obs.reshape((-1, 64, 64, 3))
                    pad = (-len(flat)) % ENCODE_CHUNK
                    flat = np.concatenate([flat, np.zeros((pad, 64, 64, 3), np.uint8)]) if pad else flat
                    mu, logvar = jax.device_get(encode_frames(params, jnp.asarray(flat)))
                    arrays["mu"] = mu[: envs * steps].reshape((envs, steps, -1))
                    arrays["logvar"] = logvar[: envs * steps].reshape((envs, steps, -1))
                    encoded.write_shard(index, arrays)
                bar.update(1)
        return {"frames": encoded.num_frames}

    def sequence_data(self) -> SequenceData:
        arrays = Dataset.open(self.encoded_dir, require_complete=True).load_all()
        return SequenceData(
            mu=jnp.asarray(arrays["mu"]), logvar=jnp.asarray(arrays["logvar"]),
            action=self.action_encoder(jnp.asarray(arrays["action"])), reward=jnp.asarray(arrays["reward"]),
            terminated=jnp.asarray(arrays["terminated"]), truncated=jnp.asarray(arrays["truncated"]),
            first=jnp.asarray(arrays["first"]),
        )

    def train_mdn(self):
        return self._timed("train-mdn", self._train_mdn)

    def _train_mdn(self):
        cfg = self.config.train_mdn
        data = self.sequence_data()
        num_seq = data.mu.shape[0]
        held_out = max(1, num_seq // 10) if num_seq > 1 else 0
        train_data = jax.tree.map(lambda x: x[held_out:], data) if held_out else data
        test_data = jax.tree.map(lambda x: x[:held_out], data) if held_out else data
        init, train_chunk = make_mdn_trainer(self.memory, cfg)
        evaluate_nll = make_evaluate_nll(self.memory)
        key = self.key("train-mdn")
        template = init(jax.random.fold_in(key, 7))
        checkpointer = self.run.checkpointer("train-mdn")
        restored = checkpointer.restore(template)
        state = template if restored is None else restored[1]
        start = int(state.step)
        if start == 0:
            self.run.reset_metrics("train-mdn")
        chunks = cfg.steps // cfg.chunk_steps  # whole chunks (MDNTrainConfig checks)
        with self._bar(chunks, "train-mdn", start // cfg.chunk_steps) as bar:
            for chunk in range(start // cfg.chunk_steps, chunks):
                state, metrics = train_chunk(state, train_data, jax.random.fold_in(key, chunk))
                means = {k: float(np.mean(v)) for k, v in jax.device_get(metrics).items()}
                if not np.isfinite(means["loss"]):
                    raise NonFiniteError(f"M's loss became {means['loss']} at step {int(state.step)}; the last good "
                                         f"checkpoint is kept in {checkpointer.directory}. Lower the learning rate.")
                means["held_out_nll"] = float(evaluate_nll(state.params, test_data))
                self.run.log_metrics("train-mdn", {"step": int(state.step), **means})
                checkpointer.save(int(state.step), state)
                bar.set_postfix(nll=f"{means['nll']:.3f}", held_out=f"{means['held_out_nll']:.3f}")
                bar.update(1)
        self.run.checkpointer("mdn").save(0, state.params)
        return {"final_nll": means["nll"], "held_out_nll": means["held_out_nll"],
                "param_count": param_count(state.params)}

    # ------------------------------------------------------------------ controller
    def dream_env(self):
        data = Dataset.open(self.encoded_dir, require_complete=True).load_all(("mu", "logvar", "first"))
        first = data["first"].astype(bool)
        env = DreamEnv(self.memory, self.env.action_space(self.env_params), self.action_encoder)
        params = DreamParams(memory_params=self.memory_params(), initial_mu=jnp.asarray(data["mu"][first]),
                             initial_logvar=jnp.asarray(data["logvar"][first]),
                             temperature=self.config.controller.temperature,
                             max_steps_in_episode=int(self.env_params.max_steps_in_episode))
        return env, params

    def train_controller(self):
        results = {}
        for mode in self.config.controller.modes:
            results[mode] = self._timed(f"train-controller-{mode}", lambda m=mode: self._train_controller(m))
        return self._timed("train-controller", lambda: {"modes": results})

    def controller_training(self, mode: str, wm: WorldModelParams) -> "ControllerTraining":
        """What the controller stage of `mode` runs, given V (and M) parameters `wm` on every device of `mesh`:
        the ES (fitness = mean return over the configured rollouts, split over `mesh`) and the jitted
        evaluations of a controller. Benchmarks time these directly (benchmarks/bench_paper_costs.py)."""
        ccfg = self.config.controller
        es = ccfg.es
        dream = ccfg.where == "dream"
        if dream:
            env, dream_params = self.dream_env()
            dream_params = self.replicated(dream_params)
            agent = self.agent(mode, obs_kind="features")
        else:
            env, dream_params = self.env, None
            agent = self.agent(mode)
        max_steps = self._max_steps(ccfg.max_episode_steps)
        # V's and M's parameters (and the dream's: M's, its starting frames and τ) are arguments of the compiled
        # programs: closed over, they would be embedded as constants, tying each program to one run's weights, so
        # that no compilation cache could serve another run (compile_cache.py). The real env's parameters are a
        # few scalars and stay constants.
        inputs = (wm, dream_params)

        def fitness(population, key, wm, dream_params):
            return population_returns(env, dream_params if dream else self.env_params, agent, wm, population, key,
                                      es.rollouts, max_steps, ccfg.chunk_steps, es.common_random_numbers, self.mesh)

        # The kept controller is chosen where it trains: a dream-trained C never sees a real score during
        # selection. Its real score (V and M in the loop) is logged beside it, for monitoring only.
        real_agent = self.agent(mode)

        @jax.jit
        def evaluate_with(params, key, wm, dream_params) -> EpisodeStats:
            return evaluate_params(env, dream_params if dream else self.env_params, agent, wm, params, key,
                                   es.eval_episodes, max_steps, ccfg.chunk_steps, self.mesh)

        @jax.jit
        def evaluate_real_with(params, key, wm) -> EpisodeStats:
            return evaluate_params(self.env, self.env_params, real_agent, wm, params, key, es.eval_episodes,
                                   max_steps, ccfg.chunk_steps, self.mesh)

        template = init_controller(jax.random.PRNGKey(0), agent.controller.config)
        sigma_init = ccfg.sigma_init_for(agent.controller.config.input_size)
        init, run_chunk, mean_params = make_evolution(fitness, template, dataclasses.replace(es, sigma_init=sigma_init))
        return ControllerTraining(
            template=template, init=init, mean_params=mean_params,
            run_chunk=lambda state, generations: run_chunk(state, generations, *inputs),
            evaluate=lambda params, key: evaluate_with(params, key, *inputs),
            evaluate_real=lambda params, key: evaluate_real_with(params, key, wm))

    def _train_controller(self, mode: str):
        ccfg = self.config.controller
        es = ccfg.es
        stage = f"train-controller-{mode}"
        needs_memory = mode in ("z_h", "z_c_h") or ccfg.where == "dream"
        training = self.controller_training(mode, self.world_model_params(needs_memory))
        template, init, run_chunk, mean_params = (training.template, training.init, training.run_chunk,
                                                  training.mean_params)
        key = jax.random.fold_in(self.key("train-controller"), stable_tag(mode))
        key_init, key_eval, key_real = jax.random.split(key, 3)
        state = init(key_init)
        best = {"score": np.float32(-np.inf), "params": template}
        checkpointer = self.run.checkpointer(stage)
        restored = checkpointer.restore({"state": state, "best_score": best["score"], "best_params": template})
        imitation = {}
        if restored is None and ccfg.init == "imitate":
            fitted, imitation = self.imitation_fit(mode)
            state = init(key_init, fitted)
            self.run.checkpointer(f"imitation-{mode}").save(0, fitted)
            self.run.reset_metrics(f"imitation-{mode}")
            self.run.log_metrics(f"imitation-{mode}", imitation)
        elif ccfg.init == "imitate":  # resumed: the fit was recorded when the stage began
            imitation = (self.run.read_metrics(f"imitation-{mode}") or [{}])[-1]
        elif restored is None and ccfg.init == "lecun_hidden":
            state = init(key_init, hidden_init_controller(
                jax.random.fold_in(self.key("controller-init"), stable_tag(mode)), self.controller_config(mode)))
        if restored is not None:
            state = restored[1]["state"]
            best = {"score": restored[1]["best_score"], "params": restored[1]["best_params"]}
            generation = int(state.generation)
            kept = [r for r in self.run.read_metrics(stage) if r["generation"] <= generation]
            self.run.reset_metrics(stage)
            self.run.log_metrics(stage, kept) if kept else None
        else:
            self.run.reset_metrics(stage)
        state = self.replicated(state)
        stopped_early = False
        with self._bar(es.generations, f"C[{mode}]", int(state.generation)) as bar:
            while int(state.generation) < es.generations:
                generations = min(es.eval_every, es.generations - int(state.generation))
                previous = state
                state, metrics = run_chunk(state, generations)
                if not es_state_is_finite(state):
                    raise NonFiniteError(
                        f"the {es.strategy} state became non-finite at generation {int(state.generation)} ({mode}); "
                        f"stopped, keeping the last good checkpoint in {checkpointer.directory}"
                    )
                del previous
                mean = mean_params(state)
                returns = np.asarray(training.evaluate(mean, jax.random.fold_in(key_eval, int(state.generation))).returns)
                score = float(returns.mean())
                if score > float(best["score"]):
                    best = {"score": np.float32(score), "params": mean}
                records = [{k: v[i] for k, v in jax.device_get(metrics).items()} for i in range(generations)]
                records[-1].update({"eval_mean": score, "eval_std": float(returns.std()), "best_eval": float(best["score"])})
                if ccfg.where == "dream":
                    real = np.asarray(training.evaluate_real(mean, jax.random.fold_in(key_real, int(state.generation))).returns)
                    records[-1].update({"real_eval_mean": float(real.mean()), "real_eval_std": float(real.std())})
                self.run.log_metrics(stage, records)
                checkpointer.save(int(state.generation), {"state": state, "best_score": best["score"],
                                                          "best_params": best["params"]})
                bar.set_postfix(pop=f"{float(records[-1]['return_mean']):.0f}", eval=f"{score:.0f}")
                bar.update(generations)
                if es.target_score is not None and score >= es.target_score:
                    stopped_early = True
                    break
        self.run.checkpointer(f"controller-{mode}").save(0, best["params"])
        return {"best_eval": float(best["score"]), "generations": int(state.generation),
                "stopped_early": stopped_early, "param_count": param_count(template), "devices": self.mesh.size,
                **imitation}

    def imitation_fit(self, mode: str):
        """C of `mode` fitted to the scripted driver's actions (`train/imitation.py`): (params, a record of the
        fit). Every mode sees the same demonstrations (one key for all)."""
        from worldmodels_jax.envs.carracing import noisy_scripted_driver, scripted_driver
        from worldmodels_jax.train.imitation import collect_demonstrations, controller_features, fit_controller

        icfg = self.config.controller.imitation
        agent = self.agent(mode)
        wm = self.world_model_params(agent.uses_memory)
        key_demos, key_params = jax.random.split(self.key("imitate"))

        def explorer(key, state, params):
            return noisy_scripted_driver(key, state, params, icfg.steer_noise, icfg.speed_noise)

        @jax.jit
        def fit(wm, key_demos, key_params):
            demos = collect_demonstrations(self.env, self.env_params, scripted_driver, explorer, key_demos,
                                           icfg.num_envs, icfg.steps)
            z, h, c = controller_features(agent, wm, demos)
            start = init_controller(key_params, agent.controller.config)
            params, losses = fit_controller(agent, wm, start, z, h, c, demos.label, icfg.fit_steps,
                                            icfg.learning_rate)
            label_variance = jnp.sum(jnp.var(demos.label.reshape((-1, demos.label.shape[-1])), axis=0))
            return params, losses, label_variance

        params, losses, label_variance = jax.device_get(fit(wm, key_demos, key_params))
        if not np.all(np.isfinite(losses)):
            raise NonFiniteError(f"imitation fit of the {mode} controller diverged (loss {losses[-1]}); lower "
                                 f"controller.imitation.learning_rate ({self.config.controller.imitation.learning_rate})")
        record = {"imitation_loss_first": float(losses[0]), "imitation_loss": float(losses[-1]),
                  "imitation_r2": float(1.0 - losses[-1] / label_variance)}
        return params, record

    # ------------------------------------------------------------------ evaluation and report
    def check_trained(self, mode: str, alternatives: str = "") -> None:
        """A clear error unless this run trained a controller for `mode` (`alternatives`: other accepted names)."""
        if mode not in self.config.controller.modes:
            raise ConfigError(f"mode {mode!r} was not trained in {self.run.path}; trained: "
                              f"{', '.join(self.config.controller.modes)}{alternatives}")

    def controller_params(self, mode: str):
        return self.load_params(f"controller-{mode}", param_shapes(init_controller, self.controller_config(mode)))

    def evaluate(self):
        return self._timed("evaluate", self._evaluate)

    def evaluate_controller(self, mode: str, hold: tuple[str, ...] = ()) -> dict:
        """Mean ± std of controller `mode` on the evaluate stage's episodes (the same tracks / keys).

        `hold` is a feature ablation: each of "z" and "h" named is replaced, in C's input only, by its mean over
        the training data (M still steps on the real z). For example hold=("h",) asks how much a z + h
        controller drives from h.
        """
        self.check_trained(mode)
        agent = self.agent(mode)
        unknown = [name for name in hold if name not in ("z", "h")]
        if unknown or ("h" in hold and not agent.uses_memory):
            allowed = "'z' or 'h'" if agent.uses_memory else "'z'"
            raise ConfigError(f"hold must name features of the {mode!r} controller's input, {allowed}; "
                              f"got {', '.join(hold)}")
        cfg = self.config.evaluate
        max_steps = self._max_steps(cfg.max_episode_steps)
        wm = self.world_model_params(agent.uses_memory)
        if hold:
            means = wm.feature_stats if wm.feature_stats is not None else self.feature_stats(self.memory_params())
            wm = wm.replace(held={name: means[f"{name}_mean"] for name in hold})
        episodes = jax.jit(lambda p, k, wm: evaluate_params(
            self.env, self.env_params, agent, wm, p, k, cfg.episodes, max_steps,
            self.config.controller.chunk_steps, self.mesh))(self.replicated(self.controller_params(mode)),
                                                            self.key("evaluate"), wm)
        return summarize_returns(episodes.returns)

    def _evaluate(self):
        cfg = self.config.evaluate
        max_steps = self._max_steps(cfg.max_episode_steps)
        key = self.key("evaluate")
        results = {}
        modes = self.config.controller.modes
        with self._bar(len(modes) + 1, "evaluate") as bar:
            for mode in modes:
                results[mode] = self.evaluate_controller(mode)
                bar.update(1)
            stats = jax.jit(lambda k: random_policy_returns(self.env, self.env_params, k, cfg.episodes, max_steps,
                                                            mesh=self.mesh))(key)
            results["random"] = summarize_returns(stats.returns)
            bar.update(1)
        return {"results": results, "devices": self.mesh.size}

    def report(self):
        from worldmodels_jax.report import write_report

        start = time.perf_counter()
        record = write_report(self)
        record["seconds"] = time.perf_counter() - start
        self.run.mark_done("report", record)
        return record

    def run_all(self):
        self.collect()
        self.train_vae()
        self.encode()
        self.train_mdn()
        self.train_controller()
        self.evaluate()
        return self.report()


ENCODE_CHUNK = 256
"""The encode stage runs V's encoder on this many frames at a time."""


def make_frame_encoder(vae: ConvVAE):
    """`encode(params, frames [N, 64, 64, 3] uint8, N a multiple of ENCODE_CHUNK) -> (μ, log σ²) [N, z]`: V's
    encoder as the encode stage runs it (`for_inference` layers, ENCODE_CHUNK frames at a time)."""
    vae = for_inference(vae)

    def encode(params, frames):
        chunks = frames.reshape((-1, ENCODE_CHUNK, 64, 64, 3))
        mu, logvar = jax.lax.map(lambda x: vae.apply({"params": params}, x, method=ConvVAE.encode), chunks)
        return mu.reshape((-1, mu.shape[-1])), logvar.reshape((-1, mu.shape[-1]))

    return encode


class ControllerTraining(NamedTuple):
    """`Pipeline.controller_training`: the ES of one controller and the evaluations of its mean."""
    template: Any  # C's parameter tree (values of the ES's starting mean: zeros)
    init: Callable  # init(key) -> EvoState
    run_chunk: Callable  # run_chunk(state, generations) -> (state, metrics)
    mean_params: Callable  # mean_params(state) -> C's parameters
    evaluate: Callable  # evaluate(params, key) -> EpisodeStats, where C trains (the real env or M's dream)
    evaluate_real: Callable  # the same in the real env, V and M in the loop
