"""The Phase-2 CLI end to end: outputs checked against values computed here, determinism, and
one-line errors (reruns into the same directory: test_phase2_rerun.py)."""

import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from jobs import benchmark, two_phase_training

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE = ["--scm-type", "easy", "--methods", "random_active,uncertainty_active", "--seeds", "3",
        "--n-observational", "10", "--n-interventions", "4", "--quiet"]


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "jobs.two_phase_training", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("p2")
    assert two_phase_training.main(BASE + ["--output-dir", str(out)]) == 0
    return out


def test_outputs_and_their_contents(run_dir):
    names = set(os.listdir(run_dir))
    assert {"steps.csv", "summary.csv", "paired.csv", "comparison.md", "config.json",
            "phase2_result_easy.pkl", "plot_easy.png", "cells"} <= names
    assert not [n for n in names if n.startswith(".tmp")]
    steps = pd.read_csv(run_dir / "steps.csv")
    for col in ["scm", "method", "seed", "step", "f1", "shd", "parent_f1", "parent_shd",
                "target_value", "variable", "value"]:
        assert col in steps.columns
    assert len(steps) == 2 * 3 * 5                       # methods x seeds x (T + 1)
    assert set(steps["step"]) == set(range(5))
    assert (steps[steps.step == 0]["variable"] == -1).all()
    summary = pd.read_csv(run_dir / "summary.csv")
    assert {"final_f1_mean", "final_f1_ci95", "final_shd_mean", "f1_auc_mean", "f1_auc_ci95"} <= set(summary.columns)
    with open(run_dir / "phase2_result_easy.pkl", "rb") as f:
        result = pickle.load(f)
    slm = result["structure_learning_metrics"]
    assert len(slm["f1_scores"]) == 5 and len(slm["shd_scores"]) == 5
    sub = steps[(steps.method == "random_active")]
    assert slm["final_f1"] == pytest.approx(sub[sub.step == 4]["f1"].mean())
    assert slm["final_shd"] == pytest.approx(sub[sub.step == 4]["shd"].mean())
    assert set(result["methods"]) == {"random_active", "uncertainty_active"}
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["episode"]["n_interventions"] == 4 and cfg["compare"] is False
    # easy (5 variables) is under the exact DP's limit: named so, and no chains to disagree.
    name = "exact DP over orders, BIC, in-degree <= 4"
    assert cfg["posterior"] == {"easy": name} and result["posterior"] == name
    assert summary["posterior"].tolist() == [name, name]
    assert (steps["chain_gap"] == 0).all() and (summary["final_chain_gap_mean"] == 0).all()
    assert f"### easy\n\nposterior: {name}\n\n| method |" in (run_dir / "comparison.md").read_text()


def hand_f1_shd(probs, adj):
    """Final F1 and SHD (reversal = 1) by hand: per pair the likeliest of none, i->j, j->i."""
    d = len(adj)
    pred = np.zeros((d, d), int)
    for i in range(d):
        for j in range(i + 1, d):
            p, q = probs[i, j], probs[j, i]
            if p + q > 1:
                p, q = p / (p + q), q / (p + q)
            none = max(0.0, 1 - p - q)
            if p > q and p > none:
                pred[i, j] = 1
            elif q > p and q > none:
                pred[j, i] = 1
    tp = int(np.sum((adj != 0) & (pred == 1)))
    fp = int(np.sum((adj == 0) & (pred == 1)))
    fn = int(np.sum((adj != 0) & (pred == 0)))
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    shd = sum((adj[i, j] != 0, adj[j, i] != 0) != (pred[i, j] == 1, pred[j, i] == 1)
              for i in range(d) for j in range(i + 1, d))
    return f1, shd


