"""The diffusion model's settings, as one frozen dataclass.

Two parameterisations of time share one U-Net (`networks.py`):
- "continuous": a variational diffusion model (Kingma et al. 2021, "Variational Diffusion Models", VDM),
  the family oodbench trains: time t in [0, 1], VDM's fixed linear log-SNR schedule
  gamma(t) = gamma_min + (gamma_max - gamma_min) t (their -13.3 and 5.0; VDM's learned schedule is left out:
  the continuous-time bound's expectation does not depend on the schedule between its end points, only its
  variance does), and the continuous-time bound (`bound.py`).
- "discrete": Ho et al. 2020's DDPM, `timesteps` steps with linear betas from `beta_start` to `beta_end`
  (diffusers' DDPMScheduler "linear"), for released `diffusers` checkpoints (`ddpm.py`).

The U-Net is described as Ho et al. describe theirs: base `channels` times `channel_mult` per resolution,
`layers_per_block` residual blocks at each, self-attention at the sides in `attention_resolutions`, so that
`DiffusionConfig.paper()` is their CIFAR-10 network and `google/ddpm-cifar10-32` (its diffusers port:
block_out_channels (128, 256, 256, 256), attention in the second down and third up block) is described
exactly. `flip_sin_to_cos`, `freq_shift`, `downsample_padding` and `norm_eps` are diffusers' names for how
that port embeds time and pads; their defaults are the port's.

The defaults are the CPU-scale size, the quick profile's: Ho et al.'s shape at a quarter of the width, one block
per resolution, attention at 8x8 (1.53M parameters on 3x32x32; on 2 CPU cores a bare training step takes 102
images/s at batch 64, the U-Net's forward 387 images/s, and a quick-profile epoch ~95 images/s with validation).
`paper()` is the published one.
"""

from __future__ import annotations

from dataclasses import dataclass

from oodbench.config import SettingError, at_least, check_fields, one_of

# Monte Carlo time points of the bound per image at evaluation (`time_points`). Measured on the default size
# trained as the quick profile trains it (6 epochs of 2,000 CIFAR-10 images, 186 steps, 5.04 bits/dim), 24 test
# images, 4 index seeds: the median over images of the estimate's std across draws, bits/dim, CIFAR-10 / SVHN:
#     K=1: 3.88 / 2.91   K=4: 0.79 / 0.78   K=16: 0.20 / 0.18   K=32: 0.096 / 0.091   K=64: 0.049 / 0.048
# (stratified times: the std falls about as 1/K; a Fashion-MNIST model with multipliers (1, 2, 2) and attention
# at 16, on its test set / MNIST: K=16 0.19 / 0.19, K=32 0.11 / 0.08, K=64 0.055 / 0.049). The std across images
# of the K=64 estimate was 0.59 (CIFAR-10) and 0.22 (SVHN) bits/dim: at K=32 the noise is under half the narrower
# spread, at 0.08 s per image on 2 CPU cores (K=16: 0.04 s, K=64: 0.165 s); the mean moved by under 0.01 from
# K=32 to 64.
DEFAULT_TIME_POINTS = 32


def _int_tuple(name: str, value, *, minimum: int, allow_empty: bool) -> tuple[int, ...]:
    """A YAML list or tuple of integers >= minimum, as a tuple; anything else a SettingError naming the key."""
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value) \
            and all(v >= minimum for v in value) and (value or allow_empty):
        return tuple(value)
    raise SettingError(name, value, f"expected a list of integers, each at least {minimum}"
                       + ("" if allow_empty else ", not empty"))


