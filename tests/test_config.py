"""Configs: every shipped file loads and validates, builds the objects it names, and each bad
value stops with an error naming its field."""
import importlib.util
from pathlib import Path

import pytest
import torch

from sde_diffusion.training import losses
from sde_diffusion.app.config import ConfigError, build_loss, build_sde, data_shape, sampler_spec
from sde_diffusion.app.validation import validate_config
from sde_diffusion.sampling import sample
from sde_diffusion.processes.sdes import SubVPSDE, VESDE, VPSDE

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
# every config a user can name: the files of configs/ with a get_config() (not the shared defaults,
# nor configs/workdir.py, which reads a workdir's stored config: tests/test_reading_modes.py)
METHOD_CONFIGS = sorted(path.stem for path in CONFIG_DIR.glob("*.py") if "def get_config():" in path.read_text())


def load_config(name):
    spec = importlib.util.spec_from_file_location(name, CONFIG_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("name", METHOD_CONFIGS)
def test_shipped_configs_validate(name, tmp_path):
    config = load_config(name)
    if config.training.get("loss") == "reflow":  # a teacher is the user's own: refused without, one stands in
        with pytest.raises(ConfigError, match="config.training.init_from: training.loss=reflow makes its pairs"):
            validate_config(config)
        config.training.init_from = str(tmp_path)
    validate_config(config)


@pytest.mark.parametrize("name, sde_type, continuous", [
    ("vp_cifar10", VPSDE, True), ("subvp_cifar10", SubVPSDE, True), ("ve_cifar10", VESDE, True),
    ("ddpm_cifar10", VPSDE, False), ("ncsn_cifar10", VESDE, False)])
def test_cifar10_configs_name_their_method(name, sde_type, continuous):
    config = load_config(name)
    assert type(build_sde(config)) is sde_type
    assert config.training.continuous is continuous
    assert data_shape(config) == (3, 32, 32)


def test_ddpm_config_has_the_papers_hyper_parameters():
    config = load_config("ddpm_cifar10")
    sde = build_sde(config)
    assert sde.N == 1000
    torch.testing.assert_close(sde.chain.betas[[0, -1]], torch.tensor([1e-4, 0.02], dtype=torch.float64))
    assert (config.optim.lr, config.optim.warmup, config.optim.grad_clip) == (2e-4, 5000, 1.0)
    assert (config.training.batch_size, config.model.dropout, config.model.ema_rate) == (128, 0.1, 0.9999)
    assert (config.model.nf, tuple(config.model.ch_mult), config.model.num_res_blocks) == (128, (1, 2, 2, 2), 2)


def test_edm_cifar10_has_edms_ddpmpp_recipe():
    """Karras et al. 2022, table 7 (DDPM++, no augmentation): EDM's SongUNet of 55.7M parameters, batch 512, lr 1e-3
    over a 10M-image ramp, EMA half-life 500k images, dropout 0.13, no flips; EDM's process,
    preconditioning, loss and sampler. fm_cifar10 is vp_cifar10 but for process, output, loss."""
    from sde_diffusion.app.config import build_model
    from sde_diffusion.models.edm_networks import SongUNet
    config = load_config("edm_cifar10")
    network = build_model(config)
    assert isinstance(network, SongUNet) and network.num_classes == 0  # EDM's own module, trained here
    assert sum(p.numel() for p in network.parameters()) == pytest.approx(55.73e6, rel=1e-3)
    assert (config.training.batch_size, config.optim.lr, config.optim.warmup) == (512, 1e-3, 19531)
    assert config.model.ema_rate ** (500_000 / 512) == pytest.approx(0.5)
    assert (config.model.dropout, config.data.random_flip, config.optim.grad_clip) == (0.13, False, 0.0)
    assert (config.training.sde, config.training.loss, config.model.parameterization) == ("edm", "edm", "edm")
    assert (config.sampling.method, config.sampling.steps) == ("heun", 18)
    flow, vp = load_config("fm_cifar10"), load_config("vp_cifar10")
    sections = [name for name, value in vp.items() if hasattr(value, "items")]
    differing = {f"{section}.{field}" for section in sections for field in vp[section]
                 if flow[section][field] != vp[section][field]}
    assert differing == {"training.sde", "training.loss", "model.parameterization", "sampling.method",
                         "sampling.steps"}
    # its sampler is dpm_solver++ at the velocity family's declared default, UniPC on the log-SNR grid
    from sde_diffusion.app.config import sampler_spec
    assert sampler_spec(flow).summary().startswith("dpm_solver++ order=3 unipc=True, 20 steps on the logsnr power=0.65 grid")


def test_discrete_losses_follow_the_sde():
    """The DDPM loss for discrete VP, the SMLD loss for discrete VE: each equals the library loss
    called directly with the same noise."""
    for name, direct in (("ddpm_cifar10", losses.ddpm_loss), ("ncsn_cifar10", losses.smld_loss)):
        config = load_config(name)
        sde = build_sde(config)
        x = torch.rand(4, 3)
        score_fn = lambda x, t: -x  # noqa: E731
        got = build_loss(config, sde)(score_fn, x, torch.Generator().manual_seed(0))
        want = direct(score_fn, sde, x, reduce_mean=config.training.reduce_mean,
                      generator=torch.Generator().manual_seed(0))
        assert torch.equal(got, want)


def test_sampler_spec_takes_the_fields_set_and_leaves_the_rest_to_the_sampler():
    config = load_config("vp_toy")
    spec = sampler_spec(config)
    assert (spec.method, spec.steps, spec.schedule) == ("pc", config.sampling.steps, "uniform")
    assert spec.eps == pytest.approx(1e-3, rel=1e-9)  # pc's declared end noise level is VP's at t = 1e-3
    assert spec.options == {"predictor": "euler_maruyama", "corrector": "none"}
    config.sampling.method = "dpm_solver++"  # pc's predictor and corrector are not its options
    spec = sampler_spec(config)  # vp_toy's MLP predicts the noise: that family's eta and grid, declared by the sampler
    assert spec.options == {"eta": 0.5} and spec.declared == ("eta",)
    assert (spec.schedule, spec.schedule_options, spec.grid_declared) == ("karras", {}, True)
    config.sampling.power, config.sampling.order = 0.8, 3
    spec = sampler_spec(config)
    assert spec.options == {"order": 3, "eta": 0.5} and (spec.schedule, spec.schedule_options) == ("logsnr", {"power": 0.8})
    config.sampling.method = "adaptive_sde"  # its own tolerances, not the ODE's
    config.sampling.power = None
    spec = sampler_spec(config)
    assert spec.options == {} and spec.schedule == "uniform"
    assert sample(lambda x, t: -x, VPSDE(), (8, 2), spec, generator=0)[1] < 200  # rtol 0.05: few steps


def test_a_schedule_option_the_grid_does_not_take_is_an_error():
    config = load_config("vp_toy")
    config.sampling.method, config.sampling.rho = "dpm_solver++", 5.0  # its grid is logsnr
    with pytest.raises(ConfigError, match="config.sampling.rho: the logsnr schedule"):
        validate_config(config)
    config.sampling.schedule = "karras"
    assert sampler_spec(config).schedule_options == {"rho": 5.0}


BAD_VALUES = [
    ("training.sde", "vpsdee", "training.sde"),
    ("model.name", "unet9000", "model.name"),
    ("sampling.method", "magic", "sampling.method"),
    ("sampling.predictor", "leapfrog", "sampling.predictor"),
    ("sampling.corrector", "hmc", "sampling.corrector"),
    ("data.dataset", "imagenet", "data.dataset"),
    ("training.batch_size", 0, "training.batch_size"),
    ("training.n_iters", -5, "training.n_iters"),
    ("sampling.steps", 0, "sampling.steps"),
    ("model.num_scales", 0, "model.num_scales"),
    ("optim.lr", 0.0, "optim.lr"),
    ("model.ema_rate", 1.0, "model.ema_rate"),
    ("model.sigma_min", -1.0, "model.sigma_min"),
    ("eval.bpd_trace", "approx", "eval.bpd_trace"),
    ("sampling.schedule", "cosine", "sampling.schedule"),
    ("sampling.rho", 0.0, "sampling.rho"),
    ("training.min_snr_gamma", -1.0, "training.min_snr_gamma"),
    ("training.min_snr_gamma", float("nan"), "training.min_snr_gamma"),
    ("training.time_sampling", "beta", "training.time_sampling"),
    ("eval.fid_reference", "val", "eval.fid_reference"),
    ("eval.seeds", (0, 1, 0), "eval.seeds"),
    ("eval.seeds", (0, -1), "eval.seeds"),
]


def test_min_snr_gamma_weights_the_noise_v_and_x0_losses_only():
    for name, fields in (("edm_toy", {}), ("fm_toy", {}), ("vp_toy", {"likelihood_weighting": True})):
        config = load_config(name)
        config.training.update(min_snr_gamma=5.0, **fields)
        with pytest.raises(ConfigError, match="config.training.min_snr_gamma"):
            validate_config(config)
    config = load_config("vp_toy")
    x, values = torch.randn(512, 2, generator=torch.Generator().manual_seed(0)), []
    for gamma in (0.0, 5.0):  # the config reaches the loss: weights min(SNR, 5) / SNR <= 1 lower it
        config.training.min_snr_gamma = gamma
        validate_config(config)
        loss = build_loss(config, build_sde(config))
        values.append(loss(lambda x, t: -x, x, torch.Generator().manual_seed(1)).item())
    assert values[1] < 0.9 * values[0]


def test_the_v_and_x0_losses_are_reached_from_the_config():
    """training.loss = "v" / "data" trains on the v / x_0 error: at the score of x_t's own
    scaling (-x / s^2 pulls every x_t to 0) the config's loss equals losses.prediction_loss with
    the same draws, and differs from the noise (dsm) loss; likelihood_weighting is dsm's only."""
    from sde_diffusion.training.losses import prediction_loss

    config, x = load_config("vp_toy"), torch.randn(512, 2, generator=torch.Generator().manual_seed(0))
    sde = build_sde(config)
    values = {}
    for kind in ("dsm", "v", "data"):
        config.training.loss = kind
        validate_config(config)
        values[kind] = build_loss(config, sde)(lambda x, t: -x, x, torch.Generator().manual_seed(1)).item()
        if kind != "dsm":
            direct = prediction_loss(lambda x, t: -x, sde, x, target=kind, reduce_mean=config.training.reduce_mean,
                                     generator=torch.Generator().manual_seed(1)).item()
            assert values[kind] == pytest.approx(direct, rel=1e-12)
            assert abs(values[kind] - values["dsm"]) > 0.05 * values["dsm"]
    config.training.update(loss="v", likelihood_weighting=True)
    with pytest.raises(ConfigError, match="config.training.likelihood_weighting"):
        validate_config(config)


@pytest.mark.parametrize("field, value, named", BAD_VALUES)
def test_bad_values_name_their_field(field, value, named):
    config = load_config("vp_toy")
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ConfigError, match=f"config.{named}"):
        validate_config(config)


