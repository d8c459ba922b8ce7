"""diffusers pipelines beyond the shared fixture, written in the test by diffusers' own code: other
prediction types (sample, v_prediction), beta schedules (scaled_linear, squaredcos_cap_v2,
trained_betas), timestep spacings and UNet2DModel options (resnet resampling, scale-shift time
conditioning, Fourier time embedding, class labels). `load_pipeline` and the samplers called as
docs/diffusers.md says reproduce diffusers' UNet and its DDIM, DPM-Solver++(2M) and Euler loops."""
import numpy as np
import pytest
import torch

import sde_diffusion  # noqa: F401
from sde_diffusion.published.diffusers import load_pipeline
from sde_diffusion.sampling import sample

diffusers = pytest.importorskip("diffusers", reason='the diffusers package is not installed (pip install -e ".[diffusers]")')
TOLERANCE = 1e-4  # relative to the output's scale

UNETS = {
    "attention": dict(sample_size=8, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                      down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D")),
    "resnet_resampling": dict(sample_size=8, block_out_channels=(16, 16, 32), layers_per_block=2, norm_num_groups=8,
                              down_block_types=("ResnetDownsampleBlock2D",) * 2 + ("AttnDownBlock2D",),
                              up_block_types=("AttnUpBlock2D",) + ("ResnetUpsampleBlock2D",) * 2,
                              resnet_time_scale_shift="scale_shift", attention_head_dim=None),
    "fourier_classes": dict(sample_size=8, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                            down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                            time_embedding_type="fourier", flip_sin_to_cos=False, num_class_embeds=3),
}
SCHEDULES = {
    "v_scaled_linear": dict(prediction_type="v_prediction", beta_schedule="scaled_linear", beta_start=0.00085,
                            beta_end=0.012),
    "sample_cosine": dict(prediction_type="sample", beta_schedule="squaredcos_cap_v2"),
    "eps_trained": dict(prediction_type="epsilon", trained_betas=np.linspace(2e-4, 0.03, 1000).tolist()),
}
# (scheduler, spacing) -> (method, options, schedule, latent scaled by sigma(T))
CALLS = {
    ("ddim", "trailing"): ("ddim", {}, "diffusers_ddim_trailing", False),
    ("dpmpp2m", "leading"): ("dpm_solver++", {"order": 2}, "diffusers_dpm_leading", False),
    ("euler", "linspace"): ("ddim", {}, "diffusers_euler_linspace", True),
    ("euler", "leading"): ("ddim", {}, "diffusers_euler_leading", False),
}


def make_pipeline(folder, unet_name, schedule_name, seed=0):
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(**UNETS[unet_name])
    with torch.no_grad():  # move every weight so that no layer is zero (as the shared fixture)
        for parameter in unet.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    scheduler = diffusers.DDPMScheduler(**SCHEDULES[schedule_name])
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return unet.eval(), scheduler


def diffusers_loop(unet, scheduler_config, scheduler, spacing, steps, noise, class_labels=None):
    """What a diffusers user runs: x = noise * init_noise_sigma; scale, predict, step."""
    kind, options = {"ddim": (diffusers.DDIMScheduler, dict(clip_sample=False)),
                     "dpmpp2m": (diffusers.DPMSolverMultistepScheduler, {}),
                     "euler": (diffusers.EulerDiscreteScheduler, {})}[scheduler]
    scheduler = kind.from_config(scheduler_config, timestep_spacing=spacing, **options)
    scheduler.set_timesteps(steps)
    x = noise * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            output = unet(scheduler.scale_model_input(x, t), t, class_labels=class_labels).sample
            x = scheduler.step(output, t, x).prev_sample
    return x


def relative_error(ours, theirs) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


# Calls left out, for what diffusers' own loop does there: Fourier time embeddings take log(t), so
# at timestep 0 (the Euler grids' last) diffusers gives NaN; Euler on the cosine schedule steps
# x / alpha, up to 2e4 at T, in float32: diffusers' float32 and float64 runs differ by 7e-4
# (ours: 1e-4 from its float64 run; test_cosine_euler_is_float32_rounding).
LEFT_OUT = {"fourier_classes": {("euler", "linspace"), ("euler", "leading")},
            "resnet_resampling": {("euler", "linspace")}}


@pytest.mark.parametrize("unet_name, schedule_name", [("attention", "v_scaled_linear"),
                                                      ("resnet_resampling", "sample_cosine"),
                                                      ("fourier_classes", "eps_trained")])
def test_generated_pipelines_reproduce_diffusers(tmp_path, unet_name, schedule_name):
    unet, scheduler = make_pipeline(tmp_path / "pipeline", unet_name, schedule_name)
    pipeline = load_pipeline(tmp_path / "pipeline")
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(2, 3, 8, 8, generator=generator)
    class_labels = torch.tensor([0, 2]) if unet.config.num_class_embeds else None
    t_int = torch.tensor([999, 17])
    with torch.no_grad():
        theirs = unet(noise, t_int, class_labels=class_labels).sample
        ours = (pipeline.network(noise, t_int.float()) if class_labels is None
                else pipeline.network(noise, t_int.float(), class_labels))
    assert relative_error(ours, theirs) < TOLERANCE
    denoiser = pipeline.denoiser()
    for (name, spacing), (method, options, schedule, scaled) in CALLS.items():
        if (name, spacing) in LEFT_OUT.get(unet_name, ()):
            continue
        for steps in (10, 25):
            theirs = diffusers_loop(unet, scheduler.config, name, spacing, steps, noise, class_labels)
            z = noise * pipeline.sde.prior_std if scaled else noise
            model = denoiser if class_labels is None else denoiser.map(
                lambda denoise: lambda x, t: denoise(x, t, class_labels))
            with torch.no_grad():
                ours, _ = sample(model, pipeline.sde, z.shape, method, steps=steps, schedule=schedule, z=z, **options)
            assert relative_error(ours, theirs) < TOLERANCE, (name, spacing, steps)


def test_cosine_euler_is_float32_rounding(tmp_path):
    """Where diffusers' Euler loses float32 precision (cosine schedule, x / alpha up to 2e4), this
    package's float32 run is closer to diffusers' float64 run than diffusers' float32 run is."""
    unet, scheduler = make_pipeline(tmp_path / "pipeline", "resnet_resampling", "sample_cosine")
    pipeline = load_pipeline(tmp_path / "pipeline")
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    theirs_32 = diffusers_loop(unet, scheduler.config, "euler", "linspace", 10, noise)
    theirs_64 = diffusers_loop(unet.double(), scheduler.config, "euler", "linspace", 10, noise.double())
    z = noise * pipeline.sde.prior_std
    with torch.no_grad():
        ours, _ = sample(pipeline.denoiser(), pipeline.sde, z.shape, "ddim", steps=10,
                         schedule="diffusers_euler_linspace", z=z)
    assert relative_error(ours.double(), theirs_64) < 2e-4
    assert relative_error(ours.double(), theirs_64) < relative_error(theirs_32.double(), theirs_64) / 3


def test_saved_pipeline_is_read_by_diffusers_and_by_us(tmp_path):
    """save_pipeline writes what DDPMPipeline.from_pretrained loads and samples, with the same
    network and betas: its UNet gives the same outputs, and reading it back gives the same process."""
    from sde_diffusion.published.diffusers import DiffusersError, save_pipeline

    make_pipeline(tmp_path / "pipeline", "attention", "v_scaled_linear")
    pipeline = load_pipeline(tmp_path / "pipeline")
    folder = save_pipeline(pipeline.network, pipeline.sde, tmp_path / "exported", pipeline.parameterization)
    theirs = diffusers.DDPMPipeline.from_pretrained(folder)
    assert theirs.scheduler.config.prediction_type == "v_prediction"
    torch.testing.assert_close(theirs.scheduler.alphas_cumprod.double(), pipeline.sde.alphas_cumprod, rtol=0, atol=0)
    images = theirs(batch_size=2, num_inference_steps=3, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 8, 8, 3) and np.isfinite(images).all()
    again = load_pipeline(folder)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([5.0, 900.0])
    with torch.no_grad():
        torch.testing.assert_close(again.network(x, t), pipeline.network(x, t), rtol=0, atol=0)
    assert again.parameterization == "v" and repr(again.sde) == repr(pipeline.sde)
    with pytest.raises(DiffusersError, match="exists"):
        save_pipeline(pipeline.network, pipeline.sde, folder)
    with pytest.raises(DiffusersError) as error:
        save_pipeline(torch.nn.Conv2d(3, 3, 1), pipeline.sde, tmp_path / "other")
    assert "a Conv2d network cannot be written" in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "other").exists()
