"""Dataset references and IN:OUT pairs: parsing, canonical text, and one-line errors."""

from __future__ import annotations

import pytest

from oodbench.data import DatasetRef, Pair, get_dataset, list_datasets, parse_dataset_ref, parse_pair
from oodbench.errors import OodbenchError

EXPECTED = {"mnist", "fashionmnist", "kmnist", "cifar10", "cifar100", "svhn", "celeba", "tinyimagenet",
            "imagenet32", "constant", "noise"}


def test_registry_lists_every_dataset_at_32x32():
    specs = {spec.name: spec for spec in list_datasets()}
    assert set(specs) == EXPECTED
    for spec in specs.values():
        assert spec.shape[1:] == (32, 32) and spec.shape[0] in (1, 3)
        assert "test" in spec.splits and spec.licence and spec.source and spec.description
    assert specs["mnist"].shape == (1, 32, 32) and specs["svhn"].shape == (3, 32, 32)
    assert specs["celeba"].splits == ("train", "valid", "test")
    assert "extra" in specs["svhn"].splits


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(OodbenchError) as info:
        get_dataset("nosuch")
    assert "'nosuch'" in str(info.value) and "cifar10" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("text, ref", [
    ("svhn", DatasetRef("svhn")),
    ("gray:cifar10", DatasetRef("gray:cifar10")),
    ("svhn@train", DatasetRef("svhn", "train")),
    (" CIFAR10 ", DatasetRef("cifar10")),
])
def test_parse_dataset_ref(text, ref):
    assert parse_dataset_ref(text) == ref


def test_ref_properties():
    ref = parse_dataset_ref("gray:cifar10@train")
    assert (ref.name, ref.base, ref.gray, ref.split, str(ref)) == ("gray:cifar10", "cifar10", True, "train",
                                                                  "gray:cifar10@train")


@pytest.mark.parametrize("text, in_ref, out_ref", [
    ("cifar10:svhn", DatasetRef("cifar10"), DatasetRef("svhn")),
    ("gray:cifar10:svhn", DatasetRef("gray:cifar10"), DatasetRef("svhn")),
    ("cifar10:gray:cifar10", DatasetRef("cifar10"), DatasetRef("gray:cifar10")),
    ("cifar10:svhn@train", DatasetRef("cifar10"), DatasetRef("svhn", "train")),
    ("fashionmnist:mnist", DatasetRef("fashionmnist"), DatasetRef("mnist")),
])
def test_parse_pair(text, in_ref, out_ref):
    pair = parse_pair(text)
    assert pair == Pair(in_ref, out_ref)
    assert str(pair) == text and parse_pair(str(pair)) == pair


@pytest.mark.parametrize("text", ["cifar10", "a:b:c", ":svhn", "cifar10:", "cifar10:gray", "gray:gray:cifar10"])
def test_malformed_pair_is_one_line(text):
    with pytest.raises(OodbenchError) as info:
        parse_pair(text)
    message = str(info.value)
    assert "\n" not in message
    assert message == f"malformed pair {text!r}: expected IN:OUT, e.g. cifar10:svhn" or "unknown dataset" in message


def test_pair_with_unknown_dataset_lists_valid_names():
    with pytest.raises(OodbenchError, match=r"unknown dataset 'nosuch'; valid names: .*cifar10.*svhn"):
        parse_pair("cifar10:nosuch")


def test_bad_split_and_gray_on_grey_set():
    with pytest.raises(OodbenchError, match=r"svhn has no split 'valid'.*valid splits: train, test, extra"):
        parse_dataset_ref("svhn@valid")
    with pytest.raises(OodbenchError, match=r"already greyscale"):
        parse_dataset_ref("gray:mnist")
