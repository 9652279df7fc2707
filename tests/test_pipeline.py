"""The whole pipeline at a tiny size: every artifact, determinism, resume after interruption, clear errors."""

import dataclasses
import importlib
import os
import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from worldmodels_jax.cli import main as wmj
from worldmodels_jax.configs import CollectConfig, get_preset
from worldmodels_jax.errors import CheckpointError, ConfigError, EnvError
from worldmodels_jax.pipeline import Pipeline

pytestmark = pytest.mark.slow
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for benchmarks/
TINY = get_preset("tiny")


# tiny_run (conftest.py): a finished `wmj run --preset tiny`, this file's own copy.


def test_end_to_end_writes_every_artifact(tiny_run):
    for name in ("config.json", "report.md", "report.json", "reconstructions.png", "dream_vs_real.gif",
                 "plots/vae_loss.png", "plots/mdn_nll.png", "plots/controller_returns.png",
                 "data/manifest.json", "encoded/manifest.json", "metrics/train-vae.jsonl", "metrics/train-mdn.jsonl",
                 "metrics/train-controller-z_h.jsonl"):
        assert (tiny_run / name).exists(), name
    report = json.loads((tiny_run / "report.json").read_text())
    assert report["env"] == "CartPolePixels-v1" and report["preset"] == "tiny"
    assert set(report["param_counts"]) == {"vae", "mdn_rnn", "controller"}
    assert set(report["results"]) == {"z_h", "z", "random"}
    for summary in report["results"].values():
        assert summary["episodes"] == TINY.evaluate.episodes and summary["mean"] > 0
    for stage in ("collect", "train-vae", "encode", "train-mdn", "train-controller", "evaluate"):
        assert report["timings"][stage] > 0
    # each controller-training record is one generation; evaluations every eval_every generations
    records = [json.loads(line) for line in (tiny_run / "metrics/train-controller-z_h.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in records] == list(range(1, TINY.controller.es.generations + 1))
    assert sum("eval_mean" in r for r in records) == TINY.controller.es.generations // TINY.controller.es.eval_every


def test_feature_ablation_reproduces_the_evaluate_stage_and_holds_features(tiny_run, capsys):
    pipeline = Pipeline(get_preset("tiny"), tiny_run, progress=False)
    recorded = json.loads((tiny_run / "stages" / "evaluate.json").read_text())["results"]
    for mode in ("z_h", "z"):  # the same episodes as the evaluate stage, so the same returns
        assert pipeline.evaluate_controller(mode) == recorded[mode]
    held = pipeline.evaluate_controller("z_h", ("h",))
    assert held["episodes"] == recorded["z_h"]["episodes"] and held != recorded["z_h"]
    with pytest.raises(ConfigError, match="hold must name"):
        pipeline.evaluate_controller("z", ("h",))  # z's controller has no h
    with pytest.raises(ConfigError, match="hold must name"):
        pipeline.evaluate_controller("z_h", ("c",))
    with pytest.raises(ConfigError, match="was not trained"):
        pipeline.evaluate_controller("z_hidden")
    assert wmj(["evaluate", "--out", str(tiny_run), "--hold-at-mean", "h", "--hold-at-mean", "z,h"]) == 0
    payload = json.loads((tiny_run / "feature_ablation.json").read_text())
    assert set(payload["results"]) == {"z_h"}  # only the mode whose input has h
    assert payload["results"]["z_h"]["as trained"] == recorded["z_h"]
    assert payload["results"]["z_h"]["h at mean"] == held
    assert "z+h at mean" in payload["results"]["z_h"] and "feature_ablation.json" in capsys.readouterr().out
    assert wmj(["evaluate", "--out", str(tiny_run), "--hold-at-mean", "x", "--mode", "z"]) == 2


def test_rerun_of_a_finished_run_is_a_no_op(tiny_run):
    before = (tiny_run / "stages" / "train-vae.json").read_text()
    pipeline = Pipeline(get_preset("tiny"), tiny_run, progress=False)
    pipeline.collect()
    pipeline.train_vae()
    assert (tiny_run / "stages" / "train-vae.json").read_text() == before


def test_same_seed_same_result(tiny_run, tmp_path):
    pipeline = Pipeline(get_preset("tiny"), tmp_path / "again", progress=False)
    pipeline.collect()
    pipeline.train_vae()
    first = Pipeline(get_preset("tiny"), tiny_run, progress=False)
    for a, b in zip(jax.tree.leaves(first.vae_params()), jax.tree.leaves(pipeline.vae_params())):
        np.testing.assert_array_equal(a, b)
    other_seed = Pipeline(dataclasses.replace(get_preset("tiny"), seed=1), tmp_path / "seed1", progress=False)
    other_seed.collect()
    a = np.load(tiny_run / "data" / "shard_00000.npz")["obs"]
    b = np.load(tmp_path / "seed1" / "data" / "shard_00000.npz")["obs"]
    assert not np.array_equal(a, b)


def test_pipeline_benchmark_projects_from_the_finished_run(tiny_run, tmp_path):
    """`benchmarks/bench_pipeline.py --from-run`: the run's stage seconds, and the paper presets projected."""
    bench_pipeline = importlib.import_module("benchmarks.bench_pipeline")
    timings = json.loads((tiny_run / "report.json").read_text())["timings"]
    result = bench_pipeline.run(toy=True, peak_flop_per_s=1e11, from_run=tiny_run)
    assert result["preset"] == "tiny" and result["from_run"] == str(tiny_run)
    for stage in ("collect", "train-vae", "encode", "train-mdn", "train-controller", "evaluate"):
        assert result["stages"][stage]["seconds"] == timings[stage] > 0, stage
    assert result["stages"]["train-vae"]["counted_flops"] == bench_pipeline.stage_flops(TINY)["train-vae"] > 0
    for name in ("vae", "mdn", "dream"):  # measured here at toy sizes
        assert 0 < result["projection"]["efficiency"][name]["fraction"] <= 1, name
    for preset in ("carracing-paper", "takecover-paper"):
        assert result["projection"]["presets"][preset]["h100_total_s_excluding_collect"] > 0
    with pytest.raises(ConfigError, match="no report.json"):
        bench_pipeline.run(toy=True, peak_flop_per_s=1e11, from_run=tmp_path)


class Interrupt(Exception):
    pass


def test_resume_after_interruption_gives_the_uninterrupted_result(tiny_run, tmp_path, monkeypatch):
    import shutil

    out = tmp_path / "resume"
    shutil.copytree(tiny_run, out)
    for stage in ("train-mdn", "train-controller", "train-controller-z_h", "train-controller-z", "evaluate", "report"):
        (out / "stages" / f"{stage}.json").unlink(missing_ok=True)
    for name in ("train-mdn", "mdn", "train-controller-z_h", "controller-z_h", "train-controller-z", "controller-z"):
        shutil.rmtree(out / "checkpoints" / name, ignore_errors=True)

    from worldmodels_jax import checkpoint as ckpt

    original_save = ckpt.Checkpointer.save
    calls = {"n": 0}

    def save_then_die(self, step, tree):
        original_save(self, step, tree)
        calls["n"] += 1
        if calls["n"] == 1:
            raise Interrupt("killed after the first checkpoint")

    monkeypatch.setattr(ckpt.Checkpointer, "save", save_then_die)
    with pytest.raises(Interrupt):
        Pipeline(get_preset("tiny"), out, progress=False).train_mdn()
    assert (out / "stages" / "train-mdn.json").exists() is False
    monkeypatch.setattr(ckpt.Checkpointer, "save", original_save)
    resumed = Pipeline(get_preset("tiny"), out, progress=False)
    resumed.train_mdn()
    uninterrupted = Pipeline(get_preset("tiny"), tiny_run, progress=False)
    for a, b in zip(jax.tree.leaves(uninterrupted.memory_params()), jax.tree.leaves(resumed.memory_params())):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    steps = [json.loads(line)["step"] for line in (out / "metrics" / "train-mdn.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no duplicated records after the resume

    calls["n"] = 0
    monkeypatch.setattr(ckpt.Checkpointer, "save", save_then_die)
    with pytest.raises(Interrupt):
        Pipeline(get_preset("tiny"), out, progress=False).train_controller()
    monkeypatch.setattr(ckpt.Checkpointer, "save", original_save)
    Pipeline(get_preset("tiny"), out, progress=False).train_controller()
    for mode in ("z_h", "z"):
        a = uninterrupted.controller_params(mode)
        b = resumed.controller_params(mode)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
        gens = [json.loads(line)["generation"] for line in
                (out / "metrics" / f"train-controller-{mode}.jsonl").read_text().splitlines()]
        assert gens == list(range(1, TINY.controller.es.generations + 1))


def test_a_run_started_before_a_field_was_added_resumes_and_other_differences_are_named(tiny_run, tmp_path):
    """A config.json without a field that the code has since gained (at its default) is the same configuration;
    a changed value or a field the code no longer has is not, and the error names it."""
    stored = json.loads((tiny_run / "config.json").read_text())
    assert stored["collect"]["controller_std"] == CollectConfig().controller_std
    older = tmp_path / "older"
    older.mkdir()
    del stored["collect"]["controller_std"]
    (older / "config.json").write_text(json.dumps(stored))
    Pipeline(get_preset("tiny"), older, progress=False)  # accepted, and config.json now holds the field
    assert "controller_std" in json.loads((older / "config.json").read_text())["collect"]
    with pytest.raises(ConfigError, match=r"collect\.controller_std: 0\.01 -> 0\.5"):
        Pipeline(dataclasses.replace(get_preset("tiny"), collect=dataclasses.replace(
            TINY.collect, controller_std=0.5)), older, progress=False)
    stored["vae"]["retired_option"] = 3
    (older / "config.json").write_text(json.dumps(stored))
    with pytest.raises(ConfigError, match=r"vae\.retired_option: 3 -> \(no such field\)"):
        Pipeline(get_preset("tiny"), older, progress=False)


def test_clear_errors(tiny_run, tmp_path):
    with pytest.raises(EnvError, match="64×64×3"):
        Pipeline(dataclasses.replace(get_preset("tiny"), env_id="CartPole-v1"), tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="different configuration .*seed: 0 -> 5"):
        Pipeline(dataclasses.replace(get_preset("tiny"), seed=5), tiny_run, progress=False)
    fresh = Pipeline(get_preset("tiny"), tmp_path / "fresh", progress=False)
    with pytest.raises(Exception, match="collect"):
        fresh.train_vae()
    with pytest.raises(CheckpointError, match="no trained vae"):
        fresh.vae_params()
    with pytest.raises(ConfigError, match="done head"):
        dataclasses.replace(get_preset("tiny"), controller=dataclasses.replace(TINY.controller, where="dream"))
    assert wmj(["run", "--preset", "no-such-preset", "--out", str(tmp_path / "y")]) == 2


def test_corrupt_checkpoint_is_a_clear_error(tiny_run, tmp_path):
    import shutil

    out = tmp_path / "corrupt"
    shutil.copytree(tiny_run, out)
    for file in (out / "checkpoints" / "vae").rglob("*"):
        if file.is_file() and file.stat().st_size > 100:
            file.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot be restored"):
        Pipeline(get_preset("tiny"), out, progress=False).vae_params()


def test_saving_a_step_that_exists_replaces_it(tmp_path):
    """A stage killed after its final `save(0, ...)` but before it was marked done saves step 0 again on resume."""
    from worldmodels_jax.checkpoint import Checkpointer

    checkpointer = Checkpointer(tmp_path / "params")
    checkpointer.save(0, {"w": np.zeros(3, np.float32)})
    checkpointer.save(0, {"w": np.ones(3, np.float32)})
    step, tree = checkpointer.restore({"w": np.zeros(3, np.float32)})
    assert step == 0 and checkpointer.latest_step() == 0
    np.testing.assert_array_equal(tree["w"], np.ones(3, np.float32))


def test_info_prints_param_counts(capsys):
    assert wmj(["info", "--preset", "carracing-paper", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["param_counts"] == {"vae": 4_348_547, "mdn_rnn": 422_368,
                                       "controller": {"z_h": 867, "z": 99, "z_hidden": 1443}}


def test_stage_keys_are_the_same_in_every_process():
    import os
    import subprocess
    import sys

    from worldmodels_jax.pipeline import stable_tag

    # One other process, whose str hashes are salted differently from this one's (checked), gives the same tags.
    code = ("from worldmodels_jax.pipeline import stable_tag; "
            "print(hash('z_h'), stable_tag('z_h'), stable_tag('dream-tau1.15'))")
    seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout.split()
    assert int(other[0]) != hash("z_h")
    assert other[1:] == [str(stable_tag("z_h")), str(stable_tag("dream-tau1.15"))]
    assert stable_tag("z_h") != stable_tag("z")


def test_episodes_split_over_two_cpu_devices_match_one_device(tiny_run, tmp_path):
    """With two simulated CPU devices, rollouts (also a batch that does not divide) and the controller stage's
    episodes are split over both, and give what one device gives: the same keys reach the same episodes."""
    import shutil
    import subprocess
    import textwrap

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for name in ("train-controller.json", "train-controller-z_h.json", "train-controller-z.json", "evaluate.json"):
        (run / "stages" / name).unlink()
    for name in ("train-controller-z_h", "controller-z_h"):
        shutil.rmtree(run / "checkpoints" / name)
    code = textwrap.dedent(f"""
        import json, gymnax, jax, jax.numpy as jnp
        from worldmodels_jax.configs import get_preset
        from worldmodels_jax.evolve import make_mesh
        from worldmodels_jax.pipeline import Pipeline
        from worldmodels_jax.rollouts import WorldModelParams, run_episodes
        assert jax.device_count() == 2, jax.devices()

        class LinearAgent:
            def init_carry(self, wm_params):
                return jnp.zeros(())

            def act(self, wm_params, c_params, carry, obs, first, key):
                return (jnp.dot(c_params, obs) > 0).astype(jnp.int32), carry

        env, params = gymnax.make("CartPole-v1")
        weights = jax.random.normal(jax.random.PRNGKey(1), (5, 4))  # 5 episodes: padded to 6 on two devices
        keys = jax.random.split(jax.random.PRNGKey(2), 5)
        run = lambda mesh: jax.jit(lambda w, k: run_episodes(env, params, LinearAgent(), WorldModelParams(), w, k,
                                                              300, 16, mesh))(weights, keys)
        one, two = run(None), run(make_mesh(2))
        rollouts = {{"one": one.lengths.tolist(), "two": two.lengths.tolist(),
                     "equal": bool((one.returns == two.returns).all() & (one.terminated == two.terminated).all())}}

        pipeline = Pipeline(get_preset("tiny"), {str(run)!r}, progress=False)
        record = pipeline._train_controller("z_h")
        single = Pipeline(get_preset("tiny"), {str(run)!r}, progress=False, devices=1)
        print(json.dumps({{"rollouts": rollouts, "record": record, "mesh": pipeline.mesh.size,
                           "two": pipeline.evaluate_controller("z_h"), "one": single.evaluate_controller("z_h")}}))
    """)
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "2"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    rollouts = result["rollouts"]
    assert rollouts["equal"] and rollouts["one"] == rollouts["two"] and len(set(rollouts["one"])) > 1, rollouts
    assert result["mesh"] == 2 and result["record"]["devices"] == 2
    assert result["two"] == result["one"]  # the evaluate stage's episodes, split or not
    first_generation = lambda path: json.loads(path.read_text().splitlines()[0])  # noqa: E731
    # generation 1: the same population (same ES key) on the same episodes as the one-device run
    assert first_generation(run / "metrics/train-controller-z_h.jsonl") == \
        first_generation(tiny_run / "metrics/train-controller-z_h.jsonl")
