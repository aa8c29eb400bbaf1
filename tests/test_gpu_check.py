"""scripts/gpu_check.sh before the day a GPU runs it: its dry run names every step with its command and
time limit and runs nothing; its summary (scripts/gpu_summary.py) assembles fake step outputs into the
documented JSON; `--devices all` parses; and, marked slow, its smoke mode runs the steps end to end on
the CPU at tiny sizes."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from oodbench.errors import OodbenchError
from oodbench.runner.lightning import device_count, make_trainer
from oodbench.schema import RunRecord

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"
STEPS = ["env", "info", "pytest_gpu", "bench_bench_32-true", "bench_bench_bf16-mixed", "bench_paper_32-true",
         "bench_paper_bf16-mixed", "train", "evaluate", "import", "summary"]
PLAN_LINE = re.compile(r"^\s*(\d+)\. (\S+) \((\d+) s\): (.+)$")


@pytest.fixture(scope="module")
def summary_tool():
    spec = importlib.util.spec_from_file_location("gpu_summary", REPO / "scripts" / "gpu_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _watched_path(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose python, python3, nvidia-smi and make only leave a mark that they ran."""
    bin_dir, mark = tmp_path / "bin", tmp_path / "ran"
    bin_dir.mkdir()
    for name in ("python", "python3", "nvidia-smi", "make", "pip"):
        tool = bin_dir / name
        tool.write_text(f"#!/bin/sh\necho {name} >> '{mark}'\nexit 1\n")
        tool.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return env, mark


def _dry_run(tmp_path: Path, **settings: str) -> tuple[subprocess.CompletedProcess, Path]:
    env, mark = _watched_path(tmp_path)
    env.update(settings)
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(out)], env=env, capture_output=True, text=True,
                          timeout=30)
    return done, mark


def _plan(stdout: str) -> list[tuple[str, int, str]]:
    return [(m[2], int(m[3]), m[4]) for m in map(PLAN_LINE.match, stdout.splitlines()) if m]


def test_dry_run_prints_each_step_its_command_and_limit_and_runs_nothing(tmp_path):
    started = time.monotonic()
    done, mark = _dry_run(tmp_path)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 10  # no torch import, no CUDA
    assert not mark.exists(), f"the dry run ran {mark.read_text()}"
    assert not (tmp_path / "out").exists()
    plan = _plan(done.stdout)
    assert [name for name, _, _ in plan] == STEPS
    assert all(limit > 0 for _, limit, _ in plan)
    assert "within 470 s in all" in done.stdout  # the 8-minute budget, less a margin
    commands = {name: command for name, _, command in plan}
    assert "-m gpu" in commands["pytest_gpu"] and "--junitxml" in commands["pytest_gpu"]
    for size in ("bench", "paper"):
        for precision in ("32-true", "bf16-mixed"):
            command = commands[f"bench_{size}_{precision}"]
            assert f"scripts/bench.py --device cuda --size {size}" in command and f"--precision {precision}" in command
    train = commands["train"]
    for flag in ("--model glow", "--dataset cifar10", "--profile paper", "--max-minutes", "--accelerator gpu",
                 "--devices all", "--data-root"):
        assert flag in train, flag
    assert "--pair cifar10:svhn" in commands["evaluate"] and "--accelerator gpu" in commands["evaluate"]
    assert "gpu_summary.py summarize" in commands["summary"] and "gpu_check.json" in commands["summary"]
    for part in ("scripts/random_release.py", "oodbench import y0ast-glow", "--dataset cifar10",
                 "oodbench evaluate --pair cifar10:svhn", "--accelerator gpu"):
        assert part in commands["import"], part


def test_dry_run_of_the_smoke_mode_puts_every_step_on_the_cpu(tmp_path):
    done, mark = _dry_run(tmp_path, GPU_CHECK_DEVICE="cpu", GPU_CHECK_CONFIG="tiny.yaml", GPU_CHECK_BUDGET_S="200")
    assert done.returncode == 0, done.stderr
    assert not mark.exists()
    commands = {name: command for name, _, command in _plan(done.stdout)}
    assert list(commands) == STEPS and "within 200 s" in done.stdout
    assert "--accelerator cpu --devices all" in commands["train"] and "--config tiny.yaml" in commands["train"]
    assert all("--device cpu" in commands[name] for name in STEPS if name.startswith("bench_"))
    assert "gpu" not in commands["evaluate"].replace("gpu_check", "")


