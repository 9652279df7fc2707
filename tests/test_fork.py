"""`wmj fork`: a fork repeats the source where nothing changed, continues a search exactly, refuses what would
change a kept stage, and copies only what the kept stages wrote."""

import filecmp
import json
import shutil

import pytest

from worldmodels_jax.cli import main as wmj
from worldmodels_jax.configs import get_preset
from worldmodels_jax.errors import ConfigError
from worldmodels_jax.fork import fork_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def source(tiny_run):
    """A finished `wmj run --preset tiny` (conftest.py: this file's own copy)."""
    (tiny_run / "feature_probe_z_h.json").write_text("{}")  # a diagnostic beside the run: not the fork's
    return tiny_run


def read(path):
    return json.loads(path.read_text())


def metrics(run, mode):
    return [json.loads(line) for line in (run / f"metrics/train-controller-{mode}.jsonl").read_text().splitlines()]


def count_generations(monkeypatch) -> list[int]:
    """The generations the controller stage runs, chunk by chunk, from now on."""
    from worldmodels_jax.pipeline import Pipeline

    chunks, original = [], Pipeline.controller_training

    def counting(self, mode, wm):
        training = original(self, mode, wm)

        def run_chunk(state, generations):
            chunks.append(generations)
            return training.run_chunk(state, generations)

        return training._replace(run_chunk=run_chunk)

    monkeypatch.setattr(Pipeline, "controller_training", counting)
    return chunks


def test_a_fork_that_changes_nothing_repeats_the_source(source, tmp_path, monkeypatch):
    out = tmp_path / "fork"
    assert wmj(["fork", "--from", str(source), "--out", str(out), "--stage", "train-controller", "--modes", "z_h"]) == 0
    record = read(out / "forked_from.json")
    assert record["kept_modes"] == ["z"] and record["retrain_modes"] == ["z_h"] and record["differences"] == {}
    assert not (out / "checkpoints/controller-z_h").exists() and not (out / "feature_probe_z_h.json").exists()
    assert not (out / "report.json").exists() and not (out / "stages/evaluate.json").exists()
    chunks = count_generations(monkeypatch)
    assert wmj(["run", "--out", str(out), "--quiet"]) == 0
    assert chunks == [2, 2]  # z_h's 4 generations; z kept
    # the kept stages did not run again (their markers, with their timings, are the source's) ...
    for stage in ("collect", "train-vae", "encode", "train-mdn", "train-controller-z"):
        assert (out / f"stages/{stage}.json").read_text() == (source / f"stages/{stage}.json").read_text(), stage
    assert filecmp.cmpfiles(source / "checkpoints/controller-z/0", out / "checkpoints/controller-z/0",
                            ["_CHECKPOINT_METADATA"], shallow=False)[0] == ["_CHECKPOINT_METADATA"]
    # ... and the retrained controller is the source's: the same keys, the same search, the same scores
    assert metrics(out, "z_h") == metrics(source, "z_h")
    assert read(out / "stages/evaluate.json")["results"] == read(source / "stages/evaluate.json")["results"]


def test_continuing_a_search_equals_running_it_longer_from_the_start(source, tmp_path, monkeypatch):
    longer = ["--controller.es.generations", "8", "--controller.modes", "z_h"]
    assert wmj(["fork", "--from", str(source), "--out", str(tmp_path / "continued"), "--stage", "train-controller",
                "--continue", *longer]) == 0
    assert wmj(["fork", "--from", str(source), "--out", str(tmp_path / "fresh"), "--stage", "train-controller",
                *longer]) == 0
    assert read(tmp_path / "continued/forked_from.json")["differences"] == {
        "controller.es.generations": {"source": 4, "fork": 8},
        "controller.modes": {"source": ["z_h", "z"], "fork": ["z_h"]}}
    assert not (tmp_path / "fresh/metrics/train-controller-z_h.jsonl").exists()
    chunks = count_generations(monkeypatch)
    assert wmj(["run", "--out", str(tmp_path / "continued"), "--quiet"]) == 0
    assert chunks == [2, 2]  # generations 5-8 only: the search resumed from the source's checkpoint
    assert wmj(["run", "--out", str(tmp_path / "fresh"), "--quiet"]) == 0
    assert chunks == [2, 2, 2, 2, 2, 2]
    continued, fresh = metrics(tmp_path / "continued", "z_h"), metrics(tmp_path / "fresh", "z_h")
    assert [r["generation"] for r in continued] == list(range(1, 9))
    assert continued[:4] == metrics(source, "z_h")  # the source's generations, kept
    assert continued == fresh  # resumed from the checkpoint: the same search as 8 generations in one go
    assert (read(tmp_path / "continued/stages/evaluate.json")["results"]
            == read(tmp_path / "fresh/stages/evaluate.json")["results"])


