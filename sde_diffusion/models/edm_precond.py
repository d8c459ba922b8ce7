"""EDM's preconditioned denoisers D(x; sigma) = c_skip x + c_out F(c_in x, c_noise) (Karras et al.
2022, table 1 and eq. 7) around a SongUNet / DhariwalUNet, as EDM's pickles hold them, and the
`Denoiser` of such a network under one of this package's SDEs.

In EDM's variables x = y + sigma n is the data plus noise of std sigma; a VP or VE process of
this package has x_t = alpha(t) y + s(t) n, the same thing scaled by alpha(t) with sigma =
s(t) / alpha(t): E[x_0 | x_t] = D(x_t / alpha; s / alpha).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..processes.denoiser import Denoiser
from ..processes.sdes import SDE
from ..utils import append_dims
from .edm_networks import NETWORKS
from .edm_unets import one_hot_or_none
from .preconditioning import edm_coefficients


class Preconditioned(nn.Module):
    """The network (`model`) behind D(x; sigma, class_labels); subclasses give the c_* of eq. 7."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 model_type: str = "DhariwalUNet", out_channels: Optional[int] = None, **model_kwargs):
        super().__init__()
        if model_type not in NETWORKS:
            raise ValueError(f"unknown EDM network {model_type!r}; known: {', '.join(NETWORKS)}")
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.model = NETWORKS[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                          out_channels=out_channels or img_channels, label_dim=label_dim,
                                          **model_kwargs)

    def coefficients(self, sigma: torch.Tensor):
        """(c_skip, c_out, c_in, c_noise) for sigma [B, 1, 1, 1] (c_noise [B, 1, 1, 1] too)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: Optional[torch.Tensor] = None):
        x = x.float()
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
        if self.label_dim:
            class_labels = (torch.zeros(1, self.label_dim, device=x.device) if class_labels is None
                            else class_labels.float().reshape(-1, self.label_dim))
        else:
            class_labels = None
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        output = self.model(c_in * x, c_noise.flatten(), class_labels)
        return c_skip * x + c_out * output[:, :self.img_channels].float()


class VPPrecond(Preconditioned):
    """The VP SDE with beta(t) = beta_min + beta_d t, labels (M - 1) t (Song et al., as EDM uses)."""

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, beta_d=19.9, beta_min=0.1,
                 M=1000, epsilon_t=1e-5, model_type="SongUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, **model_kwargs)
        self.beta_d, self.beta_min, self.M, self.epsilon_t = beta_d, beta_min, M, epsilon_t
        # the noise levels it was trained on, as EDM computes them (float32), which its sampler honours
        self.sigma_min, self.sigma_max = float(self.sigma(epsilon_t)), float(self.sigma(1))

    def sigma(self, t) -> torch.Tensor:
        """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * t ** 2 + self.beta_min * t).exp() - 1).sqrt()

    def time_of_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        # sigma(t)^2 = exp(beta_d t^2 / 2 + beta_min t) - 1, solved for t
        return ((self.beta_min ** 2 + 2 * self.beta_d * torch.log(1 + sigma ** 2)).sqrt() - self.beta_min) / self.beta_d

    def coefficients(self, sigma):
        return 1.0, -sigma, 1 / (sigma ** 2 + 1).sqrt(), (self.M - 1) * self.time_of_sigma(sigma)


class VEPrecond(Preconditioned):
    """The VE SDE: the network predicts the scaled noise, labels log(sigma / 2)."""

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0.02, sigma_max=100,
                 model_type="SongUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, **model_kwargs)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def coefficients(self, sigma):
        return 1.0, sigma, 1.0, torch.log(0.5 * sigma)


class EDMPrecond(Preconditioned):
    """EDM's own preconditioning (eq. 7 with sigma_data): unit-variance input and target."""

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0, sigma_max=float("inf"),
                 sigma_data=0.5, model_type="DhariwalUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, **model_kwargs)
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data

    def coefficients(self, sigma):
        return edm_coefficients(sigma, self.sigma_data)


class iDDPMPrecond(Preconditioned):  # noqa: N801 - EDM's class name, which its pickles carry
    """Improved DDPM (Nichol & Dhariwal 2021): the cosine schedule's M + 1 noise levels `u`; the
    label is the index of the nearest level, the network's second half of channels (variances)
    is dropped."""

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, C_1=0.001, C_2=0.008, M=1000,
                 model_type="DhariwalUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type,
                         out_channels=img_channels * 2, **model_kwargs)
        self.C_1, self.C_2, self.M = C_1, C_2, M
        u = torch.zeros(M + 1)
        for j in range(M, 0, -1):  # sigma_{j-1} from sigma_j and alpha_bar's ratio, clipped at C_1
            ratio = self._alpha_bar(j - 1) / self._alpha_bar(j)
            u[j - 1] = math.sqrt((u[j].item() ** 2 + 1) / max(ratio, C_1) - 1)
        self.register_buffer("u", u)
        self.sigma_min, self.sigma_max = float(u[M - 1]), float(u[0])

    def _alpha_bar(self, j: int) -> float:
        return math.sin(0.5 * math.pi * j / self.M / (self.C_2 + 1)) ** 2

    def coefficients(self, sigma):
        index = (sigma.reshape(-1, 1) - self.u.reshape(1, -1)).abs().argmin(dim=1)
        c_noise = (self.M - 1 - index).float().reshape(sigma.shape)
        return 1.0, -sigma, 1 / (sigma ** 2 + 1).sqrt(), c_noise


PRECONDITIONINGS = {cls.__name__: cls for cls in (VPPrecond, VEPrecond, EDMPrecond, iDDPMPrecond)}
# The SDE of this package whose marginals each preconditioning's noise levels describe.
SDE_OF = {"VPPrecond": "vpsde", "VEPrecond": "vesde", "EDMPrecond": "vesde", "iDDPMPrecond": "vesde"}


def edm_denoiser(network: nn.Module, sde: SDE, num_classes: int = 0) -> Denoiser:
    """The Denoiser of an EDM network (a `Preconditioned`) under `sde` (module docstring): its D
    at the unscaled x / alpha and noise level sigma / alpha. Class labels are indices [B]; index
    `num_classes` (this package's "no label") and None give EDM's unconditional input, the zero
    vector. Its family is "edm" whichever of EDM's classes preconditions it: samplers run EDM's
    networks as declared for that family, deterministic, as EDM samples them."""

    def denoise(x: torch.Tensor, t: torch.Tensor, class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        alpha, std = (append_dims(c.to(x.dtype), x.ndim) for c in sde.marginal_coefs(t))
        one_hot = one_hot_or_none(class_labels, num_classes, x.float())
        return network(x / alpha, (std / alpha).flatten(), one_hot).to(x.dtype)

    return Denoiser(sde, denoise, family="edm")