@pytest.mark.parametrize("args, settings, message", [
    ([], {}, "give the output folder"),
    (["--frobnicate", "out"], {}, "unknown option --frobnicate"),
    (["a", "b"], {}, "one OUT folder"),
    (["out"], {"GPU_CHECK_DEVICE": "tpu"}, "must be cuda or cpu"),
])
def test_bad_usage_exits_2_with_a_reason(tmp_path, args, settings, message):
    env, mark = _watched_path(tmp_path)
    done = subprocess.run(["bash", str(SCRIPT), *args], env={**env, **settings}, capture_output=True, text=True,
                          cwd=tmp_path, timeout=30)
    assert done.returncode == 2 and message in done.stderr
    assert not mark.exists()


# ---- the summary, on fake step outputs ------------------------------------------------------------------

def _fake_steps(folder: Path) -> Path:
    """A steps folder as gpu_check.sh leaves it: every kind of outcome once. Returns the fake run folder."""
    folder.mkdir()
    plan = [("env", 60), ("info", 45), ("pytest_gpu", 150), ("bench_paper_32-true", 120), ("bench_paper_bf16-mixed", 120),
            ("train", 300), ("evaluate", 150), ("summary", 30)]
    (folder / "plan.tsv").write_text("".join(f"{name}\t{limit}\tcommand of {name}\n" for name, limit in plan))
    statuses = {"env": (0, 3.5), "info": (0, 2.0), "pytest_gpu": (1, 40.2), "bench_paper_32-true": (0, 30.0),
                "bench_paper_bf16-mixed": (124, 120.0), "train": (0, 200.0)}  # evaluate: skipped; summary: not run
    for name, (rc, seconds) in statuses.items():
        (folder / f"{name}.status").write_text(json.dumps({"rc": rc, "seconds": seconds, "limit_s": 60, "state": "done"}))
        (folder / f"{name}.log").write_text(f"line 1 of {name}\n" + ("x" * 5000) + f"\nlast line of {name}\n")
    (folder / "evaluate.status").write_text(
        '{"rc": null, "seconds": 0, "limit_s": 5, "state": "skipped", "reason": "the 470 s budget was spent"}')
    (folder / "nvidia-smi.csv").write_text("NVIDIA H200, 143771, 580.159.03\n")
    (folder / "info.json").write_text(json.dumps({"torch": "2.11.0", "torch_cuda": "13.0", "cuda_available": True}))
    (folder / "pytest_gpu.xml").write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_gpu" name="test_a"/><testcase classname="tests.test_gpu" name="test_b"/>'
        '<testcase classname="tests.test_gpu" name="test_c"><failure message="boom"/></testcase>'
        '<testcase classname="tests.test_gpu" name="test_d"><skipped message="needs a CUDA device"/></testcase>'
        '</testsuite></testsuites>')
    glow = {"parameters": 44_152_272, "train": {"batch_size": 64, "images_per_s": 1000.0, "cuda_peak_mib": 20_000.0},
            "eval": {"inference_mode": {"best": {"batch_size": 256, "images_per_s": 4000.0, "cuda_peak_mib": 9000.0}},
                     "tf32": {"max_abs_bpd_difference": 2e-4}}}
    (folder / "bench_paper_32-true.json").write_text(json.dumps(
        {"device_name": "NVIDIA H200", "cuda_tf32": {"cudnn_conv": True, "matmul": False},
         "roofline": {"peaks": {"fp32_matmul": {"gflops": 50_000.0}}}, "families": {"glow": glow}}))

    run = folder.parent / "runs" / "glow-cifar10-seed0"
    (run / "logs").mkdir(parents=True)
    RunRecord(model="glow", dataset="cifar10", seed=0, data_root="../shared/data", data_source="npz",
              image_shape=(3, 32, 32), data_shape=(3, 32, 32), n_train=6455, n_val=1613,
              model_settings={"levels": 3, "steps": 32, "hidden_channels": 512},
              train={"batch_size": 64, "precision": "32-true", "max_minutes": 3.0, "accelerator": "gpu", "devices": "all"},
              ).write(run / "config.yaml")
    (run / "trained.json").write_text(json.dumps({"epochs": 3, "steps": 320, "partial_steps": 20, "val_bpd": 4.5,
                                                  "seconds": 160.0}))
    (run / "logs" / "metrics.csv").write_text("epoch,step,train_bpd,val_bpd,lr,seconds\n1,100,6.0,5.5,0.001,60.0\n"
                                              "2,200,5.0,4.8,0.001,100.0\n3,300,4.6,4.5,0.001,140.0\n")
    evaluation = run / "eval" / "cifar10_vs_svhn"
    evaluation.mkdir(parents=True)
    (evaluation / "metrics.json").write_text(json.dumps({"rows": [
        {"score": "dose", "auroc": 0.9},
        {"score": "likelihood", "auroc": 0.12, "bpd_in_test_mean": 3.6, "bpd_out_test_mean": 2.4, "n_in_test": 1017,
         "n_out_test": 10000, "ood_lower_bpd": True, "checkpoint": "best.ckpt"}]}))
    return run


