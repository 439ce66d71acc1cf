"""The Phase-2 CLI end to end: outputs, determinism, resuming, and one-line errors."""

import json
import os
import pickle
import subprocess
import sys

import pandas as pd
import pytest

from jobs import two_phase_training

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
    assert cfg["episode"]["n_interventions"] == 4


def test_same_arguments_same_steps_csv(run_dir, tmp_path):
    """Bit-identical results in a fresh process (no shared cache, new output dir)."""
    r = cli(*BASE, "--output-dir", str(tmp_path / "again"), "--no-plots")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "again" / "steps.csv").read_bytes() == (run_dir / "steps.csv").read_bytes()


def test_rerun_resumes_from_stored_cells(run_dir, monkeypatch):
    import causal_grpo.sweep as sweep
    import cluster.run_sweep as rs

    def boom(*a, **k):
        raise AssertionError("a stored batch was recomputed")

    monkeypatch.setattr(sweep, "run_batch", boom)
    monkeypatch.setattr(rs, "run_batch", boom)
    before = (run_dir / "steps.csv").read_bytes()
    assert two_phase_training.main(BASE + ["--output-dir", str(run_dir), "--no-plots"]) == 0
    assert (run_dir / "steps.csv").read_bytes() == before


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


def test_ceiling_benchmark_refuses_graphs_too_big_for_its_references():
    r = subprocess.run([sys.executable, "-m", "jobs.benchmark", "ceiling", "--scms", "easy,er15",
                        "--seeds", "2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "15 variables" in lines[0], r.stderr


def test_posterior_benchmark_splits_an_update_and_refuses_sizes_without_the_exact_dp(tmp_path):
    """The profile behind the README's "where the time goes": the parts add up, per d."""
    out = tmp_path / "post.csv"
    r = subprocess.run([sys.executable, "-m", "jobs.benchmark", "posterior", "--d", "4,6",
                        "--batch", "4", "--seconds", "0.05", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(out)
    assert list(df["d"]) == [4, 6] and (df["updates_per_s"] > 0).all()
    parts = df["merge_ms"] + df["local_scores_ms"] + df["dp_ms"]
    assert (parts - df["total_ms"]).abs().max() < 1e-9 and ((df["dp_share"] > 0) & (df["dp_share"] < 1)).all()
    r = subprocess.run([sys.executable, "-m", "jobs.benchmark", "posterior", "--d", "5,40"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "--d must lie in" in lines[0], r.stderr
