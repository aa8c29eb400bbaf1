"""Which images a run trains and validates on, and what its record says about them."""

from __future__ import annotations

import dataclasses

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