def test_log_snr_schedules_need_a_positive_eps():
    config = load_config("vp_toy")
    config.sampling.schedule, config.sampling.eps = "logsnr", 0.0
    with pytest.raises(ConfigError, match="config.sampling.eps"):
        validate_config(config)


def test_resolution_the_network_cannot_take():
    config = load_config("vp_cifar10")
    config.data.image_size = 36  # four levels halve three times: needs a multiple of 8
    with pytest.raises(ConfigError, match="config.data.image_size"):
        validate_config(config)
    config = load_config("vp_cifar10")
    config.model.attn_resolutions = (12,)
    with pytest.raises(ConfigError, match="config.model.attn_resolutions"):
        validate_config(config)


def test_discrete_sub_vp_and_ancestral_sub_vp_are_refused():
    config = load_config("subvp_cifar10")
    config.training.continuous = False
    with pytest.raises(ConfigError, match="config.training.sde"):
        validate_config(config)
    config = load_config("subvp_cifar10")
    config.sampling.predictor = "ancestral"
    with pytest.raises(ConfigError, match="config.sampling.predictor"):
        validate_config(config)


def test_image_network_on_point_data_is_refused():
    config = load_config("vp_toy")
    config.model.name = "ddpm"
    with pytest.raises(ConfigError, match="config.model.name"):
        validate_config(config)