@dataclass(frozen=True, kw_only=True)
class DiffusionConfig:
    """Architecture, time parameterisation and Monte Carlo sizes of a diffusion model.

    in_channels: image channels; image_size: side of the square images, set from the data by `train` (28x28
        sets arrive zero-padded to 32x32); a multiple of 2**(len(channel_mult) - 1), as the U-Net halves it.
    channels: the U-Net's channels at full resolution; channel_mult: its multiple at each resolution
        (one entry per resolution, halved between them): (1, 2, 2, 2) is Ho et al.'s CIFAR-10 network.
    layers_per_block: residual blocks per resolution on the way down (diffusers adds one on the way up).
    attention_resolutions: sides at which the blocks have self-attention (the middle always has it).
    dropout: in the residual blocks, training only; norm_groups: GroupNorm groups (divides every width).
    time: "continuous" (VDM) or "discrete" (DDPM).
    gamma_min, gamma_max: continuous time's log(sigma^2 / alpha^2) at t = 0 and t = 1 (VDM's -13.3, 5.0).
    timesteps, beta_start, beta_end: discrete time's steps and linear betas (Ho et al.'s 1000, 1e-4, 0.02).
    variance: discrete time's reverse-process variance in the bound, "fixed_large" (beta_t, Ho et al.'s CIFAR-10
        choice and google/ddpm-cifar10-32's) or "fixed_small" (the posterior's, as google/ddpm-cat-256's).
    clip_denoised: discrete time's bound clips the predicted x_0 to [-1, 1] (Ho et al.'s bound evaluation,
        diffusers' clip_sample); training never clips, as Ho et al.'s loss does not.
    time_points: K, the Monte Carlo time points of the bound per image at evaluation (stratified: one in each
        of K equal slices of [0, 1]); the reported bound is named after it (`Diffusion.bound`).
    sample_steps: steps of ancestral sampling (`Diffusion.sample`).
    fourier_features: exponents n of VDM's Fourier features, sin and cos of 2^n 2 pi z per channel added to the
        U-Net's input (VDM uses 6 and 7: at n = 7 a period is one 8-bit level of [-1, 1], so the U-Net sees where
        z sits between levels, the low-noise part of the bound). () is the plain U-Net, as released checkpoints.
    """

    in_channels: int = at_least(1, 3)
    image_size: int = at_least(1, 32)
    channels: int = at_least(1, 32)
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    layers_per_block: int = at_least(1, 1)
    attention_resolutions: tuple[int, ...] = (8,)
    dropout: float = at_least(0, 0.0)
    norm_groups: int = at_least(1, 8)
    time: str = one_of(("continuous", "discrete"), "continuous")
    gamma_min: float = -13.3
    gamma_max: float = 5.0
    timesteps: int = at_least(2, 1000)
    beta_start: float = at_least(0, 1e-4, exclusive=True)
    beta_end: float = at_least(0, 0.02, exclusive=True)
    variance: str = one_of(("fixed_large", "fixed_small"), "fixed_large")
    clip_denoised: bool = True
    time_points: int = at_least(1, DEFAULT_TIME_POINTS)
    sample_steps: int = at_least(1, 100)
    fourier_features: tuple[int, ...] = ()
    flip_sin_to_cos: bool = False
    freq_shift: int = 1
    downsample_padding: int = at_least(0, 0)
    norm_eps: float = at_least(0, 1e-6, exclusive=True)

    def __post_init__(self) -> None:
        check_fields(self)
        # YAML and --set give lists; a tuple keeps the config hashable and frozen in spirit
        object.__setattr__(self, "channel_mult", _int_tuple("channel_mult", self.channel_mult, minimum=1, allow_empty=False))
        object.__setattr__(self, "attention_resolutions",
                           _int_tuple("attention_resolutions", self.attention_resolutions, minimum=1, allow_empty=True))
        object.__setattr__(self, "fourier_features",
                           _int_tuple("fourier_features", self.fourier_features, minimum=0, allow_empty=True))
        halvings = len(self.channel_mult) - 1
        if self.image_size % 2**halvings:
            raise SettingError("image_size", self.image_size,
                               f"the diffusion U-Net halves the image {halvings} times (channel_mult {list(self.channel_mult)}),"
                               f" so its side must be a multiple of {2**halvings}")
        missing = [side for side in self.attention_resolutions if side not in self.resolutions]
        if missing:
            raise SettingError("attention_resolutions", list(self.attention_resolutions),
                               f"the U-Net's sides are {list(self.resolutions)} for {self.image_size}x{self.image_size} images")
        odd = [width for width in self.block_out_channels if width % self.norm_groups]
        if odd:
            raise SettingError("norm_groups", self.norm_groups, f"must divide every U-Net width ({list(self.block_out_channels)})")
        if self.dropout >= 1:
            raise SettingError("dropout", self.dropout, "must be below 1")
        if self.gamma_min >= self.gamma_max:
            raise SettingError("gamma_max", self.gamma_max, f"must be above gamma_min ({self.gamma_min})")
        if not self.beta_start < self.beta_end < 1:
            raise SettingError("beta_end", self.beta_end, f"must lie between beta_start ({self.beta_start}) and 1")
        if self.time == "discrete" and self.sample_steps > self.timesteps:
            raise SettingError("sample_steps", self.sample_steps, f"must be at most timesteps ({self.timesteps})")

    @property
    def resolutions(self) -> tuple[int, ...]:
        """The side of the feature maps at each level of the U-Net, from the input's down."""
        return tuple(self.image_size // 2**level for level in range(len(self.channel_mult)))

    @property
    def block_out_channels(self) -> tuple[int, ...]:
        """diffusers' `block_out_channels`: the width at each level."""
        return tuple(self.channels * mult for mult in self.channel_mult)

    @classmethod
    def paper(cls, **overrides) -> DiffusionConfig:
        """Ho et al. 2020's CIFAR-10 U-Net (DDPM, "Denoising Diffusion Probabilistic Models", the network of
        `google/ddpm-cifar10-32`): 128 channels, multipliers (1, 2, 2, 2), 2 residual blocks per resolution,
        attention at 16x16, dropout 0.1; about 36M parameters. Trained here with VDM's continuous-time bound.

        VDM's own CIFAR-10 network (google-research/vdm, configs/cifar10.py) is another shape: 32 residual
        blocks of 128 channels at 32x32 with no downsampling, attention only in the middle, Fourier features of
        the input, a learned linear schedule, and 10M steps of batch 128 with an EMA of the weights, for
        2.65 bits/dim. diffusers has no such network; Ho et al.'s is the published U-Net it does have, and
        the one DDPM likelihoods (<= 3.70-3.75 bits/dim) and the diffusion OOD papers (DiffPath, MSMA) use.
        """
        return cls(**{"channels": 128, "channel_mult": (1, 2, 2, 2), "layers_per_block": 2,
                      "attention_resolutions": (16,), "dropout": 0.1, "norm_groups": 32, "sample_steps": 1000,
                      **overrides})
