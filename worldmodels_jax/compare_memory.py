"""LSTM vs transformer M on the same data and the same V (issue 6's comparison).

Layout of a comparison directory:
    shared/          a pipeline run holding the data, V and the encoded data (collect, train-vae, encode)
    lstm/            M = MDN-RNN, trained on shared/encoded; its z_h controller (real env); its evaluation
    transformer/     M = causal transformer, the same
    lstm-dream/      only for presets that train C in the dream (TakeCover): a z_h controller trained inside
    transformer-dream/   that arm's M (read from lstm/ or transformer/), scored in the real env
    comparison.json  the table as numbers, with settings, parameter counts, timings and load averages
    comparison.md    the table as markdown
    stages/speeds.json  the dream and M-training speed measurements (redone only when their settings change)

Both arms share V's checkpoint and the encoded sequences (an arm's pipeline reads them from `shared/`), use the
same seed, so M is trained on the same minibatches in the same order for the same number of Adam steps, and
train their controllers with the same ES settings and episode seeds. Every stage is a pipeline stage with its
own marker, so re-running the comparison on the same directory skips what is done.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from worldmodels_jax.configs import PipelineConfig, get_preset, resolve
from worldmodels_jax.envs.actions import sample_action
from worldmodels_jax.errors import ConfigError, NonFiniteError
from worldmodels_jax.evolution import ESConfig
from worldmodels_jax.models.memory import MEMORIES, TransformerSettings
from worldmodels_jax.models.vae import param_count
from worldmodels_jax.pipeline import Pipeline
from worldmodels_jax.rundir import RunDir, to_jsonable, write_json_atomic
from worldmodels_jax.train.mdn import make_evaluate_nll, make_mdn_trainer

MODE = "z_h"


@dataclasses.dataclass(frozen=True)
class MemoryComparisonConfig:
    """The comparison's settings; everything not named here comes from the preset."""

    preset: str = "cpu-small"
    env_id: str = "CartPolePixels-v1"
    seed: int = 0
    """Seed of the arms (M's init and minibatches, C's ES). The shared data and V always use the preset's seed;
    a seed other than 0 writes `<memory>-seed<N>/` arms and `comparison-seed<N>.{md,json}` beside seed 0's."""
    transformer: TransformerSettings = TransformerSettings(d_model=64, num_layers=1, num_heads=4, ffn_dim=64,
                                                           window=32, chunk_size=32)
    """The transformer M. d_model equals cpu-small's LSTM size (64), so both controllers have the same inputs and
    parameter count; one layer with FFN 64 keeps M's parameter count within ~15% of the LSTM's."""
    es: ESConfig = ESConfig(population=32, sigma_init=0.5, generations=20, rollouts=2, l2_coef=0.0, eval_every=5,
                            eval_episodes=16, target_score=None)
    """CMA-ES for the z_h controllers, identical for both arms (no early stop, so the budget is the same)."""
    train_max_episode_steps: int | None = None
    """Episode cap while training C in the real env (0: the env's own limit); the final evaluation always uses the
    env's limit. None: `DEFAULT_TRAIN_CAPS` for the env (200 for pixel CartPole), else the preset's own cap."""
    eval_episodes: int = 100
    """Real-env episodes of the final evaluation (mean ± std)."""
    dream_population: int = 64
    """Parallel dream episodes in the steps/s measurement (one vmapped population, as in CMA-ES in the dream)."""
    dream_steps: int = 500
    """Steps per timed dream rollout (one `lax.scan`)."""
    train_speed_steps: int = 25
    """Adam steps per timed call in the separate M-training throughput measurement."""
    speed_repeats: int = 7
    """Timed calls per arm (dream and training each), after compilation and a warm-up; the best and the median
    are reported (on a shared machine the best is the steadier figure)."""

    def __post_init__(self):
        if min(self.eval_episodes, self.dream_population, self.dream_steps, self.train_speed_steps,
               self.speed_repeats) < 1:
            raise ConfigError("eval_episodes, dream_population, dream_steps, train_speed_steps and speed_repeats "
                              "must be >= 1")
        if self.train_max_episode_steps is not None and self.train_max_episode_steps < 0:
            raise ConfigError(f"train_max_episode_steps must be >= 0, got {self.train_max_episode_steps}")


DEFAULT_TRAIN_CAPS = {"CartPolePixels-v1": 200, "TakeCover-v0": 1000}
"""Episode caps while training C in the real env. CartPole balances for good by 200 steps. TakeCover's random
policy lasts about 200 steps, so a 200-step cap could not tell a good controller from a random one."""


