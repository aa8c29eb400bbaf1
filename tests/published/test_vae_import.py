"""XavierXiao/Likelihood-Regret's VAE files -> oodbench's VAE, proven equal to the reference code.

The reference (../shared/peers/XavierXiao+Likelihood-Regret at 5517c9b: DCGAN_VAE_pixel's Encoder and
DCGAN_G, train_pixel's KL_div, compute_LR's store_NLL and compute_NLL) is built at a small size, every
parameter and batch-norm statistic randomised, saved as train_pixel.py saves it (torch.save of each
state_dict), read back with read_state, converted and built. Then, for the same 8-bit images (k/255 for
the reference, as ToTensor gives them) and the same standard-normal draws (the reference's own, drawn
again from the same seed), oodbench and the reference must agree on the encoder's mean and log-variance,
the decoder's logits, the single-sample ELBO, the log importance weights and each image's IWAE log p(x):
to 1e-9 in float64, to a relative 1e-5 in float32.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import Variable

from oodbench.published.base import ImportRefused, read_state
from oodbench.published.vae import SOURCE, convert
from tests.published.peers import needs_peers, randomise_, reference_functions, reference_modules

pytestmark = needs_peers
REPO = "XavierXiao+Likelihood-Regret"
SIZE, BATCH, DRAWS = 32, 5, 3  # 32: the size the released models have (the reference takes multiples of 16)
# Grey as the released Fashion-MNIST files (written by a torch before 1.6: the legacy format), RGB as CIFAR-10's.
CASES = {"grey": dict(nc=1, ngf=4, nz=5, legacy=True), "rgb": dict(nc=3, ngf=6, nz=7, legacy=False)}


@pytest.fixture(scope="module")
def ref() -> types.SimpleNamespace:
    dvae = reference_modules(REPO, ("DCGAN_VAE_pixel",))["DCGAN_VAE_pixel"]
    train = reference_functions(REPO, "train_pixel", ("KL_div",), {"torch": torch})
    opt = types.SimpleNamespace(repeat=1)  # compute_LR's command-line options: store_NLL reads opt.repeat
    scoring = reference_functions(REPO, "compute_LR", ("store_NLL", "compute_NLL"),
                                  {"torch": torch, "np": np, "F": F, "Variable": Variable, "opt": opt})
    return types.SimpleNamespace(dvae=dvae, opt=opt, **train, **scoring)


def _reference_nets(ref, nc: int, ngf: int, nz: int, seed: int = 0):
    net_e, net_g = ref.dvae.Encoder(SIZE, nz, nc, ngf, 1), ref.dvae.DCGAN_G(SIZE, nz, nc, ngf, 1)
    generator = torch.Generator().manual_seed(seed)
    for net in (net_e, net_g):
        randomise_(net, generator, scale=0.3)
        for i, (name, buffer) in enumerate(net.named_buffers()):  # distinct counts: a swapped one shows
            if name.endswith("num_batches_tracked"):
                buffer.fill_(100 + i)
    return net_e.eval(), net_g.eval()


def _save(tmp_path, net_e, net_g, legacy: bool):
    """The two files as train_pixel.py writes them, read back as `oodbench import` reads them."""
    paths = tmp_path / "netE_pixel.pth", tmp_path / "netG_pixel.pth"
    for net, path in zip((net_e, net_g), paths, strict=True):
        torch.save(net.state_dict(), path, _use_new_zipfile_serialization=not legacy)
    return [read_state(path) for path in paths]


def _images(nc: int, seed: int = 1) -> torch.Tensor:
    images = torch.randint(0, 256, (BATCH, nc, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    images[0], images[1] = 0, 255  # both ends of the levels
    return images


def _encode(ref, net_e, x: torch.Tensor, seed: int):
    """The reference encoder's (z, mu, logvar) and the standard-normal draws it used, drawn again."""
    torch.manual_seed(seed)
    z, mu, logvar = net_e(x)
    torch.manual_seed(seed)
    eps = torch.randn(mu.shape, dtype=mu.dtype)
    assert torch.equal(z, mu + logvar.div(2).exp() * eps)  # the same draws, recovered exactly
    return z, mu, logvar, eps


def _close(ours: torch.Tensor, theirs: torch.Tensor, dtype: torch.dtype, measured: dict, what: str) -> None:
    """Equal to 1e-9 (float64) or to a relative 1e-5 of the reference's largest magnitude (float32)."""
    diff = (ours - theirs).abs().max().item()
    scale = theirs.abs().max().item()
    measured[what] = diff if dtype == torch.float64 else diff / scale
    limit = 1e-9 if dtype == torch.float64 else 1e-5 * scale
    assert diff <= limit, (what, dtype, diff, limit)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", list(CASES))
