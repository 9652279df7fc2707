"""Forking a run: a new run directory that keeps a finished run's early stages and redoes the rest.

    wmj fork --from RUN --out NEW --stage train-controller [--modes z_h] [--continue] [config overrides]

The fork copies what the stages before `--stage` wrote (their data, checkpoints, metrics and markers) and
nothing else; `wmj run --out NEW` (or `experiments/carracing.py --out NEW`) then redoes `--stage` and every
stage after it. The keys come from the run's seed and the stage's name, so a redone stage with unchanged
settings repeats the source's result, and one with changed settings is a paired comparison on the same data,
V and M: how `docs/carracing_studies.md` retrains controllers.

At `--stage train-controller`:
- `--modes` picks the controllers to retrain (default: all of the new config's modes); the other modes keep
  their finished controllers, so their settings may not change.
- `--continue` keeps the retrained modes' ES checkpoints, so each search resumes where the source stopped,
  for example to more generations (`--controller.es.generations`). Only the fields in `CONTINUABLE` may then
  differ: the rest would change what the checkpointed ES state means.

Overrides that would change a kept stage are refused, naming the field and the first stage that reads it.
The seed cannot change: every stage's keys come from it. Diagnostics written beside a run (feature probes,
gymnasium evaluations, tables) are not copied; re-run them on the fork. `NEW/forked_from.json` records the
source, the stage, the modes and every setting that differs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from worldmodels_jax.configs import PipelineConfig, resolve
from worldmodels_jax.data import make_env
from worldmodels_jax.errors import ConfigError
from worldmodels_jax.pipeline import STAGES, _config_from_json
from worldmodels_jax.rundir import to_jsonable, write_json_atomic

FORK_STAGES = STAGES[1:]
"""The stages a fork may start at (forking at 'collect' keeps nothing: start a new run instead)."""

FIRST_READER = {
    "env_id": "collect", "seed": "collect", "collect": "collect",
    "vae": "train-vae", "train_vae": "train-vae",
    "action_encoding": "train-mdn", "mdn": "train-mdn", "memory": "train-mdn", "transformer": "train-mdn",
    "train_mdn": "train-mdn",
    "controller": "train-controller",
    "evaluate": "evaluate",
    "gif_steps": "report",
    "preset": None,  # a label
}
"""Top-level config field -> the first stage whose result depends on it."""

CONTINUABLE = ("controller.modes", "controller.es.generations", "controller.es.rollouts", "controller.es.eval_every",
               "controller.es.eval_episodes", "controller.es.target_score", "controller.chunk_steps")
"""Controller fields that may differ when `--continue` resumes the source's ES states."""

STAGE_FILES = {
    "collect": ["data", "stages/collect.json"],
    "train-vae": ["checkpoints/train-vae", "checkpoints/vae", "metrics/train-vae.jsonl", "stages/train-vae.json",
                  "reconstructions.png", "plots/vae_loss.png"],
    "encode": ["encoded", "stages/encode.json"],
    "train-mdn": ["checkpoints/train-mdn", "checkpoints/mdn", "metrics/train-mdn.jsonl", "stages/train-mdn.json",
                  "plots/mdn_nll.png"],
    "train-controller": ["stages/train-controller.json", "plots/controller_returns.png"],
    "evaluate": ["stages/evaluate.json", "stages/evaluate-scripted.json"],
}
"""What each stage writes into a run directory (the controller's per-mode files: `controller_files`)."""


def controller_files(mode: str, finished: bool) -> list[str]:
    """A controller mode's files: its ES checkpoints, metrics and imitation fit, plus (`finished`) its kept
    controller and stage marker."""
    search = [f"checkpoints/train-controller-{mode}", f"metrics/train-controller-{mode}.jsonl",
              f"checkpoints/imitation-{mode}", f"metrics/imitation-{mode}.jsonl"]
    return search + ([f"checkpoints/controller-{mode}", f"stages/train-controller-{mode}.json"] if finished else [])


