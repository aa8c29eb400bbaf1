"""Released diffusers DDPMs imported into oodbench's diffusion family score the bound diffusers' own model
and scheduler give (published/ddpm.py).

A small UNet2DModel laid out like google/ddpm-cifar10-32's (attention on one side, its time embedding and
padding settings), every tensor random, is saved with its DDPMScheduler by `save_pretrained` in each layout
a release comes in (a pipeline folder, everything side by side, three files, .bin weights, the deprecated
attention names of the 2022 conversions), imported, built, and its per-image bound compared with the one
tests/models/ddpm_reference.py computes from the diffusers model and scheduler read back from the same
folder with `from_pretrained`, on the same images, time points and Gaussians: to 1e-9 nats in float64 and a
relative 1e-5 in float32. Releases oodbench would score by another bound are refused in one line.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml

from oodbench.models.diffusion.config import DEFAULT_TIME_POINTS
from oodbench.published import SOURCES, ddpm
from oodbench.published.base import ImportRefused
from oodbench.runner.run_loading import load_module
from tests.cli_runs import run_cli
from tests.models.ddpm_reference import float64_scheduler, reference_bound
from tests.published.peers import randomise_

STEPS = 12
UNET = dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=4, norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
            attention_head_dim=None)
SCHEDULER = dict(num_train_timesteps=STEPS, beta_start=0.01, beta_end=0.2, beta_schedule="linear",
                 variance_type="fixed_large", clip_sample=True)


def released(folder, layout="pipeline", safe=True, unet=None, scheduler=None, seed=0):
    """A random UNet2DModel and DDPMScheduler written by save_pretrained into `folder` (created)."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    model = UNet2DModel(**{**UNET, **(unet or {})})
    randomise_(model, torch.Generator().manual_seed(seed), scale=0.2)
    sched = DDPMScheduler(**{**SCHEDULER, **(scheduler or {})})
    if layout == "pipeline":
        DDPMPipeline(unet=model, scheduler=sched).save_pretrained(folder, safe_serialization=safe)
    else:  # "flat": the two side by side, as google/ddpm-cifar10-32's top level
        model.save_pretrained(folder, safe_serialization=safe)
        sched.save_pretrained(folder)
    return folder


def images(shape=(3, 3, 8, 8), seed=5):
    x = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    x.view(-1)[:2] = torch.tensor([0, 255], dtype=torch.uint8)
    return x


def reference(folder, sub, x, t, gaussians):
    """The bound from diffusers' own UNet2DModel and DDPMScheduler read back from the release, float64."""
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(folder / sub[0] if sub[0] else folder).double().eval()
    scheduler = DDPMScheduler.from_pretrained(folder / sub[1] if sub[1] else folder)
    return reference_bound(unet, float64_scheduler(scheduler), x, t, gaussians)