def train_episode_cap(config: MemoryComparisonConfig, base: PipelineConfig) -> int:
    if config.train_max_episode_steps is not None:
        return config.train_max_episode_steps
    return DEFAULT_TRAIN_CAPS.get(config.env_id, base.controller.max_episode_steps)


def trains_in_dream(base: PipelineConfig) -> bool:
    """Whether the preset trains its controller in the dream (TakeCover): then each memory gets a dream arm too."""
    return base.controller.where == "dream"


def arm_configs(config: MemoryComparisonConfig) -> tuple[PipelineConfig, dict[str, PipelineConfig]]:
    """(shared config for collect/V/encode, {arm name: that arm's pipeline config}).

    Arms `lstm` and `transformer` train M and a z_h controller in the real env. When the preset trains C in the
    dream, arms `lstm-dream` and `transformer-dream` train a z_h controller in the dream of the matching arm's M,
    with the preset's own ES, temperature and episode cap (z_h, not the paper's z_c_h: the transformer has no c).
    """
    base = get_preset(config.preset, config.env_id)
    controller = dataclasses.replace(base.controller, modes=(MODE,), where="real", es=config.es,
                                     max_episode_steps=train_episode_cap(config, base))
    evaluate = dataclasses.replace(base.evaluate, episodes=config.eval_episodes, max_episode_steps=0)
    arms = {memory: dataclasses.replace(base, memory=memory, transformer=config.transformer,
                                        controller=controller, evaluate=evaluate, seed=config.seed)
            for memory in MEMORIES}
    if trains_in_dream(base):
        dream_controller = dataclasses.replace(base.controller, modes=(MODE,))
        for memory in MEMORIES:
            arms[f"{memory}-dream"] = dataclasses.replace(arms[memory], controller=dream_controller)
    return base, arms


class SharedVPipeline(Pipeline):
    """A pipeline run that reads the data, V and the encoded data of another run (`shared`).

    Its own stages start at train-mdn; collect, train-vae and encode belong to `shared`.
    """

    def __init__(self, config: PipelineConfig, out: str | Path, shared: Pipeline, progress: bool = True):
        if config.vae != shared.config.vae or config.env_id != shared.config.env_id:
            raise ConfigError("an arm must use the shared run's env and V settings")
        super().__init__(config, out, progress)
        self.shared = shared

    @property
    def data_dir(self) -> Path:
        return self.shared.data_dir

    @property
    def encoded_dir(self) -> Path:
        return self.shared.encoded_dir

    def vae_params(self):
        return self.shared.vae_params()

    def collect(self):
        raise ConfigError("collect belongs to the shared run")

    train_vae = encode = collect


class SharedMPipeline(SharedVPipeline):
    """A pipeline run that trains only a controller, with the data and V of `shared` and the M of `memory_run`."""

    def __init__(self, config: PipelineConfig, out: str | Path, shared: Pipeline, memory_run: Pipeline,
                 progress: bool = True):
        resolved = resolve(config, memory_run.env, memory_run.env_params)
        if (resolved.memory, resolved.mdn, resolved.transformer) != (memory_run.config.memory, memory_run.config.mdn,
                                                                      memory_run.config.transformer):
            raise ConfigError("a dream arm must use its memory run's M settings")
        super().__init__(config, out, shared, progress)
        self.memory_run = memory_run

    def memory_params(self):
        return self.memory_run.memory_params()

    def train_mdn(self):
        raise ConfigError("train-mdn belongs to the memory run")


def held_out_split(num_sequences: int) -> int:
    """Sequences [0, n) are held out of M's training: the pipeline's own split (train-mdn)."""
    return max(1, num_sequences // 10) if num_sequences > 1 else 0


def held_out_nll(pipeline: Pipeline) -> dict:
    """Next-z NLL of the trained M on the held-out sequences, z = μ, steps inside episodes only."""
    data = pipeline.sequence_data()
    n = held_out_split(data.mu.shape[0])
    if n == 0:
        raise ConfigError("the comparison needs at least 2 encoded sequences (one is held out)")
    test = jax.tree.map(lambda x: x[:n], data)
    per_dim = float(make_evaluate_nll(pipeline.memory)(pipeline.memory_params(), test))
    ended = np.asarray(test.terminated[:, :-1] | test.truncated[:, :-1])
    z_size = int(data.mu.shape[-1])
    return {"nll_per_dim": per_dim, "nll_per_step": per_dim * z_size, "z_size": z_size,
            "sequences": n, "transitions": int((~ended).sum())}


def make_dream_rollout(env, env_params, spec, population: int, steps: int):
    """`rollout(key) -> (total reward, final z [population, z])`: `population` dream episodes stepped `steps`
    times under uniformly random actions.

    One `lax.scan` over time of a `vmap` over the population; the env's `step` auto-resets ended episodes.
    """

    def rollout(key):
        key_reset, key_run = jax.random.split(key)
        _, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key_reset, population), env_params)

        def body(state, key_t):
            key_action, key_step = jax.random.split(key_t)
            actions = jax.vmap(lambda k: sample_action(k, spec))(jax.random.split(key_action, population))
            _, state, reward, _, _, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
                jax.random.split(key_step, population), state, actions, env_params)
            return state, jnp.sum(reward)

        state, rewards = jax.lax.scan(body, state, jax.random.split(key_run, steps))
        return jnp.sum(rewards), state.z

    return rollout


