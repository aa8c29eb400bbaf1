"""What the CLI prints, as a new user's terminal or log shows it: the tables of `evaluate`, `report`,
`sweep` and `score` with a folder dataset named by a long path, at 80, 100 and 150 columns (150: piped
output), keep every heading and every number whole, never run past the width, and show the folder by
its last path component; and `oodbench --version`."""

from __future__ import annotations

import io
import subprocess
import sys
from importlib.metadata import version
from types import SimpleNamespace

import pytest
from rich.console import Console

import oodbench
from oodbench.cli import _metrics_table, _plan_table, _scores_table
from oodbench.terminal import FittedTable

FOLDER = "folder:/home/someone/projects/datasets/my_long_dataset_folder/my_images_for_ood"
PAIR = f"cifar10:{FOLDER}"
SHOWN_PAIR = "cifar10:folder:…/my_images_for_ood"
WIDTHS = (80, 100, 150)
# The score variants an evaluation without background model or ensemble members writes, with their headings.
SCORES = [("likelihood", "", "BPD", 0.0812), ("input_complexity", "codec=png", "IC png", 0.9512),
          ("input_complexity", "codec=jpeg2000", "IC j2k", 0.9433), ("typicality", "batch=1,seed=0", "typ M=1", 0.4321),
          ("typicality", "batch=2,seed=0", "typ M=2", 0.5012), ("typicality", "batch=5,seed=0", "typ M=5", 0.6021),
          ("typicality", "batch=10,seed=0", "typ M=10", 0.7654), ("typicality", "batch=25,seed=0", "typ M=25", 0.8765),
          ("dose", "", "DoSE", 0.7777), ("likelihood_regret", "refit=posterior", "regret", 0.6543)]


def _row(**changes) -> dict:
    row = dict(model="cv-glow", pair=PAIR, seed=0, setup="s", epochs=10, train_seconds=1234.0, n_in_train=45000,
               n_in_test=10000, n_out_test=1234, bpd_in_train_mean=3.386, bpd_in_test_mean=3.464,
               bpd_out_test_mean=2.389, auroc=0.0812, fpr_at_80_tpr=0.987, ood_lower_bpd=True,
               score="likelihood", score_params="")
    return {**row, **changes}


