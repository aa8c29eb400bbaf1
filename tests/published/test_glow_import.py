"""y0ast/Glow-PyTorch checkpoints imported into oodbench's Glow compute the reference's log p(x).

The reference model (../shared/peers, commit 13c7b01) is built small, every tensor randomised (the
zero-initialised convs, split priors and learned top prior included, or a wrong channel order would
stay invisible), saved as that repository saves it (torch.save of the state dict, or of a DataParallel
wrapper's), read back with `read_state`, converted and built. Both then score the same 8-bit images
with the same dequantization noise (oodbench's `eval_noise`): the reference through its own forward
pass, with its `uniform_binning_correction` (which draws its own noise) replaced by one adding that
noise; log p(x) = -bpd * ln 2 * D. Equal to 1e-9 nats in float64, to a relative 1e-5 in float32.
Files oodbench cannot load exactly are refused in one line, before any model is built.
"""

from __future__ import annotations

import math

import pytest
import torch

from oodbench.published import glow
from oodbench.published.base import ImportRefused, read_state
from tests.published.peers import needs_peers, randomise_, reference_modules

pytestmark = needs_peers

# Sources the reference cannot run as it is on current torch (torch.qr is removed, torch.lu deprecated).
PATCHES = {"modules": [("torch.qr(", "torch.linalg.qr("), ("torch.lu(w_init)", "torch.linalg.lu_factor(w_init)")]}


@pytest.fixture(scope="module")
def ref():
    return reference_modules("y0ast+Glow-PyTorch", ("utils", "modules", "model"), PATCHES)


def reference_glow(ref, *, channels=3, size=16, levels=2, steps=2, hidden=8, coupling="affine", learn_top=True,
                   lu=True, permutation="invconv", y_condition=False, seed=0):
    """A y0ast Glow with every tensor random and actnorm marked initialised, in float32 and eval mode."""
    torch.manual_seed(seed)  # its own constructor draws the 1x1 convs' initial rotations
    model = ref["model"].Glow(image_shape=(size, size, channels), hidden_channels=hidden, K=steps, L=levels,
                              actnorm_scale=1.0, flow_permutation=permutation, flow_coupling=coupling,
                              LU_decomposed=lu, y_classes=10, learn_top=learn_top, y_condition=y_condition)
    generator = torch.Generator().manual_seed(seed)
    # prior_h stays zero as in the repository; p and sign_s get a random permutation and signs below.
    randomise_(model, generator, skip=(".p", ".sign_s", "prior_h"))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, ref["modules"].InvertibleConv1x1):
                n = module.w_shape[0]
                permutation = torch.eye(n)[torch.randperm(n, generator=generator)]
                signs = torch.randint(0, 2, (n,), generator=generator) * 2.0 - 1
                if lu:
                    module.p.copy_(permutation)
                    module.sign_s.copy_(signs)
                else:  # well-conditioned, with an LU factorisation that needs pivoting and negative pivots
                    module.weight.add_(permutation * signs)
    model.set_actnorm_init()
    return model.eval()


def reference_log_px(ref, model, images, noise):
    """Per-image log p(x) in nats from the reference's own forward pass, dequantised with `noise`."""
    dtype = next(model.parameters()).dtype
    dims = images[0].numel()

    def binning(x, n_bits=8):  # uniform_binning_correction with the given noise instead of its own draw
        return x + noise.to(dtype) / 256, torch.full((x.shape[0],), -dims * math.log(256), dtype=dtype)

    saved, ref["model"].uniform_binning_correction = ref["model"].uniform_binning_correction, binning
    try:
        with torch.no_grad():
            _, bpd, _ = model(images.to(dtype) / 256 - 0.5, None)
    finally:
        ref["model"].uniform_binning_correction = saved
    return -bpd * math.log(2) * dims


def imported(model, path, data_parallel=False):
    torch.save((torch.nn.DataParallel(model) if data_parallel else model).state_dict(), path)
    return glow.convert([read_state(path)])


