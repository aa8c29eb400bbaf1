"""`make bench` (scripts/bench.py): the roofline's peaks count the FLOPs of their own kernels, and a family's
fraction of them; bf16-mixed trains under autocast and scores in float32; `--size paper` builds each family at
the size benchmarks.yaml's paper profile gives; a run stopped midway keeps the families it measured."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench"]


def test_roofline_counts_each_kernels_flops(bench):
    peaks = bench.roofline(torch.device("cpu"), steps=1, warmup=0, matmul_n=64, conv_shape=(2, 8, 6, 6))
    assert set(peaks) == {"fp32_matmul", "fp32_conv3x3", "bf16_matmul", "bf16_conv3x3"}
    # by hand: a 64^3 product is 2 * 64^3 FLOPs; a 3x3 conv 8 -> 8 on 2 x 6x6 (padded) is 2 * 2*8*8*9*36
    assert peaks["fp32_matmul"]["gflop"] == pytest.approx(2 * 64**3 / 1e9)
    assert peaks["fp32_conv3x3"]["gflop"] == pytest.approx(2 * 2 * 8 * 8 * 9 * 36 / 1e9)
    assert all(p["gflops"] > 0 for p in peaks.values())
    fractions = bench.fraction_of_peak(peaks["fp32_matmul"]["gflops"] / 2, peaks)
    assert fractions["fp32_matmul"] == pytest.approx(0.5) and set(fractions) == {"fp32_matmul", "fp32_conv3x3"}


def test_bf16_mixed_trains_under_autocast_and_scores_in_float32(bench):
    from oodbench.models.glow import Glow, GlowConfig

    seen = []

    class Probe(Glow):  # records whether autocast was on in each kind of pass
        inside_training = False

        def training_log_prob(self, x):
            seen.append(("train", torch.is_autocast_enabled("cpu")))
            Probe.inside_training = True  # Glow's training objective calls log_prob: not a scoring pass
            try:
                return super().training_log_prob(x)
            finally:
                Probe.inside_training = False

        def log_prob(self, x, noise=None):
            if not Probe.inside_training:
                seen.append(("eval", torch.is_autocast_enabled("cpu")))
            return super().log_prob(x, noise)

    config = GlowConfig(in_channels=1, levels=1, steps=1, hidden_channels=4)
    spec = bench.BenchSpec(description="probe", build=lambda: Probe(config), make_input=bench._images(1, 4),
                           config={})
    result = bench.measure(spec, device=torch.device("cpu"), steps=2, warmup=0, train_batch=2, eval_batches=[2],
                           variants=(("bf16-mixed", False),))
    assert result["train"]["precision"] == "bf16-mixed"
    # the timed training steps ran under autocast (the untimed init and FLOP count need not)...
    assert sum(on for kind, on in seen if kind == "train") == 2
    # ...and no scoring pass did: reported likelihoods are float32
    assert [on for kind, on in seen if kind == "eval"] and not any(on for kind, on in seen if kind == "eval")
    assert set(bench.fraction_of_peak(1.0, {"bf16_matmul": {"gflops": 4.0}, "fp32_matmul": {"gflops": 2.0}},
                                      dtype="bf16")) == {"bf16_matmul"}


def test_bf16_mixed_is_refused_where_it_would_be_emulated(bench, monkeypatch, capsys, tmp_path):
    """The same test and message as `oodbench train` (runner/lightning.check_precision), before any timing."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    with pytest.raises(SystemExit) as stop:
        bench.main(["--precision", "bf16-mixed", "--families", "glow", "--out", str(tmp_path / "b.json")])
    assert stop.value.code == 2 and "no native bf16" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def test_paper_size_builds_each_family_at_the_papers_size_from_benchmarks_yaml(bench):
    specs = bench.paper_benches()
    assert list(specs) == ["glow", "cv-glow", "pixelcnn", "vae", "vae-iwae256", "diffusion"]
    configs = {name: spec.config for name, spec in specs.items()}
    # Kingma & Dhariwal 2018: K=32, L=3, 512 hidden; Salimans et al. 2017: nr_resnet=5, 160 filters, 10 mixtures
    for name, coupling in (("glow", "affine"), ("cv-glow", "additive")):
        assert {k: configs[name][k] for k in ("levels", "steps", "hidden_channels", "coupling")} == {
            "levels": 3, "steps": 32, "hidden_channels": 512, "coupling": coupling}
    assert {k: configs["pixelcnn"][k] for k in ("nr_resnet", "nr_filters", "nr_logistic_mix", "dropout")} == {
        "nr_resnet": 5, "nr_filters": 160, "nr_logistic_mix": 10, "dropout": 0.5}
    # Xiao et al. 2020's VAE: 64 base channels, 100 latent dimensions; scored with the paper profile's k=256
    assert (configs["vae"]["base_channels"], configs["vae"]["latent_dim"], configs["vae"]["iw_samples"]) == (64, 100, 1)
    assert configs["vae-iwae256"]["iw_samples"] == 256 and specs["vae-iwae256"].eval_batches == (64,)
    assert all(config["input_shape"] == [3, 32, 32] for config in configs.values())
    assert specs["glow"].build().config.steps == 32
    # Ho et al. 2020's CIFAR-10 U-Net: 128 channels, multipliers (1, 2, 2, 2), 2 blocks, attention at 16, dropout 0.1
    assert {k: configs["diffusion"][k] for k in ("channels", "channel_mult", "layers_per_block", "attention_resolutions",
                                                "dropout")} == {"channels": 128, "channel_mult": (1, 2, 2, 2),
                                                                "layers_per_block": 2, "attention_resolutions": (16,),
                                                                "dropout": 0.1}