def stratified(batch, k, seed=6):
    u = torch.rand(batch, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (u + torch.arange(k, dtype=torch.float64)) / k


def assert_bound_matches(converted, folder, sub, k):
    x = images()
    t = stratified(x.shape[0], k)
    gaussians = torch.randn((x.shape[0], k + 1, *x.shape[1:]), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    ref = reference(folder, sub, x, t, gaussians)
    with torch.no_grad():
        ours = converted.build(torch.float64).bound_parts(x, t, gaussians)
        ours32 = converted.build(torch.float32).bound_parts(x, t.float(), gaussians.float())
    for name in ("prior", "diffusion", "reconstruction", "log_px"):
        torch.testing.assert_close(ours[name], ref[name], rtol=0, atol=1e-9, msg=name)
    torch.testing.assert_close(ours32["log_px"].double(), ref["log_px"], rtol=1e-5, atol=0)
    return ours


@pytest.mark.parametrize("k", [STEPS - 1, 3])
def test_a_pipeline_folder_scores_diffusers_bound(tmp_path, k):
    folder = released(tmp_path / "ddpm")
    converted, files = ddpm.load((folder,))
    assert [f.relative_to(folder).as_posix() for f in files] == [
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"]
    assert converted.family == "diffusion" and converted.image_size == 8
    assert converted.model_settings == {
        "in_channels": 3, "image_size": 8, "channels": 8, "channel_mult": [1, 2], "layers_per_block": 1,
        "attention_resolutions": [4], "dropout": 0.0, "norm_groups": 4, "flip_sin_to_cos": False, "freq_shift": 1,
        "downsample_padding": 0, "norm_eps": 1e-6, "time": "discrete", "timesteps": STEPS, "beta_start": 0.01,
        "beta_end": 0.2, "variance": "fixed_large", "clip_denoised": True, "sample_steps": STEPS}
    parts = assert_bound_matches(converted, folder, ("unet", "scheduler"), k)
    assert converted.build().bound == f"ddpm-elbo-{DEFAULT_TIME_POINTS}t"
    torch.testing.assert_close(sum(parts[f"band_{b}"] for b in range(4)), parts["diffusion"])


@pytest.mark.parametrize("scheduler", [{"variance_type": "fixed_small"}, {"clip_sample": False},
                                       {"variance_type": "fixed_small", "clip_sample": False}])
def test_the_other_reverse_processes_are_scored_by_the_bound_they_were_released_with(tmp_path, scheduler):
    """google/ddpm-cat-256 samples with the posterior's variance (fixed_small); a release may not clip x_0^:
    the import keeps both (DiffusionConfig.variance, clip_denoised), and the bound is diffusers' own for them."""
    folder = released(tmp_path / "ddpm", layout="flat", scheduler=scheduler, seed=3)
    converted, _ = ddpm.load((folder,))
    assert converted.model_settings["variance"] == scheduler.get("variance_type", "fixed_large")
    assert converted.model_settings["clip_denoised"] == scheduler.get("clip_sample", True)
    assert_bound_matches(converted, folder, ("", ""), 5)


@pytest.mark.parametrize("layout, safe, how", [("flat", True, "folder"), ("flat", False, "files"), ("pipeline", False, "files")])
def test_every_layout_of_a_release_imports(tmp_path, layout, safe, how):
    folder = released(tmp_path / "ddpm", layout=layout, safe=safe, seed=1)
    sub = ("unet", "scheduler") if layout == "pipeline" else ("", "")
    if how == "folder":
        paths = (folder,)
    else:
        unet_dir, sched_dir = (folder / s if s else folder for s in sub)
        weights = unet_dir / ("diffusion_pytorch_model.safetensors" if safe else "diffusion_pytorch_model.bin")
        paths = (sched_dir / "scheduler_config.json", weights, unet_dir / "config.json")  # any order
    converted, files = ddpm.load(paths)
    assert files[1].suffix == (".safetensors" if safe else ".bin")
    assert_bound_matches(converted, folder, sub, 3)


def test_deprecated_attention_names_are_renamed_as_diffusers_renames_them(tmp_path):
    """The 2022 conversions saved the attention block's q, k, v and output projection as query, key, value and
    proj_attn; diffusers renames them on load, and so does the import."""
    from safetensors.torch import load_file, save_file

    folder = released(tmp_path / "ddpm", layout="flat", seed=2)
    path = folder / "diffusion_pytorch_model.safetensors"
    new = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = load_file(str(path))
    old = {}
    for key, value in state.items():
        for ours, theirs in new.items():
            key = key.replace(f".{ours}.", f".{theirs}.") if ".attentions." in key else key
        old[key] = value
    assert sum(".proj_attn." in key for key in old) == 2 * 4  # (weight, bias) x 4 attention blocks (down, mid, 2 up)
    save_file(old, str(path))
    converted, _ = ddpm.load((folder,))
    assert_bound_matches(converted, folder, ("", ""), 4)


def refusal(tmp_path, **changes):
    folder = released(tmp_path / "ddpm", layout="flat", **changes)
    with pytest.raises(ImportRefused) as info:
        ddpm.load((folder,))
    message = str(info.value)
    assert "\n" not in message and "supported:" in message
    return message


@pytest.mark.parametrize("changes, says", [
    ({"scheduler": {"beta_schedule": "squaredcos_cap_v2"}}, "beta_schedule='squaredcos_cap_v2'"),
    ({"scheduler": {"prediction_type": "v_prediction"}}, "prediction_type='v_prediction'"),
    ({"scheduler": {"variance_type": "learned_range"}}, "variance_type='learned_range'"),
    ({"scheduler": {"trained_betas": [0.1] * STEPS}}, "trained_betas"),
    ({"unet": {"num_class_embeds": 10}}, "class-conditional"),
    ({"unet": {"out_channels": 6}}, "6 output channels"),
    ({"unet": {"attention_head_dim": 4}}, "attention_head_dim=4"),
    ({"unet": {"resnet_time_scale_shift": "scale_shift"}}, "resnet_time_scale_shift='scale_shift'"),
    ({"unet": {"down_block_types": ("DownBlock2D", "SkipDownBlock2D")}}, "SkipDownBlock2D"),
    ({"unet": {"up_block_types": ("UpBlock2D", "UpBlock2D")}}, "attention at sides [4] on the way down"),
])
def test_releases_scored_by_another_bound_are_refused(tmp_path, changes, says):
    assert says in refusal(tmp_path, **changes)


def test_a_config_without_a_setting_takes_diffusers_default_and_is_refused_if_that_differs(tmp_path):
    """An old config.json without attention_head_dim gets diffusers' default (8 channels a head), not the one
    head of Ho et al.'s network that oodbench builds: refused, saying the value is diffusers' default."""
    folder = released(tmp_path / "ddpm", layout="flat")
    config = json.loads((folder / "config.json").read_text())
    del config["attention_head_dim"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ImportRefused, match="attention_head_dim=8 \\(diffusers' default"):
        ddpm.load((folder,))


def test_incomplete_releases_are_refused(tmp_path):
    folder = released(tmp_path / "ddpm", layout="flat")
    with pytest.raises(ImportRefused, match="exactly three files"):
        ddpm.load((folder / "config.json", folder / "scheduler_config.json"))
    with pytest.raises(ImportRefused, match="does not exist"):
        ddpm.load((folder / "config.json", folder / "missing.safetensors", folder / "scheduler_config.json"))
    (folder / "scheduler_config.json").unlink()
    with pytest.raises(ImportRefused, match="holds no diffusers DDPM"):
        ddpm.load((folder,))
    (folder / "broken").mkdir()
    (folder / "broken" / "config.json").write_text("{not json")
    (folder / "broken" / "scheduler_config.json").write_text("{}")
    (folder / "broken" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(ImportRefused, match="not a readable JSON file"):
        ddpm.load((folder / "broken",))


def test_import_command_writes_a_run_that_scores_the_release(tmp_path, capsys):
    """`oodbench import diffusers-ddpm FOLDER --dataset cifar10`: a 32x32 release becomes a run folder whose
    checkpoint, read back as evaluate reads it, gives diffusers' bound; the record names the three files."""
    folder = released(tmp_path / "ddpm-cifar10", unet={"sample_size": 32, "block_out_channels": (8, 8)}, seed=3)
    run = tmp_path / "runs" / "ddpm"
    code, out, err = run_cli(["import", "diffusers-ddpm", folder, "--dataset", "cifar10", "--run-dir", run], capsys)
    assert code == 0, err
    assert "report 3.75 bits/dim" in " ".join(out.split())
    record = yaml.safe_load((run / "config.yaml").read_text())
    assert record["model"] == "diffusion" and record["model_settings"]["time"] == "discrete"
    names = [f["name"] for f in record["origin"]["files"]]
    assert names == ["config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json"]
    assert record["origin"]["architecture"]["scheduler"]["variance_type"] == "fixed_large"

    module, _ = load_module(run / "checkpoints" / "best.ckpt")
    model = copy.deepcopy(module.model).double()
    x = images((2, 3, 32, 32))
    t = stratified(2, 3)
    gaussians = torch.randn((2, 4, 3, 32, 32), generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    with torch.no_grad():
        ours = model.bound_parts(x, t, gaussians)["log_px"]
    torch.testing.assert_close(ours, reference(folder, ("unet", "scheduler"), x, t, gaussians)["log_px"], rtol=0, atol=1e-9)

    code, _, err = run_cli(["import", "diffusers-ddpm", folder, "--dataset", "fashionmnist", "--run-dir", tmp_path / "r2"], capsys)
    assert code == 2 and "3x32x32 images; fashionmnist is 1x32x32" in err


def test_the_source_is_registered():
    assert SOURCES.get("diffusers-ddpm").family == "diffusion"