@pytest.mark.parametrize("name", ["vp_digits_cond", "vp_cifar10_cond"])
def test_conditional_configs_name_ten_classes(name):
    config = load_config(name)
    assert config.model.num_classes == 10 and config.training.cond_drop_prob == 0.1


CLASS_FIELD_ERRORS = [
    # (config, overrides, field named)
    ("vp_toy", {"model.num_classes": 2}, "model.num_classes"),             # checkerboard: no labels
    ("vp_digits_cond", {"model.num_classes": 8}, "model.num_classes"),     # digits have 10
    ("vp_digits_cond", {"model.num_classes": -1}, "model.num_classes"),
    ("vp_digits_cond", {"training.cond_drop_prob": 1.0}, "training.cond_drop_prob"),
    ("vp_digits_cond", {"sampling.labels": "10"}, "sampling.labels"),
    ("vp_digits_cond", {"sampling.labels": "1,x"}, "sampling.labels"),
    ("vp_digits_cond", {"sampling.guidance_scale": -0.5}, "sampling.guidance_scale"),
    ("vp_digits", {"sampling.labels": "3"}, "sampling.labels"),            # unconditional model
    ("vp_digits", {"sampling.guidance_scale": 1.0}, "sampling.guidance_scale"),
    ("vp_cifar10_cond", {"model.conditional": False}, "model.conditional"),
]


