"""Both sets of a pair reach the model's size the same way (issue: DiffPath, Heng et al. 2024, Table 7: a
benchmark that upsamples only one set inflates AUROC). Each set says how it was brought to 32x32, and a pair
whose sets were enlarged differently is refused."""

from __future__ import annotations

import pytest

from oodbench.data import load_images
from oodbench.data.loading import check_same_enlargement
from oodbench.errors import OodbenchError


def sets(staged_root, *specs):
    return [load_images(name, "test", data_root=staged_root, limit=2, **kw) for name, kw in specs]


def test_each_set_states_its_transform(staged_root):
    fmnist, resized, cifar, celeba, constant = sets(
        staged_root, ("fashionmnist", {}), ("fashionmnist", {"small_images": "resize"}), ("cifar10", {}),
        ("celeba", {}), ("constant", {}))
    assert (fmnist.transform, fmnist.enlarged) == ("zero-padded 28x28 -> 32x32", "zero-padded from 28x28")
    assert (resized.transform, resized.enlarged) == ("resized bilinearly 28x28 -> 32x32", "resized up from 28x28")
    assert (cifar.transform, cifar.enlarged) == ("as stored, 32x32", "")
    assert "resize to 32x32" in celeba.transform and celeba.enlarged == ""  # downsized: how CelebA is defined at 32x32
    assert constant.transform == "generated at 32x32"


def test_pairs_enlarged_alike_pass_and_others_are_refused(staged_root):
    fmnist, mnist, mnist_resized, cifar_grey, celeba, svhn_like, noise = sets(
        staged_root, ("fashionmnist", {}), ("mnist", {}), ("mnist", {"small_images": "resize"}),
        ("cifar10", {}), ("celeba", {}), ("cifar10", {}), ("noise", {}))
    check_same_enlargement("fashionmnist:mnist", fmnist, mnist)  # both padded from 28x28: the paper's pair
    check_same_enlargement("celeba:cifar10", celeba, svhn_like)  # downsized vs stored at 32: allowed
    check_same_enlargement("fashionmnist:noise", fmnist, noise)  # generated at the model's size
    with pytest.raises(OodbenchError, match=r"fashionmnist is zero-padded from 28x28 .* but mnist is resized up from "
                                            r"28x28 .*DiffPath"):
        check_same_enlargement("fashionmnist:mnist", fmnist, mnist_resized)
    with pytest.raises(OodbenchError, match="but cifar10 is not enlarged"):
        check_same_enlargement("mnist:cifar10", mnist, cifar_grey)
