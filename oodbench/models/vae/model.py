"""The VAE as a `LikelihoodModel`: trained on the ELBO, scored by the importance-weighted bound.

    q(z|x) = N(mean(x), diag(std(x)^2)),  p(z) = N(0, I),  p(x|z) = prod over sub-pixels of a
    256-way categorical (an exact discrete likelihood: no dequantization, PAPER.md "Units").

Training maximises the single-sample reparameterised ELBO with the KL term in closed form. Scoring
reports `log_px` = IWAE-k (k = `iw_samples`, a lower bound on log p(x) that tightens as k grows; k=1
is the single-sample ELBO), and beside it `elbo` (the Monte-Carlo ELBO from the same k samples),
`kl` (KL(q(z|x) || p(z)), closed form) and `reconstruction` (E_q[log p(x|z)], the mean over the same
k samples), the statistics DoSE and the other scores read. The k latent draws of a sample come from its dataset index
(`eval_noise`), so its score does not depend on batch size, device or process count.
"""

from __future__ import annotations

import torch

from oodbench.data.quantize import index_noise, standard_normal
from oodbench.errors import OodbenchError
from oodbench.models.base import LikelihoodModel
from oodbench.models.categorical import categorical_log_prob
from oodbench.models.vae.bounds import (
    elbo_estimate,
    gaussian_log_density,
    iwae_bound,
    kl_to_standard_normal,
    standard_normal_log_density,
)
from oodbench.models.vae.config import VAEConfig
from oodbench.models.vae.networks import N_LEVELS, Decoder, Encoder

# Decoder logits held at once while scoring (elements): 2**27 float32 = 512 MiB, about 170 decodes of a
# 3x32x32 image. Scoring k samples of a batch decodes B*k latents; they go through in chunks this size.
DECODE_CHUNK_ELEMENTS = 2**27
# On a CPU the decoder's head and the log-softmax run a few images at a time, one of the head's four
# output phases at a time: 16 MiB of logits stay in the last-level cache between the convolution that
# writes them and the softmax that reads them. At 2**21, 2**22, 2**23 and 2**24 elements, make bench's
# VAE trained at 230, 241, 243 and 161 img/s in fp32 and scored at 814, 782, 666 and 582 img/s (2-core
# Xeon, issue 23). A GPU takes the whole chunk.
CPU_HEAD_CHUNK_ELEMENTS = 2**22


