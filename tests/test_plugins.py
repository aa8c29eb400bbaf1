"""A model family and an OOD score from another installed package (entry point groups `oodbench.families`
and `oodbench.scores`, oodbench/plugins.py).

End to end: tests/fixtures/plugin_package (its own pyproject.toml) is pip-installed into a temporary folder,
and the CLI, run with that folder on PYTHONPATH, trains its family on real Fashion-MNIST images, evaluates
it with its score against MNIST and reports: the results hold the plugin's rows, and the plugin score's
AUROC is the one its formula gives from scores.csv. The units: a plugin that clashes with a built-in, fails
to import or gives something else than the contract is one line naming its entry point and package.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from oodbench import names, plugins
from oodbench.errors import OodbenchError
from oodbench.registry import Registry

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "plugin_package"
README = Path(__file__).resolve().parents[1] / "README.md"
HEAVY = ("torch", "pandas")


def install(package: Path, site: Path) -> Path:
    """`pip install` the package folder into `site` (offline, no dependencies), from a copy: building writes
    build/ and *.egg-info beside the sources."""
    source = site.parent / f"{package.name}-source"
    shutil.copytree(package, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "--quiet", "--target", str(site), str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return site


def write_distribution(site: Path, name: str, entry_points: dict[str, dict[str, str]],
                       modules: dict[str, str] | None = None) -> None:
    """An installed distribution as importlib.metadata reads it (what pip writes): NAME-1.0.dist-info with
    METADATA and entry_points.txt, and its modules beside it."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{key} = {value}\n" for key, value in points.items()) for group, points in entry_points.items()))
    for module, source in (modules or {}).items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))


def oodbench(args: list, site: Path, cwd: Path, *, runner: str | None = None) -> subprocess.CompletedProcess:
    """`oodbench ARGS` in a new process that sees the packages installed in `site`."""
    path = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    command = ["-c", runner, *map(str, args)] if runner else ["-m", "oodbench", *map(str, args)]
    return subprocess.run([sys.executable, *command], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "COLUMNS": "200"})