def test_imported_vae_scores_images_as_the_reference_does(ref, tmp_path, case, dtype):
    nc, ngf, nz, legacy = CASES[case].values()
    net_e, net_g = _reference_nets(ref, nc, ngf, nz)
    encoder_file, decoder_file = _save(tmp_path, net_e, net_g, legacy)
    net_e, net_g = net_e.to(dtype), net_g.to(dtype)
    for order in ([encoder_file, decoder_file], [decoder_file, encoder_file]):
        converted = convert(order)
        assert converted.family == "vae" and converted.image_size == SIZE and converted.resize_small == (nc == 1)
        assert {k: converted.model_settings[k] for k in ("in_channels", "base_channels", "latent_dim")} == \
            {"in_channels": nc, "base_channels": ngf, "latent_dim": nz}
    model = converted.build(dtype)
    assert [m.num_batches_tracked.item() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)] == \
        [m.num_batches_tracked.item() for net in (net_e, net_g) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]

    images = _images(nc)
    x = images.to(dtype).div(255).repeat_interleave(DRAWS, dim=0)  # torchvision's ToTensor; DRAWS copies each
    measured: dict[str, float] = {}
    with torch.no_grad():
        z, mu, logvar, eps = _encode(ref, net_e, x, seed=2)
        recon = net_g(z)  # (B * DRAWS, nc, S, S, 256)
        mean, log_std = model.encode(images)
        _close(mean.repeat_interleave(DRAWS, dim=0), mu.flatten(1), dtype, measured, "mu")
        _close(2 * log_std.repeat_interleave(DRAWS, dim=0), logvar.flatten(1), dtype, measured, "logvar")
        _close(model.decoder(z.flatten(1)).permute(0, 3, 1, 2, 4), recon, dtype, measured, "logits")

        # The ELBO of each draw, as train_pixel.py's loss: cross entropy with target (x * 255).long() (the
        # levels the images hold: test_the_reference_target_gives_back_every_level) plus KL_div.
        target = (x.view(-1) * 255).long()
        cross_entropy = F.cross_entropy(recon.contiguous().view(-1, 256), target, reduction="none").view(len(x), -1).sum(1)
        elbo = model._elbo(images.repeat_interleave(DRAWS, dim=0), eps.flatten(1))
        _close(elbo, -(cross_entropy + ref.KL_div(mu, logvar)), dtype, measured, "elbo")

        # The log importance weights and each image's log p(x) (IWAE over its DRAWS draws) as compute_LR.py
        # computes them; its store_NLL takes any rows (opt.repeat of them), compute_NLL one image's weights.
        ref.opt.repeat = len(x)
        theirs = ref.store_NLL(x, recon, mu.flatten(1), logvar.flatten(1), z.flatten(1)).view(BATCH, DRAWS)
        noise = eps.view(BATCH, DRAWS, -1)
        _close(model.log_weights(images, noise)[0], theirs, dtype, measured, "log_weights")
        _close(model.log_prob_parts(images, noise)["log_px"], -torch.stack([ref.compute_NLL(w) for w in theirs]),
               dtype, measured, "log_px")
    print(case, dtype, {k: f"{v:.1e}" for k, v in measured.items()})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_reference_target_gives_back_every_level(dtype):
    # train_pixel.py and compute_LR.py score the level (x * 255).long() of x = k/255 (ToTensor's division):
    # a truncation to k - 1 would make the reference score another pixel value than the image holds.
    levels = torch.arange(256)
    assert torch.equal((levels.to(dtype).div(255) * 255).long(), levels)


# --- refusals -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(ref, tmp_path_factory):
    """The grey case's two files, read back: (encoder, decoder)."""
    return tuple(_save(tmp_path_factory.mktemp("lr"), *_reference_nets(ref, nc=1, ngf=4, nz=5), legacy=False))


def test_one_file_alone_is_refused_naming_both(files):
    with pytest.raises(ImportRefused, match="takes 2 files, got 1.*netE_pixel.pth.*netG_pixel.pth"):
        convert([files[0]])
    with pytest.raises(ImportRefused, match="one encoder and one decoder file, got 2 encoder"):
        convert([files[0], files[0]])
    assert SOURCE.files == 2 and SOURCE.family == "vae"


@pytest.mark.parametrize("half, key, named", [
    (0, "main.pyramid:8:batchnorm.weight", "netE_pixel.pth's main.pyramid:8:batchnorm.weight has shape"),
    (1, "main.pyramid:8:batchnorm.running_var", "netG_pixel.pth's main.pyramid:8:batchnorm.running_var has shape"),
    (0, "conv2.bias", "conv1 .* and conv2 .* differ"),
])
def test_a_tensor_of_another_shape_is_refused_by_name(files, half, key, named):
    changed = [dict(state) for state in files]
    changed[half][key] = torch.zeros(changed[half][key].shape[0] + 1)
    with pytest.raises(ImportRefused, match=named):
        convert(changed)


def test_unknown_missing_and_mismatched_keys_are_refused(ref, files):
    encoder, decoder = files
    with pytest.raises(ImportRefused, match=r"encoder \(netE_pixel.pth\) has keys of another layout \(main.extra.weight\)"):
        convert([{**encoder, "main.extra.weight": torch.zeros(1)}, decoder])
    with pytest.raises(ImportRefused, match="has no 'main.input-BN.running_var'"):
        convert([{k: v for k, v in encoder.items() if k != "main.input-BN.running_var"}, decoder])
    # An odd ngf: DCGAN_G rounds its width down to ngf - 1, while the encoder keeps ngf; oodbench has one width.
    odd = [net.state_dict() for net in _reference_nets(ref, nc=1, ngf=5, nz=5)]
    with pytest.raises(ImportRefused, match=r"encoder's base width is 5, the decoder's 4: oodbench's VAE has one"):
        convert(odd)


def test_build_is_strict(files):
    converted = convert(list(files))
    state = dict(converted.state)
    state["decoder.body.1.weight"] = state["decoder.body.1.weight"][:-1]
    with pytest.raises(ImportRefused, match="do not fit"):
        type(converted)(**{**converted.__dict__, "state": state}).build()
