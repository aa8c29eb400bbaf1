"""The paragraph under results.md's second-order table says, from the table's numbers, which way each gap
points (BPD(q) - BPD(p*) < 0: the OOD set q is rated likelier, the paper's failure), the same gap in the
paper's nats per image, and whether and by how much each prediction agrees with the measured gap. The
rows are made by hand; each gap's nats are the values a second-order CSV would hold beside its bits/dim
(E_q[log p] - E_p*[log p] = -D ln 2 x BPD gap, D = 3,072)."""

from __future__ import annotations

import pandas as pd

from oodbench.report.analyses import gather_analyses, second_order_markdown, second_order_reading

# (bits/dim gap, the same gap in nats at D = 3,072), written out by hand
GAPS = {-0.5: 1064.67, -0.4: 851.74, 2.0: -4258.7, 0.3: -638.8, 0.6: -1277.6, -0.1: 212.93}


def _row(model, seed, pair, q_set, **gaps_bpd) -> dict:
    row = {"run": f"runs/{model}", "model": model, "seed": seed, "pair": pair, "q_set": q_set, "n_dims": 3072}
    for name, bpd in gaps_bpd.items():
        row[f"{name}_bpd"], row[f"{name}_nats"] = bpd, GAPS[bpd]
    return row


ROWS = pd.DataFrame([
    # q likelier, measured; the diagonal term agrees (0.8x), the closed form points the other way (4x)
    _row("cv-glow", 0, "cifar10:svhn", "svhn@test", measured_gap=-0.5, diag_term=-0.4, closed_form=2.0),
    # q less likely, measured; the diagonal term agrees (2x), the covariance term does not (1/3)
    _row("glow", 1, "cifar10:folder:/home/me/a/b/field", "folder:/home/me/a/b/field@test", measured_gap=0.3,
         diag_term=0.6, covariance=-0.1),
])


def test_the_reading_states_each_gaps_direction_and_how_the_predictions_compare():
    text = second_order_reading(ROWS)
    assert "a negative entry means q, the OOD set, gets fewer bits/dim" in text and "higher likelihood" in text
    first, second = text.split("cv-glow (seed 0), cifar10:svhn: ")[1].split("glow (seed 1), ")
    assert "measured, svhn@test is likelier by 0.5 bits/dim (+1,065 nats)" in first
    assert "the diagonal term predicts it likelier by 0.4 bits/dim (+852 nats): the measured sign, 0.80x" in first
    assert "the closed form predicts it less likely by 2 bits/dim (-4,259 nats): the opposite sign, 4.00x" in first
    assert "cifar10:folder:…/field: measured, folder:…/field@test is less likely by 0.3 bits/dim (-639 nats)" in second
    assert "the diagonal term predicts it less likely by 0.6 bits/dim (-1,278 nats): the measured sign, 2.00x" in second
    assert "the covariance term predicts it likelier by 0.1 bits/dim (+213 nats): the opposite sign, 0.33x" in second
    assert "closed form" not in second, "a prediction a row lacks is not mentioned"


def test_the_signs_column_marks_a_missing_prediction_instead_of_a_disagreement():
    table = second_order_markdown(ROWS)
    assert "| no / yes / -" in table and "| - / yes / no" in table


def test_results_md_has_the_reading_under_the_table(tmp_path):
    run = tmp_path / "runs" / "cv-glow-cifar10-seed0"
    (run / "analysis").mkdir(parents=True)
    ROWS.iloc[:1].to_csv(run / "analysis" / "second_order_cifar10_vs_svhn.csv", index=False)
    (tmp_path / "report").mkdir()
    markdown = "\n".join(gather_analyses([run], tmp_path / "report").markdown)
    table_at = markdown.index("| cv-glow ")
    assert markdown.index("Reading the table:") > table_at
    assert "svhn@test is likelier by 0.5 bits/dim" in markdown[table_at:]
