"""The light lists of names (oodbench/names.py, config.ACCELERATORS), which the CLI checks before the heavy
imports, equal the registries that hold the objects: a name added to one and not the other fails here.
Installed plugins (oodbench/plugins.py) are in both, after the built-ins."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from test_plugins import write_distribution

from oodbench import names
from oodbench.config import ACCELERATORS
from oodbench.data import list_datasets
from oodbench.data.datasets import DATASETS
from oodbench.errors import OodbenchError
from oodbench.models import FAMILIES
from oodbench.scores import SCORES


def test_model_families_are_the_registry():
    assert names.MODELS == tuple(FAMILIES.registered())


def test_scores_are_the_registry():
    assert names.SCORES == tuple(SCORES.registered())


def test_installed_plugins_join_both_the_lists_and_the_registries(tmp_path):
    # Names only: the entry points' modules need not exist, for neither side imports them.
    write_distribution(tmp_path, "some-plugins", {"oodbench.families": {"zeta": "nowhere:FAMILY", "alpha": "nowhere:A"},
                                                  "oodbench.scores": {"mine": "nowhere:SCORE"}})
    check = """
from oodbench import names
from oodbench.models import FAMILIES
from oodbench.scores import SCORES
assert names.MODELS == tuple(FAMILIES.registered()) == (*names.BUILTIN_MODELS, "alpha", "zeta"), names.MODELS
assert names.SCORES == tuple(SCORES.registered()) == (*names.BUILTIN_SCORES, "mine"), names.SCORES
"""
    path = os.pathsep.join([str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": path})
    assert done.returncode == 0, done.stderr


def test_datasets_are_the_registry_with_their_channels_and_splits():
    assert tuple(names.DATASETS) == tuple(DATASETS.registered())
    assert names.DATASETS == {spec.name: names.DatasetName(spec.shape[0], spec.splits) for spec in list_datasets()}


def test_accelerators_are_lightnings():
    from pytorch_lightning.accelerators import AcceleratorRegistry

    # Lightning takes its registry's names and two of its own: "auto" and "gpu" (cuda or mps).
    assert set(ACCELERATORS) == set(AcceleratorRegistry.available_accelerators()) | {"auto", "gpu"}


@pytest.mark.parametrize("light, registry", [
    (lambda: names.check_model("glwo"), lambda: FAMILIES.get("glwo")),
    (lambda: names.dataset("cifar01"), lambda: DATASETS.get("cifar01")),
    (lambda: names.parse_scores("dos"), lambda: SCORES.get("dos")),
])
def test_an_unknown_name_gets_the_registrys_message(light, registry):
    with pytest.raises(OodbenchError) as from_light:
        light()
    with pytest.raises(OodbenchError) as from_registry:
        registry()
    assert str(from_light.value) == str(from_registry.value)


def test_checkpoint_sources_are_the_registry():
    from oodbench.published import SOURCES as CHECKPOINT_SOURCES

    assert names.CHECKPOINT_SOURCES == tuple(CHECKPOINT_SOURCES.registered())
