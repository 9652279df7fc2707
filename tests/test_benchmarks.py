"""The benchmark suite at toy sizes, so that it cannot silently rot.

Known answers where there are any (the numpy port of the original dream loop computes what `MDNRNN.step`
computes; the counted FLOPs of the paper's models), and for the timed figures: positive, finite, and
written to the JSON and the regenerated markdown.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import bench_dream, bench_matmul_peak, bench_pipeline, numpy_dream  # noqa: E402
from worldmodels_jax import bench  # noqa: E402
from worldmodels_jax.configs import get_preset  # noqa: E402
from worldmodels_jax.errors import ConfigError  # noqa: E402
from worldmodels_jax.models.controller import Controller, ControllerConfig, init_controller  # noqa: E402
from worldmodels_jax.models.mdnrnn import MDNRNN, MDNRNNConfig, init_mdnrnn, mdn_sample  # noqa: E402


def _positive_finite(x) -> bool:
    return x is not None and math.isfinite(x) and x > 0


# ------------------------------------------------------------------------------ the numpy anchor is faithful
@pytest.fixture(scope="module")
def small_models():
    config = MDNRNNConfig(z_size=4, action_size=3, hidden_size=8, num_mixtures=3)
    mdn_params = init_mdnrnn(jax.random.PRNGKey(0), config)
    mdn_params = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.PRNGKey(1), x.shape), mdn_params)
    c_config = ControllerConfig(mode="z_h", z_size=4, feature_size=8, num_outputs=3)
    c_params = jax.tree.map(lambda x: x + 0.5, init_controller(jax.random.PRNGKey(2), c_config))
    np_params = numpy_dream.from_flax(mdn_params, c_params, z_size=4, num_mixtures=3)
    return config, mdn_params, c_config, c_params, np_params


def test_numpy_port_computes_what_mdnrnn_step_computes(small_models):
    config, mdn_params, _, _, np_params = small_models
    rng = np.random.default_rng(0)
    z, a = rng.standard_normal(4).astype(np.float32), rng.uniform(-1, 1, 3).astype(np.float32)
    h, c = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    from worldmodels_jax.models.mdnrnn import LSTMCarry

    carry, out, _ = MDNRNN(config).apply({"params": mdn_params}, LSTMCarry(h=jnp.asarray(h), c=jnp.asarray(c)),
                                         jnp.asarray(z), jnp.asarray(a), jnp.asarray(False), method="step")
    h_np, c_np = numpy_dream.lstm_step(np_params, np.concatenate([z, a]), h, c)
    np.testing.assert_allclose(h_np, carry.h, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(c_np, carry.c, rtol=1e-4, atol=1e-5)
    logmix, mean, logstd = numpy_dream.mdn_head(np_params, h_np)
    np.testing.assert_allclose(logmix, out.logpi, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mean, out.mu, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logstd, out.logsigma, rtol=1e-4, atol=1e-5)
    # τ → 0: both samplers return the most likely component's mean (well-separated logits: the original
    # subtracts one global max before exp, so rows far below it underflow at very small τ, as they did then).
    logits = np.array([[0.0, -3.0, -3.0], [-3.0, 0.0, -3.0], [-3.0, -3.0, 0.0], [0.0, -3.0, -3.0]])
    logits = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    mean = np.asarray(out.mu, np.float64)
    cold_np = numpy_dream.sample_z(logits, mean, np.asarray(out.logsigma, np.float64), 0.02, np.random.RandomState(0))
    cold_out = out.replace(logits=jnp.asarray(logits, jnp.float32))
    cold_jax = mdn_sample(jax.random.PRNGKey(0), cold_out, 1e-8)
    expected = mean[np.arange(4), np.argmax(logits, axis=1)]
    np.testing.assert_allclose(cold_np, expected, atol=4 * np.sqrt(0.02) * np.exp(np.asarray(out.logsigma)).max())
    np.testing.assert_allclose(cold_jax, expected, atol=1e-3)


def test_numpy_port_controller_and_pi_idx(small_models):
    _, _, c_config, c_params, np_params = small_models
    z, h = np.linspace(-1, 1, 4).astype(np.float32), np.linspace(1, -1, 8).astype(np.float32)
    raw = np.asarray(Controller(c_config).apply({"params": c_params}, jnp.asarray(z), jnp.asarray(h)))
    expected = np.array([raw[0], (raw[1] + 1) / 2, np.clip(raw[2], 0, 1)])
    np.testing.assert_allclose(numpy_dream.controller(np_params, z, h), expected, rtol=1e-5, atol=1e-6)
    pdf = np.array([0.2, 0.5, 0.3])
    assert [numpy_dream.get_pi_idx(x, pdf) for x in (0.1, 0.2, 0.21, 0.69, 0.71, 1.0)] == [0, 0, 1, 1, 2, 2]


def test_numpy_dream_sampling_matches_the_mixture():
    """At τ = 1 the per-dimension component frequencies follow π."""
    logmix = np.log(np.array([[0.7, 0.2, 0.1]]))
    mean = np.array([[-10.0, 0.0, 10.0]])
    logstd = np.full((1, 3), -8.0)
    rng = np.random.RandomState(0)
    draws = np.array([numpy_dream.sample_z(logmix, mean, logstd, 1.0, rng)[0] for _ in range(4000)])
    freqs = [np.mean(np.isclose(draws, m, atol=0.1)) for m in (-10.0, 0.0, 10.0)]
    np.testing.assert_allclose(freqs, [0.7, 0.2, 0.1], atol=0.03)


# ------------------------------------------------------------------------------ counted FLOPs (hand-computed)
def test_counted_flops_of_the_paper_models():
    flops = bench_dream.flops_per_step()
    assert flops == {"input_projection": 71_680, "recurrent": 524_288, "mdn_head": 245_760, "controller": 1_728,
                     "total": 843_456}
    vae = bench_pipeline.vae_forward_flops(get_preset("carracing-paper").vae)
    # conv 2·(31²·16·3·32 + 14²·16·32·64 + 6²·16·64·128 + 2²·16·128·256) + heads 2·1024·32·2
    assert vae["encoder"] == 29_559_808
    # dense 2·32·1024 + deconv 2·(1·25·1024·128 + 5²·25·128·64 + 13²·36·64·32 + 30²·36·32·3)
    assert vae["decoder"] == 48_000_000
    assert bench_pipeline.mdn_step_flops(get_preset("carracing-paper").mdn) == 71_680 + 524_288 + 245_760


def test_projection_arithmetic():
    eff = {"vae": {"fraction": 0.5}, "mdn": {"fraction": 0.25}, "dream": {"fraction": 0.1}}
    projection = bench_pipeline.project(eff, presets=("carracing-paper", "takecover-paper"))
    assert "PROJECTION" in projection["label"]
    stages = projection["presets"]["carracing-paper"]["stages"]
    assert stages["collect"]["h100_s"] is None
    mdn = get_preset("carracing-paper").train_mdn
    flops = 3.0 * 841_728 * mdn.batch_size * mdn.seq_len * mdn.steps
    assert stages["train-mdn"]["flops"] == pytest.approx(flops)
    assert stages["train-mdn"]["h100_s"] == pytest.approx(flops / (0.25 * 67e12))
    assert projection["presets"]["takecover-paper"]["stages"]["train-controller"]["kind"] == "dream"


# ------------------------------------------------------------------------------ toy runs
def test_matmul_peak_toy():
    result = bench_matmul_peak.run(toy=True)
    assert all(_positive_finite(row["flop_per_s"]) for row in result["sizes"])
    assert result["peak_flop_per_s"] == max(row["flop_per_s"] for row in result["sizes"])


def test_suite_toy_writes_json_markdown_and_plots(tmp_path, monkeypatch):
    """matmul, pixel CartPole, dream and scaling at toy sizes, plus a benchmark that fails: the suite goes on."""

    def broken(quick, toy, context, out):
        raise RuntimeError("deliberately broken")

    monkeypatch.setitem(bench.BENCHMARKS, "broken", {"run": broken, "command": "none", "toy": True})
    markdown = tmp_path / "BENCHMARKS.md"
    code = bench.main(["--toy", "--only", "cartpole_env", "dream", "broken", "scaling", "--out", str(tmp_path),
                       "--markdown", str(markdown)])
    assert code == 1  # one benchmark failed, and that is reported
    [json_path] = tmp_path.glob("*.json")
    record = json.loads(json_path.read_text())
    assert record["machine"]["jax"] == jax.__version__ and record["machine"]["devices"]
    runs = record["benchmarks"]
    assert list(runs) == ["matmul", "cartpole_env", "dream", "broken", "scaling"]
    assert runs["broken"]["status"] == "failed" and "deliberately broken" in runs["broken"]["error"]
    for name in ("matmul", "cartpole_env", "dream", "scaling"):
        assert runs[name]["status"] == "ok", runs[name]

    dream = runs["dream"]["result"]
    assert dream["peak_flop_per_s"] == runs["matmul"]["result"]["peak_flop_per_s"]  # same run
    for variant in ("package", "scan", "fused"):
        for row in dream["variants"][variant].values():
            for key in ("steps_per_s", "flop_per_s", "fraction_of_peak", "ratio_vs_numpy", "compile_s"):
                assert _positive_finite(row[key]), (variant, key, row[key])
    cartpole = runs["cartpole_env"]["result"]
    for rows in cartpole["ours"].values():
        assert all(_positive_finite(row["steps_per_s"]) for row in rows.values())
    try:
        import gymnasium  # noqa: F401

        assert _positive_finite(cartpole["gymnasium_cartpole_v1_state_steps_per_s"])
    except ImportError:
        pass
    lengths = runs["scaling"]["result"]["episode_length"]["rows"]
    assert all(_positive_finite(row["seconds_per_call"]) for row in lengths.values())
    devices = runs["scaling"]["result"]["devices"]["rows"]
    assert sorted(int(n) for n in devices) == [1, 2]
    for n, row in devices.items():
        assert row["mesh"] == [int(n)] and _positive_finite(row["seconds_per_generation"])
        assert row["same_returns_as_one_device"], row  # the sharded engine gives 1 device's results

    text = markdown.read_text()
    for heading in ("## matmul", "## cartpole_env", "## dream", "## scaling", "## broken"):
        assert heading in text
    assert "**FAILED**" in text and "numpy per-agent loop" in text and json_path.name in text
    assert record["plots"] and all(Path(p).exists() and Path(p).stat().st_size > 0 for p in record["plots"])
    assert any(Path(p).name.endswith("_devices.png") for p in record["plots"])
    assert "simulated CPU device(s)" in text


def test_paper_costs_toy_projects_the_presets_units_and_writes_rows_as_it_goes(tmp_path, monkeypatch):
    """The `tiny` preset's stages timed at toy sizes: every stage is there, each projection is the preset's units
    (counted here from the config) times the measured seconds per unit, the JSON is complete, and the suite's
    markdown labels the projections."""
    bench_paper_costs = bench._benchmarks_module("bench_paper_costs")
    out = tmp_path / "costs.json"
    result = bench_paper_costs.run(preset="tiny", size="toy", peak_flop_per_s=1e10, modes=("z",), out=out)
    config = get_preset("tiny")
    frames = config.collect.num_envs * config.collect.steps * config.collect.num_shards  # 8 x 40 x 2
    es, episode = config.controller.es, config.controller.max_episode_steps
    expected_units = {"collect": frames, "train-vae": frames * config.train_vae.epochs, "encode": frames,
                      "train-mdn": config.train_mdn.steps}
    for mode in ("z",):  # one controller keeps the test's compilation short; the preset has z_h and z
        expected_units[f"train-controller-{mode}"] = es.generations * es.population * es.rollouts * episode
        expected_units[f"evaluate-mean-{mode}"] = es.generations // es.eval_every * es.eval_episodes * episode
        expected_units[f"evaluate-{mode}"] = config.evaluate.episodes * config.evaluate.max_episode_steps
    rows = {row["stage"]: row for row in result["rows"]}
    assert {name: row["preset_units"] for name, row in rows.items()} == expected_units
    for name, row in rows.items():
        assert _positive_finite(row["seconds_per_unit"]), name
        assert row["projected_s"] == pytest.approx(row["seconds_per_unit"] * row["preset_units"]), name
        if "seconds" in row:
            assert row["seconds_per_unit"] == pytest.approx(row["seconds"] / row["units_timed"]), name
    assert rows["train-controller-z"]["units_timed"] == es.population * es.rollouts * 5  # toy: 5-step episodes
    assert 0 < rows["evaluate-mean-z"]["mean_episode_length_timed"] <= 5
    assert rows["train-vae"]["fraction_of_matmul_peak"] == pytest.approx(rows["train-vae"]["flop_per_s"] / 1e10)
    assert result["projected_total_s"] == pytest.approx(sum(result["projected_s_by_stage"].values()))
    assert result["projected_total_s"] == pytest.approx(sum(row["projected_s"] for row in rows.values()))
    assert set(result["projected_s_by_stage"]) == {"collect", "train-vae", "encode", "train-mdn",
                                                   "train-controller", "evaluate"}
    saved = json.loads(out.read_text())
    assert saved["complete"] and len(saved["rows"]) == len(rows) and saved["label"].startswith("PROJECTED")
    headers, table = bench._rows("paper_costs", result)
    assert any(line[0].startswith("**PROJECTED** `tiny` total") for line in table)
    assert sum("(measured)" in line[0] for line in table) == sum("seconds" in row for row in rows.values())

    with pytest.raises(ConfigError, match="dream"):
        bench_paper_costs.run(preset="takecover-cpu-small", size="toy", peak_flop_per_s=1e10)
    with pytest.raises(ConfigError, match="unknown size"):
        bench_paper_costs.run(preset="tiny", size="huge", peak_flop_per_s=1e10)


def test_quick_suite_leaves_out_paper_costs_unless_named(monkeypatch, tmp_path):
    chosen = []
    monkeypatch.setattr(bench, "run_suite", lambda names, *args: chosen.append(names) or {"benchmarks": {}})
    bench.main(["--quick", "--out", str(tmp_path)])
    bench.main(["--quick", "--only", "paper_costs", "--out", str(tmp_path)])
    bench.main(["--out", str(tmp_path)])
    assert "paper_costs" not in chosen[0] and "dream" in chosen[0]
    assert chosen[1] == ["matmul", "paper_costs"]  # its anchor, the matmul peak, is measured in the same run
    assert "paper_costs" in chosen[2]


def test_device_check_script_parses_and_its_wheels_are_the_versions_installed_here():
    """benchmarks/device_check.sh is valid bash, and `make device-wheels` pins what this environment runs (a lent
    GPU machine has jax, flax, optax, chex and orbax; the rest travels as these wheels)."""
    import importlib.metadata
    import re
    import subprocess

    subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "device_check.sh")], check=True)
    makefile = (REPO / "Makefile").read_text()
    block = re.search(r"^DEVICE_WHEELS := (.*?)\n(?!\s)", makefile, re.S | re.M).group(1)
    pins = dict(pin.split("==") for pin in block.replace("\\", " ").split())
    assert {"evosax", "gymnax", "tyro"} <= set(pins)
    for name, version in pins.items():
        assert importlib.metadata.version(name) == version, (name, version)


def test_every_registered_benchmark_module_imports():
    """The benchmarks without a toy size (owned elsewhere, minutes each) must at least import and expose run()."""
    for name in ("bench_takecover_env", "bench_carracing_env", "bench_neuroevolution", "bench_vm_training",
                 "bench_dqn", "bench_matmul_peak", "bench_dream", "bench_pipeline", "bench_paper_costs"):
        if not (REPO / "benchmarks" / f"{name}.py").exists():
            continue
        module = bench._benchmarks_module(name)
        assert callable(module.run), name


def test_vm_training_paired_ratio_on_a_fake_clock(monkeypatch):
    """The paired figure is the median of per-round ratios (PyTorch's time / ours), and the suite prints it."""
    bench_vm_training = bench._benchmarks_module("bench_vm_training")
    clock = {"t": 0.0}
    monkeypatch.setattr(bench_vm_training.time, "perf_counter", lambda: clock["t"])
    monkeypatch.setattr(bench_vm_training.time, "process_time", lambda: clock["t"])
    ours_seconds = iter([1.0, 1.0, 2.0, 2.0, 1.0, 1.0])  # rounds of 2 steps: 1 s, 2 s, 1 s per step
    torch_seconds = iter([1.5, 1.5, 2.0, 2.0, 3.0, 3.0])  # 1.5 s, 2 s, 3 s: ratios 1.5, 1.0, 3.0

    def advance(seconds):
        clock["t"] += next(seconds)

    paired = bench_vm_training._paired(lambda: advance(ours_seconds), lambda: advance(torch_seconds), 3, 2)
    assert paired["ratios"] == [1.5, 1.0, 3.0]
    assert paired["ratio_median"] == 1.5
    assert paired["ours_ms_median"] == 1000.0 and paired["torch_ms_median"] == 2000.0
    record = {"vae": {"paired": {"contestant": "jax_fast", **paired}}, "mdnrnn": {}}
    _, rows = bench._rows("vm_training", record)
    assert rows == [["vae training step, jax_fast and PyTorch alone, paired (3 rounds)", "1000.0 ms/step",
                     "PyTorch CPU 2000.0 ms/step",
                     f"1.50× (quartiles {paired['ratio_q1']:.2f}-{paired['ratio_q3']:.2f})"]]


def test_carracing_env_rows_show_the_controller_generation_ratio_when_measured():
    """The C-generation A/B (V's convs 'forward' against 'xla') gets its own row; older records without it don't."""
    record = {"gymnasium_carracing_v3_steps_per_s": 100.0, "ours_steps_per_s": {256: 30000.0},
              "ratio": {256: 300.0}}
    _, rows = bench._rows("carracing_env", record)
    assert len(rows) == 1 and rows[0][-1] == "300×"
    record.update(controller_generation_steps_per_s={"forward": 6000.0, "xla": 4500.0},
                  controller_generation_ratio_forward_vs_xla=6000.0 / 4500.0)
    _, rows = bench._rows("carracing_env", record)
    assert len(rows) == 2 and "'forward'" in rows[1][0] and "'xla'" in rows[1][2] and rows[1][-1] == "1.33×"