def _compiled_dream(pipeline: Pipeline, population: int, steps: int):
    env, env_params = pipeline.dream_env()
    rollout = make_dream_rollout(env, env_params, pipeline.spec, population, steps)
    key = jax.random.PRNGKey(pipeline.config.seed)
    begin = time.perf_counter()
    compiled = jax.jit(rollout).lower(key).compile()
    compile_s = time.perf_counter() - begin

    def run(i):
        _, final_z = compiled(jax.random.fold_in(key, i))
        return final_z

    return run, compile_s


def _compiled_training(pipeline: Pipeline, steps: int):
    """One chunk of `steps` Adam steps with the arm's own training settings, from a fresh init (the trained M is
    not touched), on the arm's training sequences."""
    cfg = dataclasses.replace(pipeline.config.train_mdn, chunk_steps=steps)
    data = pipeline.sequence_data()
    train = jax.tree.map(lambda x: x[held_out_split(x.shape[0]):], data)
    init, train_chunk = make_mdn_trainer(pipeline.memory, cfg)
    key = jax.random.PRNGKey(pipeline.config.seed)
    state = init(key)
    begin = time.perf_counter()
    compiled = train_chunk.lower(state, train, key).compile()
    compile_s = time.perf_counter() - begin

    def run(i):
        _, metrics = compiled(state, train, jax.random.fold_in(key, i))
        return metrics["loss"]

    return run, compile_s


