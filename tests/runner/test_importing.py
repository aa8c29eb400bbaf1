"""`oodbench import` end to end: a randomised y0ast/Glow-PyTorch checkpoint, saved by the reference code,
becomes a run that `evaluate --pair cifar10:svhn`, `analyze`, `score` and `report` read on the staged data;
the per-image log p(x) in scores.csv is the reference model's on the same images and noise, the record says
where the weights came from, and the fitted scores are fitted on one seeded half of the test split and
compared on the other. Bad inputs are one-line errors that leave nothing behind."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from oodbench.data import load_images
from oodbench.runner.run_loading import FIT_HALF_SEED, halves
from tests.cli_runs import run_cli
from tests.published.peers import needs_peers
from tests.published.test_glow_import import PATCHES, reference_glow, reference_log_px
from tests.published.peers import reference_modules

pytestmark = [needs_peers, pytest.mark.slow]


@pytest.fixture(scope="module")
def ref():
    return reference_modules("y0ast+Glow-PyTorch", ("utils", "modules", "model"), PATCHES)


@pytest.fixture(scope="module")
def released(ref, tmp_path_factory):
    """A CIFAR-10-shaped y0ast Glow (3x32x32, L=3, K=1, 8 hidden), every tensor random, saved as the repository
    saves it (torch.save of the state dict)."""
    model = reference_glow(ref, channels=3, size=32, levels=3, steps=1, hidden=8, seed=4)
    path = tmp_path_factory.mktemp("released") / "glow_affine_coupling.pt"
    torch.save(model.state_dict(), path)
    return model, path


def test_import_evaluate_analyze_report(ref, released, tmp_path, staged_root, capsys):
    model, path = released
    run = tmp_path / "runs" / "glow-cifar10-y0ast"
    code, out, err = run_cli(["import", "y0ast-glow", path, "--dataset", "cifar10", "--run-dir", run,
                              "--data-root", staged_root], capsys)
    assert code == 0, err
    said = "".join(out.split())  # rich wraps long lines
    assert f"intorunfolder{run}" in said and "report3.39bits/dim" in said

    record = yaml.safe_load((run / "config.yaml").read_text())
    origin = record["origin"]
    assert origin["files"] == [{"name": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}]
    assert origin["repository"] == "y0ast/Glow-PyTorch" and origin["reported_bpd"] == 3.39
    assert "whole cifar10 training split" in origin["trained_on"] and "not oodbench" in origin["trained_by"]
    assert record["model"] == "glow" and record["model_settings"]["levels"] == 3
    assert json.loads((run / "trained.json").read_text())["imported"] is True

    code, out, err = run_cli(["evaluate", "--run", run, "--pair", "cifar10:svhn", "--limit", "60", "--train-sample",
                              "20", "--scores", "likelihood,input_complexity,typicality,dose", "--quiet"], capsys)
    assert code == 0, err
    folder = run / "eval" / "cifar10_vs_svhn"
    rows = json.loads((folder / "metrics.json").read_text())["rows"]
    assert {r["in_split"] for r in rows} == {"test-half"}
    assert all(r["fit_set"].startswith("in_val: the other half of cifar10 test") for r in rows)
    assert rows[0]["epochs"] is None and rows[0]["train_seconds"] is None

    # A second pair scores only its OOD set: the halves and the training sample come from the statistics cache.
    code, out, err = run_cli(["evaluate", "--run", run, "--pair", "cifar10:svhn@train", "--limit", "60",
                              "--train-sample", "20", "--scores", "likelihood", "--quiet"], capsys)
    assert code == 0, err
    assert "statistics of in_train, in_val, in_test came from the run's cache" in " ".join(out.split())

    scores = pd.read_csv(folder / "scores.csv")
    test = load_images("cifar10", "test", data_root=staged_root)
    fit_half, test_half = halves(test, FIT_HALF_SEED)
    in_val, in_test = (scores[scores.set == s] for s in ("in_val", "in_test"))
    assert in_val["index"].tolist() == fit_half[:60].tolist() and in_test["index"].tolist() == test_half[:60].tolist()
    assert not set(in_val["index"]) & set(in_test["index"])

    # The log p(x) the run reports is the reference model's on the same images, with the index-seeded noise
    # the evaluation used (noise seed 0): the file, the import and the scoring, end to end.
    index = torch.tensor(in_test["index"].to_numpy())
    images = test.images[torch.searchsorted(test.index, index)]
    from oodbench.data.quantize import index_noise

    noise = index_noise(index, (3, 32, 32), 0)
    expected = reference_log_px(ref, model.float(), images, noise).numpy()
    np.testing.assert_allclose(in_test["log_px"].to_numpy(), expected, rtol=1e-5)

    code, out, err = run_cli(["analyze", "--run", run, "--pair", "cifar10:svhn", "--what",
                              "decomposition,second-order", "--n-images", "4", "--probes", "2",
                              "--data-root", staged_root], capsys)
    assert code == 0, err
    assert (run / "analysis" / "decomposition_cifar10_vs_svhn.csv").is_file()
    assert (run / "analysis" / "second_order_cifar10_vs_svhn.csv").is_file()

    few = tmp_path / "few.npz"  # the gate on a user's images: fitted on the run's fit half, threshold on its test half
    np.savez(few, x=test.images[:5].permute(0, 2, 3, 1).numpy())
    code, out, err = run_cli(["score", "--run", run, "--images", few, "--scores", "likelihood,typicality", "--out",
                              tmp_path / "gate.csv", "--quiet"], capsys)
    assert code == 0, err
    assert len(pd.read_csv(tmp_path / "gate.csv")) == 5

    code, out, err = run_cli(["report", "--runs", tmp_path / "runs", "--out", tmp_path / "report"], capsys)
    assert code == 0, err
    assert "imported" in out  # the trained column: no epochs, trained elsewhere
    assert "imported: trained elsewhere on 50,000 images" in (tmp_path / "report" / "results.md").read_text()
    results = pd.read_csv(tmp_path / "report" / "results.csv")
    assert set(results["score"]) >= {"likelihood", "typicality", "dose"} and set(results["in_split"]) == {"test-half"}


def test_bad_imports_are_one_line_errors_that_write_nothing(released, tmp_path, staged_root, capsys):
    _, path = released
    run = tmp_path / "run"
    cases = [
        (["import", "y0ast-glwo", path, "--dataset", "cifar10"], "unknown checkpoint source 'y0ast-glwo'"),
        (["import", "y0ast-glow", path, "--dataset", "fashionmnist", "--run-dir", run],
         "holds a model of 3x32x32 images; fashionmnist is 1x32x32"),
        (["import", "y0ast-glow", tmp_path / "missing.pt", "--dataset", "cifar10", "--run-dir", run], "does not exist"),
        (["import", "likelihood-regret-vae", path, "--dataset", "cifar10", "--run-dir", run], "takes 2 file(s)"),
    ]
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, pickled)  # a whole module: needs code to unpickle
    cases.append((["import", "y0ast-glow", pickled, "--dataset", "cifar10", "--run-dir", run], "weights_only"))
    for args, message in cases:
        code, out, err = run_cli(args, capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
        assert not run.exists()

    assert run_cli(["import", "y0ast-glow", path, "--dataset", "cifar10", "--run-dir", run], capsys)[0] == 0
    code, _, err = run_cli(["import", "y0ast-glow", path, "--dataset", "cifar10", "--run-dir", run], capsys)
    assert code == 2 and "already holds a run; pass --overwrite" in err
    assert run_cli(["import", "y0ast-glow", path, "--dataset", "cifar10", "--run-dir", run, "--overwrite"], capsys)[0] == 0


def test_an_imported_fashion_mnist_vae_scores_every_set_resized(tmp_path, staged_root):
    """Xiao et al.'s Fashion-MNIST VAE (1 channel) was trained on 28x28 images resized to 32x32: the import
    says so (small_images: resize, bits/dim per 32x32 dimension), and both sets of a pair are resized, the
    OOD set too, so a pair never compares a padded set with a resized one."""
    import oodbench
    from oodbench.config import EvalConfig
    from oodbench.data import parse_dataset_ref
    from oodbench.runner.layout import RunPaths
    from oodbench.runner.run_loading import RunImages
    from tests.published.test_vae_import import REPO, _reference_nets

    dvae = reference_modules(REPO, ("DCGAN_VAE_pixel",))["DCGAN_VAE_pixel"]
    import types

    net_e, net_g = _reference_nets(types.SimpleNamespace(dvae=dvae), nc=1, ngf=4, nz=5)
    files = [tmp_path / "netG_pixel.pth", tmp_path / "netE_pixel.pth"]  # either order
    torch.save(net_g.state_dict(), files[0])
    torch.save(net_e.state_dict(), files[1])
    run = oodbench.import_checkpoint("likelihood-regret-vae", files, dataset="fashionmnist", run_dir=tmp_path / "vae",
                                     data_root=str(staged_root))
    assert run.model == "vae" and run.record.small_images == "resize" and run.record.bpd_dims == 32 * 32
    assert run.record.model_settings["encoder_activation"] == "relu"

    loader = RunImages(run.record, RunPaths(run.path))
    sets = loader.in_distribution(parse_dataset_ref("fashionmnist"), EvalConfig(limit=4, train_sample=4))
    mnist = loader.load("mnist", "test", 4)
    resized = load_images("mnist", "test", data_root=staged_root, limit=4, small_images="resize")
    padded = load_images("mnist", "test", data_root=staged_root, limit=4)
    assert torch.equal(mnist.images, resized.images) and not torch.equal(mnist.images, padded.images)
    for images in sets.values():
        assert "resized bilinearly" in images.source
