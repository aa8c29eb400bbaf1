"""benchmarks.yaml parsing and the priority: CLI flag > profile > default."""

from pathlib import Path

import pytest

from oodbench.config import EvalConfig, TrainConfig, load_profile, resolve
from oodbench.errors import OodbenchError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text):
    path = tmp_path / "benchmarks.yaml"
    path.write_text(text)
    return path


def test_repository_profiles_parse():
    for name in ("demo", "quick", "paper"):
        profile = load_profile(name, REPO / "benchmarks.yaml")
        assert profile.models and profile.pairs
    paper = load_profile("paper", REPO / "benchmarks.yaml")
    assert paper.models["glow"] == {"levels": 3, "steps": 32, "hidden_channels": 512}


def test_priority_flag_over_profile_over_default(tmp_path):
    path = write(tmp_path, "profiles:\n  p:\n    train: {epochs: 3, lr: 0.01}\n")
    profile = load_profile("p", path)
    assert profile.train.epochs == 3 and profile.train.lr == 0.01
    assert profile.train.batch_size == TrainConfig().batch_size  # default where the profile is silent
    final = resolve(profile.train, {"epochs": 7, "lr": None})
    assert final.epochs == 7 and final.lr == 0.01  # the flag wins; an absent flag leaves the profile


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "profiles:\n  p:\n    train: {epoch: 3}\n")
    with pytest.raises(OodbenchError, match=r"unknown key 'epoch' in .*benchmarks.yaml"):
        load_profile("p", path)


def test_unknown_top_level_key(tmp_path):
    path = write(tmp_path, "profiles:\n  p:\n    trian: {}\n")
    with pytest.raises(OodbenchError, match="unknown key 'trian'"):
        load_profile("p", path)


def test_wrong_type_is_an_error(tmp_path):
    path = write(tmp_path, "profiles:\n  p:\n    eval: {batch_size: many}\n")
    with pytest.raises(OodbenchError, match="bad value 'many' for 'batch_size'"):
        load_profile("p", path)


def test_unknown_profile_lists_valid(tmp_path):
    path = write(tmp_path, "profiles:\n  a: {}\n  b: {}\n")
    with pytest.raises(OodbenchError, match="valid profiles: a, b"):
        load_profile("c", path)


def test_no_profile_means_defaults():
    profile = load_profile(None)
    assert profile.train == TrainConfig() and profile.eval == EvalConfig()


def test_a_family_can_override_train_and_eval_settings(tmp_path):
    path = write(tmp_path, "profiles:\n  p:\n    train: {epochs: 3, lr: 0.01}\n    models:\n"
                           "      glow: {steps: 2}\n      pixelcnn: {nr_filters: 8, train: {epochs: 1}, eval: {limit: 5}}\n")
    profile = load_profile("p", path)
    assert profile.models == {"glow": {"steps": 2}, "pixelcnn": {"nr_filters": 8}}
    assert profile.train_for("glow").epochs == 3
    assert profile.train_for("pixelcnn").epochs == 1 and profile.train_for("pixelcnn").lr == 0.01
    assert profile.eval_for("pixelcnn").limit == 5 and profile.eval_for("glow").limit is None


def test_unknown_key_in_a_family_override(tmp_path):
    path = write(tmp_path, "profiles:\n  p:\n    models:\n      glow: {train: {epoks: 1}}\n")
    with pytest.raises(OodbenchError, match=r"unknown key 'epoks' in .*models.glow.train"):
        load_profile("p", path)


def test_a_profile_lists_its_scores_for_every_model(tmp_path):
    path = write(tmp_path, "profiles:\n  p:\n    scores: [likelihood, dose]\n    models:\n      glow: {eval: {limit: 5}}\n")
    profile = load_profile("p", path)
    assert profile.eval.scores == ("likelihood", "dose") and profile.eval_for("glow").scores == ("likelihood", "dose")
    bad = write(tmp_path, "profiles:\n  p:\n    scores: dose\n")
    with pytest.raises(OodbenchError, match="'scores' in .* must be a list of score names"):
        load_profile("p", bad)


def test_seeds_per_dataset_and_the_background_rate(tmp_path):
    profile = load_profile("p", write(tmp_path, "profiles:\n  p:\n    seeds: {default: [0], cifar10: [0, 1, 2]}\n"
                                                "    background: 0.3\n"))
    assert profile.seeds_for("cifar10") == (0, 1, 2) and profile.seeds_for("svhn") == (0,)
    assert profile.background == 0.3 and load_profile("p", write(tmp_path, "profiles:\n  p: {}\n")).background == 0.2
    for bad, fragment in (("background: 1.5", "must be at most 1"), ("background: 0", "greater than 0"),
                          ("seeds: {cifar10: []}", "seeds.cifar10"), ("seeds: [a]", "integer seeds")):
        with pytest.raises(OodbenchError, match=fragment):
            load_profile("p", write(tmp_path, f"profiles:\n  p:\n    {bad}\n"))
