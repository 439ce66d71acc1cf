"""grpo_active and plugin_active above the exact posterior's size, through the Phase-2 CLI: the
bounded lookahead (shortlist + what-if posterior) acts on an 18-variable graph end to end."""

import json

import pandas as pd

from causal_grpo.checkpoint import save_checkpoint
from causal_grpo.phase1 import Phase1Config, init_params
from jobs import two_phase_training


def test_grpo_active_at_d18_runs_end_to_end(tmp_path):
    cfg = Phase1Config()
    ckpt = tmp_path / "ckpt"
    save_checkpoint(str(ckpt), init_params(cfg), cfg.policy, {}, {})
    out = tmp_path / "out"
    argv = ["--scm-type", "er18", "--methods", "grpo_active,plugin_active", "--grpo-checkpoint",
            str(ckpt), "--seeds", "2", "--base-seed", "5000", "--n-observational", "20",
            "--n-interventions", "2", "--num-workers", "0", "--output-dir", str(out),
            "--no-plots", "--quiet"]
    assert two_phase_training.main(argv) == 0
    steps = pd.read_csv(out / "steps.csv")
    assert len(steps) == 2 * 2 * 3 and steps["f1"].between(0, 1).all()
    acted = steps[steps.step > 0]
    assert acted["variable"].between(0, 17).all()
    assert acted["value"].between(-2.0, 2.0).all()
    assert set(acted[acted.method == "plugin_active"]["value"].round(4)) <= {-2.0, 2.0}
    cfg_out = json.loads((out / "config.json").read_text())
    assert cfg_out["posterior"]["er18"].startswith("order MCMC over candidate parent sets")
