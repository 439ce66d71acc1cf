"""causal_grpo.results: F1-AUC, confidence intervals, paired tests and Holm against hand-computed
values and scipy, and the per-seed / paired tables built from a steps frame."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from causal_grpo.results import (EARLY_STEPS, f1_auc, fmt_ci, holm, markdown_table, mean_ci,
                                 paired_frame, paired_p, paired_tables, per_seed,
                                 summary_frame)


def steps_of(curves: dict) -> pd.DataFrame:
    """A steps frame from {(scm, method, seed): (f1 list, shd list)}."""
    rows = []
    for (scm, method, seed), (f1, shd) in curves.items():
        for t, (f, s) in enumerate(zip(f1, shd)):
            rows.append({"scm": scm, "method": method, "seed": seed, "step": t, "f1": f,
                         "shd": s, "parent_f1": f / 2, "best_target": -float(t),
                         "auprc": 1 - f, "chain_gap": 0.5 / (t + 1)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- f1_auc

def test_f1_auc_by_hand():
    f1 = np.array([[0.1, 0.2, 0.4, 0.6],
                   [0.9, 1.0, 0.0, 0.5]])
    np.testing.assert_allclose(f1_auc(f1), [(0.2 + 0.4 + 0.6) / 3, 0.5])
    np.testing.assert_allclose(f1_auc(f1, last=2), [0.3, 0.5])
    np.testing.assert_allclose(f1_auc(f1, last=1), [0.2, 1.0])
    np.testing.assert_allclose(f1_auc(f1, last=99), f1_auc(f1))
    # No intervention step: the AUC is step 0's F1.
    np.testing.assert_allclose(f1_auc(f1[:, :1]), [0.1, 0.9])


def test_per_seed_early_and_full_auc_by_hand():
    T = EARLY_STEPS + 2
    f1 = [0.0] + [0.1] * EARLY_STEPS + [1.0, 1.0]           # steps 0..T
    shd = list(range(T + 1))[::-1]
    ps = per_seed(steps_of({("s", "m", 0): (f1, shd)})).iloc[0]
    assert ps["f1_auc_early"] == pytest.approx(0.1)           # steps 1..10
    assert ps["f1_auc"] == pytest.approx((0.1 * EARLY_STEPS + 2.0) / T)
    assert ps["initial_f1"] == 0.0 and ps["final_f1"] == 1.0 and ps["final_shd"] == 0
    assert ps["final_parent_f1"] == 0.5 and ps["best_target"] == -T
    assert ps["final_auprc"] == 0.0 and ps["final_chain_gap"] == pytest.approx(0.5 / (T + 1))
    # Fewer steps than EARLY_STEPS: the early window is the whole episode.
    short = per_seed(steps_of({("s", "m", 0): ([0.3, 0.5, 0.9], [2, 1, 0])})).iloc[0]
    assert short["f1_auc_early"] == pytest.approx(0.7) and short["f1_auc"] == pytest.approx(0.7)


def test_per_seed_matches_f1_auc_on_random_curves():
    rng = np.random.default_rng(0)
    curves = {("s", "m", s): (list(rng.random(16)), list(rng.integers(0, 9, 16))) for s in range(5)}
    ps = per_seed(steps_of(curves))
    f1 = np.array([c[0] for c in curves.values()])
    np.testing.assert_allclose(ps["f1_auc"], f1_auc(f1))
    np.testing.assert_allclose(ps["f1_auc_early"], f1_auc(f1, EARLY_STEPS))


# --------------------------------------------------------------------------- CIs and tests

@pytest.mark.parametrize("n", [2, 3, 10, 57])
def test_mean_ci_is_scipys_t_interval(n):
    x = np.random.default_rng(n).normal(1.0, 2.0, n)
    m, h = mean_ci(x)
    lo, hi = stats.t.interval(0.95, n - 1, loc=np.mean(x), scale=stats.sem(x))
    assert m == pytest.approx(np.mean(x))
    assert (m - h, m + h) == pytest.approx((lo, hi), rel=1e-12)


def test_mean_ci_of_one_value_is_undefined_and_tables_say_so():
    m, h = mean_ci(np.array([0.25]))
    assert m == 0.25 and np.isnan(h)           # not "± 0.000", which reads as no uncertainty
    assert fmt_ci(m, h) == "0.250 ± —"
    assert fmt_ci(-0.0126, 0.004, signed=True) == "-0.013 ± 0.004"
    assert fmt_ci(1.5, 0.25, 2) == "1.50 ± 0.25"
    # Numbers in an SCM's own units keep 3 significant digits: not "-0.00 ± 0.00" in small ones.
    assert fmt_ci(-1.234e-4, 2.5e-5, None) == "-0.000123 ± 2.5e-05"
    assert fmt_ci(-2.345, 0.26, None) == "-2.35 ± 0.26"


def test_paired_p_undefined_cases_are_nan():
    assert np.isnan(paired_p(np.array([0.3])))
    assert np.isnan(paired_p(np.array([0.1, 0.1, 0.1])))
    # The same differences between float32 metrics (the cells' dtype) carry float32 rounding.
    ours = np.array([0.3, 0.4, 0.5], np.float32).astype(float)
    theirs = np.array([0.2, 0.3, 0.4], np.float32).astype(float)
    assert np.ptp(ours - theirs) > 0 and np.isnan(paired_p(ours - theirs))
    assert paired_p(np.array([0.1, 0.1, 0.1 + 1e-5])) < 1e-5      # a real spread, however small


def test_paired_p_and_mean_ci_are_scipy_stats_to_the_last_bit():
    # Published tables were computed with scipy.stats: the same inputs must give the same bits.
    rng = np.random.default_rng(11)
    for _ in range(400):
        n = int(rng.integers(2, 80))
        x = rng.normal(rng.normal(0, 0.2), rng.uniform(1e-3, 3), n)
        for alt in ("greater", "less"):
            assert paired_p(x, alt) == stats.ttest_1samp(x, 0.0, alternative=alt).pvalue
        assert mean_ci(x)[1] == stats.t.ppf(0.975, n - 1) * np.std(x, ddof=1) / np.sqrt(n)
    with pytest.raises(ValueError, match="two-sided"):
        paired_p(x, "two-sided")


def test_paired_frame_against_scipy_ttest_rel_and_hand_win_rate():
    rng = np.random.default_rng(3)
    n, T = 12, 6
    curves = {}
    for s in range(n):
        base_f1 = rng.random(T + 1)
        curves[("g", "random_active", s)] = (list(base_f1), list(rng.integers(0, 6, T + 1)))
        better = np.clip(base_f1 + rng.normal(0.05, 0.1, T + 1), 0, 1)
        # Seeds 0 and 1 tie the baseline exactly (a tie counts one half).
        f1 = base_f1 if s < 2 else better
        shd = curves[("g", "random_active", s)][1] if s < 2 else list(rng.integers(0, 6, T + 1))
        curves[("g", "policy", s)] = (list(f1), list(shd))
    steps = steps_of(curves)
    row = paired_frame(steps).iloc[0]
    assert (row["scm"], row["method"], row["n_pairs"]) == ("g", "policy", n)

    pol = np.array([curves[("g", "policy", s)][0] for s in range(n)])
    rnd = np.array([curves[("g", "random_active", s)][0] for s in range(n)])
    a, b = f1_auc(pol), f1_auc(rnd)
    assert row["f1_auc_p"] == pytest.approx(stats.ttest_rel(a, b, alternative="greater").pvalue)
    d = a - b
    assert row["f1_auc_diff"] == pytest.approx(d.mean())
    lo, _ = stats.t.interval(0.95, n - 1, loc=d.mean(), scale=stats.sem(d))
    assert row["f1_auc_diff_ci95"] == pytest.approx(d.mean() - lo)
    wins = sum(1.0 if x > 0 else 0.5 if x == 0 else 0.0 for x in d)
    assert row["f1_auc_win_rate"] == pytest.approx(wins / n)

    # Lower SHD is better: the one-sided test is "less".
    pshd = np.array([curves[("g", "policy", s)][1][-1] for s in range(n)], float)
    rshd = np.array([curves[("g", "random_active", s)][1][-1] for s in range(n)], float)
    assert row["final_shd_p"] == pytest.approx(
        stats.ttest_rel(pshd, rshd, alternative="less").pvalue)
    wins = np.sum(pshd < rshd) + 0.5 * np.sum(pshd == rshd)
    assert row["final_shd_win_rate"] == pytest.approx(wins / n)


def test_paired_frame_pairs_by_seed_not_by_row_order():
    base = {("g", "random_active", s): ([0, s / 10, s / 10], [3, 2, 1]) for s in range(4)}
    # The method's seeds come in reverse order and one seed is missing.
    pol = {("g", "p", s): ([0, s / 10 + 0.1, s / 10 + 0.1], [3, 2, 1]) for s in (3, 2, 0)}
    row = paired_frame(steps_of(base | pol)).iloc[0]
    assert row["n_pairs"] == 3 and row["f1_auc_diff"] == pytest.approx(0.1)
    assert row["f1_auc_win_rate"] == 1.0 and np.isnan(row["f1_auc_p"])   # no spread


def test_paired_tables_pair_the_policy_with_every_reference():
    rng = np.random.default_rng(5)
    n, T = 9, 4
    f1 = {m: rng.random((n, T + 1)) for m in ("random_active", "grpo_active", "uncertainty_active")}
    steps = steps_of({("g", m, s): (list(f1[m][s]), [1] * (T + 1)) for m in f1 for s in range(n)})
    paired = paired_tables(steps)
    pairs = list(zip(paired["method"], paired["baseline"]))
    assert pairs == [("grpo_active", "random_active"), ("uncertainty_active", "random_active"),
                     ("grpo_active", "uncertainty_active")]
    row = paired.iloc[2]
    a, b = f1_auc(f1["grpo_active"]), f1_auc(f1["uncertainty_active"])
    assert row["f1_auc_diff"] == pytest.approx((a - b).mean())
    assert row["f1_auc_p"] == pytest.approx(stats.ttest_rel(a, b, alternative="greater").pvalue)
    table = markdown_table(summary_frame(steps), paired)
    # The method rows keep the random baseline; the policy line names the other reference.
    early = f1_auc(f1["grpo_active"], EARLY_STEPS) - f1_auc(f1["uncertainty_active"], EARLY_STEPS)
    assert f"grpo_active − uncertainty_active: Δ F1-AUC 1–10 {early.mean():+.3f}" in table
    tail = table.split("grpo_active − uncertainty_active")[1].splitlines()[0]
    a, b = (f1_auc(f1[m], EARLY_STEPS) for m in ("grpo_active", "uncertainty_active"))
    p = {alt: f"{stats.ttest_rel(a, b, alternative=alt).pvalue:.3g}"
         for alt in ("greater", "less", "two-sided")}
    assert tail.endswith(f"one-sided p {p['greater']} (better), {p['less']} (worse), "
                         f"two-sided p {p['two-sided']}"), tail
    gr = [line for line in table.splitlines() if line.startswith("| grpo_active")][0]
    vs_random = f1_auc(f1["grpo_active"], EARLY_STEPS) - f1_auc(f1["random_active"], EARLY_STEPS)
    assert f"{vs_random.mean():+.3f} ±" in gr
    # Without the policy there is nothing beyond random; without random, no table.
    assert len(paired_tables(steps[steps.method != "grpo_active"])) == 1
    assert paired_tables(steps[steps.method != "random_active"]) is None


# --------------------------------------------------------------------------- Holm

def test_holm_by_hand():
    # Sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> 0.06,
    # adjusted values never decrease along the sorted order).
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    # Capped at 1; ties keep equal adjusted values.
    np.testing.assert_allclose(holm([0.3, 0.6, 0.3]), [0.9, 0.9, 0.9])
    np.testing.assert_allclose(holm([0.5, 0.7]), [1.0, 1.0])
    np.testing.assert_allclose(holm([0.02]), [0.02])


def test_holm_leaves_nan_out_of_the_count_and_keeps_shape():
    out = holm([0.01, np.nan, 0.03])
    assert np.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2]], [0.02, 0.03])
    np.testing.assert_allclose(holm(np.array([[0.2, 0.01], [0.5, 0.04]])), [[0.4, 0.04], [0.5, 0.12]])
    assert holm([]).shape == (0,)


def test_holm_controls_what_bonferroni_controls_and_never_less():
    p = np.random.default_rng(1).random(20) ** 3
    adj = holm(p)
    assert np.all(adj >= p) and np.all(adj <= np.minimum(1, len(p) * p) + 1e-15)


# --------------------------------------------------------------------------- tables

def test_summary_chain_gap_is_the_seed_mean_of_the_last_step_and_the_table_names_the_posterior():
    curves = {("big", "m", s): ([0.1, 0.2, 0.3 + s / 10], [3, 2, 1]) for s in range(3)}
    curves[("small", "m", 0)] = ([0.5, 0.6], [1, 0])
    steps = steps_of(curves)
    steps.loc[steps["scm"] == "big", "chain_gap"] = steps["seed"] * 0.1 + steps["step"] / 100
    steps.loc[steps["scm"] == "small", "chain_gap"] = 0.0
    summary = summary_frame(steps).set_index("scm")
    # last step 2: gaps 0.02, 0.12, 0.22 over seeds 0..2
    assert summary.loc["big", "final_chain_gap_mean"] == pytest.approx(0.12)
    assert summary.loc["small", "final_chain_gap_mean"] == 0.0

    summary["posterior"] = summary.index.map({"big": "order MCMC, K = 10", "small": "exact DP"})
    md = markdown_table(summary.reset_index()).splitlines()
    big, small = md.index("### big"), md.index("### small")
    assert md[big + 2] == ("posterior: order MCMC, K = 10; chain gap after the last step 0.120 "
                           "(mean over seeds, worst method)")
    assert md[big + 4].startswith("| method |")
    assert md[small + 2] == "posterior: exact DP"          # no chains, no gap to report
