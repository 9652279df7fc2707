"""Config helpers with known answers."""

import dataclasses
import math

import pytest

from worldmodels_jax.configs import ControllerStageConfig, get_preset
from worldmodels_jax.errors import ConfigError
from worldmodels_jax.evolution import ESConfig
from worldmodels_jax.models.controller import ControllerConfig
from worldmodels_jax.train.mdn import MDNTrainConfig


def test_sigma_fan_in_scales_the_initial_step_by_the_controller_s_inputs():
    off = ControllerStageConfig(es=ESConfig(sigma_init=0.5))
    assert off.sigma_init_for(16) == off.sigma_init_for(80) == 0.5
    on = ControllerStageConfig(es=ESConfig(sigma_init=0.5), sigma_fan_in=16)
    # CarRacing cpu-small: z has 16 inputs, z + h 16 + 64 (runs I0-I2 used 0.22 for z + h)
    sizes = {mode: ControllerConfig(mode=mode, z_size=16, feature_size=64, num_outputs=3).input_size
             for mode in ("z", "z_h", "z_hidden")}
    assert sizes == {"z": 16, "z_h": 80, "z_hidden": 16}
    assert on.sigma_init_for(sizes["z"]) == pytest.approx(0.5)
    assert on.sigma_init_for(sizes["z_h"]) == pytest.approx(0.5 * math.sqrt(16 / 80))
    assert round(on.sigma_init_for(sizes["z_h"]), 2) == 0.22


def test_sigma_fan_in_is_on_in_the_carracing_cpu_small_presets_only_and_bad_values_are_clear_errors():
    from worldmodels_jax.configs import PRESETS

    on = {name for name, preset in PRESETS.items() if preset.controller.sigma_fan_in}
    assert on == {"carracing-cpu-small", "carracing-cpu-small-e16", "carracing-cpu-small-t500",
                  "carracing-cpu-small-imitate"}  # the paper presets (and paper-c) keep the paper's single sigma_init
    assert get_preset("carracing-cpu-small").controller.sigma_fan_in == 16
    for bad in (-1, 1.5):
        with pytest.raises(ConfigError, match="sigma_fan_in"):
            ControllerStageConfig(sigma_fan_in=bad)


def test_carracing_cpu_small_population_is_at_least_cma_es_default_for_each_controller():
    """Hansen's default CMA-ES population is 4 + floor(3 ln n) for n parameters: 15 for z (51), 20 for z + h
    (243), 24 for z + hidden (803). Population 16 fell below it for the two larger controllers."""
    import jax

    from worldmodels_jax.models.controller import init_controller

    preset = get_preset("carracing-cpu-small")
    sizes = {}
    for mode in preset.controller.modes:
        config = ControllerConfig(mode=mode, z_size=preset.vae.z_size, feature_size=preset.mdn.hidden_size,
                                  num_outputs=3, hidden_units=preset.controller.hidden_units)
        sizes[mode] = sum(leaf.size for leaf in jax.tree.leaves(init_controller(jax.random.PRNGKey(0), config)))
    assert sizes == {"z_h": 243, "z": 51, "z_hidden": 803}
    defaults = {mode: 4 + math.floor(3 * math.log(n)) for mode, n in sizes.items()}
    assert defaults == {"z_h": 20, "z": 15, "z_hidden": 24}
    assert preset.controller.es.population >= max(defaults.values())


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def test_carracing_paper_cpu_is_the_paper_preset_with_only_the_budget_changed():
    paper, check, small = (_flat(dataclasses.asdict(get_preset(name, "CarRacing-v0")))
                           for name in ("paper", "paper-cpu", "cpu-small-t500"))  # the budget it was measured at
    changed = {key for key in paper if paper[key] != check[key]}
    assert changed == {
        "preset", "collect.num_envs", "collect.steps", "collect.num_shards",
        "train_vae.epochs", "train_vae.batch_size", "train_vae.learning_rate",
        "train_mdn.steps", "train_mdn.batch_size", "train_mdn.seq_len", "train_mdn.learning_rate",
        "controller.modes", "controller.max_episode_steps", "controller.es.population", "controller.es.rollouts",
        "controller.es.generations", "controller.es.eval_every", "controller.es.eval_episodes",
    }
    assert all(check[key] == small[key] for key in changed - {"preset", "controller.modes"})
    assert check["controller.modes"] == ("z_h",) and check["collect.policy"] == "random_controller"
    assert (check["vae.z_size"], check["mdn.hidden_size"], check["controller.es.sigma_init"]) == (32, 256, 0.1)