TINY_PAPER = """\
profiles:
  paper:
    models:
      glow: {levels: 1, steps: 1, hidden_channels: 4}
      vae: {base_channels: 4, latent_dim: 2, eval: {iw_samples: 3}}
"""


def test_paper_size_follows_the_yaml_and_is_measured_by_the_same_code(bench, tmp_path, monkeypatch):
    config = tmp_path / "benchmarks.yaml"
    config.write_text(TINY_PAPER)
    assert list(bench.paper_benches(config)) == ["glow", "vae", "vae-iwae3"]
    real_roofline = bench.roofline
    monkeypatch.setattr(bench, "roofline", lambda device, steps, warmup: real_roofline(
        device, steps=steps, warmup=warmup, matmul_n=64, conv_shape=(2, 8, 6, 6)))
    out = tmp_path / "bench.json"
    assert bench.main(["--size", "paper", "--config", str(config), "--families", "glow,vae-iwae3", "--steps", "1",
                       "--warmup", "0", "--train-batch", "2", "--eval-batches", "2", "--threads", "1",
                       "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert (report["size"], report["config"], report["complete"]) == ("paper", str(config), True)
    assert list(report["families"]) == ["glow", "vae-iwae3"]
    glow = report["families"]["glow"]
    assert glow["config"]["steps"] == 1 and glow["train"]["images_per_s"] > 0
    assert glow["train"]["cuda_peak_mib"] is None and report["cuda_tf32"] is None  # a CPU: no GPU memory to report
    assert report["families"]["vae-iwae3"]["eval"]["inference_mode"]["best"]["batch_size"] == 64


def test_a_run_stopped_midway_keeps_the_families_measured(bench, tmp_path, monkeypatch):
    calls = []

    def measure(spec, **kwargs):
        calls.append(spec.description)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a time limit's signal would stop it
        return _fake_measurement(kwargs["variants"])

    monkeypatch.setattr(bench, "measure", measure)
    monkeypatch.setattr(bench, "roofline", lambda device, steps, warmup: {})
    out = tmp_path / "bench.json"
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--families", "glow,cv-glow", "--steps", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["complete"] is False and list(report["families"]) == ["glow"]


def _fake_measurement(variants):
    trains = [{"images_per_s": 1.0, "batch_size": 2, "precision": p, "compile": c, "speedup_vs_first": 1.0,
               "achieved_gflops": 1.0} for p, c in variants]
    return {"train": trains[0], "train_variants": trains,
            "eval": {"inference_mode": {"best": {"images_per_s": 2.0, "batch_size": 2}, "by_batch_size": []},
                     "no_grad": {"by_batch_size": []}}}


def test_bf16_rows_in_a_list_are_skipped_with_the_reason_where_bf16_would_be_emulated(bench, tmp_path, monkeypatch,
                                                                                     capsys):
    """`make bench` asks for fp32 and bf16, eager and compiled: on a CPU without bf16 matrix units the bf16 rows
    are left out and the output and the JSON say why, instead of timing an emulated bf16."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    asked = []
    monkeypatch.setattr(bench, "measure", lambda spec, **kwargs: asked.append(kwargs["variants"])
                        or _fake_measurement(kwargs["variants"]))
    peak = {"gflops": 2.0}
    monkeypatch.setattr(bench, "roofline", lambda device, steps, warmup: {"fp32_matmul": peak, "bf16_matmul": peak})
    out = tmp_path / "bench.json"
    assert bench.main(["--families", "glow", "--precision", "32-true,bf16-mixed", "--compile", "off,on",
                       "--out", str(out)]) == 0
    assert asked == [[("32-true", False), ("32-true", True)]]
    report = json.loads(out.read_text())
    assert list(report["skipped"]) == ["bf16-mixed"] and "no native bf16" in report["skipped"]["bf16-mixed"]
    assert "skipping bf16-mixed" in capsys.readouterr().err
    assert [v["fraction_of_peak"] for v in report["families"]["glow"]["train_variants"]] == [{"fp32_matmul": 0.5}] * 2


def test_an_unknown_family_at_a_size_lists_that_sizes_families(bench, capsys):
    with pytest.raises(SystemExit) as stop:
        bench.main(["--size", "paper", "--families", "glow-default-1ch"])
    assert stop.value.code == 2
    assert "valid: glow, cv-glow, pixelcnn, vae, vae-iwae256" in capsys.readouterr().err
