"""The one Lightning module that trains and scores any likelihood model.

Batches arrive as uint8 images with their dataset indices and are dequantized here, on the device
(never per item on the CPU). The training loss is the mean bits/dim; validation and prediction use
index-seeded noise so that a sample's score does not depend on batch size, device or process count.

Training may run under mixed precision (`--precision bf16-mixed`); every likelihood that is reported
or picks the "best" checkpoint is computed in float32 whatever the precision: validation and
prediction run with autocast off, on the float32 weights (half-precision weights, `bf16-true`, are
refused by `TrainConfig`). Under bf16 autocast a small PixelCNN++ scored 10.3 bits/dim instead of 2.55.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterable, Iterator

import pytorch_lightning as pl
import torch

from oodbench.config import FLOAT32_PRECISIONS, TrainConfig, from_mapping
from oodbench.data.perturb import perturb
from oodbench.errors import OodbenchError
from oodbench.models.families import FAMILIES, build_model, model_config
from oodbench.units import bits_per_dim


class TrainingDiverged(OodbenchError):
    """The loss became NaN or infinite; training stops and the last good checkpoint is kept."""

    exit_code = 1


@contextlib.contextmanager
def float32_likelihood(device: torch.device) -> Iterator[None]:
    """Float32 arithmetic for every likelihood that is reported or compared, whatever the trainer's precision:
    autocast off (the layers run in the float32 of the weights and inputs), and TF32 off, which torch
    otherwise lets cuDNN use for float32 convolutions on GPUs (a 10-bit mantissa: tenths of a nat per
    image at Glow's size). Both flags are process-wide; the previous values come back on exit."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


OPTIMIZERS = {"adam": torch.optim.Adam, "adamax": torch.optim.Adamax}
FUSED_ADAM_DEVICES = ("cpu", "cuda")  # where torch ships a fused Adam kernel


def make_optimizer(parameters: Iterable[torch.nn.Parameter], name: str, *, lr: float, weight_decay: float = 0.0,
                   precision: str = "32-true") -> torch.optim.Optimizer:
    """The training optimizer (also what `make bench` times). Adam runs its fused kernel: one pass over all
    parameters instead of a handful of small ops per parameter tensor, whose dispatch dominated Adam's
    share of a CPU Glow step (torch.profiler); the update is the same to float rounding. The default
    implementation where the parameters' device has no fused kernel, and under a mixed `precision` (any
    not in FLOAT32_PRECISIONS):
    Lightning's mixed-precision plugin clips gradients itself and refuses an optimizer that may unscale
    them internally, as fused ones do."""
    if name not in OPTIMIZERS:
        raise OodbenchError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    parameters = list(parameters)
    if name == "adam" and precision in FLOAT32_PRECISIONS and all(p.device.type in FUSED_ADAM_DEVICES for p in parameters):
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay, fused=True)
    return OPTIMIZERS[name](parameters, lr=lr, weight_decay=weight_decay)


def training_objective(model: torch.nn.Module, *, compile: bool = False) -> Callable[..., torch.Tensor]:
    """The model's `training_log_prob`, or (`compile`) that method through torch.compile, which fuses the
    elementwise work between the convolutions (actnorm, the coupling's scale and shift, the log-determinants,
    casts under bf16 autocast) into a few generated kernels: on a 2-core Xeon with AMX it took a Glow
    bf16-mixed step from 182 to 137 ms (issue 23; README's speed section). The compiled function shares the
    model's parameters and its state_dict keys, so checkpoints do not change; a first call compiles (about
    a minute on 2 CPU cores), and the batch shape stays fixed (the training loader drops its last partial
    batch), so it compiles once. Only training uses it: the likelihoods that are reported are computed by
    the model's own float32 code."""
    if not compile:
        return model.training_log_prob
    # fallback_random: the dequantization noise, dropout and latent draws come from torch's own generator,
    # as in eager mode (inductor would otherwise draw its own Philox numbers), so a compiled run takes the
    # same steps as an eager one and a resumed run replays them whichever way each part ran.
    return torch.compile(model.training_log_prob, options={"fallback_random": True})


