"""`results.tex`: the report's main tables as LaTeX, for papers (pandas' Styler; booktabs rules, so the
document needs \\usepackage{booktabs}).

Per family: the AUROC of every score per pair, the best score per pair in bold (ties: all of them),
and the bits/dim of the in-distribution and OOD test sets per pair; each caption states the unit (bits
per dimension of the training set's own image), the bound the likelihood is (exact, dequantized,
IWAE-k) and the number of seeds the means are over. Only reads the summary: no model, no statistics.
"""

from __future__ import annotations

import re

import pandas as pd

_SPECIAL = re.compile(r"([&%$#_{}])")


def escape(text: str) -> str:
    """Plain text for a LaTeX caption or cell (names such as "likelihood_ratio", "cifar10:svhn")."""
    return _SPECIAL.sub(r"\\\1", str(text)).replace("~", r"\textasciitilde{}").replace("^", r"\textasciicircum{}")


def _styled(table: pd.DataFrame, *, bold_max: bool) -> pd.io.formats.style.Styler:
    # rounded first, so that scores that print the same are all bold when they tie for the best
    style = table.round(3).style.format("{:.3f}", na_rep="--")
    if bold_max:
        style = style.highlight_max(axis=0, props="textbf:--rwrap;")
    return style.format_index(escape="latex", axis=0).format_index(escape="latex", axis=1)


def _label(*parts: str) -> str:
    return "tab:" + "-".join(re.sub(r"[^A-Za-z0-9]+", "-", p).strip("-") for p in parts)


def _facts(rows: pd.DataFrame) -> str:
    bounds = ", ".join(sorted(rows["bound"].astype(str).unique()))
    seeds = sorted(rows["n_seeds"].unique())
    seeds_text = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
    return (f"Likelihood in bits per dimension of the training set's own image; bound: {escape(bounds)}; "
            f"means over {seeds_text} seed(s).")


def family_tables(summary: pd.DataFrame, family: str) -> str:
    rows = summary[summary["model"] == family]
    auroc = rows.pivot_table(index="short", columns="pair", values="auroc_mean", aggfunc="first", sort=False)
    auroc = auroc.reindex(list(dict.fromkeys(rows["short"])))
    auroc.index.name = auroc.columns.name = None
    likelihood = rows[rows["score"] == "likelihood"].set_index("pair")
    bpd = pd.DataFrame({"in-distribution test": likelihood["bpd_in_test_mean_mean"],
                        "OOD test": likelihood["bpd_out_test_mean_mean"]}).T
    bpd.columns.name = None
    name = escape(family)
    return "\n".join([
        _styled(auroc, bold_max=True).to_latex(
            hrules=True, position_float="centering", label=_label(family, "auroc"),
            caption=f"{name}: AUROC of each OOD score per pair (in:out, OOD = positive; 0.5 = chance), the best "
                    f"score per pair in bold. {_facts(rows)}"),
        _styled(bpd, bold_max=False).to_latex(
            hrules=True, position_float="centering", label=_label(family, "bpd"),
            caption=f"{name}: mean bits/dim of the in-distribution and OOD test sets per pair (lower = more "
                    f"likely). {_facts(rows)}"),
    ])


def latex(summary: pd.DataFrame) -> str:
    header = "% oodbench results: \\usepackage{booktabs}; one AUROC and one bits/dim table per family\n"
    return header + "\n".join(family_tables(summary, family) for family in sorted(summary["model"].unique()))