# Runs the CLI, then prints which of HEAVY it imported (as tests/test_cli_typos.py does).
IMPORTS = f"""
import sys
from oodbench.cli import main
try:
    main(sys.argv[1:])
finally:
    print("imported:", *[name for name in {HEAVY!r} if name in sys.modules])
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    return install(FIXTURE, tmp_path_factory.mktemp("plugin") / "site")


@pytest.mark.slow
def test_a_plugin_family_and_score_run_train_evaluate_report(installed, staged_root, tmp_path):
    from sklearn.metrics import roc_auc_score

    def run(*args):
        done = oodbench(list(args), installed, tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    # A profile may name the plugin family and its settings. Logits learn fast: a high rate and no warm-up
    # make 8 steps on 256 images a model that tells the sets apart (bits/dim 8.7 vs 8.2, not the uniform 10.45).
    (tmp_path / "benchmarks.yaml").write_text(textwrap.dedent("""
        profiles:
          plugin:
            train: {epochs: 1, batch_size: 32, lr: 0.1, warmup_steps: 0, limit_train: 256}
            models:
              factorized: {tables: pixel}
    """))
    run("train", "--model", "factorized", "--dataset", "fashionmnist", "--data-root", staged_root, "--profile", "plugin",
        "--runs-dir", "runs", "--quiet")
    trained = tmp_path / "runs" / "factorized-fashionmnist-seed0"
    assert (trained / "checkpoints" / "best.ckpt").is_file()
    run("evaluate", "--pair", "fashionmnist:mnist", "--run", trained, "--data-root", staged_root, "--limit", "300",
        "--train-sample", "100", "--scores", "likelihood,complexity_ratio", "--quiet")
    run("report", "--runs", "runs", "--out", "results")

    results = pd.read_csv(tmp_path / "results" / "results.csv")
    assert set(results["model"]) == {"factorized"} and set(results["score"]) == {"likelihood", "complexity_ratio"}
    assert set(results["bound"]) == {"exact"} and set(results["pair"]) == {"fashionmnist:mnist"}
    # The AUROCs are those of the scores' formulas over scores.csv's statistics (results.csv keeps 6 decimals):
    # the plugin score was applied.
    scores = pd.read_csv(trained / "eval" / "fashionmnist_vs_mnist" / "scores.csv")
    compared = scores[scores["set"].isin(["in_test", "out_test"])]
    is_ood = compared["set"] == "out_test"
    assert len(compared) == 600
    auroc = results.set_index("score")["auroc"]
    assert auroc["complexity_ratio"] == pytest.approx(roc_auc_score(is_ood, compared["bpd"] / compared["png_bpd"]), abs=1e-6)
    assert auroc["likelihood"] == pytest.approx(roc_auc_score(is_ood, compared["bpd"]), abs=1e-6)
    assert abs(auroc["complexity_ratio"] - auroc["likelihood"]) > 1e-3  # two different scores, not one twice
    assert np.allclose(compared["score:complexity_ratio"], compared["bpd"] / compared["png_bpd"])
    report = (tmp_path / "results" / "results.md").read_text()
    assert "factorized" in report and "bpd/PNG" in report  # the family and the score's own heading


def test_plugin_names_are_checked_and_listed_before_any_import(installed, tmp_path):
    for args, fragments in [
        (["train", "--model", "factorizd", "--dataset", "mnist"], ["unknown model 'factorizd'", "factorized, glow"]),
        (["evaluate", "--pair", "fashionmnist:mnist", "--model", "factorized", "--scores", "complexity_rato"],
         ["unknown score 'complexity_rato'", "complexity_ratio"]),
    ]:
        done = oodbench(args, installed, tmp_path, runner=IMPORTS)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert all(fragment in lines[0] for fragment in fragments), lines[0]
        assert done.stdout.strip().splitlines()[-1] == "imported:", done.stdout  # no torch, no plugin module
    helped = oodbench(["train", "--help"], installed, tmp_path)
    assert "glow, cv-glow, pixelcnn, vae, diffusion, factorized" in " ".join(helped.stdout.split())


@pytest.mark.slow
def test_a_plugin_that_fails_to_import_is_one_line_from_the_cli(tmp_path, staged_root):
    site = tmp_path / "site"
    write_distribution(site, "broken-plugin", {plugins.FAMILIES_GROUP: {"broken": "broken_plugin:FAMILY"}},
                       {"broken_plugin": "import no_such_module\n"})
    done = oodbench(["train", "--model", "broken", "--dataset", "mnist", "--data-root", staged_root, "--epochs", "1"],
                    site, tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0] == ("error: the plugin model 'broken' (entry point 'broken = broken_plugin:FAMILY' of broken-plugin "
                        "1.0) failed to load: ModuleNotFoundError: No module named 'no_such_module'")
    assert not (tmp_path / "runs").exists()


def test_the_readme_example_is_the_fixture_package():
    section = README.read_text().split("## Your own model or score (plugins)")[1].split("\n## ")[0]
    blocks = {match[1].split("\n", 1)[0].lstrip("# ").strip(): match[1].split("\n", 1)[1]
              for match in re.findall(r"```(toml|python)\n(.*?)```", section, flags=re.S)}
    assert set(blocks) == {"pyproject.toml", "oodbench_factorized/model.py", "oodbench_factorized/score.py"}
    for path, text in blocks.items():
        assert text == (FIXTURE / path).read_text(), path


# In-process units: a registry made for the test over a folder of hand-written distributions.

@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path whose distributions importlib.metadata reads; the names are read afresh. The
    process's own registries have added their plugins (none) before, so these stay out of them."""
    from oodbench.models import FAMILIES
    from oodbench.scores import SCORES

    FAMILIES.registered(), SCORES.registered()
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    plugins._installed.cache_clear()
    before = set(sys.modules)
    yield folder
    plugins._installed.cache_clear()
    for module in set(sys.modules) - before:
        if module.startswith("plugin_"):
            del sys.modules[module]


def registry(group: str) -> Registry:
    """A fresh registry of the group's kind holding the built-in names (placeholders), as the real one does."""
    made: Registry = Registry(plugins.KINDS[group], plugins=group)
    for name in names.BUILTIN_MODELS if group == plugins.FAMILIES_GROUP else names.BUILTIN_SCORES:
        made.add(name, object())
    return made


GOOD = """
from oodbench.models import ModelFamily
from oodbench.models.vae import VAE, VAEConfig
from oodbench.scores.likelihood import Likelihood

class Negated(Likelihood):
    name = "negated"

    def _score(self, stats):
        return -stats["bpd"].to_numpy()

FAMILY = ModelFamily("myvae", "a VAE by another name", VAEConfig, VAE)
SCORE = Negated()
"""


def test_a_plugin_joins_after_the_builtins_and_is_imported_when_first_used(site):
    write_distribution(site, "good-plugin", {plugins.FAMILIES_GROUP: {"myvae": "plugin_good:FAMILY"},
                                             plugins.SCORES_GROUP: {"negated": "plugin_good:SCORE"}}, {"plugin_good": GOOD})
    families, scores = registry(plugins.FAMILIES_GROUP), registry(plugins.SCORES_GROUP)
    assert families.registered() == [*names.BUILTIN_MODELS, "myvae"] and "negated" in scores
    assert "plugin_good" not in sys.modules  # names come from metadata alone
    assert families.get("myvae").name == "myvae" and "plugin_good" in sys.modules
    (variant,) = scores.get("negated")
    assert variant.name == "negated" and variant.short == "BPD"
    with pytest.raises(OodbenchError, match="unknown model 'myvea'; valid names: .*myvae"):
        families.get("myvea")


