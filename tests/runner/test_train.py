"""Which images a run trains and validates on, and what its record says about them."""

from __future__ import annotations

import dataclasses
import importlib.util

import pandas as pd
import pytest
import torch

from oodbench.config import TrainConfig
from oodbench.errors import OodbenchError
from oodbench.runner.train import holdout
from oodbench.schema import RUN_SCHEMA, RunRecord


def test_holdout_is_a_fixed_random_split_shared_by_every_seed():
    train, val = holdout(1000, TrainConfig(val_size=100, seed=0))
    assert len(val) == 100 and len(train) == 900 and not set(train.tolist()) & set(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(1000))
    # Not a slice of the split's end (Tiny-ImageNet's files are sorted by class: the end is other classes).
    assert val.min() < 100 and val.max() > 900
    again, val_other_seed = holdout(1000, TrainConfig(val_size=100, seed=7))
    assert torch.equal(val, val_other_seed) and torch.equal(train, again)


def test_limit_train_takes_nested_subsets_of_the_non_validation_images():
    _, val = holdout(1000, TrainConfig(val_size=100))
    small, val_small = holdout(1000, TrainConfig(val_size=100, limit_train=50))
    large, _ = holdout(1000, TrainConfig(val_size=100, limit_train=300))
    assert len(small) == 50 and torch.equal(val_small, val)
    assert set(small.tolist()) <= set(large.tolist()) and not set(large.tolist()) & set(val.tolist())


def test_validation_is_at_most_a_fifth_and_too_few_images_is_an_error():
    train, val = holdout(10, TrainConfig(val_size=500))
    assert len(val) == 2 and len(train) == 8
    with pytest.raises(OodbenchError, match="too few training images"):
        holdout(0, TrainConfig())


def test_bits_per_dim_is_per_dimension_of_the_datasets_own_image(tmp_path):
    record = RunRecord(model="glow", dataset="mnist", seed=0, data_root=None, data_source="x", image_shape=(1, 32, 32),
                       data_shape=(1, 28, 28), n_train=10, n_val=2)
    assert record.bpd_dims == 784
    path = tmp_path / "config.yaml"
    record.write(path)
    assert RunRecord.read(path) == record
    # Seeds of one setup share it; any other setting makes another setup.
    assert dataclasses.replace(record, seed=3).setup() == record.setup()
    assert dataclasses.replace(record, train={"lr": 0.01}).setup() != record.setup()


def test_a_run_folder_of_an_older_format_is_refused_by_name(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("model: glow\ndataset: mnist\nseed: 0\n")
    with pytest.raises(OodbenchError, match=f"older oodbench .*reads {RUN_SCHEMA}.*--overwrite"):
        RunRecord.read(path)


@pytest.mark.slow
def test_the_logger_flag_passes_through_to_lightning(tmp_path, staged_root, capsys):
    from cli_runs import run_cli

    common = ["train", "--model", "glow", "--dataset", "fashionmnist", "--data-root", staged_root, "--epochs", "1",
              "--limit-train", "64", "--batch-size", "32", "--quiet", "--set", "levels=2", "--set", "steps=1",
              "--set", "hidden_channels=8"]
    code, _, err = run_cli([*common, "--run-dir", tmp_path / "csv", "--logger", "csv"], capsys)
    assert code == 0, err
    lightning_csv = pd.read_csv(tmp_path / "csv" / "logs" / "csv" / "metrics.csv")
    assert {"train_bpd_epoch", "val_bpd"} <= set(lightning_csv.columns)  # Lightning's own CSV, beside the run's logs/metrics.csv
    assert (tmp_path / "csv" / "logs" / "metrics.csv").is_file()
    for name, package in (("wandb", "wandb"), ("mlflow", "mlflow")):
        if importlib.util.find_spec(package) is not None:
            continue
        code, _, err = run_cli([*common, "--run-dir", tmp_path / name, "--logger", name], capsys)
        assert code == 2 and f"needs the {package} package" in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / name).exists() or not any((tmp_path / name).iterdir())  # nothing half-written
    code, _, err = run_cli([*common, "--run-dir", tmp_path / "bad", "--logger", "neptune"], capsys)
    assert code == 2 and "--logger" in err and "csv" in err, err