def measure_speeds(arms: dict[str, Pipeline], config: MemoryComparisonConfig) -> dict:
    """Dream steps/s and M-training steps/s of every arm, compile time apart.

    Everything is compiled and run once first; then the timed runs alternate between the arms (lstm, transformer,
    lstm, ...), so a change in the machine's load hits both alike. Reports the median and the best run.
    """
    work = {}
    for name, arm in arms.items():
        dream, dream_compile = _compiled_dream(arm, config.dream_population, config.dream_steps)
        train, train_compile = _compiled_training(arm, config.train_speed_steps)
        for fn in (dream, train):
            jax.block_until_ready(fn(0))  # warm-up
        work[name] = {"dream": (dream, dream_compile, config.dream_population * config.dream_steps),
                      "train": (train, train_compile, config.train_speed_steps)}
    times = {name: {"dream": [], "train": []} for name in arms}
    for i in range(config.speed_repeats):
        for name in arms:
            for kind in ("dream", "train"):
                fn = work[name][kind][0]
                begin = time.perf_counter()
                value = jax.block_until_ready(fn(i + 1))
                times[name][kind].append(time.perf_counter() - begin)
                if not np.isfinite(np.asarray(value)).all():
                    raise NonFiniteError(f"the {kind} timing run of the {name} M produced non-finite values")
    result = {}
    for name in arms:
        result[name] = {}
        for kind in ("dream", "train"):
            _, compile_s, units = work[name][kind]
            runs = times[name][kind]
            result[name][kind] = {"per_s": units / float(np.median(runs)), "best_per_s": units / min(runs),
                                  "units_per_run": units, "times_s": runs, "compile_s": compile_s}
    result["loadavg"] = _loadavg()
    return result


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def run_comparison(config: MemoryComparisonConfig, out: str | Path, progress: bool = True,
                   memories: tuple[str, ...] = MEMORIES) -> dict:
    """Runs (or resumes) the comparison in `out` and writes comparison.json and comparison.md there."""
    out = Path(out)
    start = time.perf_counter()
    load_start = _loadavg()
    shared_config, arm_config = arm_configs(config)
    shared = Pipeline(shared_config, out / "shared", progress=progress)
    shared_records = {"collect": shared.collect(), "train-vae": shared.train_vae(), "encode": shared.encode()}
    suffix = f"-seed{config.seed}" if config.seed else ""
    arms, rows = {}, {}
    for memory in memories:
        arm = SharedVPipeline(arm_config[memory], out / f"{memory}{suffix}", shared, progress=progress)
        train = arm.train_mdn()
        controller = arm.train_controller()["modes"][MODE]
        evaluation = arm.evaluate()["results"]
        arms[memory] = arm
        if f"{memory}-dream" in arm_config:
            dream_arm = SharedMPipeline(arm_config[f"{memory}-dream"], out / f"{memory}-dream{suffix}", shared, arm,
                                        progress=progress)
            dream_controller = dream_arm.train_controller()["modes"][MODE]
            dream_evaluation = dream_arm.evaluate()["results"]
            dream_row = {"best_dream_eval": dream_controller["best_eval"],
                         "generations": dream_controller["generations"], "seconds": dream_controller["seconds"],
                         "score": dream_evaluation[MODE], "evaluate_s": dream_arm.run.stage_done("evaluate")["seconds"],
                         "real_eval_curve": [r for r in dream_arm.run.read_metrics(f"train-controller-{MODE}")
                                             if "real_eval_mean" in r]}
        else:
            dream_row = None
        rows[memory] = {
            "memory_params": param_count(arm.memory_params()),
            "controller_params": controller["param_count"],
            "feature_size": arm.memory.feature_size,
            "train_steps": arm.config.train_mdn.steps,
            "batch_shape": [arm.config.train_mdn.batch_size, arm.config.train_mdn.seq_len],
            "train_mdn_s": train["seconds"],
            "train_nll_per_dim": train["final_nll"],
            "held_out": held_out_nll(arm),
            "controller": {"generations": controller["generations"], "best_eval": controller["best_eval"],
                           "seconds": controller["seconds"]},
            "score": evaluation[MODE],
            "random_score": evaluation["random"],
            "evaluate_s": arm.run.stage_done("evaluate")["seconds"],
            "dream_controller": dream_row,
        }
    # timings last, all arms in one phase; redone only when the timing settings or the arms change
    top = RunDir(out)
    speed_settings = to_jsonable({"arms": list(memories), "dream_population": config.dream_population,
                                  "dream_steps": config.dream_steps, "train_speed_steps": config.train_speed_steps,
                                  "speed_repeats": config.speed_repeats})
    speeds = top.stage_done(f"speeds{suffix}")
    if speeds is None or speeds.get("settings") != speed_settings:
        begin = time.perf_counter()
        speeds = {"settings": speed_settings, **measure_speeds(arms, config)}
        speeds["seconds"] = time.perf_counter() - begin
        top.mark_done(f"speeds{suffix}", speeds)
    for memory in memories:
        rows[memory]["dream"] = speeds[memory]["dream"]
        rows[memory]["train_speed"] = speeds[memory]["train"]
    result = {
        "env_id": config.env_id, "preset": config.preset,
        "settings": dataclasses.asdict(config),
        "train_max_episode_steps": arm_config[memories[0]].controller.max_episode_steps,
        "dream_controller_settings": (to_jsonable(arm_config[f"{memories[0]}-dream"].controller)
                                      if f"{memories[0]}-dream" in arm_config else None),
        "shared_stage_seconds": {k: v["seconds"] for k, v in shared_records.items()},
        "rows": rows,
        "speeds_s": speeds["seconds"],
        "stage_seconds_total": (sum(v["seconds"] for v in shared_records.values()) + speeds["seconds"]
                                + sum(r["train_mdn_s"] + r["controller"]["seconds"] + r["evaluate_s"]
                                      + (r["dream_controller"]["seconds"] + r["dream_controller"]["evaluate_s"]
                                         if r.get("dream_controller") else 0)
                                      for r in rows.values())),
        "wall_s_this_call": time.perf_counter() - start,
        "loadavg_start": load_start, "loadavg_end": _loadavg(), "loadavg_speeds": speeds["loadavg"],
        "devices": [str(d) for d in jax.devices()],
    }
    write_json_atomic(out / f"comparison{suffix}.json", result)
    (out / f"comparison{suffix}.md").write_text(markdown_table(result))
    return result


