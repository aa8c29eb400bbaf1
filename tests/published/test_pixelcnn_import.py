"""pclucas14/pixel-cnn-pp files converted into oodbench's PixelCNN++ give the reference's likelihoods.

No released file is needed: a small reference model (../shared/peers, its own code) gets random values in
every parameter (weight norm's g included, so the per-input-channel norm of its transposed convolutions
matters), is saved the ways the repository's files were saved (plain, under DataParallel, with the
2018 files' plain-weight shifted convolutions in torch's pre-1.6 file format, with torch's newer
weight-norm parametrization), read
back with `read_state`, converted, and compared on the same 8-bit images: the mixture parameters (the
network's output) and each image's log p(x) (the reference's loss, one image at a time), to 1e-9 in
float64 and a relative 1e-5 in float32.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from oodbench.published.base import Converted, ImportRefused, read_state
from oodbench.published.pixelcnn import SOURCE, convert
from tests.published.peers import needs_peers, randomise_, reference_modules

# The reference builds its layers with torch.nn.utils.weight_norm, which torch now warns is deprecated.
pytestmark = [needs_peers, pytest.mark.filterwarnings("ignore:.*weight_norm.*deprecated:FutureWarning")]

# The two source patches Python 3 and a CPU need (../shared/peers/bench_pixelcnnpp.py lists them).
PATCHES = {"utils": [("print e\n", "print(e)\n"),
                     ("torch.zeros(xs + [nr_mix]).cuda()", "torch.zeros(xs + [nr_mix], device=x.device)")]}
SIZE = 16  # two halvings: 16 -> 8 -> 4


@pytest.fixture(scope="module")
def ref():
    return reference_modules("pclucas14+pixel-cnn-pp", ("utils", "layers", "model"), PATCHES)


def _reference(ref, channels: int, variant: str, nr_resnet: int = 1):
    """A small reference PixelCNN++, every parameter random, in eval mode, weights stored as `variant` says."""
    torch.manual_seed(0)  # the reference initialises from the global generator; randomise_ overwrites it all
    net = ref["model"].PixelCNN(nr_resnet=nr_resnet, nr_filters=8, nr_logistic_mix=3, input_channels=channels)
    randomise_(net, torch.Generator().manual_seed(channels), scale=0.3)
    layers = ref["layers"]
    if variant == "plain_shifted":  # the files before commit 16c8b2f: no weight norm on the shifted convolutions
        for module in net.modules():
            if isinstance(module, (layers.down_shifted_conv2d, layers.down_right_shifted_conv2d)):
                torch.nn.utils.remove_weight_norm(module.conv)
    if variant == "parametrizations":  # torch's newer weight norm, same convention (dim=0)
        for module in [m for m in net.modules() if hasattr(m, "weight_g")]:
            torch.nn.utils.remove_weight_norm(module)
            torch.nn.utils.parametrizations.weight_norm(module)
    return net.eval()


def _save(net, variant: str, path: Path) -> Path:
    state = torch.nn.DataParallel(net).state_dict() if variant == "data_parallel" else net.state_dict()
    assert (variant == "data_parallel") == all(key.startswith("module.") for key in state)
    # The 2018 files come from torch < 1.6, whose format was the pre-zip one: write that one for them.
    torch.save(state, path, _use_new_zipfile_serialization=variant != "plain_shifted")
    return path


def _images(channels: int) -> torch.Tensor:
    x = torch.randint(0, 256, (4, channels, SIZE, SIZE), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    x[0, :, :3] = 0  # the edge bins, which take the logistic's tails
    x[1, :, -3:] = 255
    return x


@torch.no_grad()
def _reference_log_px(ref, net, x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mixture parameters, log p(x) per image, log p(x) of the batch) as the reference computes them."""
    scaled = (x.to(dtype) / 255 - 0.5) * 2  # main.py: ToTensor, then rescaling
    net.init_padding = None  # it caches a ones channel sized by the first batch it sees
    out = net(scaled)
    loss = ref["utils"].discretized_mix_logistic_loss if x.shape[1] == 3 else ref["utils"].discretized_mix_logistic_loss_1d
    per_image = torch.stack([-loss(scaled[i:i + 1], out[i:i + 1]) for i in range(len(x))])
    return out, per_image, -loss(scaled, out)


VARIANTS = [(3, "weight_norm", 1), (3, "data_parallel", 1), (3, "plain_shifted", 1), (3, "parametrizations", 1),
            (1, "data_parallel", 2), (1, "plain_shifted", 1)]