def test_a_plugin_with_a_builtins_name_is_an_error_naming_both(site):
    write_distribution(site, "clash-plugin", {plugins.FAMILIES_GROUP: {"glow": "plugin_clash:FAMILY"}})
    expected = ("the plugin model 'glow' (entry point 'glow = plugin_clash:FAMILY' of clash-plugin 1.0) has the name "
                "of oodbench's built-in model 'glow'; rename the entry point or uninstall that package")
    with pytest.raises(OodbenchError) as from_registry:
        registry(plugins.FAMILIES_GROUP).registered()
    with pytest.raises(OodbenchError) as from_light_list:
        names.check_model("pixelcnn")  # any name: the installation is ambiguous
    assert str(from_registry.value) == str(from_light_list.value) == expected
    assert plugins.names(plugins.FAMILIES_GROUP, names.BUILTIN_MODELS) == ()  # never shadows the built-in


def test_two_packages_with_one_plugin_name_is_an_error_naming_both(site):
    for package in ("first-plugin", "second-plugin"):
        write_distribution(site, package, {plugins.SCORES_GROUP: {"mine": "plugin_x:SCORE"}})
    with pytest.raises(OodbenchError, match=r"two plugins name the score 'mine': .* of first-plugin 1.0 and .* of "
                                            r"second-plugin 1.0; uninstall one"):
        names.parse_scores("likelihood")


@pytest.mark.parametrize("group, name, module, fragment", [
    (plugins.FAMILIES_GROUP, "broken", "raise RuntimeError('no GPU here\\nsecond line')",
     "failed to load: RuntimeError: no GPU here"),
    (plugins.FAMILIES_GROUP, "stringy", "FAMILY = 'glow'", "gives a str, not an oodbench.models.ModelFamily"),
    (plugins.FAMILIES_GROUP, "renamed", "from oodbench.models import ModelFamily\nfrom oodbench.models.glow import Glow, "
     "GlowConfig\nFAMILY = ModelFamily('glow', 'Glow', GlowConfig, Glow)",
     "gives the family 'glow'; the family's name and the entry point's must be the same"),
    (plugins.SCORES_GROUP, "classy", "from oodbench.scores.likelihood import Likelihood as SCORE",
     "gives the class Likelihood, not an oodbench.scores.Score instance or a tuple of them"),
    (plugins.SCORES_GROUP, "renamed", "from oodbench.scores.likelihood import Likelihood\nSCORE = (Likelihood(),)",
     "gives the score 'likelihood'; each variant's name and the entry point's must be the same"),
])
def test_a_broken_plugin_is_one_line_naming_its_entry_point_and_package(site, group, name, module, fragment):
    write_distribution(site, "bad-plugin", {group: {name: f"plugin_{name}:{'FAMILY' if 'families' in group else 'SCORE'}"}},
                       {f"plugin_{name}": module})
    made = registry(group)
    assert name in made.registered()  # listed from metadata: only using it fails
    with pytest.raises(OodbenchError) as error:
        made.get(name)
    message = str(error.value)
    assert "\n" not in message and fragment in message, message
    assert message.startswith(f"the plugin {plugins.KINDS[group]} {name!r} (entry point '{name} = plugin_{name}:"), message
    assert "of bad-plugin 1.0)" in message


def test_a_plugin_family_must_build_a_likelihood_model(site, monkeypatch):
    from oodbench.models import families

    write_distribution(site, "linear-plugin", {plugins.FAMILIES_GROUP: {"linear": "plugin_linear:FAMILY"}}, {"plugin_linear": """
        from dataclasses import dataclass
        import torch
        from oodbench.models import ModelFamily

        @dataclass(frozen=True)
        class Config:
            in_channels: int = 3

        FAMILY = ModelFamily("linear", "not a likelihood model", Config, lambda config: torch.nn.Linear(1, 1))
    """})
    monkeypatch.setattr(families, "FAMILIES", registry(plugins.FAMILIES_GROUP))
    config = families.model_config("linear", {}, image_shape=(1, 28, 28))
    with pytest.raises(OodbenchError, match="model family 'linear' built a Linear, not an oodbench.models.LikelihoodModel"):
        families.build_model("linear", config)
