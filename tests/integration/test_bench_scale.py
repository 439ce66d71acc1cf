"""`benchmark scale` end to end on a small graph: our posterior beside both GIES variants; a
rerun reprints the rows it already holds and measures only the rest."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from jobs import bench_scale, benchmark

ARGS = ["scale", "--families", "er", "--seeds", "2", "--gies-seeds", "2", "--n-interventions", "5"]


def _table(out: str) -> list[dict]:
    lines = [ln for ln in out.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[1:]]


def test_scale_table_has_our_row_and_both_gies_variants(capsys, tmp_path, monkeypatch):
    out = str(tmp_path / "scale.csv")
    assert benchmark.main(ARGS + ["--dims", "5", "--out", out]) == 0
    printed = capsys.readouterr().out
    (row,) = _table(printed)
    assert row["graph"] == "er5" and row["GIES seeds"] == "2"
    for col in ("F1", "GIES F1", "pooled GIES F1"):
        assert 0.0 <= float(row[col]) <= 1.0, (col, row[col])
    for col in ("SHD", "GIES SHD", "pooled GIES SHD"):
        assert 0.0 <= float(row[col]) <= 10.0, (col, row[col])
    # d = 5 is within the exact DP's range, so by default the MCMC posterior is checked there.
    assert 0.0 < float(row["MCMC-exact MAE"]) < 0.05, row["MCMC-exact MAE"]
    first = pd.read_csv(out)
    (kept,) = os.listdir(out + ".rows")
    mtime = os.stat(os.path.join(out + ".rows", kept)).st_mtime_ns

    # The same command again measures nothing: the row comes back from the store, marked so,
    # and the CSV is the same file byte for byte.
    measured = []
    real_run = bench_scale._run
    monkeypatch.setattr(bench_scale, "_run", lambda *a: measured.append(a[1]) or real_run(*a))
    before = open(out, "rb").read()
    assert benchmark.main(ARGS + ["--dims", "5", "--out", out]) == 0
    printed = capsys.readouterr().out
    assert measured == [] and "er5: " in printed and "(stored)" in printed
    assert _table(printed) == [row] and open(out, "rb").read() == before
    assert os.stat(os.path.join(out + ".rows", kept)).st_mtime_ns == mtime

    # An unreadable row, or one without its columns (was a KeyError), is measured again (the
    # same numbers: same seeds, same program).
    for damaged in ("{", '{"s_per_run": 1.0}'):
        measured.clear()
        with open(os.path.join(out + ".rows", kept), "w") as f:
            f.write(damaged)
        assert benchmark.main(ARGS + ["--dims", "5", "--out", out]) == 0
        # (twice: the exact episodes, then the same episodes under MCMC)
        assert measured == [5, 5] and "(stored)" not in capsys.readouterr().out
    again = pd.read_csv(out)
    for col in ("ours_f1", "ours_shd", "gies_f1", "gies_shd", "gies_pooled_f1", "mcmc_mae"):
        assert again[col].tolist() == first[col].tolist(), col


def test_a_row_is_reused_only_under_the_same_settings():
    parser = benchmark.build_parser()
    base = parser.parse_args(ARGS + ["--dims", "5", "--out", "a.csv"])
    same = parser.parse_args(ARGS + ["--dims", "5,6", "--families", "er,sf", "--out", "b.csv"])
    assert bench_scale.settings_digest(base) == bench_scale.settings_digest(same)
    for other in (["--seeds", "3"], ["--n-observational", "20"], ["--mcmc-steps", "50"],
                  ["--decisions"], ["--base-seed", "1"], ["--score", "bge"],
                  ["--exact-check-max-d", "0"]):
        changed = parser.parse_args(ARGS + ["--dims", "5"] + other)
        assert bench_scale.settings_digest(changed) != bench_scale.settings_digest(base), other


def test_mcmc_is_checked_against_the_exact_dp_wherever_it_runs():
    from causal_grpo.surrogate_bayes import AnalyticConfig

    post = AnalyticConfig()
    top = post.exact_max_d
    default = benchmark.build_parser().parse_args(ARGS).exact_check_max_d
    assert [bench_scale._checks_mcmc(post, d, default) for d in (3, top, top + 1)] == [
        True, True, False]
    assert not bench_scale._checks_mcmc(post, top, top - 1)


def test_the_chain_gap_is_that_of_the_episodes_reported(tmp_path, monkeypatch):
    """Above the exact DP: the row's chain gap is the mean over seeds of the last update's gap
    of the chains behind its F1, i.e. the episode's rows replayed into a posterior started
    from the episode's own surrogate key."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from causal_grpo.active_learning import cell_keys
    from causal_grpo.surrogate_bayes import AnalyticConfig, make_analytic_surrogate

    seen = []
    real_run = bench_scale._run
    monkeypatch.setattr(bench_scale, "_run",
                        lambda *a: seen.append((a[2], r := real_run(*a))) or r)
    # Sparse graphs and 40 interventions: chains that do not all disagree (a gap below 1).
    d, n_obs = 17, 50
    out = str(tmp_path / "scale.csv")
    assert benchmark.main(ARGS + ["--dims", str(d), "--gies-seeds", "0", "--mcmc-steps", "200",
                                  "--burn-in", "200", "--n-observational", str(n_obs),
                                  "--degree", "0.5,1", "--n-interventions", "40",
                                  "--out", out]) == 0
    (gap,) = pd.read_csv(out)["chain_gap"]
    (keys, (res, _, _)), = seen
    sur = make_analytic_surrogate(AnalyticConfig(mcmc_steps=200, burn_in=200), d)

    def replay(key, values, intervened, valid):
        s = sur.init(cell_keys(key)["surrogate"], jnp.ones((d,), bool))
        s = sur.update(s, values[:n_obs], intervened[:n_obs], valid[:n_obs])
        rows = (values[n_obs:, None], intervened[n_obs:, None], valid[n_obs:, None])
        s, _ = jax.lax.scan(lambda s, r: (sur.update(s, *r), None), s, rows)
        return s.chain_gap, s.edge_probs

    b = res.buffer
    gaps, probs = jax.jit(jax.vmap(replay))(keys, b.values, b.intervened, b.valid)
    np.testing.assert_allclose(np.asarray(probs), np.asarray(res.final_probs), atol=1e-5)
    assert 0 < gap < 1 and gap == pytest.approx(float(np.mean(gaps)), abs=1e-6)