def test_tables_agree_with_values_computed_here(run_dir):
    """steps.csv against the stored posteriors; summary.csv and paired.csv against numpy/scipy
    on steps.csv (nothing here reuses the library's metrics or statistics)."""
    from scipy import stats

    steps = pd.read_csv(run_dir / "steps.csv")
    summary = pd.read_csv(run_dir / "summary.csv").set_index("method")
    paired = pd.read_csv(run_dir / "paired.csv").set_index("method")
    auc = {}
    for method in ("random_active", "uncertainty_active"):
        (cell,) = list(run_dir.glob(f"cells/*/easy__{method}__0-2.npz"))
        with np.load(cell) as z:
            final = [hand_f1_shd(z["final_probs"][k], z["true_adj"][k]) for k in range(3)]
            assert z["seed"].tolist() == [0, 1, 2]
        sub = steps[steps.method == method].sort_values(["seed", "step"])
        last = sub[sub.step == 4]
        np.testing.assert_allclose(last["f1"], [f for f, _ in final], atol=1e-6)
        assert last["shd"].tolist() == [s for _, s in final]
        f1 = sub["f1"].to_numpy().reshape(3, 5)
        auc[method] = f1[:, 1:].mean(1)
        row = summary.loc[method]
        assert row["final_f1_mean"] == pytest.approx(np.mean([f for f, _ in final]))
        assert row["final_shd_mean"] == pytest.approx(np.mean([s for _, s in final]))
        assert row["f1_auc_mean"] == pytest.approx(auc[method].mean())
        lo, _ = stats.t.interval(0.95, 2, loc=auc[method].mean(), scale=stats.sem(auc[method]))
        assert row["f1_auc_ci95"] == pytest.approx(auc[method].mean() - lo)
    diff = auc["uncertainty_active"] - auc["random_active"]
    p = paired.loc["uncertainty_active"]
    assert p["f1_auc_diff"] == pytest.approx(diff.mean())
    assert np.ptp(diff) > 1e-3                      # a defined test on these seeds
    assert p["f1_auc_p"] == pytest.approx(stats.ttest_rel(
        auc["uncertainty_active"], auc["random_active"], alternative="greater").pvalue)


def test_same_arguments_same_steps_csv(run_dir, tmp_path):
    """Bit-identical results in a fresh process (no shared cache, new output dir)."""
    r = cli(*BASE, "--output-dir", str(tmp_path / "again"), "--no-plots")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "again" / "steps.csv").read_bytes() == (run_dir / "steps.csv").read_bytes()