class VAE(LikelihoodModel):
    """A convolutional VAE on uint8 images (B, C, S, S); see `VAEConfig` and `networks`."""

    part_names = ("elbo", "kl", "reconstruction")
    extra_statistics = ("regret", "gradients")  # gradients: of its single-sample ELBO (models/gradients.py)
    discretization = "exact discrete decoder (256-way categorical); log_px is a lower bound on log p(x)"

    def __init__(self, config: VAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or VAEConfig()
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.iw_samples = config.iw_samples  # evaluation may change it (`oodbench evaluate --iw-samples`)

    @property
    def bound(self) -> str:
        return "elbo" if self.iw_samples == 1 else f"iwae-{self.iw_samples}"

    def _check_input(self, x: torch.Tensor) -> None:
        cfg = self.config
        want = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want or x.dtype != torch.uint8:
            raise OodbenchError(f"this VAE takes uint8 images (B, {', '.join(map(str, want))}); got {x.dtype} {tuple(x.shape)}")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_std) of q(z|x), each (B, latent_dim)."""
        self._check_input(x)
        x = x.to(self.decoder.head.weight.dtype)
        if self.config.input_range == "0..1":
            return self.encoder(x / (N_LEVELS - 1))  # a division, as torchvision's ToTensor: the same k/255
        return self.encoder(x * (2 / (N_LEVELS - 1)) - 1)

    def reconstruction_log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) in nats, [N], for images x (N, C, S, S) and latents z (N, latent_dim)."""
        features = self.decoder.features(z)
        per_image = N_LEVELS * x[0].numel() // 4  # the logits of one of the head's four phases
        budget = DECODE_CHUNK_ELEMENTS if x.device.type == "cuda" else CPU_HEAD_CHUNK_ELEMENTS
        rows = max(1, budget // per_image)
        targets = x.permute(0, 2, 3, 1).long()  # (N, S, S, C), the logits' layout
        return torch.cat([self._phase_log_prob(f, t) for f, t in zip(features.split(rows), targets.split(rows),
                                                                      strict=True)])

    def _phase_log_prob(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log p(x|z) [N] summed over the decoder head's four output phases (`Decoder.phase_logits`)."""
        return sum(
            categorical_log_prob(logits.reshape(-1, N_LEVELS), targets[:, a::2, b::2].reshape(-1))
            .view(targets.shape[0], -1).sum(dim=1)
            for a, b, logits in self.decoder.phase_logits(features)
        )

    def _elbo(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Single-sample reparameterised ELBO with z = mean + std * eps and the KL in closed form."""
        mean, log_std = self.encode(x)
        z = mean + torch.exp(log_std) * eps
        return self.reconstruction_log_prob(x, z) - kl_to_standard_normal(mean, log_std)

    def training_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self._elbo(x, torch.randn(x.shape[0], self.config.latent_dim, device=x.device))

    def validation_log_prob(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        # The ELBO on the first of the sample's index-seeded draws: the objective training follows,
        # at 1/k of the cost of the bound `log_px` reports.
        eps = noise[:, 0] if noise is not None else torch.randn(x.shape[0], self.config.latent_dim, device=x.device)
        return self._elbo(x, eps)

    def log_weights(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log w_j = log p(x|z_j) + log p(z_j) - log q(z_j|x) with z_j = mean + std * eps[:, j], (B, k); the
        reconstruction terms log p(x|z_j), (B, k); and the closed-form KL, [B]. Decodes in chunks of at
        most DECODE_CHUNK_ELEMENTS logits."""
        batch, k, _ = eps.shape
        mean, log_std = self.encode(x)
        z = (mean[:, None] + torch.exp(log_std)[:, None] * eps).reshape(batch * k, -1)
        rows_per_chunk = max(1, DECODE_CHUNK_ELEMENTS // (N_LEVELS * x[0].numel()))
        rec = torch.cat([
            self.reconstruction_log_prob(x[torch.div(rows, k, rounding_mode="floor")], z[rows])
            for rows in torch.arange(batch * k, device=x.device).split(rows_per_chunk)
        ]).view(batch, k)
        z = z.view(batch, k, -1)
        log_q = gaussian_log_density(z, mean[:, None], log_std[:, None])
        return rec + standard_normal_log_density(z) - log_q, rec, kl_to_standard_normal(mean, log_std)

    def log_prob_parts(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{"log_px": IWAE-k, "elbo": ELBO from the same k draws, "kl": closed-form KL, "reconstruction": the
        mean log p(x|z) of the k draws}, each [B] in nats.
        `noise`: standard-normal draws (B, k, latent_dim); fresh ones with k = `iw_samples` when None."""
        if noise is None:
            noise = torch.randn(x.shape[0], self.iw_samples, self.config.latent_dim, device=x.device)
        log_w, rec, kl = self.log_weights(x, noise)
        return {"log_px": iwae_bound(log_w), "elbo": elbo_estimate(log_w), "kl": kl, "reconstruction": rec.mean(dim=1)}

    def extra_statistic(self, name: str, x: torch.Tensor, noise: torch.Tensor | None,
                        settings: dict[str, float]) -> dict[str, torch.Tensor]:
        """"regret": the likelihood regret of Xiao et al. (2020) with each image's posterior refitted
        (`regret.py`), on the first of its index-seeded latent draws; {"regret", "elbo_refit"} in nats."""
        if name != "regret":
            return super().extra_statistic(name, x, noise, settings)
        from oodbench.models.vae.regret import posterior_regret  # regret.py builds on this module

        eps = noise[:, 0] if noise is not None else torch.randn(x.shape[0], self.config.latent_dim, device=x.device)
        return posterior_regret(self, x, eps, steps=int(settings["regret_steps"]), lr=float(settings["regret_lr"]))

    def statistic_passes(self, name: str, settings: dict[str, float]) -> str:
        if name == "likelihood":  # one encoding, then k decodings (IWAE-k)
            return f"1 encoder + {self.iw_samples} decoder forward"
        if name == "regret":  # regret.py: steps of encoder-free refits of the posterior, each a decode and its backward
            return f"{int(settings['regret_steps'])} x (decoder forward + backward)"
        return super().statistic_passes(name, settings)

    def eval_noise(self, x: torch.Tensor, index: torch.Tensor, seed: int) -> torch.Tensor:
        # Draw j of a sample is the same whatever k is, so IWAE-k and IWAE-2k share their first k draws.
        return standard_normal(index_noise(index, (self.iw_samples, self.config.latent_dim), seed, device=x.device))

    @torch.no_grad()
    def sample(self, n: int, *, device: torch.device | str | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """n uint8 images drawn from p(z) p(x|z)."""
        device = device if device is not None else next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=generator).to(device)
        probs = torch.softmax(self.decoder(z).float(), dim=-1)  # (n, S, S, C, 256)
        flat = torch.multinomial(probs.reshape(-1, N_LEVELS).cpu(), 1, generator=generator)
        return flat.view(probs.shape[:-1]).permute(0, 3, 1, 2).to(torch.uint8).contiguous().to(device)