@pytest.mark.parametrize(("channels", "variant", "nr_resnet"), VARIANTS)
def test_converted_model_matches_reference(ref, tmp_path, channels, variant, nr_resnet):
    net = _reference(ref, channels, variant, nr_resnet)
    converted = convert([read_state(_save(net, variant, tmp_path / "model.pth"))])
    assert converted.family == SOURCE.family == "pixelcnn"
    assert {k: converted.model_settings[k] for k in ("in_channels", "nr_resnet", "nr_filters", "nr_logistic_mix")} == {
        "in_channels": channels, "nr_resnet": nr_resnet, "nr_filters": 8, "nr_logistic_mix": 3}
    x = _images(channels)
    for dtype in (torch.float32, torch.float64):  # the reference in float32 first, as saved, then in float64
        net.to(dtype)
        their_params, their_log_px, their_batch = _reference_log_px(ref, net, x, dtype)
        model = converted.build(dtype)
        with torch.no_grad():
            params, log_px = model.mixture_params(x), model.log_prob_parts(x)["log_px"]
        assert params.dtype == log_px.dtype == dtype
        param_error = (params - their_params).abs().max().item()
        log_px_error = (log_px - their_log_px).abs().max().item()
        print(f"{channels}ch {variant} {dtype}: mixture params {param_error:.2e} (of {their_params.abs().max():.2f}), "
              f"log p(x) {log_px_error:.2e} (of {their_log_px.abs().min():.0f})")
        if dtype == torch.float64:
            assert param_error < 1e-9 and log_px_error < 1e-9
            assert abs(log_px.sum() - their_batch).item() < 1e-9
        else:
            assert param_error < 1e-5 * their_params.abs().max().item()
            assert ((log_px - their_log_px).abs() < 1e-5 * their_log_px.abs()).all()
            assert abs(log_px.sum() - their_batch).item() < 1e-5 * abs(their_batch.item())


@pytest.fixture
def state(ref, tmp_path):
    """The tensors of a weight-normalised RGB file, read back, ready to be spoiled."""
    return read_state(_save(_reference(ref, 3, "weight_norm"), "weight_norm", tmp_path / "model.pth"))


def _refusal(state) -> str:
    with pytest.raises(ImportRefused) as caught:
        convert([state])
    message = str(caught.value)
    assert "\n" not in message and "supported:" in message
    return message


@pytest.mark.parametrize(("key", "shape"), [("down_layers.1.ul_stream.0.nin_skip.lin_a.weight_v", (8, 24)),
                                            ("upsize_u_stream.1.deconv.bias", (7,)),
                                            ("up_layers.2.ul_stream.0.conv_out.conv.weight_v", (16, 16, 2, 3))])
def test_a_tensor_that_does_not_fit_is_refused(state, key, shape):
    state[key] = torch.zeros(shape)
    assert key.rsplit(".", 1)[0] in _refusal(state)


def test_weight_norm_over_another_dimension_is_refused(state):
    key = "upsize_ul_stream.0.deconv.weight_g"
    state[key] = state[key].reshape(1, 8, 1, 1)  # per output channel: not what the reference computes
    assert key in _refusal(state)


def test_a_converted_state_that_does_not_fit_never_loads(state):
    """Converted.build is strict: a wrong shape is an error, never a partly loaded model."""
    good = convert([state])
    spoiled = dict(good.state, **{"nin_out.weight": torch.zeros(29, 8, 1, 1, dtype=torch.float64)})
    with pytest.raises(ImportRefused, match="nin_out.weight"):
        Converted(good.family, good.model_settings, spoiled, good.architecture).build()


def test_unknown_and_missing_keys_are_refused(state):
    assert "extra.weight" in _refusal({**state, "extra.weight": torch.zeros(3)})
    assert "u_init.bn.running_mean" in _refusal({**state, "u_init.bn.running_mean": torch.zeros(8)})  # norm='batch_norm'
    missing = "down_layers.2.u_stream.1.conv_out.conv.bias"
    assert missing in _refusal({key: value for key, value in state.items() if key != missing})


def test_other_layouts_and_settings_are_refused(state):
    glow_like = {"flow.layers.0.actnorm.loc": torch.zeros(1, 12, 1, 1), "flow.layers.0.invconv.weight": torch.eye(12),
                 "learn_top.weight": torch.zeros(12, 12, 3, 3)}
    assert "no u_init" in _refusal(glow_like)
    two_channels = dict(state, **{"u_init.conv.weight_v": torch.zeros(8, 3, 2, 3)})
    assert "2 image channels" in _refusal(two_channels)