def test_summary_assembles_the_steps_outputs(tmp_path, summary_tool):
    steps = tmp_path / "steps"
    run = _fake_steps(steps)
    out = tmp_path / "out" / "gpu_check.json"
    assert summary_tool.main(["summarize", "--steps", str(steps), "--run", str(run), "--out", str(out),
                              "--meta", "device=cuda", "--meta", "budget_s=470"]) == 0
    summary = json.loads(out.read_text())
    assert summary["device"] == "cuda" and summary["budget_s"] == 470
    states = {s["step"]: s for s in summary["steps"]}
    assert list(states) == ["env", "info", "pytest_gpu", "bench_paper_32-true", "bench_paper_bf16-mixed", "train",
                            "evaluate", "summary"]
    assert {name: s["state"] for name, s in states.items()} == {
        "env": "ok", "info": "ok", "pytest_gpu": "failed", "bench_paper_32-true": "ok",
        "bench_paper_bf16-mixed": "timed_out", "train": "ok", "evaluate": "skipped", "summary": "not_run"}
    assert summary["ok"] is False and summary["seconds"] == pytest.approx(395.7)
    # a failed step carries its exit code and the end of its log; a passing one does not
    assert states["pytest_gpu"]["rc"] == 1 and states["pytest_gpu"]["log_tail"].endswith("last line of pytest_gpu\n")
    assert len(states["pytest_gpu"]["log_tail"]) == 3000 and "log_tail" not in states["train"]
    assert states["evaluate"]["reason"] == "the 470 s budget was spent"
    assert states["train"]["command"] == "command of train" and states["summary"]["limit_s"] == 30

    assert summary["machine"]["nvidia_smi"] == {"name": "NVIDIA H200", "memory_total_mib": 143771.0,
                                                "driver_version": "580.159.03", "gpus": 1}
    assert summary["machine"]["torch"] == "2.11.0"
    pytest_gpu = summary["pytest_gpu"]
    assert (pytest_gpu["passed"], pytest_gpu["failed"], pytest_gpu["errors"], pytest_gpu["skipped"]) == (2, 1, 0, 1)
    assert pytest_gpu["not_passed"] == ["tests.test_gpu::test_c"]

    paper = summary["bench"]["paper"]
    assert paper["bf16-mixed"] is None and summary["bench"]["bench"] == {"32-true": None, "bf16-mixed": None}
    glow = paper["32-true"]["families"]["glow"]
    assert glow["train_images_per_s"] == 1000.0 and glow["train_cuda_peak_mib"] == 20_000.0
    assert glow["eval_images_per_s"] == 4000.0 and glow["eval_cuda_peak_mib"] == 9000.0
    assert glow["eval_tf32_max_abs_bpd_difference"] == 2e-4 and paper["32-true"]["file"] == "steps/bench_paper_32-true.json"

    train = summary["train"]
    assert (train["steps"], train["epochs"], train["val_bpd"], train["batch_size"]) == (320, 3, 4.5, 64)
    assert train["images_per_s"] == pytest.approx(320 * 64 / 160.0)  # 128 images/s, wall time
    assert train["images_per_s_after_first_epoch"] == pytest.approx(200 * 64 / 80.0)  # epochs 2-3: 160 images/s
    assert train["devices"] == "all" and train["n_train"] == 6455 and train["last_epoch_val_bpd"] == 4.5

    evaluation = summary["evaluate"]
    assert evaluation["auroc"] == 0.12 and evaluation["bpd_out_test_mean"] == 2.4 and evaluation["n_out_test"] == 10000

    projection = summary["projection"]
    # 250 epochs of 50,000 images: at 160 images/s 21.70 h, at 1,000 images/s 3.47 h
    assert projection["from_train"]["hours"] == pytest.approx(21.7014, abs=1e-3)
    assert projection["from_bench_paper_fp32"]["hours"] == pytest.approx(3.4722, abs=1e-3)
    assert projection["from_bench_paper_bf16_mixed"] is None
    assert "8,068" in projection["note"] and "6455" in projection["note"]