def test_gies_keeps_each_finished_row_and_a_rerun_measures_only_the_rest(capsys, tmp_path,
                                                                         monkeypatch):
    """GIES takes minutes per (d, budget) row at d = 100: an interrupted run goes on from the
    rows it finished."""
    out = str(tmp_path / "gies.csv")
    args = ["gies", "--d", "5", "--budgets", "0,3", "--seeds", "2", "--out", out]
    fits = []
    real_fit = benchmark._gies_fit
    monkeypatch.setattr(benchmark, "_gies_fit", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    assert benchmark.main(args) == 0
    first = pd.read_csv(out).drop(columns="gies_seconds_per_fit")
    assert len(fits) == 4 and len(os.listdir(out + ".rows")) == 2
    capsys.readouterr()
    newest = max(os.listdir(out + ".rows"),
                 key=lambda n: os.stat(os.path.join(out + ".rows", n)).st_mtime_ns)
    os.unlink(os.path.join(out + ".rows", newest))         # as if stopped during budget 3
    assert benchmark.main(args) == 0
    printed = capsys.readouterr().out
    assert len(fits) == 6 and printed.count("(kept)") == 1
    # Which posterior the table's columns are (order MCMC above 16 variables; it said "exact").
    assert "posterior: d = 5: exact DP over orders" in printed
    pd.testing.assert_frame_equal(pd.read_csv(out).drop(columns="gies_seconds_per_fit"), first)
    with open(os.path.join(out + ".rows", newest), "w") as f:     # a row without its columns
        f.write('{"gies_f1": 0.5}')
    assert benchmark.main(args) == 0                                # (was a KeyError)
    assert len(fits) == 8
    pd.testing.assert_frame_equal(pd.read_csv(out).drop(columns="gies_seconds_per_fit"), first)
