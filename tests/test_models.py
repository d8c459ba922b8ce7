"""The model registry (including entry-point plug-ins) and the network-to-score wrapper."""
import ml_collections
import pytest
import torch
from torch import nn

from sde_diffusion.training import losses
from sde_diffusion.models import denoiser_from_model, get_model, get_model_class, model_names, registry
from sde_diffusion.processes.sdes import CONTINUOUS_LABEL_SCALE
from sde_diffusion.processes.sdes import SubVPSDE, VESDE, VPSDE

from conftest import mixture_2d


class PluginNet(nn.Module):
    """Stands in for a third-party network."""

    def __init__(self, scale):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    @classmethod
    def from_config(cls, config):
        return cls(config.model.scale)

    def forward(self, x, labels):
        return self.scale * x


class FakeEntryPoint:
    def __init__(self, name, target):
        self.name, self.target = name, target

    def load(self):
        return self.target


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown model 'unet9000'; known: .*ddpm.*mlp.*ncsnpp"):
        get_model_class("unet9000")


def test_entry_point_plugin_is_found_by_name(monkeypatch):
    def entry_points(group):
        assert group == "sde_diffusion.models"
        return [FakeEntryPoint("theirs", PluginNet)]

    monkeypatch.setattr(registry.metadata, "entry_points", entry_points)
    monkeypatch.delitem(registry.MODELS, "theirs", raising=False)
    assert "theirs" in model_names()
    config = ml_collections.ConfigDict({"model": {"name": "theirs", "scale": 3.0}})
    model = get_model(config)
    assert isinstance(model, PluginNet) and model.scale.item() == 3.0
    registry.MODELS.pop("theirs")


def test_discrete_vp_labels_are_the_chain_indices_at_chain_times():
    sde = VPSDE(N=1000)
    index = torch.arange(1000)
    labels = sde.noise_labels(sde.chain.time(index), continuous=False)
    torch.testing.assert_close(labels, index.double(), atol=1e-6, rtol=0)


def test_ve_labels_are_the_noise_levels():
    sde = VESDE(sigma_min=0.01, sigma_max=50, N=100)
    index = torch.arange(100)
    torch.testing.assert_close(sde.noise_labels(sde.chain.time(index)), sde.chain.sigmas, rtol=1e-12, atol=0)


def test_ddpm_loss_feeds_the_network_integer_labels():
    """DDPM trains eps_theta(x_i, i): through the wrapper the discrete loss must hand the
    network exactly the integers 0..N-1."""
    seen = []

    def network(x, labels):
        seen.append(labels)
        return torch.zeros_like(x)

    sde = VPSDE(N=1000)
    score_fn = denoiser_from_model(network, sde, continuous=False)
    losses.ddpm_loss(score_fn, sde, torch.randn(4096, 2, dtype=torch.float64),
                     generator=torch.Generator().manual_seed(0))
    labels = seen[0]
    torch.testing.assert_close(labels, labels.round(), atol=1e-6, rtol=0)
    assert labels.min() >= 0 and labels.max() <= 999 and len(labels.unique()) > 900


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(sigma_max=10.0)], ids=["vp", "subvp", "ve"])
def test_wrapping_the_exact_network_gives_the_exact_score(sde):
    """A 'noise' network that predicts the exact noise (or a 'score' network that returns the exact
    score, for VE) wrapped back gives the oracle's score: the wrapper's labels and scaling are
    each other's inverse."""
    mixture = mixture_2d()
    x = torch.randn(64, 2, dtype=torch.float64) * 3
    t = torch.rand(64, dtype=torch.float64) * 0.98 + 0.01

    def exact_network(x_in, labels):
        if isinstance(sde, VESDE):  # labels are sigma(t)
            times = torch.log(labels / sde.sigma_min) / torch.log(torch.tensor(sde.sigma_max / sde.sigma_min))
            return mixture.score(x_in, sde, times)
        times = labels / CONTINUOUS_LABEL_SCALE
        return -sde.marginal_coefs(times)[1][:, None] * mixture.score(x_in, sde, times)

    score_fn = denoiser_from_model(exact_network, sde).score
    # float64 round-off of the sigma -> t inversion, amplified by the sharp components at small t
    torch.testing.assert_close(score_fn(x, t), mixture.score(x, sde, t), rtol=1e-5, atol=1e-6)


def test_bad_parameterization_is_refused():
    with pytest.raises(ValueError, match="parameterization"):
        denoiser_from_model(lambda x, labels: x, VPSDE(), parameterization="epsilon")
