"""Network outputs and the score (`models.parameterization`, `models.preconditioning`): conversions that
round-trip to float precision on every process, a network predicting each quantity exactly gives
the exact score, and the denoising loss is lowest at the exact score on the new processes."""
import pytest
import torch

from conftest import mixture_2d
from sde_diffusion.training.losses import dsm_loss
from sde_diffusion.models.parameterization import from_noise, path_coefs, to_noise
from sde_diffusion.models.preconditioning import EDM_SIGMA_DATA, denoiser_from_model
from sde_diffusion.processes.sdes import get_sde

SDES = {name: get_sde(name) for name in ("vpsde", "subvpsde", "vesde", "edm", "rectified_flow", "cosine_vp")}
KINDS = ("noise", "data", "v", "velocity", "score")


def times(sde, count, generator):
    low = getattr(sde, "t_min", 0.0) or 1e-2
    return low + torch.rand(count, generator=generator, dtype=torch.float64) * (sde.T * 0.98 - low)


@pytest.mark.parametrize("name", SDES)
def test_conversions_round_trip(name):
    sde, generator = SDES[name], torch.Generator().manual_seed(0)
    t = times(sde, 64, generator)
    x0, eps = (torch.randn(64, 3, generator=generator, dtype=torch.float64) for _ in range(2))
    coefs = path_coefs(sde, t, x0)
    x_t = coefs.alpha * x0 + coefs.sigma * eps
    assert torch.allclose(from_noise("data", eps, x_t, coefs), x0, atol=1e-9)
    quantity, kind = eps, "noise"
    for next_kind in ("data", "v", "velocity", "score", "noise"):  # eps -> x0 -> v -> velocity -> score -> eps
        quantity = from_noise(next_kind, to_noise(kind, quantity, x_t, coefs), x_t, coefs)
        kind = next_kind
    torch.testing.assert_close(quantity, eps, rtol=1e-9, atol=1e-9)
    # the velocity is the path's time derivative: d/dt (alpha x0 + sigma eps) with x0, eps fixed
    h = 1e-6
    up, down = path_coefs(sde, t + h, x0), path_coefs(sde, t - h, x0)
    numeric = ((up.alpha - down.alpha) * x0 + (up.sigma - down.sigma) * eps) / (2 * h)
    torch.testing.assert_close(from_noise("velocity", eps, x_t, coefs), numeric, rtol=1e-5, atol=1e-6)


class _Exact(torch.nn.Module):
    """A 'network' predicting `kind` exactly: the oracle's noise converted."""

    def __init__(self, mixture, sde, kind):
        super().__init__()
        self.mixture, self.sde, self.kind, self.time = mixture, sde, kind, None

    def forward(self, x, labels):
        t = self.time
        coefs = path_coefs(self.sde, t, x)
        if self.kind == "edm":  # x is c_in y; F = (D - c_skip y) / c_out, D the exact denoiser
            noise = coefs.sigma / coefs.alpha
            total = noise ** 2 + EDM_SIGMA_DATA ** 2
            y = x * total.sqrt()
            eps = -coefs.sigma * self.mixture.score_fn(self.sde)(coefs.alpha * y, t)
            denoised = y - noise * eps
            c_skip, c_out = EDM_SIGMA_DATA ** 2 / total, noise * EDM_SIGMA_DATA / total.sqrt()
            return (denoised - c_skip * y) / c_out
        eps = -coefs.sigma * self.mixture.score_fn(self.sde)(x, t)
        return from_noise(self.kind, eps, x, coefs)


@pytest.mark.parametrize("name", SDES)
@pytest.mark.parametrize("kind", KINDS + ("edm",))
def test_a_network_predicting_each_quantity_gives_the_exact_score(name, kind):
    sde, mixture, generator = SDES[name], mixture_2d(), torch.Generator().manual_seed(1)
    t = times(sde, 32, generator)
    x = mixture.sample(32, generator=generator)
    alpha, sigma = sde.marginal_coefs(t)
    x_t = alpha[:, None] * x + sigma[:, None] * torch.randn(32, 2, generator=generator, dtype=torch.float64)
    network = _Exact(mixture, sde, kind)
    network.time = t
    score = denoiser_from_model(network, sde, parameterization=kind).score(x_t, t)
    torch.testing.assert_close(score, mixture.score_fn(sde)(x_t, t), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("name", ["edm", "rectified_flow", "cosine_vp"])
def test_denoising_loss_is_lowest_at_the_exact_score(name):
    sde, mixture = SDES[name], mixture_2d()
    x = mixture.sample(20000, generator=torch.Generator().manual_seed(2))
    exact = mixture.score_fn(sde)

    def perturbed(x_t, t):
        return exact(x_t, t) * 1.05 + 0.02

    eps = getattr(sde, "t_min", 1e-3) or 1e-3
    losses = [dsm_loss(score_fn, sde, x, eps=eps, generator=torch.Generator().manual_seed(3)).item()
              for score_fn in (exact, perturbed)]
    assert losses[0] < losses[1], losses


def test_unknown_parameterization_is_named():
    with pytest.raises(ValueError, match="parameterization must be one of score, noise, data, v, velocity, edm"):
        denoiser_from_model(torch.nn.Identity(), SDES["vpsde"], parameterization="x_start")


@pytest.mark.parametrize("name", ["vpsde", "edm", "rectified_flow", "cosine_vp"])
@pytest.mark.parametrize("loss", ["edm_loss", "flow_matching_loss"])
def test_edm_and_flow_matching_losses_are_lowest_at_the_exact_score(name, loss):
    from sde_diffusion.training import losses

    sde, mixture = SDES[name], mixture_2d()
    x = mixture.sample(20000, generator=torch.Generator().manual_seed(4))
    exact = mixture.score_fn(sde)
    eps = getattr(sde, "t_min", 1e-3) or 1e-3
    values = []
    for scale in (1.0, 1.05, 0.95):
        score_fn = (lambda s: (lambda x_t, t: exact(x_t, t) * s))(scale)
        values.append(getattr(losses, loss)(score_fn, sde, x, eps=eps, generator=torch.Generator().manual_seed(5)).item())
    assert values[0] < min(values[1:]), values