@pytest.mark.parametrize("args, needle", [
    (["--scm-type", "nonsense"], "unknown SCM"),
    (["--methods", "random_active,bogus"], "unknown method"),
    (["--methods", "grpo_active"], "--grpo-checkpoint"),
    (["--seeds", "0"], "--seeds"),
    (["--n-interventions", "-3"], "--n-interventions"),
    (["--learning-rate", "nan"], "--learning-rate"),
    (["--surrogate", "magic"], "--surrogate"),
    (["--scm-type", "missing_file.json"], "not found"),
    (["--lookahead-draws", "0"], "--lookahead-draws"),
    (["--lookahead-draws", "lots"], "--lookahead-draws"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle, tmp_path):
    out = tmp_path / "out"
    r = cli(*args, "--output-dir", str(out))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists() or not any(p for p in out.iterdir() if p.name != "cells")


def test_invalid_scm_json_and_unwritable_output(tmp_path):
    bad = tmp_path / "cyclic.json"
    bad.write_text(json.dumps({"variables": ["a", "b"], "target": "b", "noise_std": 1.0,
                               "edges": [["a", "b", 1.0], ["b", "a", 1.0]]}))
    r = cli("--scm-type", str(bad), "--output-dir", str(tmp_path / "o"))
    assert r.returncode == 2 and "cycle" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = cli("--scm-type", "easy", "--output-dir", str(blocker / "sub"))
    assert r.returncode == 2 and "output directory" in r.stderr, r.stderr


def test_ceiling_benchmark_refuses_what_its_references_cannot_run():
    r = subprocess.run([sys.executable, "-m", "jobs.benchmark", "ceiling", "--scms", "er20,er15",
                        "--seeds", "2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "15 variables" in lines[0], r.stderr
    # Above the exact DP it runs, but 30 seeds x 16 draws of sf100 at once (~190 GB) do not fit.
    r = subprocess.run([sys.executable, "-m", "jobs.benchmark", "ceiling", "--scms", "sf100",
                        "--seeds", "30"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "lower --batch-size" in lines[0], r.stderr


def test_ceiling_runs_on_the_sweeps_cells_of_its_base_seed(tmp_path, monkeypatch):
    # The references' rows must be the Phase-2 sweep's own cells (the README compares them with
    # the frozen evaluation's); with the base seed dropped, er6 would draw other graphs.
    # In two batches, which must come back in seed order.
    common = ["--seeds", "4", "--n-observational", "10", "--n-interventions", "4"]
    argv = ["ceiling", "--scms", "er6", "--draws", "1", "--base-seed", "77", "--batch-size", "2",
            "--out", str(tmp_path / "c.csv"), *common]
    assert benchmark.main(argv) == 0
    table = (tmp_path / "c.csv").read_text()
    ceiling = pd.read_csv(tmp_path / "c.csv").set_index("method")["f1_auc"]
    # A rerun keeps the finished SCM's rows (an interrupted one goes on from the next SCM);
    # other settings compute their own.
    from causal_grpo import active_learning

    def computed(*args, **kwargs):
        raise AssertionError("a kept SCM was computed again")

    monkeypatch.setattr(active_learning, "make_batch_runner", computed)
    (tmp_path / "c.csv").unlink()
    assert benchmark.main(argv) == 0
    assert (tmp_path / "c.csv").read_text() == table
    with pytest.raises(AssertionError, match="computed again"):
        benchmark.main([a if a != "77" else "78" for a in argv])
    monkeypatch.undo()
    # Interrupted in its second batch, a rerun computes only that batch, to the same table.
    from causal_grpo import sweep
    cell_batch, batches = sweep.cell_batch, []

    def stopped(source, base_seed, seeds):
        batches.append(list(seeds))
        if list(seeds) == [2, 3] and len(batches) == 2:
            raise KeyboardInterrupt
        return cell_batch(source, base_seed, seeds)

    monkeypatch.setattr(sweep, "cell_batch", stopped)
    shutil.rmtree(tmp_path / "c.csv.rows")
    (tmp_path / "c.csv").unlink()
    with pytest.raises(SystemExit) as stop:
        benchmark.main(argv)
    assert stop.value.code == 130 and not (tmp_path / "c.csv").exists()
    assert benchmark.main(argv) == 0
    assert batches == [[0, 1], [2, 3], [2, 3]]
    assert (tmp_path / "c.csv").read_text() == table
    assert len(os.listdir(tmp_path / "c.csv.rows")) == 1     # the SCM's rows, not its batches
    monkeypatch.undo()
    assert two_phase_training.main(["--scm-type", "er6", "--methods",
                                    "random_active,uncertainty_active", "--base-seed", "77",
                                    "--quiet", "--output-dir", str(tmp_path / "p2"), *common]) == 0
    auc = pd.read_csv(tmp_path / "p2" / "summary.csv").set_index("method")["f1_auc_mean"]
    for m in ("random_active", "uncertainty_active"):
        assert ceiling[m] == pytest.approx(auc[m], abs=1e-6)


def test_ceiling_runs_each_scm_in_its_sweeps_episode(monkeypatch):
    """dense<d> ran 30 observational samples and the default in-degree, not its protocol's 50
    and every parent set: not the sweep's cells the docstring promised."""
    from causal_grpo import active_learning

    class Seen(Exception):
        pass

    def seen(cfg, d, *args):
        raise Seen(cfg)

    monkeypatch.setattr(active_learning, "make_batch_runner", seen)
    for scm, n_obs, indegree, flags in (("dense8", 50, 7, []), ("er6", 30, None, []),
                                        ("dense8", 20, 7, ["--n-observational", "20"])):
        with pytest.raises(Seen) as e:
            benchmark.main(["ceiling", "--scms", scm, "--seeds", "1", "--draws", "1", *flags])
        cfg = e.value.args[0]
        assert cfg.n_observational == n_obs and cfg.n_interventions == 10
        assert getattr(cfg.surrogate.analytic, "max_indegree", None) == indegree


def test_posterior_benchmark_writes_its_table_and_refuses_sizes_without_the_exact_dp(tmp_path):
    out = tmp_path / "post.csv"
    r = subprocess.run([sys.executable, "-m", "jobs.benchmark", "posterior", "--d", "4,6",
                        "--batch", "4", "--seconds", "0.05", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(out)
    assert list(df["d"]) == [4, 6] and list(df["batch"]) == [4, 4]
    for part in ("merge_ms", "local_scores_ms", "dp_ms"):
        assert np.isfinite(df[part]).all() and (df[part] > 0).all()
    r = subprocess.run([sys.executable, "-m", "jobs.benchmark", "posterior", "--d", "5,40"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "--d must lie in" in lines[0], r.stderr


def test_posterior_benchmark_parts_compose_to_the_surrogates_update():
    """The three timed parts, chained, are one real update: the same edge posterior as the
    analytic surrogate given the same rows (so "where the time goes" is about real work)."""
    import jax
    import jax.numpy as jnp

    from causal_grpo.surrogate_bayes import (AnalyticConfig, build_tables,
                                             edge_probs_from_parent_posterior,
                                             make_analytic_surrogate)
    from jobs.benchmark import posterior_update_parts

    d, n = 5, 3
    parts, vals = posterior_update_parts(d, n)
    merge, (stats, last) = parts["merge"]
    log_post = parts["dp"][0](parts["local_scores"][0](merge(stats, last)))
    tab = build_tables(d, AnalyticConfig().max_indegree)
    surrogate = make_analytic_surrogate(AnalyticConfig(), d)
    rows = vals.shape[1]
    for b in range(n):
        state = surrogate.init(jax.random.PRNGKey(0), jnp.ones((d,), bool))
        state = surrogate.update(state, vals[b], jnp.zeros((rows, d), bool), jnp.ones((rows,), bool))
        np.testing.assert_allclose(edge_probs_from_parent_posterior(log_post[b], tab),
                                   surrogate.edge_probs(state), atol=1e-4)
    # Not trivially equal: the rows before the merge give another posterior.
    before = parts["dp"][0](parts["local_scores"][0](stats))
    assert np.abs(np.exp(before) - np.exp(log_post)).max() > 1e-3



def test_ceilings_policy_refits_the_episodes_posterior(tmp_path, monkeypatch):
    """With --grpo-checkpoint the ceiling's grpo_active acts as in the sweep: its lookahead
    refits the episode's posterior (every parent set on dense8), not the default in-degree 4,
    which changed the policy's choices there (its row was not the sweep's cell)."""
    from causal_grpo import active_learning
    from causal_grpo import policy as pol
    from causal_grpo.checkpoint import save_checkpoint
    from causal_grpo.networks import PolicyConfig
    from causal_grpo.phase1 import Phase1Config, init_params

    built, real = {}, pol.make_policy_selector

    def spy(*args, **kwargs):
        select = real(*args, **kwargs)
        built[id(select)] = args[3] if len(args) > 3 else kwargs.get("analytic")
        return select

    class Seen(Exception):
        pass

    def runner(cfg, d, selector=None):
        if selector is None:
            return lambda *a: None
        raise Seen(selector, cfg)

    monkeypatch.setattr(pol, "make_policy_selector", spy)
    monkeypatch.setattr(active_learning, "make_batch_runner", runner)
    cfg = PolicyConfig(hidden=16, layers=1, heads=2)
    ckpt = str(tmp_path / "final")
    save_checkpoint(ckpt, init_params(Phase1Config(policy=cfg, seed=4)), cfg, training={},
                    metrics={})
    with pytest.raises(Seen) as e:
        benchmark.main(["ceiling", "--scms", "dense8", "--seeds", "1", "--draws", "1",
                        "--grpo-checkpoint", ckpt])
    selector, episode = e.value.args
    assert episode.surrogate.analytic.max_indegree == 7
    assert built[id(selector)] == episode.surrogate.analytic


def test_plots_are_drawn_whatever_backend_mplbackend_names(run_dir, tmp_path):
    """The plots are PNG files (Agg): an unknown MPLBACKEND failed matplotlib's import after the
    run's compute, and the tables were never written."""
    code = ("import sys, pandas as pd; from causal_grpo.results import plot_curves; "
            "plot_curves(pd.read_csv(sys.argv[1]), 'easy', sys.argv[2])")
    png = tmp_path / "plot.png"
    r = subprocess.run([sys.executable, "-c", code, str(run_dir / "steps.csv"), str(png)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, MPLBACKEND="nonexistent"))
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