def _flatten(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
        return out
    return {prefix: tree}


def setting_differences(old: PipelineConfig, new: PipelineConfig) -> dict[str, tuple]:
    """{dotted field: (old value, new value)} for every field that differs."""
    a, b = (_flatten(json.loads(json.dumps(to_jsonable(c)))) for c in (old, new))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _describe(field: str, change: tuple) -> str:
    return f"{field} ({change[0]!r} -> {change[1]!r})"


def fork_run(source: str | Path, out: str | Path, stage: str, config: PipelineConfig,
             modes: tuple[str, ...] | None = None, continue_search: bool = False) -> dict:
    """Writes the fork of `source` at `stage` into `out` with the new `config`; returns the fork's record
    (also written to `out/forked_from.json`). Raises ConfigError, naming the fix, when the fork cannot hold."""
    source, out = Path(source), Path(out)
    if stage not in FORK_STAGES:
        hint = " (forking at 'collect' keeps nothing: start a new run)" if stage == "collect" else ""
        raise ConfigError(f"unknown fork stage {stage!r}{hint}; choose one of {', '.join(FORK_STAGES)}")
    if not (source / "config.json").exists():
        raise ConfigError(f"{source} is not a run directory (no config.json); pass the run to fork with --from")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} already exists and is not empty; pass a new --out directory for the fork")
    if source.resolve() == out.resolve():
        raise ConfigError("--from and --out are the same directory; a fork needs a new --out directory")

    env, env_params = make_env(config.env_id)
    config = resolve(config, env, env_params)
    old = _config_from_json(json.loads((source / "config.json").read_text()))
    differences = setting_differences(old, config)
    redo = STAGES[STAGES.index(stage):]
    kept_stages = STAGES[: STAGES.index(stage)]

    # 1. No override may change what a kept stage computed.
    for field, change in differences.items():
        top = field.split(".")[0]
        reader = FIRST_READER.get(top, "collect")
        if reader is not None and reader in kept_stages:
            redo_it = ("start a new run to change it" if reader == "collect"
                       else f"fork at --stage {reader} or earlier to redo it")
            raise ConfigError(f"{_describe(field, change)} would change the '{reader}' stage, which the fork keeps "
                              f"from {source}; {redo_it}, or leave the setting as it was")

    # 2. The controllers: which modes are retrained, which kept, which continued.
    source_modes, new_modes = tuple(old.controller.modes), tuple(config.controller.modes)
    retrain: tuple[str, ...] = ()
    keep_modes: tuple[str, ...] = ()
    if stage == "train-controller":
        retrain = tuple(modes) if modes else new_modes
        unknown = [m for m in retrain if m not in new_modes]
        if unknown:
            raise ConfigError(f"--modes {', '.join(unknown)} not in the fork's controller.modes {list(new_modes)}; "
                              f"add them with --controller.modes")
        keep_modes = tuple(m for m in new_modes if m not in retrain)
        missing = [m for m in keep_modes if m not in source_modes]
        if missing:
            raise ConfigError(f"{source} has no controller for mode(s) {', '.join(missing)} to keep; "
                              f"retrain them with --modes {' '.join(retrain + tuple(missing))}")
        changed = {f: c for f, c in differences.items() if f.startswith("controller.") and f != "controller.modes"}
        if keep_modes and changed:
            field, change = next(iter(changed.items()))
            raise ConfigError(
                f"{_describe(field, change)} changes the controllers, but the fork keeps those of mode(s) "
                f"{', '.join(keep_modes)} trained with the old setting; retrain them too (--modes "
                f"{' '.join(new_modes)}) or leave the setting as it was"
            )
        if continue_search:
            fixed = {f: c for f, c in changed.items() if f not in CONTINUABLE}
            if fixed:
                field, change = next(iter(fixed.items()))
                raise ConfigError(
                    f"--continue resumes the source's ES states, which {_describe(field, change)} would change the "
                    f"meaning of; only {', '.join(CONTINUABLE)} may differ. Drop --continue to retrain from the start"
                )
            if config.controller.es.generations < old.controller.es.generations:
                raise ConfigError(
                    f"--continue with controller.es.generations {config.controller.es.generations} < the source's "
                    f"{old.controller.es.generations}: the search would stop before its checkpoint; ask for more"
                )
            for mode in retrain:
                if not (source / "checkpoints" / f"train-controller-{mode}").exists():
                    raise ConfigError(f"--continue: {source} has no ES checkpoint for mode {mode}; retrain it "
                                      f"without --continue")
    elif modes or continue_search:
        raise ConfigError("--modes and --continue apply to --stage train-controller only")

    # 3. Every kept stage must have finished in the source.
    for name in kept_stages:
        if not (source / "stages" / f"{name}.json").exists():
            raise ConfigError(f"{source} has not finished its '{name}' stage, which the fork would keep; finish it "
                              f"(`wmj run --out {source}`) or fork at --stage {name}")
    for mode in keep_modes:
        if not (source / "stages" / f"train-controller-{mode}.json").exists():
            raise ConfigError(f"{source} has not finished training controller {mode}, which the fork would keep; "
                              f"retrain it with --modes")

    # 4. Copy what the kept stages wrote.
    paths = [p for name in kept_stages for p in STAGE_FILES.get(name, [])]
    if "train-controller" in kept_stages:
        paths += [p for m in new_modes for p in controller_files(m, finished=True)]
    paths += [p for m in keep_modes for p in controller_files(m, finished=True)]
    if continue_search:
        paths += [p for m in retrain for p in controller_files(m, finished=False)]
    if "evaluate" in redo and "evaluate" not in {f.split(".")[0] for f in differences}:
        paths.append("stages/evaluate-scripted.json")  # CarRacing's scripted row reads the evaluate settings only
    # Built beside `out` and renamed into place, so an interrupted fork leaves no half-copied run behind.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.forking-", dir=out.parent))
    try:
        copied = []
        for relative in paths:
            origin = source / relative
            if not origin.exists():
                continue
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if origin.is_dir() else shutil.copy2)(origin, target)
            copied.append(relative)
        write_json_atomic(staging / "config.json", config)
        record = {
            "source": str(source.resolve()), "stage": stage, "kept_stages": list(kept_stages), "redo": list(redo),
            "retrain_modes": list(retrain), "kept_modes": list(keep_modes), "continue": continue_search,
            "differences": {f: {"source": c[0], "fork": c[1]} for f, c in differences.items()}, "copied": copied,
        }
        write_json_atomic(staging / "forked_from.json", record)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return record
