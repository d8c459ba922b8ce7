"""The Denoiser (sde_diffusion.processes.denoiser): D, the score and the noise are one another by Tweedie's
formula, whichever the source computes; the preconditioning table's rows give the exact D."""
import pytest
import torch

from conftest import mixture_2d
from sde_diffusion.processes.denoiser import CountedDenoiser, Denoiser, as_denoiser
from sde_diffusion.models.preconditioning import coefficients, edm_coefficients
from sde_diffusion.processes.sdes import get_sde

SDES = {name: get_sde(name) for name in ("vpsde", "subvpsde", "vesde", "edm", "rectified_flow", "cosine_vp")}


def batch(sde, generator):
    low = getattr(sde, "t_min", 0.0) or 1e-2
    t = low + torch.rand(64, generator=generator, dtype=torch.float64) * (sde.T * 0.98 - low)
    x0 = mixture_2d().sample(64, generator=generator)
    alpha, sigma = sde.marginal_coefs(t)
    return alpha[:, None] * x0 + sigma[:, None] * torch.randn(64, 2, generator=generator, dtype=torch.float64), t


@pytest.mark.parametrize("name", SDES)
def test_a_score_source_and_its_denoiser_agree_on_every_quantity(name):
    """Wrap the exact score; its D, turned back into a native-D Denoiser, gives the same score and
    noise (each conversion is the other's inverse) and D is E[x_0 | x_t] = (x + sigma^2 s) / alpha."""
    sde, generator = SDES[name], torch.Generator().manual_seed(0)
    x, t = batch(sde, generator)
    score_fn = mixture_2d().score_fn(sde)
    from_score = as_denoiser(score_fn, sde)
    native = Denoiser(sde, lambda x, t: from_score(x, t))
    alpha, sigma = (c[:, None] for c in sde.marginal_coefs(t))
    torch.testing.assert_close(from_score(x, t), (x + sigma ** 2 * score_fn(x, t)) / alpha)
    torch.testing.assert_close(native.score(x, t), score_fn(x, t), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(native.noise(x, t), -sigma * score_fn(x, t), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(from_score.noise(x, t), native.noise(x, t), rtol=1e-9, atol=1e-9)
    assert as_denoiser(native, sde) is native


def test_counting_counts_source_calls_whatever_is_asked():
    sde = SDES["vpsde"]
    calls = []
    counted = CountedDenoiser(Denoiser(sde, lambda x, t: calls.append(1) or torch.zeros_like(x)))
    x = torch.randn(4, 2)
    counted(x, 0.5), counted.score(x, 0.5), counted.noise(x, torch.full((4,), 0.5))
    assert counted.calls == 3 == len(calls)
    with pytest.raises(ValueError, match="exactly one"):
        Denoiser(sde)


@pytest.mark.parametrize("name", SDES)
@pytest.mark.parametrize("kind", ["score", "noise", "data", "v", "velocity", "edm"])
def test_each_row_of_the_table_is_affine_and_recovers_x0_from_its_exact_target(name, kind):
    """With F the row's exact target for (x_0, eps), c_skip x_t + c_out F(c_in x_t) = x_0: here F is
    built from x_0 and eps directly (EDM's F = (x_0 - c_skip y) / c_out in y = x / alpha)."""
    sde, generator = SDES[name], torch.Generator().manual_seed(1)
    t = batch(sde, generator)[1]
    x0 = torch.randn(64, 2, generator=generator, dtype=torch.float64)
    eps = torch.randn(64, 2, generator=generator, dtype=torch.float64)
    from sde_diffusion.models.parameterization import from_noise, path_coefs

    c = path_coefs(sde, t, x0)
    x_t = c.alpha * x0 + c.sigma * eps
    if kind == "edm":
        c_skip, c_out, _, _ = edm_coefficients(c.sigma / c.alpha)
        target = (x0 - c_skip * x_t / c.alpha) / c_out
    else:
        target = from_noise(kind, eps, x_t, c)
    row = coefficients(kind, sde, t, x_t)
    torch.testing.assert_close(row.c_skip * x_t + row.c_out * target, x0, rtol=1e-8, atol=1e-8)
    if kind == "edm":  # unit-variance input for data of std 0.5: c_in^2 (alpha^2 0.25 + sigma^2) = 1
        torch.testing.assert_close(row.c_in ** 2 * (c.alpha ** 2 * 0.25 + c.sigma ** 2), torch.ones_like(c.alpha))