def test_mdn_steps_that_are_not_whole_chunks_are_a_clear_error():
    """The trainer runs whole chunks, so 400 steps in chunks of 300 would have trained 600."""
    with pytest.raises(ConfigError, match=r"steps \(400\) must be a multiple of train_mdn.chunk_steps \(300\)"):
        MDNTrainConfig(steps=400, chunk_steps=300)
    assert MDNTrainConfig(steps=600, chunk_steps=300).steps == 600


@pytest.mark.parametrize("preset", ["carracing-paper", "carracing-cpu-small", "cpu-small"])
def test_encoder_flops_match_xla_s_count(preset):
    """VAEConfig.encoder_flops counts multiply-adds; XLA's cost analysis also counts biases and ReLUs (< 2 %)."""
    import jax
    import jax.numpy as jnp

    from worldmodels_jax.models.vae import ConvVAE, init_vae

    config = dataclasses.replace(get_preset(preset).vae, conv_impl="xla")
    params = init_vae(jax.random.PRNGKey(0), config)
    encode = jax.jit(lambda p, x: ConvVAE(config).apply({"params": p}, x, method=ConvVAE.encode))
    cost = encode.lower(params, jnp.zeros((1, 64, 64, 3), jnp.float32)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    assert config.encoder_flops <= cost["flops"] <= 1.02 * config.encoder_flops


def test_cpu_devices_for_splits_episodes_only_for_a_large_v_in_the_loop():
    from worldmodels_jax.pipeline import cpu_devices_for

    assert cpu_devices_for(get_preset("carracing-paper"), cores=2) == 2  # V: 29.6 MFLOP per frame
    assert cpu_devices_for(get_preset("carracing-paper-cpu"), cores=8) == 8
    assert cpu_devices_for(get_preset("cpu-small"), cores=2) == 2  # 8.1 MFLOP
    assert cpu_devices_for(get_preset("carracing-cpu-small"), cores=2) == 1  # 2.4 MFLOP: one device is busy enough
    assert cpu_devices_for(get_preset("takecover-cpu-small"), cores=2) == 1  # C trains in the dream
    assert cpu_devices_for(get_preset("takecover-paper"), cores=2) == 1
    # at least 16 of a generation's episodes per device: cpu-small runs 32 x 2, the paper-cpu preset 32 x 4
    assert cpu_devices_for(get_preset("cpu-small"), cores=64) == 4
    assert cpu_devices_for(get_preset("carracing-paper-cpu"), cores=64) == 8
    assert cpu_devices_for(get_preset("carracing-paper"), cores=256) == 64


def test_bad_cpu_devices_is_a_clear_error(tmp_path, capsys):
    from worldmodels_jax.cli import main

    for bad in ("two", "0"):
        assert main(["run", "--preset", "tiny", "--out", str(tmp_path / "run"), "--cpu-devices", bad]) == 2
        assert f"--cpu-devices must be 'auto' or an int >= 1, got '{bad}'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_carracing_cpu_small_paper_c_changes_only_cs_inputs_and_search_to_the_papers():
    paper_c, small, paper = (_flat(dataclasses.asdict(get_preset(name, "CarRacing-v0"))) for name in
                             ("carracing-cpu-small-paper-c", "carracing-cpu-small", "carracing-paper"))
    changed = {key for key in small if small[key] != paper_c[key]}
    assert changed == {"preset", "controller.z_sample", "controller.normalize_features", "controller.sigma_fan_in",
                       "controller.es.sigma_init", "controller.es.l2_coef"}
    assert all(paper_c[key] == paper[key] for key in changed - {"preset"})
    assert (paper_c["controller.z_sample"], paper_c["controller.normalize_features"], paper_c["controller.sigma_fan_in"],
            paper_c["controller.es.sigma_init"], paper_c["controller.es.l2_coef"]) == (True, False, 0, 0.1, 0.01)
    assert get_preset("cpu-small-paper-c", "CarRacing-v0").preset == "carracing-cpu-small-paper-c"