def batch(channels, size, n=6):
    images = torch.randint(0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    images[0] = 0  # the extremes of the pixel range
    images[1] = 255
    return images


CASES = {
    "affine-learn_top": dict(),
    "additive-dataparallel": dict(coupling="additive", data_parallel=True),
    "affine-no_learn_top": dict(learn_top=False),
    "grey-3-levels": dict(channels=1, levels=3),
    "plain-1x1-conv": dict(lu=False),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_imported_glow_scores_like_the_reference(ref, tmp_path, case):
    settings = dict(case)
    data_parallel = settings.pop("data_parallel", False)
    model = reference_glow(ref, **settings)
    converted = imported(model, tmp_path / "glow.pt", data_parallel)
    channels, levels = settings.get("channels", 3), settings.get("levels", 2)
    coupling = settings.get("coupling", "affine")
    assert converted.family == ("glow" if coupling == "affine" else "cv-glow")
    assert converted.model_settings == {"in_channels": channels, "levels": levels, "steps": 2, "hidden_channels": 8,
                                        "coupling": coupling, "learn_top": settings.get("learn_top", True)}
    assert converted.image_size == 16 and converted.architecture["LU_decomposed"] == settings.get("lu", True)

    images = batch(channels, 16)
    ours64 = converted.build(torch.float64)
    noise = ours64.eval_noise(images, torch.arange(len(images)), seed=3)
    # float64 noise: oodbench's dequantize then forms (x + u) / 256 exactly, as the reference's input is here.
    expected = reference_log_px(ref, model.double(), images, noise)
    got = ours64.log_prob_parts(images, noise.double())["log_px"]
    assert got.dtype == torch.float64
    assert (got - expected).abs().max() < 1e-9, (got - expected).abs().max()

    expected32 = reference_log_px(ref, model.float(), images, noise)
    got32 = converted.build().log_prob_parts(images, noise)["log_px"]
    assert ((got32.double() - expected32.double()) / expected32.double()).abs().max() < 1e-5


def test_class_conditional_file_is_refused(ref, tmp_path):
    with pytest.raises(ImportRefused, match="class-conditional.*supported:") as refused:
        imported(reference_glow(ref, y_condition=True), tmp_path / "glow.pt")
    assert "\n" not in str(refused.value)


def test_shuffled_channels_are_refused(ref, tmp_path):
    with pytest.raises(ImportRefused, match="shuffle or reverse.*not saved"):
        imported(reference_glow(ref, permutation="shuffle"), tmp_path / "glow.pt")


def _state(ref, tmp_path):
    path = tmp_path / "glow.pt"
    torch.save(reference_glow(ref).state_dict(), path)
    return read_state(path)


def test_a_tensor_of_the_wrong_shape_is_an_error(ref, tmp_path):
    state = _state(ref, tmp_path)
    key = "flow.layers.3.conv.conv.weight"  # the first split prior; nothing is inferred from it
    state[key] = state[key][:, :-1]
    with pytest.raises(ImportRefused, match=rf"{key} has shape \[12, 5, 3, 3\].*needs \[12, 6, 3, 3\]"):
        glow.convert([state])


def test_unknown_and_missing_keys_are_refused(ref, tmp_path):
    state = _state(ref, tmp_path)
    with pytest.raises(ImportRefused, match="layout oodbench does not know.*flow.layers.1.extra.weight"):
        glow.convert([{**state, "flow.layers.1.extra.weight": torch.zeros(3)}])
    del state["flow.layers.2.block.2.actnorm.logs"]
    with pytest.raises(ImportRefused, match="lacks 1 keys.*flow.layers.2.block.2.actnorm.logs"):
        glow.convert([state])


def test_a_non_zero_prior_buffer_and_two_files_are_refused(ref, tmp_path):
    state = _state(ref, tmp_path)
    with pytest.raises(ImportRefused, match="takes one file"):
        glow.convert([state, state])
    state["prior_h"] = state["prior_h"] + 1
    with pytest.raises(ImportRefused, match="prior_h is not zero"):
        glow.convert([state])