def markdown_table(result: dict) -> str:
    """The comparison as a markdown table (one column per memory) with its settings underneath."""
    rows = result["rows"]
    names = list(rows)

    def line(label, fn):
        return f"| {label} | " + " | ".join(fn(rows[m]) for m in names) + " |"

    es = result["settings"]["es"]
    lines = [
        f"# M: LSTM vs transformer on {result['env_id']} (`{result['preset']}`, arms' seed "
        f"{result['settings']['seed']})", "",
        "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names),
        line("M parameters", lambda r: f"{r['memory_params']:,}"),
        line("features for C (size)", lambda r: str(r["feature_size"])),
        line("C parameters", lambda r: f"{r['controller_params']:,}"),
        line("M training: Adam steps × [batch, seq]", lambda r: f"{r['train_steps']} × {r['batch_shape']}"),
        line("M training wall time, whole stage (s)", lambda r: f"{r['train_mdn_s']:.1f}"),
        line("M training steady state (Adam steps/s, best; median)",
             lambda r: f"{r['train_speed']['best_per_s']:.1f}; {r['train_speed']['per_s']:.1f}"),
        line("M training compile (s)", lambda r: f"{r['train_speed']['compile_s']:.1f}"),
        line("held-out next-z NLL per step (nats)", lambda r: f"{r['held_out']['nll_per_step']:.2f}"),
        line("held-out next-z NLL per dim (nats)", lambda r: f"{r['held_out']['nll_per_dim']:.3f}"),
        line("dream steps/s (best; median)", lambda r: f"{r['dream']['best_per_s']:,.0f}; {r['dream']['per_s']:,.0f}"),
        line("dream compile (s)", lambda r: f"{r['dream']['compile_s']:.1f}"),
        line(f"real-env score, z_h C (mean ± std, {next(iter(rows.values()))['score']['episodes']} ep.)",
             lambda r: f"{r['score']['mean']:.1f} ± {r['score']['std']:.1f}"),
        line("C training wall time (s)", lambda r: f"{r['controller']['seconds']:.0f}"),
        line("random policy (same episodes)", lambda r: f"{r['random_score']['mean']:.1f} ± {r['random_score']['std']:.1f}"),
    ]
    dream = result.get("dream_controller_settings")
    if dream:
        episodes = next(iter(rows.values()))["dream_controller"]["score"]["episodes"]
        lines += [
            line(f"**dream-trained** z_h C: real-env score (mean ± std, {episodes} ep.)",
                 lambda r: f"{r['dream_controller']['score']['mean']:.1f} ± {r['dream_controller']['score']['std']:.1f}"),
            line("dream-trained z_h C: best mean score in the dream",
                 lambda r: f"{r['dream_controller']['best_dream_eval']:.1f}"),
            line("dream-trained C training wall time (s)", lambda r: f"{r['dream_controller']['seconds']:.0f}"),
        ]
    cap = result.get("train_max_episode_steps", result["settings"].get("train_max_episode_steps"))
    lines += [
        "",
        f"- Held-out: the first {rows[names[0]]['held_out']['sequences']} encoded sequences "
        f"({rows[names[0]]['held_out']['transitions']} in-episode transitions), never trained on, z = μ; "
        f"per step = per dim × {rows[names[0]]['held_out']['z_size']}.",
        f"- M training wall time: the whole train-mdn stage (compile, held-out NLL after every chunk, checkpoints); "
        f"steady state: {result['settings']['train_speed_steps']} Adam steps per compiled call from a fresh init.",
        f"- Dream: `DreamEnv`, population {result['settings']['dream_population']} × "
        f"{result['settings']['dream_steps']} steps in one jitted scan, uniformly random actions.",
        f"- Speeds: compiled and warmed up first, then {result['settings']['speed_repeats']} timed calls per arm, "
        f"alternating between the arms; load average {result['loadavg_speeds']} after timing.",
        f"- C: CMA-ES in the real env, population {es['population']}, {es['rollouts']} rollouts, "
        f"{es['generations']} generations, episodes capped at {cap or 'the env limit of'} "
        f"steps in training; the best evaluated mean is scored over full episodes.",
        *([f"- Dream-trained C: CMA-ES inside each arm's own M at temperature {dream['temperature']}, population "
           f"{dream['es']['population']}, {dream['es']['rollouts']} rollouts, {dream['es']['generations']} "
           f"generations, the preset's settings; kept by its dream score alone, then scored in the real env."]
          if dream else []),
        f"- Shared stages (s): " + ", ".join(f"{k} {v:.0f}" for k, v in result["shared_stage_seconds"].items()) + ".",
        f"- Total time of all stages (what a fresh run takes, less start-up): {result['stage_seconds_total']:.0f} s; "
        f"speed measurements {result['speeds_s']:.0f} s.",
        f"- Wall time of this call (less when resumed): {result['wall_s_this_call']:.0f} s; load average "
        f"{result['loadavg_start']} at start, {result['loadavg_end']} at end; devices {result['devices']}.",
        "",
    ]
    return "\n".join(lines)
