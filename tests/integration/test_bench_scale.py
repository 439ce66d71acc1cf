"""`benchmark scale` end to end on a small graph: our posterior beside both GIES variants."""

from __future__ import annotations

from jobs import benchmark


def test_scale_table_has_our_row_and_both_gies_variants(capsys):
    assert benchmark.main(["scale", "--dims", "5", "--families", "er", "--seeds", "2",
                           "--gies-seeds", "2", "--exact-check-max-d", "0",
                           "--n-interventions", "5"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    row = dict(zip(header, (c.strip() for c in lines[-1].strip("|").split("|"))))
    assert row["graph"] == "er5" and row["GIES seeds"] == "2"
    for col in ("F1", "GIES F1", "pooled GIES F1"):
        assert 0.0 <= float(row[col]) <= 1.0, (col, row[col])
    for col in ("SHD", "GIES SHD", "pooled GIES SHD"):
        assert 0.0 <= float(row[col]) <= 10.0, (col, row[col])
