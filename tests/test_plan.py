"""The run's objects are built once (`app.plan`): validate_config returns the Plan (process,
sampler call, data facts, network facts, device) that main.py hands to every mode, and a mode
handed that Plan builds none of them again from the config; the checks of a network's config
fields follow the family its registration declares, not a list of names."""
import sys
from collections import Counter

import pytest
import torch
from conftest import tiny_toy_config
from torch import nn

from sde_diffusion.app import config as app_config
from sde_diffusion.app.config import ConfigError
from sde_diffusion.app.controllable_modes import run_controllable
from sde_diffusion.app.modes import run_eval, run_likelihood, run_sample, run_study_mode
from sde_diffusion.app.train import train
from sde_diffusion.app.validation import validate_config
from sde_diffusion.models import registry
from sde_diffusion.models.registry import family_members, network_facts, register_model

BUILDERS = (app_config.build_sde, app_config.sampler_spec, app_config.build_model, app_config.build_denoiser,
            app_config.data_shape, app_config.is_image_data, app_config.select_device)


def calls(run) -> Counter:
    """{builder name: calls} while `run()` runs, however the callers imported the builders."""
    names, counts = {builder.__code__: builder.__name__ for builder in BUILDERS}, Counter()

    def profile(frame, event, arg):
        if event == "call" and frame.f_code in names:
            counts[names[frame.f_code]] += 1
    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return counts


def toy_config(**study):
    config = tiny_toy_config(8, snapshot_sampling=True, num_snapshot_samples=8)
    config.sampling.update(steps=4, num_samples=8, batch_size=8)
    config.eval.update(num_samples=8, bpd_num_images=4)
    config.study.update(num_samples=16, nfe=(4,), samplers=("ddim",), **study)
    return config


@pytest.fixture(scope="module")
def toy_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("plan") / "toy"
    train(toy_config(), workdir)
    return workdir


MODES = {"sample": run_sample, "eval": run_eval, "likelihood": run_likelihood, "study": run_study_mode}


@pytest.mark.parametrize("mode", ["train", "sample", "eval", "likelihood", "study", "study_oracle"])
def test_the_process_and_the_sampler_call_are_built_once_per_run(mode, toy_workdir, tmp_path):
    config = toy_config(oracle=mode == "study_oracle")
    plans = []
    checked = calls(lambda: plans.append(validate_config(config, mode.split("_")[0])))
    assert checked["build_sde"] == 1 and checked["sampler_spec"] == 1 and checked["select_device"] <= 2, checked
    plan = plans[0]
    run = train if mode == "train" else MODES[mode.split("_")[0]]
    workdir = tmp_path if mode == "train" else toy_workdir
    ran = calls(lambda: run(config, workdir, plan=plan))
    # what is left is per network: the one trained or loaded, and the Denoiser of each view of it
    assert set(ran) <= {"build_model", "build_denoiser"}, (mode, ran)
    assert ran["build_model"] == (0 if mode == "study_oracle" else 1), (mode, ran)


def test_inpaint_takes_the_plan_too(tmp_path):
    """The image modes: the SDE, the sampler call and the data facts of the Plan, nothing rebuilt."""
    from configs.vp_digits import get_config
    from sde_diffusion.files.checkpoints import save_checkpoint, snapshot_path
    from sde_diffusion.training.ema import EMA

    config = get_config()
    config.model.nf, config.model.ch_mult, config.model.attn_resolutions = 32, (1,), ()
    config.controllable.update(num_images=2)
    config.sampling.update(steps=3, batch_size=4)
    plan = validate_config(config, "inpaint")
    assert plan.data.images and plan.data.shape == (1, config.data.image_size, config.data.image_size)
    model = plan.build_network()
    save_checkpoint(snapshot_path(tmp_path, 1), {"model": model.state_dict(), "ema": EMA(model, 0.9).state_dict(),
                                                 "step": 1})
    ran = calls(lambda: run_controllable(config, tmp_path, "inpaint", plan=plan))
    assert ran == Counter(build_model=1, build_denoiser=1), ran


def test_a_mode_called_with_a_config_alone_makes_its_plan(toy_workdir):
    ran = calls(lambda: run_sample(toy_config(), toy_workdir))
    assert ran["build_sde"] == 1 and ran["sampler_spec"] == 1, ran


def test_networks_declare_their_family_at_registration():
    assert family_members("score_sde") == ["ddpm", "ncsnpp"]
    assert family_members("edm") == ["dhariwal_unet", "song_unet"]
    assert network_facts("mlp") == registry.NetworkFacts(images=False, family="")
    with pytest.raises(ValueError, match="unknown network family 'theirs'"):
        register_model("x", family="theirs")


@pytest.fixture
def own_registry(monkeypatch):
    """Registrations in a test that end with it."""
    monkeypatch.setattr(registry, "MODELS", registry.Registry("model"))
    monkeypatch.setattr(registry, "NETWORK_FACTS", {})


@pytest.mark.parametrize("family, message", [("edm", "config.model.channel_mult"), ("score_sde", "config.model.nf"),
                                             ("", None)])
def test_a_plugin_network_of_a_family_gets_that_familys_checks(own_registry, family, message):
    from configs.vp_digits import get_config

    @register_model("their_unet", images=True, family=family)
    class TheirUNet(nn.Module):
        def forward(self, x, labels):
            return torch.zeros_like(x)

    config = get_config()
    config.model.name = "their_unet"
    config.model.nf = 0  # the score_sde family's width; EDM's are model_channels and channel_mult
    if message is None:
        assert validate_config(config, "sample").network == registry.NetworkFacts(images=True, family="")
    else:
        with pytest.raises(ConfigError, match=message):
            validate_config(config, "sample")
