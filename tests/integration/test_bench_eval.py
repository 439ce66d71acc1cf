"""``jobs.benchmark eval`` end to end on a tiny configuration: every method on the same cells,
p-values equal to scipy's on the same numbers, Holm by hand, the dense table, resuming."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from causal_grpo.checkpoint import save_checkpoint
from causal_grpo.networks import PolicyConfig
from causal_grpo.phase1 import Phase1Config, init_params
from jobs import bench_eval, benchmark

SCMS = "easy,dense5"
ARGS = ["--scms", SCMS, "--seeds", "3", "--base-seed", "5000", "--n-interventions", "3",
        "--batch-size", "3", "--quiet"]
METHODS = set(bench_eval.REFERENCES) | {bench_eval.UNTRAINED, bench_eval.TRAINED}


def _run_dir(root, seed_untrained: int, seed_trained: int) -> str:
    """A Phase-1 run directory with freshly initialised weights as step_0 and final."""
    cfg = PolicyConfig(hidden=16, layers=1, heads=2)
    for sub, seed in (("step_0", seed_untrained), ("final", seed_trained)):
        save_checkpoint(os.path.join(root, sub), init_params(Phase1Config(policy=cfg, seed=seed)),
                        cfg, training={}, metrics={})
    return str(root)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    runs = [_run_dir(tmp_path_factory.mktemp("run0"), 0, 1),
            _run_dir(tmp_path_factory.mktemp("run1"), 2, 3)]
    out = tmp_path_factory.mktemp("eval")
    argv = ["eval", "--grpo-checkpoint", *runs, "--protocol-checkpoint", runs[1],
            "--output-dir", str(out)] + ARGS
    return argv, out


@pytest.mark.slow
def test_eval_end_to_end(evaluated, capsys):
    argv, out = evaluated
    assert benchmark.main(argv) == 0
    printed = capsys.readouterr().out
    assert sorted(os.listdir(out)) == sorted(bench_eval.OUTPUTS + ("cells",))
    steps = pd.read_csv(out / "steps.csv")
    auc = pd.read_csv(out / "per_seed.csv")
    paired = pd.read_csv(out / "paired.csv")

    # Every method on every SCM and seed; policies once per run, references once.
    assert set(steps["method"]) == METHODS | {"protocol_policy"}
    assert set(steps["scm"]) == {"easy", "dense5"}
    # The protocol run's policy acts on the dense SCM only, and is the same program with the
    # weights of run 1's trained policy there.
    proto = steps[steps.method == "protocol_policy"]
    assert set(proto["scm"]) == {"dense5"} and set(proto["run"]) == {-1}
    same = steps[(steps.method == "trained_policy") & (steps.run == 1) & (steps.scm == "dense5")]
    np.testing.assert_array_equal(proto["variable"].to_numpy(), same["variable"].to_numpy())
    assert set(steps["step"]) == {0, 1, 2, 3}
    counts = steps[steps.step == 0].groupby(["scm", "method"])["run"].nunique()
    assert all(counts[(s, m)] == (2 if m in ("untrained_policy", "trained_policy") else 1)
               for s, m in counts.index)
    assert steps["auprc"].between(0, 1).all() and (steps["shd"] >= 0).all()
    # Paired: the same world for every method of a cell (step 0 precedes any choice).
    first = steps[steps.step == 0].groupby(["scm", "seed"])[["f1", "shd", "auprc"]].nunique()
    assert (first == 1).all().all()
    # The dense protocol's defaults reached its cells: values in [-1, 1], easy's in [-2, 2].
    acted = steps[steps.variable >= 0]
    assert acted[acted.scm == "dense5"]["value"].abs().max() <= 1.0
    assert acted[acted.scm == "easy"]["value"].abs().max() > 1.0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["base_seed"] == 5000 != bench_eval.EVAL_BASE_SEED

    # F1-AUC per seed is the mean F1 over steps 1..3.
    want = steps[steps.step >= 1].groupby(["scm", "method", "run", "seed"])["f1"].mean()
    got = auc.set_index(["scm", "method", "run", "seed"])["f1_auc"]
    np.testing.assert_allclose(got.sort_index(), want.sort_index(), rtol=1e-6)

    # p-values: scipy's one-sided paired t-test on the same numbers; Holm over the 2 SCMs.
    assert len(paired) == 2 * 5 * 2            # runs x references x SCMs
    tested = []
    for (run, ref), block in paired.groupby(["run", "reference"]):
        ps = []
        for _, row in block.iterrows():
            a = auc[(auc.scm == row.scm) & (auc.method == "trained_policy") & (auc.run == run)]
            b = auc[(auc.scm == row.scm) & (auc.method == ref) &
                    (auc.run == (run if ref == "untrained_policy" else -1))]
            diff = a.set_index("seed")["f1_auc"] - b.set_index("seed")["f1_auc"]
            assert row["diff"] == pytest.approx(diff.mean())
            p = (stats.ttest_1samp(diff.to_numpy(), 0.0, alternative="greater").pvalue
                 if diff.std() > 0 else float("nan"))
            assert row.p == pytest.approx(p, nan_ok=True)
            ps.append(p)
            if not np.isnan(p):
                assert re.search(rf"\| {run} \| {row.scm} \| {ref} \| 3 \| .* \| {p:.3g} \|",
                                 printed), (run, row.scm, ref, p)
        tested += [p for p in ps if not np.isnan(p)]
        ok = sorted(p for p in ps if not np.isnan(p))
        # Holm by hand for m <= 2: the smaller p times m, the larger at least that.
        holm = {ok[0]: min(1.0, len(ok) * ok[0])} if ok else {}
        if len(ok) == 2:
            holm[ok[1]] = max(holm[ok[0]], ok[1])
        for p, adj in zip(ps, block["p_holm"]):
            assert (np.isnan(adj) if np.isnan(p) else adj == pytest.approx(holm[p]))
    assert len(tested) >= 10                   # most comparisons have a defined p-value

    # Pooled: a claim holds only if it holds in every run.
    pooled = pd.read_csv(out / "pooled.csv")
    for _, row in pooled.iterrows():
        sel = paired[(paired.scm == row.scm) & (paired.reference == row.reference)]
        assert row.runs == 2 and row.diff_mean == pytest.approx(sel["diff"].mean())
        assert row.holds_every_run == bool(sel["holds"].all())
    # The verdict counts, per reference, the SCMs where the claim holds in every run.
    for ref, g in pooled.groupby("reference"):
        won = int(g["holds_every_run"].sum())
        assert f"- trained policy > {ref}: {won} of 2 SCMs in every run" in printed

    # Acting cost: 1 refit + 2 (d - 1) K updates with K = 8 at d = 5; none for the rest.
    methods = pd.read_csv(out / "methods.csv")
    cost = methods.groupby("method")["updates_per_decision"].unique()
    assert cost["plugin_active"].tolist() == [1 + 2 * 4 * 8] == cost["trained_policy"].tolist()
    assert cost["random_active"].tolist() == [0] == cost["uncertainty_active"].tolist()
    plug = pooled[pooled.reference == "plugin_active"]
    assert (plug["trained_updates"] == 65).all() and (plug["reference_updates"] == 65).all()
    assert (pooled[pooled.reference == "observational"]["reference_updates"] == 0).all()

    # Summary, README's table: references as they are, policies as the mean of the run means,
    # the trained policy's range of run means, the pooled differences with ✓ where they hold.
    for scm in ("easy", "dense5"):
        mean = methods[methods.scm == scm].groupby("method")["f1_auc_mean"].mean()
        runs = methods[(methods.scm == scm) & (methods.method == "trained_policy")]["f1_auc_mean"]
        cells = [f"{mean[m]:.3f}" for m in ("random_active", "observational",
                                             "uncertainty_active", "plugin_active",
                                             "untrained_policy")]
        cells.append(f"{runs.mean():.3f} ({runs.min():.3f}–{runs.max():.3f})")
        for ref in ("plugin_active", "untrained_policy", "uncertainty_active"):
            row = pooled[(pooled.scm == scm) & (pooled.reference == ref)].iloc[0]
            cells.append(f"{row.diff_mean:+.3f}".replace("-", "−")
                         + (" ✓" if row.holds_every_run else ""))
        assert f"| {scm} | {' | '.join(cells)} |" in printed, (scm, cells)

    # Dense table: steps 0 and 1 (5 and 10 lie beyond 3 interventions) for every method.
    dense = pd.read_csv(out / "dense.csv")
    # ... and its summary: after 1 intervention, policies averaged over runs.
    after = dense[dense.step == 1].groupby("method")[["f1_mean", "shd_mean", "auprc_mean"]].mean()
    for method, short in (("plugin_active", "plug-in"), ("trained_policy", "trained"),
                          ("protocol_policy", "trained on the protocol")):
        r = after.loc[method]
        assert (f"| {short} | {r.f1_mean:.3f} | {r.shd_mean:.1f} | {r.auprc_mean:.3f} |"
                in printed), method
    start = dense[dense.step == 0]["f1_mean"].mean()
    assert f"dense5: all methods start from F1 {start:.3f}" in printed
    assert set(dense["scm"]) == {"dense5"} and set(dense["step"]) == {0, 1}
    assert set(dense["method"]) == METHODS | {"protocol_policy"}
    assert "Dense protocol" in printed
    # Without a dense SCM the dense table is empty and the tables are written all the same.
    no_dense = bench_eval.dense_table(pd.read_csv(out / "steps.csv"), [])
    assert no_dense.empty and list(no_dense.columns) == list(dense.columns)
    easy = [df[df.scm == "easy"] for df in (methods, paired, pooled)]
    table = bench_eval.markdown(*easy, no_dense, 3)
    assert "| easy |" in table and "dense5" not in table and "Dense protocol" not in table

    # Resuming: a rerun reads every cell from the cache and prints the same tables.
    stamp = {p: os.path.getmtime(p) for p in (out / "cells").rglob("*.npz")}
    assert benchmark.main(argv) == 0
    again = capsys.readouterr().out
    assert {p: os.path.getmtime(p) for p in (out / "cells").rglob("*.npz")} == stamp
    assert again.split("eval:")[0] == printed.split("eval:")[0]
    pd.testing.assert_frame_equal(pd.read_csv(out / "paired.csv"), paired)


def test_pooled_max_holm_p_is_undefined_when_a_run_is():
    # Run 1's trained policy equals every reference seed for seed: no spread, p undefined, the
    # claim does not hold in every run; the pooled row must not show run 0's tiny p beside it.
    seeds = range(8)
    rows = [("a", m, -1, s, 0.3 + 0.01 * s) for m in bench_eval.REFERENCES for s in seeds]
    rows += [("a", bench_eval.UNTRAINED, r, s, 0.3 + 0.01 * s) for r in (0, 1) for s in seeds]
    rows += [("a", bench_eval.TRAINED, 0, s, 0.5 + 0.01 * s + 0.002 * (s % 3)) for s in seeds]
    rows += [("a", bench_eval.TRAINED, 1, s, 0.3 + 0.01 * s) for s in seeds]
    auc = pd.DataFrame(rows, columns=["scm", "method", "run", "seed", "f1_auc"])
    cost = dict.fromkeys(auc[["scm", "method", "run"]].drop_duplicates().itertuples(
        index=False, name=None), 0)
    paired, pooled = bench_eval.paired_tables(auc, ["a"], 2, cost)
    run0 = paired[(paired.run == 0) & (paired.reference == "random_active")].iloc[0]
    assert run0["holds"] and run0["p_holm"] < 1e-6
    row = pooled[pooled.reference == "random_active"].iloc[0]
    assert not row["holds_every_run"] and np.isnan(row["p_holm_max"])


def test_a_claim_holds_by_holm_adjusted_p_below_005_not_by_raw_p():
    """Two SCMs whose trained-minus-reference differences have raw one-sided p 0.036 and
    0.047: Holm makes both 0.071, so neither holds (the README's ✓), though each is < 0.05."""
    from causal_grpo.results import paired_p
    seeds = range(8)
    noise = np.array([1, -1, 2, -2, 0.5, -0.5, 1.5, -1.5]) * 0.01
    gain = {"a": 0.011, "b": 0.010}
    rows = [(scm, m, -1, s, 0.3) for scm in gain for m in bench_eval.REFERENCES for s in seeds]
    rows += [(scm, bench_eval.UNTRAINED, 0, s, 0.3) for scm in gain for s in seeds]
    rows += [(scm, bench_eval.TRAINED, 0, s, 0.3 + g + noise[s])
             for scm, g in gain.items() for s in seeds]
    auc = pd.DataFrame(rows, columns=["scm", "method", "run", "seed", "f1_auc"])
    cost = dict.fromkeys(auc[["scm", "method", "run"]].drop_duplicates().itertuples(
        index=False, name=None), 0)
    paired, pooled = bench_eval.paired_tables(auc, list(gain), 1, cost)
    raw = {scm: paired_p(g + noise) for scm, g in gain.items()}
    assert 0.025 < min(raw.values()) and max(raw.values()) < 0.05, raw
    random = paired[paired.reference == "random_active"].set_index("scm")
    np.testing.assert_allclose(random["p"], [raw["a"], raw["b"]])
    np.testing.assert_allclose(random["p_holm"], [2 * raw["a"]] * 2)   # Holm, by hand
    assert not random["holds"].any() and not pooled["holds_every_run"].any()
    assert (paired["holds"] == (paired["p_holm"] < 0.05)).all()


def test_eval_refuses_a_run_without_step_0(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = PolicyConfig(hidden=16, layers=1, heads=2)
    save_checkpoint(str(run / "final"), init_params(Phase1Config(policy=cfg)), cfg, {}, {})
    with pytest.raises(SystemExit) as e:
        benchmark.main(["eval", "--grpo-checkpoint", str(run), "--output-dir",
                        str(tmp_path / "out")] + ARGS)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "step_0" in err[0]


@pytest.mark.parametrize("foreign", [{"run.json": "{}", "steps.csv": "a\n1\n"},
                                     {"config.json": '{"argv": []}'}, {"notes.txt": "mine"}])
def test_eval_refuses_another_jobs_directory(tmp_path, capsys, monkeypatch, foreign):
    # Its tables share names with Phase 2's (steps.csv, config.json): written into a Phase-2
    # run's directory they replaced that run's files and left the rest beside them.
    run = _run_dir(tmp_path / "run", 0, 1)
    out = tmp_path / "out"
    out.mkdir()
    for name, text in foreign.items():
        (out / name).write_text(text)
    monkeypatch.setattr(bench_eval, "run_cells", lambda *a: pytest.fail("computed"))
    with pytest.raises(SystemExit) as e:
        benchmark.main(["eval", "--grpo-checkpoint", run, "--output-dir", str(out)] + ARGS)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not write" in err[0] and "use another --output-dir" in err[0]
    assert sorted(os.listdir(out)) == sorted(foreign)


def test_acting_cost_counts_the_shortlist_above_the_exact_posterior():
    """Hand-computed: 1 refit + 2 ends x candidates x K draws; the exact posterior's lookahead
    scores every non-target variable, the MCMC one's what-if posterior the 8 shortlisted."""
    from jobs.bench_eval import acting_cost

    assert acting_cost(10, True, 8) == 1 + 2 * 9 * 8 == 145
    assert acting_cost(15, True, 1) == 29
    assert acting_cost(50, True, 1, exact=False) == 1 + 2 * 8 * 1 == 17
    assert acting_cost(100, True, 2, exact=False) == 33
    assert acting_cost(5, True, 8, exact=False) == 1 + 2 * 4 * 8     # fewer than 8 to list
    assert acting_cost(50, False, 1, exact=False) == 0


def test_dense_summary_is_f1_shd_auprc_after_each_step_with_runs_averaged():
    """The README's dense table by hand: steps 1, 5, 10 of every metric, the trained policy's
    two runs averaged, references first and in a fixed order whatever the rows' order."""
    rows = []
    for method, run, base in (("trained_policy", 0, 0.40), ("plugin_active", -1, 0.30),
                              ("trained_policy", 1, 0.50), ("random_active", -1, 0.10)):
        for step in (0, 1, 5, 10):
            rows.append({"scm": "dense10", "method": method, "run": run, "step": step,
                         "f1_mean": 0.2 if step == 0 else base + step / 100,
                         "shd_mean": 20.0 if step == 0 else 10 * base + step,
                         "auprc_mean": 0.5 if step == 0 else base + step / 1000})
    lines = bench_eval.dense_summary("dense10", pd.DataFrame(rows))
    assert lines[1].startswith("dense10: all methods start from F1 0.200, SHD 20.0, AUPRC 0.500")
    assert lines[2] == ("| method | F1 after 1 / 5 / 10 | SHD after 1 / 5 / 10 "
                        "| AUPRC after 1 / 5 / 10 |")
    assert lines[4:] == [
        "| random | 0.110 / 0.150 / 0.200 | 2.0 / 6.0 / 11.0 | 0.101 / 0.105 / 0.110 |",
        "| plug-in | 0.310 / 0.350 / 0.400 | 4.0 / 8.0 / 13.0 | 0.301 / 0.305 / 0.310 |",
        "| trained | 0.460 / 0.500 / 0.550 | 5.5 / 9.5 / 14.5 | 0.451 / 0.455 / 0.460 |"]