@pytest.mark.parametrize("name, overrides, named", CLASS_FIELD_ERRORS)
def test_class_fields_name_their_field(name, overrides, named):
    config = load_config(name)
    for field, value in overrides.items():
        section, key = field.split(".")
        config[section][key] = value
    with pytest.raises(ConfigError, match=f"config.{named}"):
        validate_config(config)


def test_labelled_toy_mixture_takes_a_conditional_model():
    config = load_config("vp_toy")
    config.data.dataset, config.model.num_classes, config.sampling.labels = "gmm", 8, "0,7"
    validate_config(config)


def test_an_option_of_another_sampler_on_the_command_line_is_an_error():
    """`method=ddim` with `sampling.order=3` given: ddim never reads order, so it is refused in
    one message naming the field, the chosen sampler's options and the sampler it belongs to;
    the options a config file sets for its own sampler (vp_toy: pc's predictor) do not count."""
    from sde_diffusion.app.config import check_sampler_options

    config = load_config("vp_toy")
    config.sampling.method, config.sampling.order = "ddim", 3
    with pytest.raises(ConfigError, match=r"config.sampling.order: sampler ddim has no option order "
                                          r"\(it takes eta; order is an option of dpm_solver\+\+\)"):
        check_sampler_options(config, {"sampling.method", "sampling.order"})
    check_sampler_options(config, {"sampling.method"})  # the file's pc options: not the user's doing
    config.sampling.order = None
    config.sampling.eta = 0.5
    check_sampler_options(config, {"sampling.method", "sampling.eta", "sampling.steps", "sampling.schedule"})
    config.sampling.method = "heun"
    with pytest.raises(ConfigError, match="config.sampling.eta: sampler heun"):
        check_sampler_options(config, {"sampling.eta"})


def test_eps_is_a_time_of_the_process_and_checked_against_its_range():
    """On EDM's process t is sigma (T = 80): ending at sigma = 2 is a valid call, beyond T not; on
    VP the range stays (0, 1)."""
    config = load_config("edm_toy")
    config.sampling.eps = 2.0
    validate_config(config)
    assert sampler_spec(config).end(build_sde(config)) == 2.0
    config.sampling.eps = 81.0
    with pytest.raises(ConfigError, match=r"config.sampling.eps: must lie in \(0, 80\), the times of the edm process"):
        validate_config(config)
    config = load_config("vp_toy")
    config.sampling.eps = 2.0
    with pytest.raises(ConfigError, match=r"config.sampling.eps: must lie in \(0, 1\)"):
        validate_config(config)
