"""PyTorch reference of V and M for the CPU speed benchmark (benchmark-only: the package never imports torch).

The networks compute the same maths as `worldmodels_jax.models.vae.ConvVAE` and
`worldmodels_jax.models.mdnrnn.MDNRNN`, and `load_vae_params` / `load_mdnrnn_params` copy a JAX parameter tree
into them, so the benchmark can check that both sides give the same loss before it times them.

Conventions mapped here:
* Images: JAX is NHWC, torch is NCHW (each side in its native, fastest layout).
* Conv kernels: Flax (kh, kw, in, out) -> torch Conv2d (out, in, kh, kw).
* Transposed conv kernels: Flax's `ConvTranspose` (transpose_kernel=False) correlates the zero-dilated input with
  the kernel, torch's ConvTranspose2d scatters with it, so torch's weight is the Flax kernel flipped in space,
  laid out (in, out, kh, kw).
* Flatten order before the dense heads: NHWC (h, w, c) in JAX; torch permutes its NCHW map to NHWC first.
* LSTM: M's gates are (i, j, f, o) with TensorFlow's +1 forget bias; torch's are (i, f, g, o) with two biases.
  torch's nn.LSTM has 4*hidden more parameters (the second bias); they are zero after loading.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


class TorchConvVAE(nn.Module):
    def __init__(self, z_size: int = 32):
        super().__init__()
        self.z_size = z_size
        self.enc = nn.ModuleList(
            [nn.Conv2d(c_in, c_out, 4, stride=2) for c_in, c_out in [(3, 32), (32, 64), (64, 128), (128, 256)]]
        )
        self.mu = nn.Linear(1024, z_size)
        self.logvar = nn.Linear(1024, z_size)
        self.dec_dense = nn.Linear(z_size, 1024)
        self.dec = nn.ModuleList(
            [
                nn.ConvTranspose2d(c_in, c_out, k, stride=2)
                for c_in, c_out, k in [(1024, 128, 5), (128, 64, 5), (64, 32, 6), (32, 3, 6)]
            ]
        )

    def encode(self, x):  # x: NCHW float in [0, 1]
        for conv in self.enc:
            x = torch.relu(conv(x))
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # NHWC flatten, like the JAX model
        return self.mu(x), self.logvar(x)

    def decode(self, z):
        x = torch.relu(self.dec_dense(z)).reshape(z.shape[0], 1024, 1, 1)
        for i, deconv in enumerate(self.dec):
            x = deconv(x)
            x = torch.sigmoid(x) if i == len(self.dec) - 1 else torch.relu(x)
        return x

    def forward(self, x, eps):
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * eps
        return self.decode(z), mu, logvar


def vae_loss(x, recon, mu, logvar, kl_tolerance: float = 0.5):
    """Σ squared pixel error + max(KL, kl_tolerance·z), each averaged over the batch (the original's loss)."""
    rec = torch.sum((x - recon) ** 2, dim=(1, 2, 3)).mean()
    kl = -0.5 * torch.sum(1.0 + logvar - mu**2 - torch.exp(logvar), dim=-1)
    return rec + torch.clamp(kl, min=kl_tolerance * mu.shape[-1]).mean()


def load_vae_params(model: TorchConvVAE, params) -> None:
    """Copy a Flax ConvVAE parameter tree (enc_conv{i}, enc_mu, enc_logvar, dec_dense, dec_deconv{i})."""
    t = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))  # noqa: E731
    with torch.no_grad():
        for i, conv in enumerate(model.enc):
            conv.weight.copy_(t(params[f"enc_conv{i}"]["kernel"]).permute(3, 2, 0, 1))
            conv.bias.copy_(t(params[f"enc_conv{i}"]["bias"]))
        for name, lin in [("enc_mu", model.mu), ("enc_logvar", model.logvar), ("dec_dense", model.dec_dense)]:
            lin.weight.copy_(t(params[name]["kernel"]).T)
            lin.bias.copy_(t(params[name]["bias"]))
        for i, deconv in enumerate(model.dec):
            k = t(params[f"dec_deconv{i}"]["kernel"])  # (kh, kw, in, out), no flip convention
            deconv.weight.copy_(torch.flip(k, dims=(0, 1)).permute(2, 3, 0, 1))
            deconv.bias.copy_(t(params[f"dec_deconv{i}"]["bias"]))


class TorchMDNRNN(nn.Module):
    """nn.LSTM(hidden) + one linear MDN head; per latent dimension a K-component mixture (log π, μ, log σ)."""

    def __init__(self, z_size: int = 32, action_size: int = 3, hidden: int = 256, k: int = 5):
        super().__init__()
        self.z_size, self.k = z_size, k
        self.lstm = nn.LSTM(z_size + action_size, hidden, batch_first=True)
        self.head = nn.Linear(hidden, z_size * k * 3)

    def forward(self, x):  # x: (B, T, z + a)
        h, _ = self.lstm(x)
        out = self.head(h).reshape(*h.shape[:2], self.z_size, 3, self.k)
        logits, mu, logsigma = out[..., 0, :], out[..., 1, :], out[..., 2, :]
        logpi = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
        return logpi, mu, logsigma


def mdn_nll(logpi, mu, logsigma, z_next):
    x = z_next[..., None]
    log_normal = -0.5 * ((x - mu) * torch.exp(-logsigma)) ** 2 - logsigma - LOG_SQRT_2PI
    return -torch.logsumexp(logpi + log_normal, dim=-1).mean()


def load_mdnrnn_params(model: TorchMDNRNN, params, forget_bias: float = 1.0) -> None:
    """Copy a Flax MDNRNN tree (w_x, w_h, b, head/mdn_dense) into nn.LSTM + Linear; gates (i,j,f,o) -> (i,f,g,o)."""
    t = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))  # noqa: E731
    hidden = model.lstm.hidden_size

    def reorder(w):  # last axis (i, j, f, o) -> (i, f, j, o)
        i, j, f, o = torch.split(w, hidden, dim=-1)
        return torch.cat([i, f, j, o], dim=-1)

    b = t(params["b"]).clone()
    b[2 * hidden : 3 * hidden] += forget_bias
    with torch.no_grad():
        model.lstm.weight_ih_l0.copy_(reorder(t(params["w_x"])).T)
        model.lstm.weight_hh_l0.copy_(reorder(t(params["w_h"])).T)
        model.lstm.bias_ih_l0.copy_(reorder(b))
        model.lstm.bias_hh_l0.zero_()
        model.head.weight.copy_(t(params["head"]["mdn_dense"]["kernel"]).T)
        model.head.bias.copy_(t(params["head"]["mdn_dense"]["bias"]))