def test_bf16_only_where_the_hardware_has_it(tmp_path, monkeypatch):
    """A CPU without AVX512-BF16 / AMX would emulate bf16, slower than float32: refused in one line, and the
    GPU path never falls back to the CPU (test_cli: --accelerator gpu without a GPU is an error)."""
    import torch

    from oodbench.errors import OodbenchError
    from oodbench.runner.lightning import make_trainer

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    with pytest.raises(OodbenchError, match="no native bf16.*--precision 32-true"):
        make_trainer(root=tmp_path, accelerator="cpu", devices="1", precision="bf16-mixed", quiet=True)
    make_trainer(root=tmp_path, accelerator="cpu", devices="1", precision="32-true", quiet=True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    make_trainer(root=tmp_path, accelerator="cpu", devices="1", precision="bf16-mixed", quiet=True)


def test_a_set_that_is_its_own_test_split_leaves_a_test_part_out():
    """A flat folder's training leaves out a validation part and, after it, a test part of the same size:
    evaluation's in-distribution test set is never the images the best checkpoint was picked on."""
    train, val = holdout(1000, TrainConfig(val_size=100), test_part=True)
    assert len(val) == 100 and len(train) == 800 and not set(train.tolist()) & set(val.tolist())
    left_out = set(range(1000)) - set(train.tolist()) - set(val.tolist())
    assert len(left_out) == 100
    plain_train, plain_val = holdout(1000, TrainConfig(val_size=100))
    assert torch.equal(val, plain_val) and set(train.tolist()) < set(plain_train.tolist())


TINY = ["--limit-train", "64", "--batch-size", "32", "--quiet", "--set", "levels=2", "--set", "steps=1",
        "--set", "hidden_channels=8"]


def _train(args: list, capsys) -> tuple[int, str, str]:
    from cli_runs import run_cli

    return run_cli(["train", "--model", "glow", "--dataset", "fashionmnist", *TINY, *args], capsys)


def _trained(run) -> dict:
    import json

    return json.loads((run / "trained.json").read_text())


@pytest.mark.slow
def test_max_minutes_keeps_the_profiles_epochs_and_a_refusal_names_what_completed(tmp_path, staged_root, capsys):
    config = tmp_path / "benchmarks.yaml"
    config.write_text("profiles:\n  one:\n    train: {epochs: 1}\n")
    run = tmp_path / "run"
    common = ["--data-root", staged_root, "--run-dir", run]
    # A generous time budget does not replace the profile's epochs: whichever comes first.
    code, out, err = _train([*common, "--config", config, "--profile", "one", "--max-minutes", "0.5"], capsys)
    assert code == 0, err
    assert _trained(run)["epochs"] == 1 and _trained(run)["partial_steps"] == 0
    # A refused budget change names the epochs that completed, not the ones asked for.
    code, _, err = _train([*common, "--config", config, "--profile", "one", "--max-minutes", "0.4"], capsys)
    assert code == 2 and "already trained (1 complete epoch)" in err and "--resume" in err, err


@pytest.mark.slow
def test_a_resume_with_max_minutes_trains_for_its_own_minutes(tmp_path, staged_root, capsys):
    short = ["--data-root", staged_root, "--run-dir", tmp_path / "short", "--epochs", "50", "--max-minutes", "0.01"]
    code, _, err = _train(short, capsys)
    assert code == 0, err
    first = _trained(tmp_path / "short")["steps"]
    assert 1 <= first < 50 * 2  # stopped by the minutes (2 steps an epoch)
    code, out, err = _train([*short, "--resume"], capsys)
    assert code == 0, err
    assert _trained(tmp_path / "short")["steps"] > first, "the resume trained no step: the earlier session's time counted"


@pytest.mark.slow
def test_one_data_root_spelt_two_ways_is_the_same_run(tmp_path, staged_root, capsys, monkeypatch):
    import os

    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(staged_root, tmp_path)
    code, _, err = _train(["--data-root", relative, "--run-dir", "run", "--epochs", "1"], capsys)
    assert code == 0, err
    assert RunRecord.read(tmp_path / "run" / "config.yaml").data_root == str(staged_root.resolve())
    code, out, err = _train(["--data-root", str(staged_root), "--run-dir", "run", "--epochs", "1"], capsys)
    assert code == 0 and "already trained" in out, err
    code, out, err = _train(["--data-root", f"{relative}/../data", "--run-dir", "run", "--epochs", "1"], capsys)
    assert code == 0 and "already trained" in out, err
    code, _, err = _train(["--data-root", "demo", "--run-dir", "run", "--epochs", "1"], capsys)
    assert code == 2 and "other settings (data_root is" in err, err