def test_summary_of_a_run_that_never_started_is_all_nulls(tmp_path, summary_tool):
    steps = tmp_path / "steps"
    steps.mkdir()
    (steps / "plan.tsv").write_text("env\t60\tpick\ninfo\t45\tnvidia-smi\n")
    out = tmp_path / "gpu_check.json"
    assert summary_tool.main(["summarize", "--steps", str(steps), "--run", str(tmp_path / "no-run"), "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert [s["state"] for s in summary["steps"]] == ["not_run", "not_run"] and summary["ok"] is False
    assert summary["machine"] is None and summary["pytest_gpu"] is None and summary["train"] is None
    assert summary["evaluate"] is None and summary["projection"]["from_train"] is None


# ---- --devices all ----------------------------------------------------------------------------------------

def test_devices_all_is_every_gpu_and_one_process_on_a_cpu(tmp_path):
    assert device_count("all", "gpu") == -1 and device_count("all", "cuda") == -1  # Lightning's "every visible GPU"
    assert device_count("all", "cpu") == 1  # a CPU's devices are processes; Lightning refuses -1 there
    assert device_count(" 2 ") == 2 and device_count("0,1") == [0, 1] and device_count("auto") == "auto"
    trainer = make_trainer(root=tmp_path, accelerator="cpu", devices="all", precision="32-true", quiet=True, logger=False)
    assert trainer.num_devices == 1
    with pytest.raises(OodbenchError, match=r"cannot run --accelerator cpu --devices -1 .*int > 0"):
        make_trainer(root=tmp_path, accelerator="cpu", devices="-1", precision="32-true", quiet=True, logger=False)


# ---- the smoke mode: every step end to end on the CPU ---------------------------------------------------

TINY_PAPER = """\
profiles:
  paper:
    train: {batch_size: 32, lr: 0.001, warmup_steps: 10, val_size: 64, limit_train: 256}
    eval: {batch_size: 256, train_sample: 64, limit: 128, match_channels: true}
    models:
      glow: {levels: 2, steps: 1, hidden_channels: 8}
      vae: {base_channels: 4, latent_dim: 4, eval: {iw_samples: 2}}
    pairs: [cifar10:svhn]
    seeds: [0]
"""
# Each code path once: both bench sizes and both precisions, not all four pairings (time).
SMOKE_STEPS = ["env", "info", "pytest_gpu", "bench_bench_32-true", "bench_paper_bf16-mixed", "train", "evaluate",
               "import"]


@pytest.mark.slow
def test_smoke_mode_runs_every_step_end_to_end_on_the_cpu(tmp_path, staged_root):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_PAPER)
    out = tmp_path / "out"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")},
           "GPU_CHECK_DEVICE": "cpu", "GPU_CHECK_CONFIG": str(config), "GPU_CHECK_DATA": str(staged_root),
           "GPU_CHECK_TRAIN_MINUTES": "0.05", "GPU_CHECK_BUDGET_S": "240", "GPU_CHECK_ONLY": ",".join(SMOKE_STEPS),
           "GPU_CHECK_PYTHON": sys.executable, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(SCRIPT), "--pack", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log", "steps.tar.gz"]
    with tarfile.open(out / "steps.tar.gz") as packed:
        names = set(packed.getnames())
    assert {f"steps/{name}.log" for name in SMOKE_STEPS + ["summary"]} <= names and "steps/pytest_gpu.xml" in names
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("gpu_check.")], "the scratch folder is left behind"

    summary = json.loads((out / "gpu_check.json").read_text())
    states = {s["step"]: s["state"] for s in summary["steps"]}
    assert states == {**{name: "skipped" for name in STEPS}, **{name: "ok" for name in SMOKE_STEPS + ["summary"]}}
    assert summary["device"] == "cpu" and summary["machine"]["device"] == "cpu"
    assert summary["pytest_gpu"]["passed"] >= 15 and summary["pytest_gpu"]["failed"] == 0
    assert summary["bench"]["bench"]["32-true"]["families"]["glow"]["train_images_per_s"] > 0
    paper = summary["bench"]["paper"]["bf16-mixed"]["families"]
    assert set(paper) == {"glow", "vae", "vae-iwae2"} and paper["glow"]["parameters"] > 0
    train = summary["train"]
    assert train["finished"] and train["steps"] > 0 and train["devices"] == "all" and train["accelerator"] == "cpu"
    assert train["val_bpd"] is not None and train["n_train"] == 256
    evaluation = summary["evaluate"]  # the likelihood row of the evaluation's metrics.json, as written
    assert {"auroc", "bpd_in_test_mean", "bpd_out_test_mean"} <= set(evaluation) and evaluation["n_out_test"] == 128
    imported = summary["import"]  # a random release at the tiny paper size, imported and evaluated
    assert imported["epochs"] is None and imported["n_out_test"] > 0 and imported["auroc"] is not None
    assert summary["projection"]["from_train"]["hours"] > 0 and summary["projection"]["from_bench_paper_bf16_mixed"]