class LikelihoodModule(pl.LightningModule):
    """Wraps a `LikelihoodModel` for training (mean bits/dim) and per-sample scoring.

    `bpd_dims` is the number of dimensions bits/dim is per (the dataset's own image, `units.py`);
    None takes the model's input size.
    """

    def __init__(self, *, family: str, model_settings: dict[str, Any], train_settings: dict[str, Any],
                 noise_seed: int = 0, bpd_dims: int | None = None) -> None:
        super().__init__()
        # Plain values only: they go into the checkpoint, which is loaded with weights_only=True.
        self.save_hyperparameters()
        self.family = FAMILIES.get(family).name
        self.model_config = model_config(family, model_settings, where="the checkpoint's model settings")
        self.train_config = from_mapping(TrainConfig, train_settings, where="the checkpoint's train settings")
        self.model = build_model(family, self.model_config)
        self.noise_seed = noise_seed
        self.bpd_dims = bpd_dims
        self.statistic = "likelihood"  # what predict_step computes (statistics.py sets it)
        self.statistic_settings: dict[str, float] = {}
        self._objective: Callable[..., torch.Tensor] | None = None  # built on the first training step

    @property
    def objective(self) -> Callable[..., torch.Tensor]:
        if self._objective is None:
            self._objective = training_objective(self.model, compile=self.train_config.compile)
        return self._objective

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return self.model.log_prob_parts(x, noise)

    def _mean_bpd(self, log_px: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return bits_per_dim(log_px.float(), self.bpd_dims or math.prod(x.shape[1:])).mean()

    def _eval_noise(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor | None:
        return self.model.eval_noise(x, index, self.noise_seed)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # Every batch's randomness (dequantization noise, dropout, latent samples) is a function of
        # (seed, epoch, batch, rank) alone, whatever else drew from the generator before (data loader
        # set-up, a checkpoint restore), so a resumed run replays exactly what an uninterrupted one computed.
        key = ((self.train_config.seed * 1_000_003 + self.current_epoch) * 100_003 + batch_idx) * 257 + self.global_rank
        torch.manual_seed(key % (2**63))

    def training_step(self, batch, batch_idx):
        x, _ = batch
        if self.train_config.background is not None:
            # A background model (Ren et al. 2019): drawn from the batch's seeded generator (above), so
            # afresh each epoch and replayed exactly on resume.
            x = perturb(x, self.train_config.background)
        loss = self._mean_bpd(self.objective(x), x)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"training diverged at epoch {self.current_epoch}, step {self.global_step} (loss {loss.item()}); "
                "the last good checkpoint is kept; lower --lr or raise warmup_steps"
            )
        self.log("train_bpd", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=x.shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        x, index = batch
        with float32_likelihood(x.device):
            loss = self._mean_bpd(self.model.validation_log_prob(x, self._eval_noise(x, index)), x)
        self.log("val_bpd", loss, prog_bar=True, on_epoch=True, sync_dist=True, batch_size=x.shape[0])

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        """The per-sample statistics of a batch: the likelihood and its parts, or (with `statistic` set to
        one of the model's `extra_statistics`) that statistic, computed with its `statistic_settings`."""
        x, index = batch
        with float32_likelihood(x.device):
            noise = self._eval_noise(x, index)
            if self.statistic == "likelihood":
                parts = self.model.log_prob_parts(x, noise)
            else:
                parts = self.model.extra_statistic(self.statistic, x, noise, self.statistic_settings)
        return {"index": index, **{name: value.float() for name, value in parts.items()}}

    def configure_optimizers(self):
        cfg = self.train_config
        optimizer = make_optimizer(self.parameters(), cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay or 0.0,
                                   precision=cfg.precision)
        warmup = max(1, cfg.warmup_steps)
        # Linear warm-up: flows with data-dependent init are unstable at full learning rate at first.
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
