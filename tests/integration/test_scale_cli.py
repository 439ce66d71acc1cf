"""Phase 2 at sizes beyond the exact DP: 37- and 100-variable custom SCMs end to end through the CLI
(order MCMC over candidate parent sets), and a size whose posterior cannot fit: one line, exit 2."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from jobs import two_phase_training

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def random_scm_json(path, d, seed=0):
    """A custom SCM: each variable takes up to 2 parents among the earlier ones."""
    rng = np.random.default_rng(seed)
    names = [f"V{i}" for i in range(d)]
    edges = []
    for j in range(1, d):
        for i in rng.choice(j, size=min(j, 2), replace=False):
            edges.append([names[i], names[j], float(rng.choice([-1, 1]) * rng.uniform(0.5, 1.5))])
    path.write_text(json.dumps({"name": f"net{d}", "variables": names, "target": names[-1],
                                "edges": edges, "noise_std": 1.0}))
    return str(path)


@pytest.mark.parametrize("d", [37, 100])
def test_large_json_runs_end_to_end(tmp_path, capsys, d):
    """The outputs name the MCMC posterior (config.json, summary.csv, the printed table) and
    carry its chain gap per step (steps.csv) and after the last step (summary.csv)."""
    scm = random_scm_json(tmp_path / f"net{d}.json", d)
    out = tmp_path / "out"
    argv = ["--scm-type", scm, "--methods", "random_active", "--seeds", "2",
            "--n-interventions", "5", "--num-workers", "0", "--output-dir", str(out),
            "--score", "bge", "--max-indegree", "2", "--no-plots", "--quiet"]
    assert two_phase_training.main(argv) == 0
    steps = pd.read_csv(out / "steps.csv")
    assert len(steps) == 2 * 6 and steps["f1"].between(0, 1).all()
    cfg = json.loads((out / "config.json").read_text())
    name = ("order MCMC over candidate parent sets, BGE, in-degree <= 2, K = 10 candidates, "
            "4 chains x 1000 steps per update (2000 at the first)")
    assert cfg["posterior"] == {f"net{d}": name}
    assert cfg["episode"]["surrogate"]["analytic"]["max_indegree"] == 2
    summary = pd.read_csv(out / "summary.csv")
    assert summary["posterior"].tolist() == [name]
    assert f"posterior: {name}; chain gap after the last step" in capsys.readouterr().out
    gap = steps["chain_gap"]
    assert np.isfinite(gap).all() and gap.between(0, 1).all() and gap.max() > 0
    last = steps[steps["step"] == 5]["chain_gap"].mean()
    assert summary["final_chain_gap_mean"].tolist() == pytest.approx([last])


def test_impossible_size_one_line_exit_2(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "jobs.two_phase_training", "--scm-type", "er5000",
                        "--seeds", "2", "--n-interventions", "5", "--output-dir", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "d = 5000 variables" in lines[0] and "GiB" in lines[0], r.stderr
    assert not out.exists()