def _render(renderable, width: int) -> list[str]:
    console = Console(width=width, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.file.getvalue().splitlines()


def _check(lines: list[str], width: int, whole: list[str]) -> None:
    """No line past `width`; each string of `whole` on one line; no ellipsis but a folder's own."""
    assert max(len(line) for line in lines) <= width, "\n".join(lines)
    for text in whole:
        assert any(text in line for line in lines), f"{text!r} is cut or missing at {width} columns:\n" + "\n".join(lines)
    assert "…" not in "\n".join(lines).replace("folder:…", ""), "\n".join(lines)
    assert "/home/someone" not in "\n".join(lines), "the folder is shown by its last path component"


@pytest.mark.parametrize("width", WIDTHS)
def test_the_metrics_table_keeps_every_heading_and_number_whole(width):
    rows = [_row(), _row(model="glow", pair="fashionmnist:mnist", seed=1, auroc=0.5, ood_lower_bpd=False)]
    lines = _render(_metrics_table(rows, title="oodbench evaluate"), width)
    _check(lines, width, ["model", "pair (in:out)", "seed", "trained", "images train/test/OOD", "BPD train/test/OOD",
                          "AUROC", "FPR80", "OOD lower?", "10 ep, 20.6 min", "45,000 / 10,000 / 1,234",
                          "3.386 / 3.464 / 2.389", "0.081", "0.500", "0.987", "yes", "no", "fashionmnist:mnist"])
    if width == 150:  # room for everything: one table, the shortened pair on one line
        assert "(continued)" not in "\n".join(lines) and any(SHOWN_PAIR in line for line in lines)


@pytest.mark.parametrize("width", WIDTHS)
def test_the_scores_table_keeps_every_heading_and_number_whole(width):
    rows = [_row(score=name, score_params=params, auroc=auroc) for name, params, _, auroc in SCORES]
    lines = _render(_scores_table(rows, title="scores"), width)
    _check(lines, width, ["model", "pair (in:out)", "seed", *(heading for *_, heading, _ in SCORES),
                          *(f"{auroc:.3f}" for *_, auroc in SCORES)])


def _column(lines: list[str], index: int) -> str:
    """Column `index` of a bordered rich table's body, its lines joined: the whole of a folded cell."""
    body = [line for line in lines if line.startswith("│")]
    return "".join(line.split("│")[index + 1].strip() for line in body)


@pytest.mark.parametrize("width", WIDTHS)
def test_the_sweep_plan_wraps_long_names_without_cutting_them(width):
    cell = SimpleNamespace(name="cv-glow-folder-home-someone-projects-datasets-my_long_dataset_folder-my_images-seed0")
    plans = [SimpleNamespace(cell=cell, action="skip", reason="no data under --data-root", pairs=(PAIR,), skipped_pairs=()),
             SimpleNamespace(cell=cell, action="evaluate", reason="", pairs=(PAIR, "cifar10:svhn"),
                             skipped_pairs=((PAIR, "missing"),))]
    lines = _render(_plan_table(plans, title="oodbench sweep --profile mine"), width)
    _check(lines, width, ["cell", "action", "pairs to evaluate", "skipped", "evaluate"])
    assert _column(lines, 0) == cell.name * 2, "the run folder's name, whole"
    assert _column(lines, 2).replace(" ", "") == f"{SHOWN_PAIR}{SHOWN_PAIR},cifar10:svhn"


@pytest.mark.parametrize("width", WIDTHS)
def test_the_score_commands_table_keeps_scores_and_verdicts_whole(width):
    """The `score` command's table: a long file name folds; every score and verdict stays whole."""
    headings = ["BPD", "IC png", "IC j2k", "typ M=1", "DoSE", "regret", "verdict"]
    table = FittedTable(title="most and least typical of 3 images", names=("file",), values=headings, left=("verdict",))
    name = "holiday_photos/2024/an_image_file_whose_name_is_much_longer_than_any_column_would_be.png"
    table.add_row(name, "3.142", "-1.234", "-0.567", "12.345", "101.250", "-0.001", "in-distribution")
    table.add_row("b.png", "2.000", "1.000", "0.500", "0.250", "9.000", "0.100", "OOD")
    lines = _render(table, width)
    _check(lines, width, [*headings, "3.142", "-1.234", "-0.567", "12.345", "101.250", "-0.001", "in-distribution", "OOD"])


def test_fitted_table_splits_the_values_only_where_they_do_not_fit():
    table = FittedTable(title="t", names=("name",), values=[f"value {i}" for i in range(12)])
    table.add_row("x", *(f"{i}.000" for i in range(12)))
    assert table.groups(200) == [list(range(12))]
    groups = table.groups(40)
    assert [i for group in groups for i in group] == list(range(12)) and len(groups) > 1
    for group in groups:  # each part, with the name column, within 40 columns
        assert max(len(line) for line in _render(table.table(group, title=None, caption=None), 200)) <= 40


def _python(*code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *code], capture_output=True, text=True, timeout=120)


def test_version_prints_the_package_version_and_exits_0():
    result = _python("-m", "oodbench", "--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"oodbench {oodbench.__version__}\n", "")
    assert oodbench.__version__ == version("oodbench"), "the package and its installed metadata agree"


def test_version_answers_without_importing_torch():
    result = _python("-c", "import sys\nfrom oodbench.cli import main\ntry:\n    main(['--version'])\n"
                           "except SystemExit as stop:\n    print(stop.code, 'torch' in sys.modules, 'pandas' in sys.modules)")
    assert result.stdout.splitlines() == [f"oodbench {oodbench.__version__}", "0 False False"], result.stderr