def test_a_fork_at_evaluate_keeps_the_controllers_and_takes_new_evaluate_settings(source, tmp_path, monkeypatch):
    out = tmp_path / "eval8"
    assert wmj(["fork", "--from", str(source), "--out", str(out), "--stage", "evaluate",
                "--evaluate.episodes", "8"]) == 0
    chunks = count_generations(monkeypatch)
    assert wmj(["run", "--out", str(out), "--quiet"]) == 0
    assert chunks == []  # no controller trained again
    for mode in ("z_h", "z"):
        assert (out / f"stages/train-controller-{mode}.json").read_text() == \
            (source / f"stages/train-controller-{mode}.json").read_text()
    results = read(out / "stages/evaluate.json")["results"]
    assert {results[k]["episodes"] for k in ("z_h", "z", "random")} == {8}


def fork_error(source, out, stage, *overrides, modes=None, continue_search=False) -> str:
    from worldmodels_jax.cli import build_config

    config = build_config(None, None, source, list(overrides))
    with pytest.raises(ConfigError) as caught:
        fork_run(source, out, stage, config, modes, continue_search)
    return str(caught.value)


def test_settings_that_would_change_a_kept_stage_are_refused_by_name(source, tmp_path):
    out = tmp_path / "refused"
    message = fork_error(source, out, "train-controller", "--vae.kl-tolerance", "0.25")
    assert "vae.kl_tolerance (0.5 -> 0.25)" in message and "'train-vae' stage" in message and "--stage train-vae" in message
    assert "start a new run" in fork_error(source, out, "train-mdn", "--seed", "3")
    assert "--stage train-mdn" in fork_error(source, out, "train-controller", "--train-mdn.steps", "40")
    # kept controllers would no longer match the settings
    message = fork_error(source, out, "train-controller", "--controller.es.population", "16", modes=("z_h",))
    assert "controller.es.population (8 -> 16)" in message and "z trained with the old setting" in message
    # --continue cannot resume under a different search
    message = fork_error(source, out, "train-controller", "--controller.es.population", "16", continue_search=True)
    assert "--continue" in message and "controller.es.population" in message
    assert "would stop before its checkpoint" in fork_error(
        source, out, "train-controller", "--controller.es.generations", "2", continue_search=True)
    assert "not in the fork's controller.modes" in fork_error(source, out, "train-controller", modes=("z_hidden",))
    assert "unknown fork stage 'collect'" in fork_error(source, out, "collect")
    assert "fork at --stage train-controller" in fork_error(source, out, "evaluate", "--controller.modes", "z")
    assert "apply to --stage train-controller only" in fork_error(source, out, "evaluate", continue_search=True)
    assert not out.exists()  # nothing was written


def test_a_fork_needs_the_kept_stages_finished_and_a_new_directory(source, tmp_path):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(source, unfinished)
    (unfinished / "stages/train-mdn.json").unlink()
    assert "has not finished its 'train-mdn' stage" in fork_error(unfinished, tmp_path / "a", "train-controller")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken/file").write_text("x")
    assert "already exists and is not empty" in fork_error(source, tmp_path / "taken", "train-controller")
    assert "no config.json" in fork_error(tmp_path / "taken", tmp_path / "b", "train-controller")
    assert wmj(["fork", "--from", str(tmp_path / "taken"), "--out", str(tmp_path / "b"), "--stage", "evaluate"]) == 2
    assert wmj(["fork", "--out", str(tmp_path / "b")]) == 2


def test_an_interrupted_fork_leaves_nothing_behind(source, tmp_path, monkeypatch):
    import worldmodels_jax.fork as fork_module
    from worldmodels_jax.cli import build_config

    copies = []

    def copytree_then_die(origin, target):
        copies.append(origin)
        if len(copies) == 2:
            raise KeyboardInterrupt  # killed mid-copy
        return shutil.copytree(origin, target)

    monkeypatch.setattr(fork_module.shutil, "copytree", copytree_then_die)
    config = build_config(None, None, source, [])
    with pytest.raises(KeyboardInterrupt):
        fork_run(source, tmp_path / "fork", "train-controller", config)
    assert len(copies) == 2 and sorted(p.name for p in tmp_path.iterdir()) == []  # no fork, no staging directory
    monkeypatch.undo()
    fork_run(source, tmp_path / "fork", "train-controller", config)  # the same fork, run again, goes through
    assert (tmp_path / "fork/stages/train-mdn.json").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["fork"]
